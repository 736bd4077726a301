//! The simulator's view of every node's state, from outside the network.
//!
//! Owns: [`Observatory`]: the replica handle of every running node (handed over by the
//! node's `ReplicaObserver` as it starts, dropped when it crashes), and [`CrashRecord`],
//! what the surviving nodes held at each crash, and [`HlcRegression`], a node's HLC seen
//! going back.
//! Knows nothing of: the network, the workload.
//!
//! Everything here runs on the simulation's one thread between two polls of the
//! simulated hosts, so what it sees is exact and deterministic.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshkv::clock::{Timestamp, Version};
use meshkv::node::ReplicaObserver;
use meshkv::replication::Replica;
use meshkv::store::Entry;

/// What the running nodes held just after node `node` crashed.
#[derive(Debug, Clone)]
pub struct CrashRecord {
    /// Simulated time of the crash.
    pub at: Duration,
    /// The node that crashed.
    pub node: usize,
    /// Per key, the newest version any running node still held (`None`: none held it).
    pub newest_left: BTreeMap<String, Option<Version>>,
}

/// A node's HLC read lower than an earlier read in the same life.
#[derive(Debug, Clone)]
pub struct HlcRegression {
    /// Simulated time of the lower read.
    pub at: Duration,
    /// The node.
    pub node: usize,
    /// The earlier read.
    pub before: Timestamp,
    /// The lower one.
    pub after: Timestamp,
}

#[derive(Default)]
struct Inner {
    replicas: BTreeMap<usize, Replica>,
    crashes: Vec<CrashRecord>,
    /// Per running node, its HLC at the last sample of this life.
    hlc: BTreeMap<usize, Timestamp>,
    /// Samples taken.
    hlc_samples: usize,
    hlc_regressions: Vec<HlcRegression>,
}

/// See the module header. Clones share it.
#[derive(Clone, Default)]
pub struct Observatory {
    inner: Arc<Mutex<Inner>>,
}

impl Observatory {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while it was held is recorded by the run; the view stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The observer to put in node `node`'s environment.
    pub fn observer(&self, node: usize) -> ReplicaObserver {
        let observatory = self.clone();
        Arc::new(move |replica: &Replica| {
            let mut inner = observatory.inner();
            inner.replicas.insert(node, replica.clone());
            // A new life: its HLC starts again from nothing (memory-only nodes).
            inner.hlc.remove(&node);
        })
    }

    /// Node `node` crashed at `at`: forget its replica, and record what the others
    /// still hold of `keys`.
    pub fn crashed(&self, node: usize, at: Duration, keys: &[String]) {
        let mut inner = self.inner();
        inner.replicas.remove(&node);
        inner.hlc.remove(&node);
        let newest_left = keys
            .iter()
            .map(|key| {
                let newest = inner
                    .replicas
                    .values()
                    .filter_map(|replica| entry_of(replica, key).flatten())
                    .map(|entry| entry.version)
                    .max();
                (key.clone(), newest)
            })
            .collect();
        inner.crashes.push(CrashRecord {
            at,
            node,
            newest_left,
        });
    }

    /// How many running nodes hold `version` of `key`, or a newer one.
    pub fn holders(&self, key: &str, version: &Version) -> usize {
        self.inner()
            .replicas
            .values()
            .filter(|replica| {
                entry_of(replica, key)
                    .flatten()
                    .is_some_and(|entry| &entry.version >= version)
            })
            .count()
    }

    /// Node `node`'s register for `key`, if the node runs.
    pub fn entry(&self, node: usize, key: &str) -> Option<Option<Entry>> {
        entry_of(self.inner().replicas.get(&node)?, key)
    }

    /// The version at which node `node` collected `key`'s tombstone, if it remembers
    /// one and holds nothing newer.
    pub fn collected(&self, node: usize, key: &str) -> Option<Version> {
        let replica = self.inner().replicas.get(&node)?.clone();
        catch_unwind(AssertUnwindSafe(|| replica.collected_version(key)))
            .ok()
            .flatten()
    }

    /// Node `node`'s digest, if the node runs.
    pub fn digest(&self, node: usize) -> Option<u64> {
        self.inner()
            .replicas
            .get(&node)
            .and_then(|replica| catch_unwind(AssertUnwindSafe(|| replica.summary().digest)).ok())
    }

    /// Reads every running node's HLC at simulated time `at`, and records any that is
    /// lower than its previous read in the same life of the node.
    pub fn sample_hlc(&self, at: Duration) {
        let mut inner = self.inner();
        let Inner {
            replicas,
            hlc,
            hlc_samples,
            hlc_regressions,
            ..
        } = &mut *inner;
        for (&node, replica) in replicas.iter() {
            let Ok(now) = catch_unwind(AssertUnwindSafe(|| replica.hlc_last())) else {
                continue;
            };
            *hlc_samples += 1;
            if let Some(before) = hlc.insert(node, now) {
                if now < before {
                    hlc_regressions.push(HlcRegression {
                        at,
                        node,
                        before,
                        after: now,
                    });
                }
            }
        }
    }

    /// How many HLC reads were taken, and every regression they found.
    pub fn hlc_findings(&self) -> (usize, Vec<HlcRegression>) {
        let inner = self.inner();
        (inner.hlc_samples, inner.hlc_regressions.clone())
    }

    /// Every crash so far.
    pub fn crashes(&self) -> Vec<CrashRecord> {
        self.inner().crashes.clone()
    }
}

/// A replica's register for `key`; `None` if reading it panics (a node that panicked
/// holding its lock poisons it: the panic is recorded, and the node is unreadable).
fn entry_of(replica: &Replica, key: &str) -> Option<Option<Entry>> {
    catch_unwind(AssertUnwindSafe(|| replica.local_entry(key))).ok()
}
