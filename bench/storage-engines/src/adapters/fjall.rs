//! fjall as the node's store: one keyspace key → version+value.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::group_commit::GroupEngine;
use crate::Record;

pub struct Fjall {
    pub db: Database,
    pub registers: Keyspace,
}

impl Fjall {
    pub fn open(dir: &Path) -> Self {
        let db = Database::builder(dir).open().unwrap();
        let registers = db
            .keyspace("registers", KeyspaceCreateOptions::default)
            .unwrap();
        Self { db, registers }
    }

    /// Flushes the memtable and merges every table into one run.
    pub fn compact(&self) {
        self.registers.rotate_memtable_and_wait().unwrap();
        self.registers.major_compact().unwrap();
        self.db.persist(PersistMode::SyncAll).unwrap();
    }
}

impl GroupEngine for Fjall {
    fn write_group(&self, records: &[Record], durable: bool) {
        let mut batch = self.db.batch();
        if durable {
            batch = batch.durability(Some(PersistMode::SyncData));
        }
        for record in records {
            batch.insert(&self.registers, record.key.clone(), record.stored.clone());
        }
        batch.commit().unwrap();
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) {
        for entry in self.registers.iter() {
            let (key, value) = entry.into_inner().unwrap();
            visit(&key, &value);
        }
    }
}
