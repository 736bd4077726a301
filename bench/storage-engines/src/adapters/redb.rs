//! redb as the node's store: one table key → version+value.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::group_commit::GroupEngine;
use crate::Record;

const REGISTERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("registers");

pub struct Redb(pub Database);

impl Redb {
    pub fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self(Database::create(dir.join("data.redb")).unwrap())
    }

    /// Rewrites the file without free pages.
    pub fn compact(&mut self) {
        while self.0.compact().unwrap() {}
    }
}

impl GroupEngine for Redb {
    fn write_group(&self, records: &[Record], durable: bool) {
        let mut transaction = self.0.begin_write().unwrap();
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        transaction.set_durability(durability).unwrap();
        {
            let mut table = transaction.open_table(REGISTERS).unwrap();
            for record in records {
                table.insert(&record.key[..], &record.stored[..]).unwrap();
            }
        }
        transaction.commit().unwrap();
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) {
        let transaction = self.0.begin_read().unwrap();
        let table = transaction.open_table(REGISTERS).unwrap();
        for entry in table.iter().unwrap() {
            let (key, value) = entry.unwrap();
            visit(key.value(), value.value());
        }
    }
}
