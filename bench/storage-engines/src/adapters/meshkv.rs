//! meshkv's journal as the node's store: each write is one record
//! `[key len: u8][key][version+value]`; restart replays the log.

use std::path::Path;
use std::sync::Arc;

use meshkv::clock::NodeId;
use meshkv::node::SystemClock;
use meshkv::persist::{FileJournal, FsyncPolicy, Journal, JournalOptions, RecordBatch};

use crate::Record;

pub fn encode(record: &Record, out: &mut Vec<u8>) {
    out.clear();
    out.push(record.key.len() as u8);
    out.extend_from_slice(&record.key);
    out.extend_from_slice(&record.stored);
}

pub fn decode(payload: &[u8]) -> (&[u8], &[u8]) {
    let key_len = payload[0] as usize;
    (&payload[1..1 + key_len], &payload[1 + key_len..])
}

pub fn open(dir: &Path, visit: &mut dyn FnMut(&[u8], &[u8])) -> FileJournal {
    let clock = Arc::new(SystemClock::new());
    let mut options = JournalOptions::new(dir, "bench", NodeId::new("n1").unwrap(), clock);
    options.fsync = FsyncPolicy::Batch;
    let (journal, _recovery) = FileJournal::open(options, |payload| {
        let (key, stored) = decode(payload);
        visit(key, stored);
    })
    .unwrap();
    journal
}

/// Writes one record; returns once it is durable.
pub async fn write(journal: &Arc<dyn Journal>, record: &Record) {
    let mut payload = Vec::with_capacity(128);
    encode(record, &mut payload);
    let slot = journal.reserve().await.unwrap();
    let lsn = journal
        .append(slot, RecordBatch::of([payload]).unwrap())
        .unwrap();
    journal.wait_durable(lsn).await.unwrap();
}

/// Writes many records in batches; returns once all are durable.
pub async fn bulk(journal: &Arc<dyn Journal>, records: &[Record]) {
    let mut payload = Vec::with_capacity(128);
    let mut last = 0;
    for chunk in records.chunks(1000) {
        let mut batch = RecordBatch::new();
        for record in chunk {
            encode(record, &mut payload);
            batch.push(&payload).unwrap();
        }
        let slot = journal.reserve().await.unwrap();
        last = journal.append(slot, batch).unwrap();
    }
    journal.wait_durable(last).await.unwrap();
}
