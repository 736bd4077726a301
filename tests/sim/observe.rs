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

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshkv::clock::{Timestamp, Version};
use meshkv::node::ReplicaObserver;
use meshkv::replication::Replica;
use meshkv::store::Entry;

use super::disk::SimDisk;

/// What the running nodes held just after node `node` crashed.
#[derive(Debug, Clone)]
pub struct CrashRecord {
    /// Simulated time of the crash.
    pub at: Duration,
    /// The node that crashed.
    pub node: usize,
    /// Per key, the newest version any running node still held, or the disk of a
    /// durable node that is down (`None`: none held it).
    pub newest_left: BTreeMap<String, Option<Version>>,
    /// For a durable node: per key, the versions its disk held as it died.
    pub disk: Option<BTreeMap<String, BTreeSet<Version>>>,
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
    /// The disks of the durable nodes.
    disks: BTreeMap<usize, Arc<SimDisk>>,
    /// Restarts of durable nodes that came up without something their disk held.
    recovery_losses: Vec<String>,
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
            // Called as the node starts, with what it recovered: all its disk holds.
            if let Some(disk) = inner.disks.get(&node) {
                let mut lost = Vec::new();
                for (key, versions) in disk.versions() {
                    let newest = versions.last();
                    let held = entry_of(replica, &key).flatten().map(|entry| entry.version);
                    if held.as_ref() < newest {
                        lost.push(format!("{key}: {newest:?} on disk, {held:?} recovered"));
                    }
                }
                if !lost.is_empty() {
                    inner.recovery_losses.push(format!(
                        "n{} restarted without {}",
                        node + 1,
                        lost.join(", ")
                    ));
                }
            }
            inner.replicas.insert(node, replica.clone());
            // A new life: its HLC starts again from nothing (memory-only nodes).
            inner.hlc.remove(&node);
        })
    }

    /// Node `node` keeps its journal on `disk`.
    pub fn add_disk(&self, node: usize, disk: Arc<SimDisk>) {
        self.inner().disks.insert(node, disk);
    }

    /// Restarts of durable nodes that did not recover all their disk held.
    pub fn recovery_losses(&self) -> Vec<String> {
        self.inner().recovery_losses.clone()
    }

    /// Node `node` crashed at `at`: forget its replica, and record what the others
    /// still hold of `keys` (the disks of durable nodes that are down included).
    pub fn crashed(&self, node: usize, at: Duration, keys: &[String]) {
        let mut inner = self.inner();
        inner.replicas.remove(&node);
        inner.hlc.remove(&node);
        let disks: Vec<BTreeMap<String, BTreeSet<Version>>> = inner
            .disks
            .iter()
            .filter(|(down, _)| !inner.replicas.contains_key(down))
            .map(|(_, disk)| disk.versions())
            .collect();
        let newest_left = keys
            .iter()
            .map(|key| {
                let in_memory = inner
                    .replicas
                    .values()
                    .filter_map(|replica| entry_of(replica, key).flatten())
                    .map(|entry| entry.version);
                let on_disk = disks
                    .iter()
                    .filter_map(|disk| disk.get(key).and_then(|versions| versions.last()))
                    .cloned();
                (key.clone(), in_memory.chain(on_disk).max())
            })
            .collect();
        let disk = inner.disks.get(&node).map(|disk| disk.versions());
        inner.crashes.push(CrashRecord {
            at,
            node,
            newest_left,
            disk,
        });
    }

    /// How many running nodes hold `version` of `key`, or a newer one. For a delete
    /// (`tombstone`), a node without the key counts too: it may have collected the
    /// tombstone already, which it does only once every node has held it; the check
    /// cannot tell that from a node that never got it, so it is lenient there.
    pub fn holders(&self, key: &str, version: &Version, tombstone: bool) -> usize {
        self.inner()
            .replicas
            .values()
            .filter(|replica| match entry_of(replica, key) {
                Some(Some(entry)) => &entry.version >= version,
                Some(None) => tombstone,
                None => false,
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
