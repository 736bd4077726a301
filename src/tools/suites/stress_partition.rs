//! The `stress-partition` suite: `consistency` over every node while the servers are
//! partitioned at a third of the rounds and healed at two thirds (the client reaches
//! every node throughout).
//!
//! Owns: the plan, the split of the checker's findings by phase (before the partition,
//! during it, after the heal), and the suite's checks: every fault command works, the
//! nodes converge after the heal and every key ends on its last acknowledged write.
//! Violations are expected while partitioned: they are reported, not failed.
//! Knows nothing of: how the partition is made (the `--partition-cmd` / `--heal-cmd`).

use std::time::Duration;

use serde_json::json;

use super::checker;
use super::consistency::{
    add_chain, add_fault_errors, add_final, add_writes, drive, settle, sizes, Action, Plan,
};
use super::report::{say, SuiteReport};
use super::{halves, ms_or_null, wait_for_convergence, Ctx};

/// `stress-partition`.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = SuiteReport::new("stress-partition", ctx.seed);
    let (rounds, keys) = sizes(ctx);
    let all: Vec<usize> = (0..ctx.nodes.len()).collect();
    let (left, right) = halves(ctx.nodes.len());
    let plan = Plan {
        suite: "stress-partition",
        targets: all.clone(),
        rounds,
        keys,
        faults: vec![
            (
                rounds / 3,
                Action::Partition(vec![left.clone(), right.clone()]),
            ),
            (rounds * 2 / 3, Action::Heal),
        ],
    };
    say(&format!(
        "stress-partition: {rounds} rounds of {keys} keys over every node; {}|{} partitioned at round {}, healed at round {}",
        ctx.node_ids(&left).join(","),
        ctx.node_ids(&right).join(","),
        rounds / 3,
        rounds * 2 / 3
    ));
    let mut written = drive(ctx, &plan).await;
    // Whatever happened, leave no partition behind.
    let mut fault_errors = written.fault_errors.clone();
    if ctx.faults.partitioned() {
        if let Err(error) = ctx.faults.heal().await {
            fault_errors.push(error);
        }
    }
    let last_write_at = written.window.1;
    let state = wait_for_convergence(ctx, &all, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &all, &mut written, &state);

    let outcome = checker::check(&written.histories);

    // Phases, from the fault events.
    let events = ctx.faults.events();
    let partitioned_at = events
        .iter()
        .find(|e| e.what.starts_with("partition"))
        .map(|e| e.at);
    let healed_at = events
        .iter()
        .rev()
        .find(|e| e.what == "heal")
        .map(|e| e.at + e.took);
    let phase_of = |at: Duration| match (partitioned_at, healed_at) {
        (Some(p), _) if at < p => "before",
        (Some(_), Some(h)) if at < h => "during",
        (Some(_), Some(_)) => "after",
        (None, _) => "before",
        (Some(_), None) => "during",
    };
    let mut by_phase = [("before", 0usize), ("during", 0), ("after", 0)];
    let mut last_after_heal: Option<Duration> = None;
    for violation in &outcome.violations {
        let k = written.keys.iter().position(|key| *key == violation.key);
        let at = k.and_then(|k| written.sent_at[k].get(violation.index).copied());
        if let Some(at) = at {
            let phase = phase_of(at);
            if let Some(slot) = by_phase.iter_mut().find(|(name, _)| *name == phase) {
                slot.1 += 1;
            }
            if let (Some(healed), "after") = (healed_at, phase) {
                let since = at.saturating_sub(healed);
                last_after_heal = Some(last_after_heal.map_or(since, |l| l.max(since)));
            }
        }
    }

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, false);
    report.figure(
        "violations_before_partition",
        "violations before the partition",
        by_phase[0].1,
    );
    report.figure(
        "violations_during_partition",
        "violations during the partition",
        by_phase[1].1,
    );
    report.figure(
        "violations_after_heal",
        "violations after the heal",
        by_phase[2].1,
    );
    report.figure(
        "last_violation_after_heal_ms",
        "last violation after the heal (ms): consistent again",
        ms_or_null(last_after_heal),
    );
    report.detail(
        "violations_by_phase",
        json!({"before": by_phase[0].1, "during": by_phase[1].1, "after": by_phase[2].1}),
    );
    let after_heal = match (healed_at, state.converged_after) {
        (Some(healed), Some(converged)) => Some((last_write_at + converged).saturating_sub(healed)),
        _ => None,
    };
    report.figure(
        "converged_after_heal_ms",
        "all nodes agree, counted from the heal (ms; writes go on after it)",
        ms_or_null(after_heal),
    );
    add_final(
        &mut report,
        "",
        "after the last write",
        &state,
        &mismatches,
        true,
    );
    report.add_availability(&written.recorder.samples, &events);
    add_fault_errors(&mut report, &fault_errors);
    if by_phase[1].1 == 0 && fault_errors.is_empty() {
        report.section(
            "note",
            vec![
                "no violation while partitioned: the partition may not have cut the servers apart (or the store is not available under partition)".to_owned(),
            ],
        );
    }
    say(&format!(
        "stress-partition: {} violations during the partition are expected and not counted as failures",
        by_phase[1].1
    ));
    report
}
