//! The `consistency` suite, and the sequential writer it shares with `failure` and
//! `stress-partition`.
//!
//! Owns: [`drive`] (one client writing `keys` keys in order for `rounds` rounds, each
//! write of a key going to the next node of the rotation, faults fired at given rounds,
//! every PUT's `previous` recorded), the final-value check on every node, and the
//! report sections of the checker's findings.
//! Knows nothing of: how violations are judged (see `checker.rs`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::checker::{self, CheckOutcome, FinalValue, KeyHistory};
use super::report::{self, say, Op, Progress, Recorder, Sample, SuiteReport, JSON_LIST_LIMIT};
use super::{ms_or_null, wait_for_convergence, Ctx, FinalState, Rng};

/// A fault fired before a round.
#[derive(Clone, Debug)]
pub enum Action {
    /// Kill the node at this index.
    Kill(usize),
    /// Partition the servers into these groups of node indexes.
    Partition(Vec<Vec<usize>>),
    /// Heal every partition.
    Heal,
}

/// What the sequential writer does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The suite's name, part of the keys.
    pub suite: &'static str,
    /// Indexes of the nodes the writes rotate over.
    pub targets: Vec<usize>,
    /// Rounds (each writes every key once).
    pub rounds: u64,
    /// Keys.
    pub keys: usize,
    /// Faults, each fired before the given round.
    pub faults: Vec<(u64, Action)>,
}

/// What the sequential writer saw.
pub struct Written {
    /// The keys, in order.
    pub keys: Vec<String>,
    /// Every write of every key.
    pub histories: Vec<KeyHistory>,
    /// When each write was sent (`sent_at[key][write]`, since the suite started).
    pub sent_at: Vec<Vec<Duration>>,
    /// Every request.
    pub recorder: Recorder,
    /// Errors of the fault commands.
    pub fault_errors: Vec<String>,
    /// When the first write was sent and when the last reply came, since the start.
    pub window: (Duration, Duration),
}

/// The rounds and keys of a write-chain suite: `--rounds` or random in 500-1000,
/// `--keys` or 40.
pub fn sizes(ctx: &Ctx) -> (u64, usize) {
    let mut rng = Rng::new(ctx.seed);
    let rounds = ctx.args.rounds.unwrap_or_else(|| rng.between(500, 1000));
    (rounds, ctx.args.keys.unwrap_or(40))
}

/// Runs the sequential writer.
pub async fn drive(ctx: &Ctx, plan: &Plan) -> Written {
    let keys: Vec<String> = (0..plan.keys).map(|i| ctx.key(plan.suite, i)).collect();
    let mut histories: Vec<KeyHistory> = keys.iter().map(KeyHistory::new).collect();
    let mut sent_at = vec![Vec::with_capacity(plan.rounds as usize); plan.keys];
    let mut recorder = Recorder::new(ctx.start);
    let mut fault_errors = Vec::new();
    let progress = Progress::start(plan.suite, plan.rounds * plan.keys as u64);
    let first = ctx.start.elapsed();
    for round in 0..plan.rounds {
        for (_, action) in plan.faults.iter().filter(|(at, _)| *at == round) {
            let (label, result) = match action {
                Action::Kill(node) => {
                    let id = &ctx.nodes[*node].id;
                    (format!("killing {id}"), ctx.faults.kill(id).await)
                }
                Action::Partition(groups) => {
                    let ids: Vec<Vec<String>> = groups.iter().map(|g| ctx.node_ids(g)).collect();
                    let text = super::faults::groups_text(&ids);
                    (
                        format!("partitioning {text}"),
                        ctx.faults.partition(&ids).await,
                    )
                }
                Action::Heal => ("healing".to_owned(), ctx.faults.heal().await),
            };
            say(&format!(
                "{}: round {round}/{}: {label}{}",
                plan.suite,
                plan.rounds,
                match &result {
                    Ok(()) => String::new(),
                    Err(error) => format!(": {error}"),
                }
            ));
            progress.phase(&format!("{label} at round {round}"));
            if let Err(error) = result {
                fault_errors.push(error);
            }
        }
        for (k, key) in keys.iter().enumerate() {
            let node = &ctx.nodes[plan.targets[(round as usize + k) % plan.targets.len()]];
            let value = format!("k{k}:r{round}:c0");
            let sent = Instant::now();
            sent_at[k].push(sent.saturating_duration_since(ctx.start));
            let result = node.client.put(key, &value, None).await;
            recorder.record(&node.id, Op::Put, sent, &result);
            match result {
                Ok(reply) => histories[k].acked(value, reply.previous_text().as_deref()),
                Err(_) => histories[k].failed(value),
            }
            progress.inc();
        }
    }
    progress.finish().await;
    Written {
        keys,
        histories,
        sent_at,
        recorder,
        fault_errors,
        window: (first, ctx.start.elapsed()),
    }
}

/// One node holding something else than a key's last acknowledged write.
#[derive(Debug)]
pub struct Mismatch {
    key: String,
    node: String,
    expected: Vec<Option<String>>,
    got: Result<Option<String>, String>,
}

/// Records the agreed final values in the histories and lists every node whose final
/// value of a key is not the key's last acknowledged write.
pub fn settle(
    ctx: &Ctx,
    nodes: &[usize],
    written: &mut Written,
    state: &FinalState,
) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    for (k, history) in written.histories.iter_mut().enumerate() {
        history.final_value = match state.agreed(k) {
            Some(value) => FinalValue::Known(value),
            None => FinalValue::Unknown,
        };
        let expected = history.acceptable_last();
        for (column, &node) in nodes.iter().enumerate() {
            let got = &state.values[k][column];
            if !matches!(got, Ok(value) if expected.contains(value)) {
                mismatches.push(Mismatch {
                    key: history.key.clone(),
                    node: ctx.nodes[node].id.clone(),
                    expected: expected.clone(),
                    got: got.clone(),
                });
            }
        }
    }
    mismatches
}

fn shown(value: &Option<String>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}

fn shown_all(values: &[Option<String>]) -> String {
    values.iter().map(shown).collect::<Vec<_>>().join(" or ")
}

/// Adds the final-value figures and, when `enforce`, the checks.
pub fn add_final(
    report: &mut SuiteReport,
    prefix: &str,
    label: &str,
    state: &FinalState,
    mismatches: &[Mismatch],
    enforce: bool,
) {
    report.figure(
        &format!("{prefix}converged_after_ms"),
        &format!("{label}: values agree after (ms)"),
        ms_or_null(state.converged_after),
    );
    report.figure(
        &format!("{prefix}digests_equal_after_ms"),
        &format!("{label}: digests equal after (ms)"),
        ms_or_null(state.digests_after),
    );
    report.figure(
        &format!("{prefix}final_value_mismatches"),
        &format!("{label}: nodes x keys not holding the last write"),
        mismatches.len(),
    );
    report.section(
        &format!("{label}: final values that are not the last acknowledged write"),
        mismatches
            .iter()
            .map(|m| {
                format!(
                    "{} on {}: expected {}, got {}",
                    m.key,
                    m.node,
                    shown_all(&m.expected),
                    match &m.got {
                        Ok(value) => shown(value),
                        Err(error) => format!("error: {error}"),
                    }
                )
            })
            .collect(),
    );
    report.detail(
        &format!("{prefix}final_value_mismatch_list"),
        Value::Array(
            mismatches
                .iter()
                .take(JSON_LIST_LIMIT)
                .map(|m| {
                    json!({
                        "key": m.key,
                        "node": m.node,
                        "expected": m.expected,
                        "got": match &m.got { Ok(v) => json!(v), Err(e) => json!({"error": e}) },
                    })
                })
                .collect(),
        ),
    );
    if enforce {
        report.check(
            &format!(
                "{label}: every node agrees within {} s",
                super::CONVERGENCE_TIMEOUT.as_secs()
            ),
            state.converged_after.is_some() && state.digests_after.is_some(),
            match (state.converged_after, state.digests_after) {
                (Some(values), Some(digests)) => format!(
                    "values after {:.0} ms, digests after {:.0} ms",
                    report::ms(values),
                    report::ms(digests)
                ),
                (Some(values), None) => format!(
                    "values agreed after {:.0} ms but the digests never did",
                    report::ms(values)
                ),
                _ => "the nodes still disagree".to_owned(),
            },
        );
        report.check(
            &format!("{label}: every node holds each key's last acknowledged write"),
            mismatches.is_empty(),
            format!("{} mismatches", mismatches.len()),
        );
    }
}

/// Adds the checker's figures, sections and, when `enforce`, checks.
pub fn add_chain(report: &mut SuiteReport, outcome: &CheckOutcome, enforce: bool) {
    report.figure("writes_acked", "writes acknowledged", outcome.acked);
    report.figure("writes_failed", "writes failed", outcome.failed);
    report.figure("violations", "violations", outcome.violations.len());
    report.figure("lost_values", "lost values", outcome.lost.len());
    report.figure("duplicates", "duplicates (forks)", outcome.duplicates.len());
    report.figure(
        "broken_chains",
        "keys without one complete chain",
        outcome.broken_chains.len(),
    );
    report.section(
        "violations (key #write value: expected previous, got)",
        outcome
            .violations
            .iter()
            .map(|v| {
                format!(
                    "{} #{} {:?}: expected {}, got {}",
                    v.key,
                    v.index,
                    v.value,
                    shown_all(&v.expected),
                    shown(&v.got)
                )
            })
            .collect(),
    );
    report.section(
        "lost values (written, never seen as a previous nor final)",
        outcome
            .lost
            .iter()
            .map(|l| format!("{} {:?}", l.key, l.value))
            .collect(),
    );
    report.section(
        "duplicates (writes claiming the same previous)",
        outcome
            .duplicates
            .iter()
            .map(|d| format!("{} after {}: {:?}", d.key, shown(&d.previous), d.values))
            .collect(),
    );
    let limited = |list: Value| match list {
        Value::Array(mut items) => {
            items.truncate(JSON_LIST_LIMIT);
            Value::Array(items)
        }
        other => other,
    };
    report.detail(
        "violation_list",
        limited(serde_json::to_value(&outcome.violations).unwrap_or_default()),
    );
    report.detail(
        "lost_list",
        limited(serde_json::to_value(&outcome.lost).unwrap_or_default()),
    );
    report.detail(
        "duplicate_list",
        limited(serde_json::to_value(&outcome.duplicates).unwrap_or_default()),
    );
    report.detail("broken_chain_keys", json!(outcome.broken_chains));
    if enforce {
        report.check(
            "every PUT's previous is the value written just before it",
            outcome.violations.is_empty(),
            format!("{} violations", outcome.violations.len()),
        );
        report.check(
            "each key's writes chain into one total order with every value",
            outcome.broken_chains.is_empty()
                && outcome.lost.is_empty()
                && outcome.duplicates.is_empty(),
            format!(
                "{} broken chains, {} lost values, {} duplicates",
                outcome.broken_chains.len(),
                outcome.lost.len(),
                outcome.duplicates.len()
            ),
        );
    }
}

/// Adds the write throughput and latency figures.
pub fn add_writes(report: &mut SuiteReport, written: &Written, plan: &Plan) {
    let puts: Vec<&Sample> = written
        .recorder
        .samples
        .iter()
        .filter(|s| s.op == Op::Put)
        .collect();
    let seconds = (written.window.1 - written.window.0)
        .as_secs_f64()
        .max(1e-3);
    report.figure("rounds", "rounds", plan.rounds);
    report.figure("keys", "keys", plan.keys);
    report.figure(
        "writes_per_s",
        "writes/s",
        report::round(puts.len() as f64 / seconds),
    );
    report.add_latency("put_", "put ", &puts);
}

/// Adds the checks that every fault command worked.
pub fn add_fault_errors(report: &mut SuiteReport, errors: &[String]) {
    report.check(
        "every fault command succeeded",
        errors.is_empty(),
        if errors.is_empty() {
            "yes".to_owned()
        } else {
            errors.join("; ")
        },
    );
}

/// `consistency`: one client writes the keys in order over every node.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = SuiteReport::new("consistency", ctx.seed);
    let (rounds, keys) = sizes(ctx);
    let all: Vec<usize> = (0..ctx.nodes.len()).collect();
    let plan = Plan {
        suite: "consistency",
        targets: all.clone(),
        rounds,
        keys,
        faults: Vec::new(),
    };
    say(&format!(
        "consistency: {rounds} rounds of {keys} keys, each write of a key on the next node"
    ));
    let mut written = drive(ctx, &plan).await;
    let state = wait_for_convergence(ctx, &all, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &all, &mut written, &state);
    let outcome = checker::check(&written.histories);

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, true);
    add_final(
        &mut report,
        "",
        "after the last write",
        &state,
        &mismatches,
        true,
    );
    let failed = report.add_availability(&written.recorder.samples, &ctx.faults.events());
    report.check(
        "no request failed",
        failed == 0,
        format!("{failed} failed requests"),
    );
    report
}
