//! The consistency checker of the write-chain suites (API.md §6).
//!
//! Owns: [`KeyHistory`] (the writes one client issued to one key, in order, with what each
//! PUT answered), [`check`] and its findings ([`CheckOutcome`]).
//! Knows nothing of: HTTP, nodes or timing; it judges recorded histories only, so it is
//! unit-tested on hand-made ones.
//!
//! The rule: for each key, the `(previous, new)` pairs returned by the PUTs must chain
//! into one total order containing every value written. Starting from `None`, each
//! value's `previous` must be the value written just before it. A write whose request
//! failed may or may not have been applied: it is accepted in the chain but not required.

use serde::Serialize;

/// What one PUT answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The node acknowledged the write and reported the value it held before.
    Acked {
        /// The `previous` of the reply.
        previous: Option<String>,
    },
    /// The request failed: the write may or may not have been applied.
    Failed,
}

/// One write of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    /// The value written (unique per write).
    pub value: String,
    /// What the PUT answered.
    pub outcome: WriteOutcome,
}

/// The value the cluster holds for a key once the run is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalValue {
    /// Not read (or the nodes did not agree).
    Unknown,
    /// The agreed value (`None`: absent).
    Known(Option<String>),
}

/// Every write one client issued to one key, in the order it issued them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHistory {
    /// The key.
    pub key: String,
    /// The writes, in issue order (one client, one request at a time).
    pub writes: Vec<WriteRecord>,
    /// The value held at the end.
    pub final_value: FinalValue,
}

impl KeyHistory {
    /// An empty history of `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            writes: Vec::new(),
            final_value: FinalValue::Unknown,
        }
    }

    /// Records an acknowledged write.
    pub fn acked(&mut self, value: impl Into<String>, previous: Option<&str>) {
        self.writes.push(WriteRecord {
            value: value.into(),
            outcome: WriteOutcome::Acked {
                previous: previous.map(str::to_owned),
            },
        });
    }

    /// Records a write whose request failed.
    pub fn failed(&mut self, value: impl Into<String>) {
        self.writes.push(WriteRecord {
            value: value.into(),
            outcome: WriteOutcome::Failed,
        });
    }

    /// The values the key may hold after the last write: the last acknowledged value
    /// and every failed write issued after it (`None` when nothing was acknowledged).
    pub fn acceptable_last(&self) -> Vec<Option<String>> {
        acceptable_before(&self.writes, self.writes.len())
    }
}

/// A write whose `previous` is not the value written just before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Position of the write among the key's writes (0-based).
    pub index: usize,
    /// The value written.
    pub value: String,
    /// What `previous` should have been (any of these; `null`: absent).
    pub expected: Vec<Option<String>>,
    /// What the node answered.
    pub got: Option<String>,
}

/// Two or more writes claiming the same `previous` (a fork of the chain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// The key.
    pub key: String,
    /// The shared `previous`.
    pub previous: Option<String>,
    /// The writes that claim it.
    pub values: Vec<String>,
}

/// An acknowledged value that no later write saw and that is not the final value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// The key.
    pub key: String,
    /// Position of the write among the key's writes (0-based).
    pub index: usize,
    /// The lost value.
    pub value: String,
}

/// A key whose final value is not its last acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WrongFinal {
    /// The key.
    pub key: String,
    /// What it should hold (any of these).
    pub expected: Vec<Option<String>>,
    /// What it holds.
    pub got: Option<String>,
}

/// Everything the checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// Keys checked.
    pub keys: usize,
    /// Acknowledged writes.
    pub acked: usize,
    /// Writes whose request failed.
    pub failed: usize,
    /// Keys whose acknowledged writes do not form one chain from `None`.
    pub broken_chains: Vec<String>,
    /// Writes with an unexpected `previous`.
    pub violations: Vec<Violation>,
    /// Values written but never seen again.
    pub lost: Vec<Lost>,
    /// Forks: several writes claiming the same `previous`.
    pub duplicates: Vec<Duplicate>,
    /// Keys whose final value is not the last acknowledged write.
    pub wrong_final: Vec<WrongFinal>,
}

impl CheckOutcome {
    /// True when no rule is broken.
    pub fn holds(&self) -> bool {
        self.broken_chains.is_empty()
            && self.violations.is_empty()
            && self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.wrong_final.is_empty()
    }
}

/// The values a write issued at `index` may legitimately see as `previous`: the last
/// acknowledged value before it (or `None`), and every failed write issued after that one.
fn acceptable_before(writes: &[WriteRecord], index: usize) -> Vec<Option<String>> {
    let mut acceptable = Vec::new();
    let mut start = 0;
    for (position, write) in writes[..index].iter().enumerate().rev() {
        if matches!(write.outcome, WriteOutcome::Acked { .. }) {
            acceptable.push(Some(write.value.clone()));
            start = position + 1;
            break;
        }
    }
    if acceptable.is_empty() {
        acceptable.push(None);
    }
    for write in &writes[start..index] {
        if write.outcome == WriteOutcome::Failed {
            acceptable.push(Some(write.value.clone()));
        }
    }
    acceptable
}

/// Checks every history.
pub fn check(histories: &[KeyHistory]) -> CheckOutcome {
    let mut outcome = CheckOutcome {
        keys: histories.len(),
        ..CheckOutcome::default()
    };
    for history in histories {
        check_key(history, &mut outcome);
    }
    outcome
}

fn check_key(history: &KeyHistory, outcome: &mut CheckOutcome) {
    let key = &history.key;
    let writes = &history.writes;
    let acked: Vec<(usize, &str, Option<&str>)> = writes
        .iter()
        .enumerate()
        .filter_map(|(index, write)| match &write.outcome {
            WriteOutcome::Acked { previous } => {
                Some((index, write.value.as_str(), previous.as_deref()))
            }
            WriteOutcome::Failed => None,
        })
        .collect();
    outcome.acked += acked.len();
    outcome.failed += writes.len() - acked.len();

    // 1. Each acknowledged write's previous is the value written just before it.
    for &(index, value, previous) in &acked {
        let expected = acceptable_before(writes, index);
        if !expected.iter().any(|e| e.as_deref() == previous) {
            outcome.violations.push(Violation {
                key: key.clone(),
                index,
                value: value.to_owned(),
                expected,
                got: previous.map(str::to_owned),
            });
        }
    }

    // 2. Forks: several acknowledged writes claiming the same previous.
    let mut claims: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
    for &(_, value, previous) in &acked {
        match claims.iter_mut().find(|(p, _)| *p == previous) {
            Some((_, values)) => values.push(value),
            None => claims.push((previous, vec![value])),
        }
    }
    for (previous, values) in &claims {
        if values.len() > 1 {
            outcome.duplicates.push(Duplicate {
                key: key.clone(),
                previous: previous.map(str::to_owned),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            });
        }
    }

    let final_value = match &history.final_value {
        FinalValue::Known(value) => Some(value.as_deref()),
        FinalValue::Unknown => None,
    };

    // 3. One chain from None through every acknowledged value. A failed write may be a
    //    link when a later write names it as its previous, or when it is the final value.
    let mut in_chain = vec![false; writes.len()];
    // Links whose successor is a failed write that a later write names.
    let mut followed = vec![false; writes.len()];
    let mut current: Option<&str> = None;
    let mut current_index: Option<usize> = None;
    for _ in 0..=writes.len() {
        let successors: Vec<usize> = acked
            .iter()
            .filter(|(index, _, previous)| *previous == current && !in_chain[*index])
            .map(|(index, _, _)| *index)
            .collect();
        let next = match successors.as_slice() {
            [only] => Some(*only),
            [] => {
                // A failed write issued after the current link that a later write names.
                writes.iter().enumerate().position(|(index, write)| {
                    write.outcome == WriteOutcome::Failed
                        && !in_chain[index]
                        && current_index.is_none_or(|c| index > c)
                        && (final_value == Some(Some(write.value.as_str()))
                            || acked
                                .iter()
                                .any(|(_, _, previous)| *previous == Some(write.value.as_str())))
                })
            }
            _ => None, // a fork, reported above
        };
        let Some(next) = next else { break };
        if let Some(c) = current_index {
            followed[c] = true;
        }
        in_chain[next] = true;
        current = Some(writes[next].value.as_str());
        current_index = Some(next);
    }
    if acked.iter().any(|(index, _, _)| !in_chain[*index]) {
        outcome.broken_chains.push(key.clone());
    }

    // 4. Lost values: acknowledged, never seen as a previous (directly, or through a
    //    failed write that was applied), not the final value.
    let last_acked = acked.last().map(|(_, value, _)| *value);
    for &(index, value, _) in &acked {
        let seen = followed[index]
            || acked
                .iter()
                .any(|(_, _, previous)| *previous == Some(value));
        let is_final = match final_value {
            Some(final_value) => final_value == Some(value),
            // Without a final read, the last acknowledged write is given the benefit
            // of the doubt.
            None => last_acked == Some(value),
        };
        if !seen && !is_final {
            outcome.lost.push(Lost {
                key: key.clone(),
                index,
                value: value.to_owned(),
            });
        }
    }

    // 5. The final value is the last acknowledged write (or a failed write after it).
    if let FinalValue::Known(got) = &history.final_value {
        let expected = history.acceptable_last();
        if !expected.contains(got) {
            outcome.wrong_final.push(WrongFinal {
                key: key.clone(),
                expected,
                got: got.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history from `(value, previous)` pairs; previous `"!"` marks a failed request.
    fn history(pairs: &[(&str, Option<&str>)], final_value: Option<Option<&str>>) -> KeyHistory {
        let mut history = KeyHistory::new("k");
        for (value, previous) in pairs {
            if *previous == Some("!") {
                history.failed(*value);
            } else {
                history.acked(*value, *previous);
            }
        }
        history.final_value = match final_value {
            Some(value) => FinalValue::Known(value.map(str::to_owned)),
            None => FinalValue::Unknown,
        };
        history
    }

    #[test]
    fn a_clean_chain_holds() {
        let h = history(
            &[("a", None), ("b", Some("a")), ("c", Some("b"))],
            Some(Some("c")),
        );
        let outcome = check(&[h]);
        assert!(outcome.holds(), "{outcome:?}");
        assert_eq!((outcome.keys, outcome.acked, outcome.failed), (1, 3, 0));
    }

    #[test]
    fn an_empty_history_and_an_unread_final_value_hold() {
        assert!(check(&[history(&[], Some(None))]).holds());
        assert!(check(&[history(&[("a", None), ("b", Some("a"))], None)]).holds());
    }

    #[test]
    fn failed_writes_may_or_may_not_be_links() {
        // "b" failed but was applied: "c" saw it.
        let applied = history(
            &[("a", None), ("b", Some("!")), ("c", Some("b"))],
            Some(Some("c")),
        );
        assert!(check(&[applied]).holds());
        // "b" failed and was not applied: "c" saw "a".
        let dropped = history(
            &[("a", None), ("b", Some("!")), ("c", Some("a"))],
            Some(Some("c")),
        );
        assert!(check(&[dropped]).holds());
        // The last write failed but landed.
        let last = history(&[("a", None), ("b", Some("!"))], Some(Some("b")));
        assert!(check(&[last]).holds());
    }

    #[test]
    fn a_fork_is_a_violation_a_duplicate_and_a_lost_write() {
        let h = history(
            &[("a", None), ("b", Some("a")), ("c", Some("a"))],
            Some(Some("c")),
        );
        let outcome = check(&[h]);
        assert!(!outcome.holds());
        assert_eq!(
            outcome.violations,
            [Violation {
                key: "k".into(),
                index: 2,
                value: "c".into(),
                expected: vec![Some("b".into())],
                got: Some("a".into()),
            }]
        );
        assert_eq!(
            outcome.duplicates,
            [Duplicate {
                key: "k".into(),
                previous: Some("a".into()),
                values: vec!["b".into(), "c".into()],
            }]
        );
        assert_eq!(
            outcome.lost,
            [Lost {
                key: "k".into(),
                index: 1,
                value: "b".into()
            }]
        );
        assert_eq!(outcome.broken_chains, ["k"]);
    }

    #[test]
    fn a_lost_last_write_is_found_by_the_final_read() {
        let h = history(
            &[("a", None), ("b", Some("a")), ("c", Some("b"))],
            Some(Some("b")),
        );
        let outcome = check(&[h]);
        assert!(!outcome.holds());
        assert!(outcome.violations.is_empty());
        assert_eq!(
            outcome.lost,
            [Lost {
                key: "k".into(),
                index: 2,
                value: "c".into()
            }]
        );
        assert_eq!(
            outcome.wrong_final,
            [WrongFinal {
                key: "k".into(),
                expected: vec![Some("c".into())],
                got: Some("b".into()),
            }]
        );
    }

    #[test]
    fn a_skipped_value_breaks_the_chain() {
        // "c" saw "a": "b" is lost even though nobody else claims "a".
        let h = history(
            &[
                ("a", None),
                ("b", Some("a")),
                ("c", Some("a")),
                ("d", Some("c")),
            ],
            Some(Some("d")),
        );
        let outcome = check(&[h]);
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.lost.len(), 1);
        assert_eq!(outcome.broken_chains, ["k"]);
    }

    #[test]
    fn a_wrong_first_previous_is_a_violation() {
        let h = history(&[("a", Some("stale")), ("b", Some("a"))], Some(Some("b")));
        let outcome = check(&[h]);
        assert!(!outcome.holds());
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.violations[0].expected, [None]);
        assert_eq!(outcome.violations[0].got.as_deref(), Some("stale"));
        assert_eq!(outcome.broken_chains, ["k"]);
    }

    #[test]
    fn a_stale_previous_from_a_lagging_replica_is_a_violation() {
        // "c" was written to a node that had not yet seen "b".
        let h = history(
            &[("a", None), ("b", Some("a")), ("c", Some("a"))],
            Some(Some("c")),
        );
        assert_eq!(check(&[h]).violations.len(), 1);
        // Two keys: only the bad one is reported.
        let good = KeyHistory {
            key: "good".into(),
            ..history(&[("x", None), ("y", Some("x"))], Some(Some("y")))
        };
        let bad = history(&[("a", None), ("b", None)], Some(Some("b")));
        let outcome = check(&[good, bad]);
        assert_eq!(outcome.keys, 2);
        assert!(outcome.violations.iter().all(|v| v.key == "k"));
        assert_eq!(outcome.duplicates.len(), 1);
        assert_eq!(outcome.duplicates[0].previous, None);
    }
}
