//! The outbox of one peer: this node's writes that the peer has not acknowledged yet.
//!
//! Owns: the queue of keys to push, the coalescing of repeated writes to one key, the
//! bound on its size, and the waiters of writes that want the peer's ack.
//! Knows nothing of: sockets, the wire format.
//!
//! The queue holds keys, not values: a batch reads each key's *current* register when
//! it is taken, so ten writes to one key while the link is busy cost one entry on the
//! wire (coalescing), and whatever is sent is never older than what was queued. A
//! waiter is told the peer's answer when a batch holding its key is acknowledged (applied,
//! or refused for clock skew); it is dropped (the write sees a failure for this peer) if
//! the link fails.
//! When the queue is full, new keys are dropped and counted: anti-entropy repairs them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use crate::store::Entry;

/// What a peer answered for a pushed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The peer merged the entry (or held a newer one): its HLC has seen the version.
    Applied,
    /// The peer refused the entry as too far in its future (clock skew): it does not
    /// hold the write, and it does not count as a replica of it.
    RefusedForSkew,
}

/// Told the peer's [`Ack`]; dropped if the peer will not answer soon (lost link).
pub type AckWaiter = oneshot::Sender<Ack>;

/// What happened to an enqueued key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Newly queued.
    Queued,
    /// Already queued: the one push will carry the latest register.
    Coalesced,
    /// The queue is full; left to anti-entropy.
    Dropped,
}

#[derive(Default)]
struct State {
    /// Keys are shared: one allocation per write, whatever the number of peers.
    queue: VecDeque<Arc<str>>,
    /// The waiters of every queued key: its keys are exactly those of `queue`.
    waiters: HashMap<Arc<str>, Vec<AckWaiter>>,
    in_flight: usize,
}

/// A batch taken from the outbox, to be acknowledged or given back.
#[derive(Debug)]
pub struct Batch {
    /// The entries to push.
    pub entries: Vec<Entry>,
    waiters: Vec<(Arc<str>, Vec<AckWaiter>)>,
}

/// The outbox of one peer.
pub struct Outbox {
    state: Mutex<State>,
    work: Notify,
    max_keys: usize,
}

impl Outbox {
    /// An empty outbox holding at most `max_keys` distinct keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            work: Notify::new(),
            max_keys,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock poisoned")
    }

    /// Queues `key`, optionally with a waiter for the peer's ack.
    pub fn enqueue(&self, key: &Arc<str>, waiter: Option<AckWaiter>) -> Enqueued {
        let mut state = self.state();
        let full = state.queue.len() >= self.max_keys;
        let outcome = match state.waiters.get_mut(&**key) {
            Some(waiters) => {
                waiters.extend(waiter);
                Enqueued::Coalesced
            }
            None if full => Enqueued::Dropped,
            None => {
                state
                    .waiters
                    .insert(Arc::clone(key), waiter.into_iter().collect());
                state.queue.push_back(Arc::clone(key));
                Enqueued::Queued
            }
        };
        drop(state);
        if outcome == Enqueued::Queued {
            self.work.notify_one();
        }
        outcome
    }

    /// Waits until something is queued (returns at once if something already is).
    pub async fn wait_for_work(&self) {
        if !self.state().queue.is_empty() {
            return;
        }
        self.work.notified().await;
    }

    /// Takes a batch of at most about `budget` bytes (always at least one entry), reading
    /// each key's current entry with `read`. `None` when nothing is queued.
    pub fn take(
        &self,
        budget: usize,
        mut read: impl FnMut(&str) -> Option<Entry>,
    ) -> Option<Batch> {
        let mut state = self.state();
        let mut batch = Batch {
            entries: Vec::new(),
            waiters: Vec::new(),
        };
        let mut bytes = 0;
        while let Some(key) = state.queue.front() {
            let entry = read(key);
            let weight = entry.as_ref().map_or(0, Entry::weight);
            if !batch.entries.is_empty() && bytes + weight > budget {
                break;
            }
            let key = state.queue.pop_front().expect("front exists");
            let waiters = state.waiters.remove(&key).unwrap_or_default();
            if let Some(entry) = entry {
                bytes += weight;
                batch.entries.push(entry);
            }
            batch.waiters.push((key, waiters));
        }
        if batch.waiters.is_empty() {
            return None;
        }
        state.in_flight += batch.waiters.len();
        Some(batch)
    }

    /// The peer acknowledged `batch`: waiters of the keys in `refused` are told
    /// [`Ack::RefusedForSkew`], the others [`Ack::Applied`].
    pub fn acknowledge(&self, batch: Batch, refused: &[String]) {
        self.state().in_flight -= batch.waiters.len();
        let refused: HashSet<&str> = refused.iter().map(String::as_str).collect();
        for (key, waiters) in batch.waiters {
            let ack = if refused.contains(&*key) {
                Ack::RefusedForSkew
            } else {
                Ack::Applied
            };
            for waiter in waiters {
                let _ = waiter.send(ack);
            }
        }
    }

    /// The push of `batch` failed: its keys are queued again (without waiters: the link
    /// is gone, and writes do not wait on a lost peer).
    pub fn give_back(&self, batch: Batch) {
        let mut state = self.state();
        state.in_flight -= batch.waiters.len();
        for (key, _) in batch.waiters.into_iter().rev() {
            if !state.waiters.contains_key(&key) {
                state.waiters.insert(key.clone(), Vec::new());
                state.queue.push_front(key);
            }
        }
    }

    /// The link failed: every waiter is told the peer will not ack soon, in queue
    /// order (not the map's, which varies from run to run: the order in which writes
    /// wake up must not).
    pub fn fail_waiters(&self) {
        let mut state = self.state();
        let State { queue, waiters, .. } = &mut *state;
        for key in queue.iter() {
            if let Some(waiters) = waiters.get_mut(key) {
                waiters.clear();
            }
        }
    }

    /// Keys queued or in flight.
    pub fn pending(&self) -> usize {
        let state = self.state();
        state.queue.len() + state.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp, Version};

    fn read(key: &str) -> Option<Entry> {
        Some(Entry {
            key: key.to_owned(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms: 1,
                    logical: 0,
                },
                node: NodeId::new("n1").unwrap(),
            },
            value: Some("x".repeat(100).into()),
            replaces: None,
        })
    }

    #[test]
    fn repeated_writes_to_one_key_coalesce() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.enqueue(&"a".into(), None), Enqueued::Queued);
        assert_eq!(outbox.enqueue(&"a".into(), None), Enqueued::Coalesced);
        assert_eq!(outbox.enqueue(&"b".into(), None), Enqueued::Queued);
        let batch = outbox.take(1 << 20, read).unwrap();
        assert_eq!(batch.entries.len(), 2);
        assert_eq!(outbox.pending(), 2);
        outbox.acknowledge(batch, &[]);
        assert_eq!(outbox.pending(), 0);
        assert!(outbox.take(1 << 20, read).is_none());
    }

    #[test]
    fn a_full_outbox_drops_new_keys_but_coalesces_queued_ones() {
        let outbox = Outbox::new(1);
        assert_eq!(outbox.enqueue(&"a".into(), None), Enqueued::Queued);
        assert_eq!(outbox.enqueue(&"b".into(), None), Enqueued::Dropped);
        assert_eq!(outbox.enqueue(&"a".into(), None), Enqueued::Coalesced);
    }

    #[test]
    fn batches_respect_the_budget_but_always_carry_one_entry() {
        let outbox = Outbox::new(100);
        for key in ["a", "b", "c"] {
            outbox.enqueue(&key.into(), None);
        }
        let batch = outbox.take(1, read).unwrap();
        assert_eq!(batch.entries.len(), 1);
        let weight = read("b").unwrap().weight();
        let batch = outbox.take(2 * weight, read).unwrap();
        assert_eq!(batch.entries.len(), 2);
    }

    #[test]
    fn waiters_are_told_the_ack_or_refusal_and_dropped_on_failure() {
        let outbox = Outbox::new(10);
        let (acked_tx, mut acked_rx) = oneshot::channel();
        let (refused_tx, mut refused_rx) = oneshot::channel();
        outbox.enqueue(&"a".into(), Some(acked_tx));
        outbox.enqueue(&"b".into(), Some(refused_tx));
        let batch = outbox.take(1 << 20, read).unwrap();
        outbox.acknowledge(batch, &["b".to_owned()]);
        assert_eq!(acked_rx.try_recv(), Ok(Ack::Applied));
        assert_eq!(refused_rx.try_recv(), Ok(Ack::RefusedForSkew));

        let (lost_tx, mut lost_rx) = oneshot::channel();
        outbox.enqueue(&"c".into(), Some(lost_tx));
        let batch = outbox.take(1 << 20, read).unwrap();
        outbox.give_back(batch);
        assert!(matches!(
            lost_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(outbox.pending(), 1, "the key is queued again");
        let (waiting_tx, mut waiting_rx) = oneshot::channel();
        outbox.enqueue(&"c".into(), Some(waiting_tx));
        outbox.fail_waiters();
        assert!(matches!(
            waiting_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
