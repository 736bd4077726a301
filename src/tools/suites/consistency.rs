//! The `consistency` suite, and the sequential writer it shares with `failure` and
//! `stress-partition`.
//!
//! Owns: [`drive`] (one client writing `keys` keys in order for `rounds` rounds, each
//! write of a key going to the next node of the rotation and followed by a read of the
//! key from the node after it; faults fired at given rounds, with their fault-level
//! signals: the command's status, the killed node no longer answering, the partition
//! showing in the views), the split of every finding by phase ([`Tally`]), the
//! final-value check on every node, and the report parts shared by the three suites.
//! Knows nothing of: how violations are judged (see `checker.rs`), nor which mode
//! promises what (each suite hands its [`Rule`]s in).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::checker::{self, CheckOutcome, FinalValue, KeyHistory};
use super::progress::{say, Phase};
use super::report::{self, Group, Op, Recorder, Rule, Sample, SuiteReport, JSON_LIST_LIMIT};
use super::views::{self, Seen};
use super::{ms_or_null, read, wait_for_convergence, write, Ctx, FinalState, Rng};

/// Longest wait, from the partition command, for the views to show the cut before the
/// heal is allowed to run (the writes go on meanwhile).
pub const CUT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A stretch of rounds reported on its own (before a fault, during it, after it).
#[derive(Clone, Debug)]
pub struct PhasePlan {
    /// Suffix of its JSON figures, e.g. `during_partition`.
    pub key: &'static str,
    /// Its label, e.g. `during the partition`.
    pub label: &'static str,
    /// Its first round.
    pub from_round: u64,
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
    /// Phases in round order, the first from round 0.
    pub phases: Vec<PhasePlan>,
}

impl Plan {
    /// The index of the phase that `round` belongs to.
    pub fn phase_of(&self, round: u64) -> usize {
        self.phases
            .iter()
            .rposition(|phase| phase.from_round <= round)
            .unwrap_or(0)
    }

    /// The rounds of phase `index`.
    fn rounds_of(&self, index: usize) -> u64 {
        let from = self.phases[index].from_round.min(self.rounds);
        let to = self
            .phases
            .get(index + 1)
            .map_or(self.rounds, |next| next.from_round.min(self.rounds));
        to.saturating_sub(from)
    }
}

/// A read that missed the latest acknowledged write.
#[derive(Clone, Debug)]
pub struct StaleRead {
    /// The key.
    pub key: String,
    /// The round of the write it followed.
    pub round: u64,
    /// The node read.
    pub node: String,
    /// What it should have returned (any of these).
    pub expected: Vec<Option<String>>,
    /// What it returned.
    pub got: Option<String>,
}

/// What a fault command did, by its own signals.
#[derive(Clone, Debug)]
pub struct FaultEffect {
    /// `kill n4`, `partition n1,n2|n3,n4`.
    pub what: String,
    /// The command's error, if it failed.
    pub error: Option<String>,
    /// Whether the fault showed: for a kill, the node stopped answering; for a
    /// partition, the views (where offered) held the other side suspect or down.
    pub seen: Seen,
}

/// What the sequential writer saw.
pub struct Written {
    /// The keys, in order.
    pub keys: Vec<String>,
    /// Every write of every key.
    pub histories: Vec<KeyHistory>,
    /// Reads made after the writes.
    pub reads: u64,
    /// Reads that failed, by phase.
    pub failed_reads: Vec<u64>,
    /// Reads that returned an older value than the last acknowledged write.
    pub stale: Vec<StaleRead>,
    /// Every request.
    pub recorder: Recorder,
    /// Each fault and whether it took effect.
    pub effects: Vec<FaultEffect>,
    /// When the first write was sent and when the last reply came, since the start.
    pub window: (Duration, Duration),
}

impl Written {
    /// Errors of the fault commands.
    pub fn fault_errors(&self) -> Vec<String> {
        self.effects
            .iter()
            .filter_map(|effect| effect.error.clone())
            .collect()
    }
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
    let mut recorder = Recorder::new(ctx.start);
    let mut effects: Vec<FaultEffect> = Vec::new();
    let mut failed_reads = vec![0; plan.phases.len()];
    let mut stale = Vec::new();
    let mut reads = 0;
    // The views' watch of a partition in force: (index in `effects`, deadline, task).
    let mut watch: Option<(usize, tokio::task::JoinHandle<Seen>)> = None;
    let mut phase: Option<Phase> = None;
    let first = ctx.start.elapsed();
    for round in 0..plan.rounds {
        for (_, action) in plan.faults.iter().filter(|(at, _)| *at == round) {
            let effect = match action {
                Action::Kill(node) => {
                    let id = &ctx.nodes[*node].id;
                    let result = ctx.faults.kill(id).await;
                    let seen =
                        if views::stopped_answering(&ctx.nodes[*node], &ctx.probe_key()).await {
                            Seen::After(Duration::ZERO)
                        } else {
                            Seen::Never(format!("{id} still answers reads"))
                        };
                    FaultEffect {
                        what: format!("kill {id}"),
                        error: result.err(),
                        seen,
                    }
                }
                Action::Partition(groups) => {
                    let ids: Vec<Vec<String>> = groups.iter().map(|g| ctx.node_ids(g)).collect();
                    let text = super::faults::groups_text(&ids);
                    let result = ctx.faults.partition(&ids).await;
                    // Watched while the writes go on; the heal waits for the answer.
                    let deadline = Instant::now() + CUT_TIMEOUT;
                    watch = Some((
                        effects.len(),
                        tokio::spawn(views::watch_cut(ctx.nodes.clone(), ids, deadline)),
                    ));
                    FaultEffect {
                        what: format!("partition {text}"),
                        error: result.err(),
                        seen: Seen::NotOffered,
                    }
                }
                Action::Heal => {
                    if let Some((index, task)) = watch.take() {
                        effects[index].seen = task
                            .await
                            .unwrap_or_else(|e| Seen::Never(format!("the watch failed: {e}")));
                    }
                    let result = ctx.faults.heal().await;
                    FaultEffect {
                        what: "heal".to_owned(),
                        error: result.err(),
                        seen: Seen::NotOffered,
                    }
                }
            };
            say(&format!(
                "{}: round {round}/{}: {}{}",
                plan.suite,
                plan.rounds,
                effect.what,
                match &effect.error {
                    None => String::new(),
                    Some(error) => format!(": {error}"),
                }
            ));
            effects.push(effect);
        }
        let phase_index = plan.phase_of(round);
        if plan.phases[phase_index].from_round == round || phase.is_none() {
            drop(phase.take());
            phase = Some(Phase::start(
                plan.suite,
                plan.phases[phase_index].label,
                Some(plan.rounds_of(phase_index) * plan.keys as u64),
                "writes",
            ));
        }
        for (k, key) in keys.iter().enumerate() {
            let slot = round as usize + k;
            let writer = plan.targets[slot % plan.targets.len()];
            let reader = plan.targets[(slot + 1) % plan.targets.len()];
            let value = format!("k{k}:r{round}:c0");
            match write(ctx, writer, key, &value, &mut recorder).await {
                Ok(previous) => histories[k].acked(value, previous.as_deref()),
                Err(_) => histories[k].failed(value),
            }
            // A read of the key through the next node: is the write just made (or one
            // that failed after the last acknowledged one) what it returns?
            reads += 1;
            match read(ctx, reader, key, &mut recorder).await {
                Ok(got) => {
                    let expected = histories[k].acceptable_last();
                    if !expected.contains(&got) {
                        stale.push(StaleRead {
                            key: key.clone(),
                            round,
                            node: ctx.nodes[reader].id.clone(),
                            expected,
                            got,
                        });
                    }
                }
                Err(_) => failed_reads[phase_index] += 1,
            }
            if let Some(phase) = &phase {
                phase.inc();
            }
        }
    }
    drop(phase);
    if let Some((index, task)) = watch.take() {
        task.abort();
        effects[index].seen = Seen::Never("the run ended before the heal".to_owned());
    }
    Written {
        keys,
        histories,
        reads,
        failed_reads,
        stale,
        recorder,
        effects,
        window: (first, ctx.start.elapsed()),
    }
}

/// The findings of one phase.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Writes issued.
    pub writes: u64,
    /// Writes whose request failed.
    pub failed_writes: u64,
    /// Reads whose request failed.
    pub failed_reads: u64,
    /// Writes whose `previous` was not the value written just before.
    pub violations: usize,
    /// Reads that missed the last acknowledged write.
    pub stale: usize,
    /// Acknowledged writes lost.
    pub lost: usize,
}

impl Tally {
    /// Failed requests (writes and reads).
    pub fn failed_requests(&self) -> u64 {
        self.failed_writes + self.failed_reads
    }

    /// `0 violations, 2 stale reads, 0 lost writes`.
    pub fn text(&self) -> String {
        format!(
            "{} violations, {} stale reads, {} lost acknowledged writes",
            self.violations, self.stale, self.lost
        )
    }

    /// Nothing inconsistent was seen.
    pub fn clean(&self) -> bool {
        self.violations == 0 && self.stale == 0 && self.lost == 0
    }
}

/// Splits the findings by phase.
pub fn tally(plan: &Plan, written: &Written, outcome: &CheckOutcome) -> Vec<Tally> {
    let mut tallies = vec![Tally::default(); plan.phases.len()];
    for history in &written.histories {
        for (round, record) in history.writes.iter().enumerate() {
            let slot = &mut tallies[plan.phase_of(round as u64)];
            slot.writes += 1;
            if record.outcome == checker::WriteOutcome::Failed {
                slot.failed_writes += 1;
            }
        }
    }
    for (slot, failed) in tallies.iter_mut().zip(&written.failed_reads) {
        slot.failed_reads = *failed;
    }
    for violation in &outcome.violations {
        tallies[plan.phase_of(violation.index as u64)].violations += 1;
    }
    for lost in &outcome.lost {
        tallies[plan.phase_of(lost.index as u64)].lost += 1;
    }
    for read in &written.stale {
        tallies[plan.phase_of(read.round)].stale += 1;
    }
    tallies
}

/// Adds the figures of each phase and, for each phase, a check under `rules[phase]`
/// that nothing inconsistent was seen in it.
pub fn add_phases(report: &mut SuiteReport, plan: &Plan, tallies: &[Tally], rules: &[Rule]) {
    let split = plan.phases.len() > 1;
    for ((phase, tally), rule) in plan.phases.iter().zip(tallies).zip(rules) {
        if split {
            let key = phase.key;
            let label = phase.label;
            report.figure(
                Group::Availability,
                &format!("failed_requests_{key}"),
                &format!("failed requests {label}"),
                tally.failed_requests(),
            );
            report.figure(
                Group::Consistency,
                &format!("violations_{key}"),
                &format!("violations {label}"),
                tally.violations,
            );
            report.figure(
                Group::Consistency,
                &format!("stale_reads_{key}"),
                &format!("stale reads {label}"),
                tally.stale,
            );
            report.figure(
                Group::Consistency,
                &format!("lost_values_{key}"),
                &format!("lost acknowledged writes {label}"),
                tally.lost,
            );
        }
        let what = if split {
            format!(
                "{}: every PUT's previous and every read is the latest acknowledged write; none is lost",
                phase.label
            )
        } else {
            "every PUT's previous and every read is the latest acknowledged write; none is lost"
                .to_owned()
        };
        report.check(*rule, &what, tally.clean(), tally.text());
    }
    report.detail(
        "by_phase",
        Value::Array(
            plan.phases
                .iter()
                .zip(tallies)
                .map(|(phase, tally)| {
                    json!({
                        "phase": phase.key,
                        "from_round": phase.from_round,
                        "writes": tally.writes,
                        "failed_writes": tally.failed_writes,
                        "failed_reads": tally.failed_reads,
                        "violations": tally.violations,
                        "stale_reads": tally.stale,
                        "lost_values": tally.lost,
                    })
                })
                .collect(),
        ),
    );
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
    histories: &mut [KeyHistory],
    state: &FinalState,
) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    for (k, history) in histories.iter_mut().enumerate() {
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

/// Adds the final-value figures and their checks (promised by ap and cp alike: the
/// nodes agree, on each key's last acknowledged write).
pub fn add_final(
    ctx: &Ctx,
    report: &mut SuiteReport,
    prefix: &str,
    label: &str,
    state: &FinalState,
    mismatches: &[Mismatch],
) {
    report.figure(
        Group::Convergence,
        &format!("{prefix}converged_after_ms"),
        &format!("{label}: values agree after (ms)"),
        ms_or_null(state.converged_after),
    );
    report.figure(
        Group::Convergence,
        &format!("{prefix}digests_equal_after_ms"),
        &format!("{label}: digests equal after (ms)"),
        state.digests_figure(),
    );
    report.figure(
        Group::Convergence,
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
    report.check(
        Rule::ApAndCp,
        &format!(
            "{label}: every node agrees within {:.1} s",
            ctx.args.converge_timeout.as_secs_f64()
        ),
        state.converged(),
        state.describe(),
    );
    report.check(
        Rule::ApAndCp,
        &format!("{label}: every node holds each key's last acknowledged write"),
        mismatches.is_empty(),
        format!("{} mismatches", mismatches.len()),
    );
}

/// Adds the checker's and the reads' figures and sections; the chain check (one total
/// order per key, with every acknowledged value) binds under `chain_rule`.
pub fn add_chain(
    report: &mut SuiteReport,
    outcome: &CheckOutcome,
    written: &Written,
    chain_rule: Rule,
) {
    let c = Group::Consistency;
    report.figure(
        Group::Workload,
        "writes_acked",
        "writes acknowledged",
        outcome.acked,
    );
    report.figure(
        Group::Workload,
        "writes_failed",
        "writes failed",
        outcome.failed,
    );
    report.figure(
        Group::Workload,
        "reads",
        "reads after a write",
        written.reads,
    );
    report.figure(
        c,
        "violations",
        "violations (PUT previous not the last write)",
        outcome.violations.len(),
    );
    report.figure(
        c,
        "stale_reads",
        "stale reads (not the last acknowledged write)",
        written.stale.len(),
    );
    report.figure(
        c,
        "lost_values",
        "lost acknowledged writes",
        outcome.lost.len(),
    );
    report.figure(
        c,
        "duplicates",
        "duplicates (forks)",
        outcome.duplicates.len(),
    );
    report.figure(
        c,
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
        "stale reads (key after round, node: expected, got)",
        written
            .stale
            .iter()
            .map(|s| {
                format!(
                    "{} after r{} on {}: expected {}, got {}",
                    s.key,
                    s.round,
                    s.node,
                    shown_all(&s.expected),
                    shown(&s.got)
                )
            })
            .collect(),
    );
    report.section(
        "lost values (acknowledged, never seen as a previous nor final)",
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
        "stale_read_list",
        Value::Array(
            written
                .stale
                .iter()
                .take(JSON_LIST_LIMIT)
                .map(|s| {
                    json!({
                        "key": s.key, "round": s.round, "node": s.node,
                        "expected": s.expected, "got": s.got,
                    })
                })
                .collect(),
        ),
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
    report.check(
        chain_rule,
        "each key's acknowledged writes chain into one total order with every value",
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

/// Adds the write and read throughput and latency figures.
pub fn add_writes(report: &mut SuiteReport, written: &Written, plan: &Plan) {
    let of = |op: Op| -> Vec<&Sample> {
        written
            .recorder
            .samples
            .iter()
            .filter(|s| s.op == op)
            .collect()
    };
    let (puts, gets) = (of(Op::Put), of(Op::Get));
    let seconds = (written.window.1 - written.window.0)
        .as_secs_f64()
        .max(1e-3);
    report.figure(Group::Workload, "rounds", "rounds", plan.rounds);
    report.figure(Group::Workload, "keys", "keys", plan.keys);
    report.figure(
        Group::Workload,
        "writes_per_s",
        "writes/s (each followed by a read)",
        report::round(puts.len() as f64 / seconds),
    );
    report.add_latency("put_", "put ", &puts);
    report.add_latency("get_", "get ", &gets);
}

/// Adds the checks that every fault command worked and took effect (the suite could
/// not run otherwise, whatever the mode).
pub fn add_fault_checks(
    report: &mut SuiteReport,
    effects: &[FaultEffect],
    other_errors: &[String],
) {
    let errors: Vec<String> = effects
        .iter()
        .filter_map(|e| e.error.clone())
        .chain(other_errors.iter().cloned())
        .collect();
    report.check(
        Rule::SuiteRan,
        "every fault command succeeded",
        errors.is_empty(),
        if errors.is_empty() {
            "yes".to_owned()
        } else {
            errors.join("; ")
        },
    );
    for effect in effects.iter().filter(|e| e.what != "heal") {
        let (held, detail) = match &effect.seen {
            Seen::NotOffered => (
                effect.error.is_none(),
                "the command succeeded; the store offers no /v1/cluster view to confirm it"
                    .to_owned(),
            ),
            Seen::After(_) if effect.what.starts_with("kill") => {
                (true, "the node no longer answers".to_owned())
            }
            Seen::After(took) => (
                true,
                format!(
                    "every node's /v1/cluster held the other side suspect or down after {:.0} ms",
                    report::ms(*took)
                ),
            ),
            Seen::Never(why) => (false, why.clone()),
        };
        report.check(
            Rule::SuiteRan,
            &format!("{} took effect", effect.what),
            held,
            detail,
        );
        if effect.what.starts_with("partition") {
            report.figure(
                Group::Availability,
                "partition_seen_after_ms",
                "partition shown in the views after (ms)",
                effect.seen.figure(),
            );
        }
    }
}

/// `consistency`: one client writes the keys in order over every node.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = ctx.report("consistency");
    let (rounds, keys) = sizes(ctx);
    let all: Vec<usize> = (0..ctx.nodes.len()).collect();
    let plan = Plan {
        suite: "consistency",
        targets: all.clone(),
        rounds,
        keys,
        faults: Vec::new(),
        phases: vec![PhasePlan {
            key: "healthy",
            label: "writes and reads",
            from_round: 0,
        }],
    };
    say(&format!(
        "consistency: {rounds} rounds of {keys} keys, each write of a key on the next node, then a read from the node after it"
    ));
    let mut written = drive(ctx, &plan).await;
    let state = wait_for_convergence(ctx, &all, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &all, &mut written.histories, &state);
    let outcome = checker::check(&written.histories);
    let tallies = tally(&plan, &written, &outcome);

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, &written, Rule::ApAndCp);
    add_phases(&mut report, &plan, &tallies, &[Rule::ApAndCp]);
    add_final(
        ctx,
        &mut report,
        "",
        "after the last write",
        &state,
        &mismatches,
    );
    let failed = report.add_availability(&written.recorder.samples, &ctx.faults.events());
    report.check(
        Rule::ApAndCp,
        "no request failed (a healthy cluster)",
        failed == 0,
        format!("{failed} failed requests"),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_fall_into_their_phase() {
        let plan = Plan {
            suite: "x",
            targets: vec![0],
            rounds: 9,
            keys: 1,
            faults: Vec::new(),
            phases: vec![
                PhasePlan {
                    key: "a",
                    label: "a",
                    from_round: 0,
                },
                PhasePlan {
                    key: "b",
                    label: "b",
                    from_round: 3,
                },
                PhasePlan {
                    key: "c",
                    label: "c",
                    from_round: 6,
                },
            ],
        };
        let phases: Vec<usize> = (0..9).map(|r| plan.phase_of(r)).collect();
        assert_eq!(phases, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(
            (plan.rounds_of(0), plan.rounds_of(1), plan.rounds_of(2)),
            (3, 3, 3)
        );
    }
}
