//! The invariants every seed must keep, checked on the history, the crash records and
//! the final state once the cluster has converged.
//!
//! Owns: [`check`], [`Violation`], [`Findings`].
//! Knows nothing of: turmoil, how the history was made.
//!
//! What an acknowledgement promises, per level (docs/API.md §3.1), and so what is
//! checked:
//! * `one`: applied on the node that answered, and synced there if it is durable.
//!   Nothing more: if a memory-only node crashes before a push or anti-entropy round
//!   carries it on, the write is gone (as DESIGN §5 accepts); a durable node has it
//!   on its disk (checked at every crash) and recovers it.
//! * `live`: applied there and on the peers the failure detector held alive, unless
//!   `live_timeout_ms` ran out first: no replica count is promised, so it can be lost
//!   the same way.
//! * `quorum` / `all`: held by a majority / every node when the client has the
//!   acknowledgement, which is checked directly on the nodes' states; lost only if
//!   every one of those nodes crashes before passing it on.
//! * every level: once a write is held by a node that keeps running, it survives: the
//!   key's final version is at least the write's.
//!
//! So a write is *excused* when, at some crash after it was sent, no running node and
//! no disk of a durable node that was down held it (or anything newer). Every other acknowledged write must survive. Since the crash
//! may also have come before the write was applied anywhere, excusing is conservative:
//! it can hide a loss, never invent one. The excused writes are counted per level.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use meshkv::clock::Version;
use meshkv::store::Entry;

use super::history::{Level, Op, Outcome, Request};
use super::observe::{CrashRecord, HlcRegression};

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What happened, in one sentence.
    pub detail: String,
    /// The ops involved (ids in the history).
    pub ops: Vec<usize>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

/// How much each check had to look at: a check that never applies proves nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    /// Acknowledged writes whose survival was checked.
    pub acknowledged: usize,
    /// Acknowledged writes excused by a crash, by level (`one`, `live`, `quorum`,
    /// `all`): a `quorum` or `all` write is excused only when every node that held it
    /// crashed, which memory-only nodes allow.
    pub excused: [usize; 4],
    /// (`quorum` write, later `quorum` read) pairs checked.
    pub quorum_pairs: usize,
    /// `quorum`/`all` acknowledgements whose replicas were counted.
    pub backed: usize,
    /// (earlier, later) write pairs of one node, or of one key, ordered in real time.
    pub ordered_pairs: usize,
    /// Of those of one key: pairs whose later write completed while the clocks kept
    /// the guarantee's assumptions (real-time order enforced)…
    pub realtime_enforced: usize,
    /// …and pairs after the clocks left them (reported).
    pub realtime_reported: usize,
    /// Reads of a node's HLC, each compared with the previous one.
    pub hlc_samples: usize,
    /// Writes a durable node had acknowledged when it crashed, looked for on its disk.
    pub durable_acks: usize,
    /// Acknowledged writes of keys whose final tombstone was collected everywhere and
    /// whose version no node remembers (each restarted since), so that only a delete's
    /// presence is checked.
    pub collected: usize,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, other: Self) {
        self.acknowledged += other.acknowledged;
        for (mine, theirs) in self.excused.iter_mut().zip(other.excused) {
            *mine += theirs;
        }
        self.quorum_pairs += other.quorum_pairs;
        self.backed += other.backed;
        self.ordered_pairs += other.ordered_pairs;
        self.realtime_enforced += other.realtime_enforced;
        self.realtime_reported += other.realtime_reported;
        self.hlc_samples += other.hlc_samples;
        self.collected += other.collected;
        self.durable_acks += other.durable_acks;
    }
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// What the checks looked at.
    pub coverage: Coverage,
    /// Invariants that must hold today.
    pub violations: Vec<Violation>,
    /// Real-time order of writes where the clocks had left the guarantee's assumptions
    /// (a step, a drift beyond 15 ppm) before the later write completed: reported
    /// apart, enforced only with `MESHKV_SIM_REALTIME=enforce`. Includes its special
    /// case of a memory-only node whose versions went back across a restart because
    /// its clock went back while it was down. Inside the assumptions, real-time order
    /// is an invariant like the others, in `violations`.
    pub realtime: Vec<Violation>,
}

/// Everything the checks look at.
pub struct Evidence<'a> {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// When the clocks first left the assumptions of the real-time guarantee
    /// ([`Plan::clock_break`](super::plan::Plan::clock_break)); `None`: never.
    pub clock_break: Option<Duration>,
    /// Which nodes keep their journal on a (simulated) disk.
    pub durable: &'a [bool],
    /// The ops.
    pub ops: &'a [Op],
    /// What survived each crash.
    pub crashes: &'a [CrashRecord],
    /// Each node's final register per key (after convergence); `None` for a node that
    /// does not run.
    pub finals: &'a [Option<BTreeMap<String, Option<Entry>>>],
    /// Per key, the version of a collected tombstone some node remembers (the key is
    /// then absent on every node: deleted at that version).
    pub collected: &'a BTreeMap<String, Version>,
    /// How long convergence took after the heal, if it happened.
    pub converged_after: Option<Duration>,
    /// The bound on it.
    pub convergence_bound: Duration,
    /// Panics seen on the simulation's thread.
    pub panics: &'a [String],
    /// Reads of the nodes' HLCs taken during the run (after every step).
    pub hlc_samples: usize,
    /// Reads lower than the previous one of the same node and life.
    pub hlc_regressions: &'a [HlcRegression],
    /// Errors of the simulation itself (a host's software failed, time ran out).
    pub run_errors: &'a [String],
}

/// True if `op` completed before the clocks left the real-time guarantee's
/// assumptions.
fn within_contract(evidence: &Evidence<'_>, op: &Op) -> bool {
    evidence
        .clock_break
        .is_none_or(|broken| op.completed < broken)
}

/// True if a crash after `from` left no running node with `version` of `key` or newer.
fn excused(
    crashes: &[CrashRecord],
    key: &str,
    version: &Version,
    from: Duration,
    to: Duration,
) -> bool {
    crashes.iter().any(|crash| {
        crash.at >= from
            && crash.at <= to
            && crash
                .newest_left
                .get(key)
                .is_some_and(|left| left.as_ref() < Some(version))
    })
}

fn written(op: &Op) -> Option<&Version> {
    match &op.outcome {
        Outcome::Written { version, .. } => Some(version),
        _ => None,
    }
}

/// Checks every invariant; see the module header and `tests/simulation.rs`.
pub fn check(evidence: &Evidence<'_>) -> Findings {
    let mut findings = Findings::default();
    let ops = evidence.ops;
    let never = Duration::MAX;

    let mut panics: BTreeMap<&str, usize> = BTreeMap::new();
    for panic in evidence.panics {
        *panics.entry(panic.as_str()).or_default() += 1;
    }
    for (panic, count) in panics {
        findings.violations.push(Violation {
            invariant: "no panic",
            detail: format!("{count} × {panic}"),
            ops: vec![],
        });
    }
    findings.coverage.hlc_samples = evidence.hlc_samples;
    for regression in evidence.hlc_regressions {
        findings.violations.push(Violation {
            invariant: "a node's HLC never goes back",
            detail: format!(
                "n{}'s HLC read {:?} at {:?}, after {:?}",
                regression.node + 1,
                regression.after,
                regression.at,
                regression.before
            ),
            ops: vec![],
        });
    }
    for error in evidence.run_errors {
        findings.violations.push(Violation {
            invariant: "run",
            detail: error.clone(),
            ops: vec![],
        });
    }

    // Convergence: every node, the same state, within the bound.
    let Some(after) = evidence.converged_after else {
        findings.violations.push(Violation {
            invariant: "convergence",
            detail: format!(
                "the nodes did not agree within {:?} of the heal",
                evidence.convergence_bound
            ),
            ops: vec![],
        });
        return findings;
    };
    let _ = after;
    let Some(Some(reference)) = evidence.finals.first() else {
        findings.violations.push(Violation {
            invariant: "convergence",
            detail: "n1 does not run at the end".into(),
            ops: vec![],
        });
        return findings;
    };
    // Tombstone collection runs on each node at its own pace: a node may still hold a
    // tombstone that another has collected since the digests agreed. The two are the
    // same state, so a tombstone no newer than a collected one counts as absent.
    let settled = |state: &BTreeMap<String, Option<Entry>>| -> BTreeMap<String, Option<Entry>> {
        state
            .iter()
            .map(|(key, entry)| {
                let collected = entry.as_ref().is_some_and(|entry| {
                    entry.value.is_none()
                        && evidence
                            .collected
                            .get(key)
                            .is_some_and(|version| entry.version <= *version)
                });
                (key.clone(), if collected { None } else { entry.clone() })
            })
            .collect()
    };
    let reference_settled = settled(reference);
    for (node, state) in evidence.finals.iter().enumerate() {
        let state = state.as_ref().map(settled);
        let reference = &reference_settled;
        match &state {
            None => findings.violations.push(Violation {
                invariant: "convergence",
                detail: format!("n{} does not run at the end", node + 1),
                ops: vec![],
            }),
            Some(state) if state != reference => {
                let differing: Vec<String> = state
                    .iter()
                    .filter(|(key, entry)| reference.get(*key) != Some(*entry))
                    .map(|(key, entry)| {
                        let show = |entry: Option<&Option<Entry>>| match entry.cloned().flatten() {
                            Some(entry) => format!("{}", entry.version),
                            None => "absent".to_owned(),
                        };
                        format!(
                            "{key}: n1 {} / n{} {}",
                            show(reference.get(key)),
                            node + 1,
                            show(Some(entry))
                        )
                    })
                    .collect();
                findings.violations.push(Violation {
                    invariant: "convergence",
                    detail: format!(
                        "n{} holds other registers than n1 although their digests agreed: {}",
                        node + 1,
                        differing.join(", ")
                    ),
                    ops: vec![],
                })
            }
            Some(_) => {}
        }
    }

    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }

    for (&key, key_ops) in &by_key {
        let last = reference.get(key).cloned().flatten();
        // An absent key whose tombstone was collected ended deleted at that version.
        let collected = match &last {
            None => evidence.collected.get(key),
            Some(_) => None,
        };
        let last_version = last.as_ref().map(|entry| &entry.version).or(collected);
        let last_value = match &last {
            Some(entry) => Some(
                entry
                    .value
                    .as_ref()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            ),
            None => collected.map(|_| None),
        };

        // No acknowledged write lost; a deleted key does not come back.
        for op in key_ops.iter().filter(|op| op.is_write()) {
            let Some(version) = written(op) else { continue };
            findings.coverage.acknowledged += 1;
            if last_version < Some(version) {
                // Collected everywhere, and no node remembers the version (every node
                // restarted since): the key's last state was a tombstone whose version
                // is gone. Fine for a delete, and for a write that some delete may have
                // overwritten (an acknowledged one with a larger version, or one whose
                // answer never came).
                let forgotten = last.is_none()
                    && collected.is_none()
                    && (op.request == Request::Delete
                        || key_ops.iter().any(|delete| {
                            delete.request == Request::Delete
                                && written(delete).is_none_or(|deleted| deleted > version)
                        }));
                if forgotten {
                    findings.coverage.collected += 1;
                    continue;
                }
                if excused(evidence.crashes, key, version, op.invoked, never) {
                    findings.coverage.excused[op.level as usize] += 1;
                    continue;
                }
                let (invariant, what) = match (&op.request, &last_value) {
                    (Request::Delete, Some(Some(_))) => ("deleted key comes back", "the delete"),
                    _ => ("acknowledged write lost", "the write"),
                };
                findings.violations.push(Violation {
                    invariant,
                    detail: format!(
                        "{key} ended at {} although {what} #{} was acknowledged at {version}",
                        last_version.map_or("nothing".into(), ToString::to_string),
                        op.id
                    ),
                    ops: vec![op.id],
                });
            } else if last_version == Some(version)
                && last_value.as_ref().map(|value| value.as_deref()) != Some(op.written_value())
            {
                findings.violations.push(Violation {
                    invariant: "value matches its version",
                    detail: format!(
                        "{key} ended at {version} with {last_value:?}, but #{} wrote {:?} under it",
                        op.id,
                        op.written_value()
                    ),
                    ops: vec![op.id],
                });
            }
        }

        // The final register comes from some write.
        if let (Some(version), Some(value)) = (last_version, &last_value) {
            let from_op = key_ops
                .iter()
                .filter(|op| op.is_write())
                .any(|op| match written(op) {
                    Some(acked) => acked == version,
                    None => op.written_value() == value.as_deref(),
                });
            if !from_op {
                findings.violations.push(Violation {
                    invariant: "no value from nowhere",
                    detail: format!("{key} ended at {version} = {value:?}, which no client wrote"),
                    ops: vec![],
                });
            }
        }

        // Reads return written values, under their versions.
        for read in key_ops.iter().filter(|op| op.request == Request::Get) {
            let Outcome::Found { value, version } = &read.outcome else {
                continue;
            };
            let matches = key_ops.iter().any(|op| {
                op.written_value() == Some(value.as_str())
                    && written(op).is_none_or(|acked| acked == version)
            });
            if !matches {
                findings.violations.push(Violation {
                    invariant: "no value from nowhere",
                    detail: format!(
                        "read #{} returned {value} at {version}, which no write of {key} matches",
                        read.id
                    ),
                    ops: vec![read.id],
                });
            }
        }

        // A quorum (or all) read sees every quorum (or all) write acknowledged before it
        // was sent, or something newer.
        for read in key_ops
            .iter()
            .filter(|op| op.request == Request::Get && op.level >= Level::Quorum)
        {
            let seen = match &read.outcome {
                Outcome::Found { version, .. } => Some(Some(version)),
                Outcome::NotFound => Some(None),
                _ => None,
            };
            let Some(seen) = seen else { continue };
            for write in key_ops
                .iter()
                .filter(|op| op.level >= Level::Quorum && op.completed < read.invoked)
            {
                let Some(version) = written(write) else {
                    continue;
                };
                if excused(
                    evidence.crashes,
                    key,
                    version,
                    write.invoked,
                    read.completed,
                ) {
                    continue;
                }
                findings.coverage.quorum_pairs += 1;
                let stale = match seen {
                    Some(seen) => seen < version,
                    // 404: fine after a delete, or if a delete newer than the write may
                    // be what the read saw.
                    None => {
                        write.request != Request::Delete
                            && !key_ops.iter().any(|delete| {
                                delete.request == Request::Delete
                                    && delete.invoked < read.completed
                                    && written(delete).is_none_or(|deleted| deleted > version)
                            })
                    }
                };
                if stale {
                    findings.violations.push(Violation {
                        invariant: "quorum read sees acknowledged quorum writes",
                        detail: format!(
                            "read #{} of {key} returned {} after #{} was acknowledged at {version}",
                            read.id,
                            seen.map_or("404".into(), ToString::to_string),
                            write.id
                        ),
                        ops: vec![write.id, read.id],
                    });
                }
            }
        }

        // Real-time order: a write sent after another was acknowledged wins over it.
        let mut acked: Vec<&&Op> = key_ops.iter().filter(|op| written(op).is_some()).collect();
        acked.sort_by_key(|op| op.completed);
        for later in &acked {
            let before = acked
                .iter()
                .take_while(|earlier| earlier.completed < later.invoked)
                .max_by_key(|earlier| written(earlier));
            if let Some(earlier) = before {
                findings.coverage.ordered_pairs += 1;
                let promised = within_contract(evidence, later);
                if promised {
                    findings.coverage.realtime_enforced += 1;
                } else {
                    findings.coverage.realtime_reported += 1;
                }
                if written(earlier) > written(later) {
                    let list = if promised {
                        &mut findings.violations
                    } else {
                        &mut findings.realtime
                    };
                    list.push(Violation {
                        invariant: "real-time order",
                        detail: format!(
                            "#{} on {key} was sent after #{} was acknowledged, but its version {} is lower than {}",
                            later.id,
                            earlier.id,
                            written(later).expect("acknowledged"),
                            written(earlier).expect("acknowledged"),
                        ),
                        ops: vec![earlier.id, later.id],
                    });
                }
            }
        }
    }

    // A durable node's acknowledged writes are on its disk when it dies: every level
    // waits for the local fsync before answering.
    for crash in evidence.crashes {
        let Some(disk) = &crash.disk else { continue };
        for op in ops
            .iter()
            .filter(|op| op.node == crash.node && op.completed <= crash.at)
        {
            let Some(version) = written(op) else { continue };
            findings.coverage.durable_acks += 1;
            if !disk
                .get(&op.key)
                .is_some_and(|versions| versions.contains(version))
            {
                findings.violations.push(Violation {
                    invariant: "a durable node's acknowledged writes survive its crash",
                    detail: format!(
                        "n{} crashed at {:?} without #{} ({} at {version}) on its disk",
                        crash.node + 1,
                        crash.at,
                        op.id,
                        op.key
                    ),
                    ops: vec![op.id],
                });
            }
        }
    }

    // quorum and all acknowledgements stand for that many replicas.
    for op in ops {
        let Some(holders) = op.holders_at_ack else {
            continue;
        };
        findings.coverage.backed += 1;
        let needed = op.level.replicas(evidence.nodes);
        let crashed = evidence
            .crashes
            .iter()
            .filter(|crash| crash.at >= op.invoked && crash.at <= op.completed)
            .count();
        if holders + crashed < needed {
            findings.violations.push(Violation {
                invariant: "acknowledgement backed by its replicas",
                detail: format!(
                    "#{} was acknowledged at {} but only {holders} nodes held it ({crashed} crashed meanwhile)",
                    op.id,
                    op.level.as_str()
                ),
                ops: vec![op.id],
            });
        }
    }

    // Each node's versions increase in real-time order, across its restarts too.
    let mut by_node: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| written(op).is_some()) {
        by_node.entry(op.node).or_default().push(op);
    }
    for node_ops in by_node.values_mut() {
        node_ops.sort_by_key(|op| op.completed);
        for later in node_ops.iter() {
            let before = node_ops
                .iter()
                .take_while(|earlier| earlier.completed < later.invoked)
                .max_by_key(|earlier| written(earlier));
            if let Some(earlier) = before {
                findings.coverage.ordered_pairs += 1;
                if written(earlier) >= written(later) {
                    let restarted = evidence.crashes.iter().any(|crash| {
                        crash.node == later.node
                            && crash.at > earlier.completed
                            && crash.at < later.invoked
                    });
                    // A durable node's lease keeps its versions increasing across
                    // restarts whatever its clock does; a memory-only node has only
                    // its clock, which the guarantee's assumptions keep from going
                    // back.
                    let excusable = restarted
                        && !evidence.durable[later.node]
                        && !within_contract(evidence, later);
                    let list = if excusable {
                        &mut findings.realtime
                    } else {
                        &mut findings.violations
                    };
                    list.push(Violation {
                        invariant: "a node's versions increase",
                        detail: format!(
                            "n{} stamped #{} with {}, not above #{} ({}) acknowledged before it was sent",
                            later.node + 1,
                            later.id,
                            written(later).expect("acknowledged"),
                            earlier.id,
                            written(earlier).expect("acknowledged"),
                        ),
                        ops: vec![earlier.id, later.id],
                    });
                }
            }
        }
    }
    findings
}
