//! Group commit in front of an engine without one: writers queue records and wait;
//! one thread takes everything queued, writes it as one durable transaction, and
//! releases the writers. The same shape as meshkv's writer thread.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::Record;

/// An engine that can write a group of records as one durable unit.
pub trait GroupEngine: Send + Sync + 'static {
    /// Writes `records` in one transaction; durable on return if `durable`.
    fn write_group(&self, records: &[Record], durable: bool);
    /// Hands every stored `(key, version+value)` to `visit`.
    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8]));
}

/// Queued writes waiting for the committer.
type Waiting = (Record, oneshot::Sender<()>);

/// The writers' handle.
pub struct GroupCommit<E> {
    queue: mpsc::Sender<Waiting>,
    _engine: std::marker::PhantomData<E>,
}

/// A group never grows past this many records.
const GROUP_MAX: usize = 4096;

impl<E: GroupEngine> GroupCommit<E> {
    pub fn new(engine: E) -> Self {
        let engine = Arc::new(engine);
        let (queue, mut requests) = mpsc::channel::<Waiting>(GROUP_MAX);
        let committer = Arc::clone(&engine);
        std::thread::spawn(move || {
            let mut group = Vec::with_capacity(GROUP_MAX);
            let mut records = Vec::with_capacity(GROUP_MAX);
            while let Some(first) = requests.blocking_recv() {
                group.push(first);
                while group.len() < GROUP_MAX {
                    match requests.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                records.extend(group.iter().map(|(record, _)| record.clone()));
                committer.write_group(&records, true);
                records.clear();
                for (_, done) in group.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self {
            queue,
            _engine: std::marker::PhantomData,
        }
    }

    /// Writes one record; returns once it is durable.
    pub async fn write(&self, record: Record) {
        let (done, durable) = oneshot::channel();
        self.queue
            .send((record, done))
            .await
            .expect("committer alive");
        durable.await.expect("committer alive");
    }
}
