//! The `stress-partition` suite: `consistency` over every node while the servers are
//! partitioned at a third of the rounds and healed at two thirds (the client reaches
//! every node throughout).
//!
//! Owns: the plan (three phases: before the partition, during it, after the heal) and
//! the suite's checks. What each mode promises: `ap`, every request served and a clean
//! phase before the partition, the nodes converging on each key's last acknowledged
//! write after the heal (violations while partitioned are figures); `cp`, no violation,
//! stale read or lost write in any phase (refused requests are figures).
//! Knows nothing of: how the partition is made (the `--partition-cmd` / `--heal-cmd`).

use std::time::Duration;

use super::checker;
use super::consistency::{
    add_chain, add_fault_checks, add_final, add_phases, add_writes, drive, settle, sizes, tally,
    Action, PhasePlan, Plan,
};
use super::progress::say;
use super::report::{Group, Op, Rule, SuiteReport};
use super::{halves, ms_or_null, wait_for_convergence, Ctx};

/// `stress-partition`.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = ctx.report("stress-partition");
    let (rounds, keys) = sizes(ctx);
    let all: Vec<usize> = (0..ctx.nodes.len()).collect();
    let (left, right) = halves(ctx.nodes.len());
    let (partition_round, heal_round) = (rounds / 3, rounds * 2 / 3);
    let plan = Plan {
        suite: "stress-partition",
        targets: all.clone(),
        rounds,
        keys,
        faults: vec![
            (
                partition_round,
                Action::Partition(vec![left.clone(), right.clone()]),
            ),
            (heal_round, Action::Heal),
        ],
        phases: vec![
            PhasePlan {
                key: "before_partition",
                label: "before the partition",
                from_round: 0,
            },
            PhasePlan {
                key: "during_partition",
                label: "during the partition",
                from_round: partition_round,
            },
            PhasePlan {
                key: "after_heal",
                label: "after the heal",
                from_round: heal_round,
            },
        ],
    };
    say(&format!(
        "stress-partition: {rounds} rounds of {keys} keys over every node; {}|{} partitioned at round {partition_round}, healed at round {heal_round}",
        ctx.node_ids(&left).join(","),
        ctx.node_ids(&right).join(","),
    ));
    let mut written = drive(ctx, &plan).await;
    // Whatever happened, leave no partition behind.
    let mut other_errors = Vec::new();
    if ctx.faults.partitioned() {
        if let Err(error) = ctx.faults.heal().await {
            other_errors.push(error);
        }
    }
    let last_write_at = written.window.1;
    let state = wait_for_convergence(ctx, &all, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &all, &mut written.histories, &state);
    let outcome = checker::check(&written.histories);
    let tallies = tally(&plan, &written, &outcome);

    let events = ctx.faults.events();
    let healed_at = events
        .iter()
        .rev()
        .find(|e| e.what == "heal")
        .map(|e| e.at + e.took);
    // Consistent again: the last violation or stale read after the heal.
    let mut last_after_heal: Option<Duration> = None;
    if let Some(healed) = healed_at {
        // The write of `round` to key `k` is the (round * keys + k)-th PUT.
        let puts: Vec<Duration> = written
            .recorder
            .samples
            .iter()
            .filter(|s| s.op == Op::Put)
            .map(|s| s.at)
            .collect();
        let sent_at = |key: &str, round: u64| {
            let k = written.keys.iter().position(|k| k == key)?;
            puts.get(round as usize * plan.keys + k).copied()
        };
        let after = outcome
            .violations
            .iter()
            .map(|v| (v.key.as_str(), v.index as u64))
            .chain(written.stale.iter().map(|s| (s.key.as_str(), s.round)))
            .filter(|(_, round)| *round >= heal_round)
            .filter_map(|(key, round)| sent_at(key, round));
        for at in after {
            let since = at.saturating_sub(healed);
            last_after_heal = Some(last_after_heal.map_or(since, |l| l.max(since)));
        }
    }
    let during = &tallies[1];
    let diverged = during.stale > 0 || during.violations > 0;

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, &written, Rule::Cp);
    add_phases(
        &mut report,
        &plan,
        &tallies,
        &[Rule::ApAndCp, Rule::Cp, Rule::Cp],
    );
    report.figure(
        Group::Consistency,
        "last_violation_after_heal_ms",
        "last violation or stale read after the heal (ms): consistent again",
        ms_or_null(last_after_heal),
    );
    report.figure(
        Group::Convergence,
        "diverged",
        "the sides diverged while partitioned (stale reads or forks)",
        diverged,
    );
    let after_heal = match (healed_at, state.converged_after) {
        (Some(healed), Some(converged)) => Some((last_write_at + converged).saturating_sub(healed)),
        _ => None,
    };
    report.figure(
        Group::Convergence,
        "converged_after_heal_ms",
        "all nodes agree, counted from the heal (ms; writes go on after it)",
        ms_or_null(after_heal),
    );
    add_final(
        ctx,
        &mut report,
        "",
        "after the last write",
        &state,
        &mismatches,
    );
    let failed = report.add_availability(&written.recorder.samples, &events);
    report.check(
        Rule::Ap,
        "every request was served, on both sides of the partition",
        failed == 0,
        format!(
            "{failed} failed requests ({} before the partition, {} during, {} after the heal)",
            tallies[0].failed_requests(),
            tallies[1].failed_requests(),
            tallies[2].failed_requests()
        ),
    );
    add_fault_checks(&mut report, &written.effects, &other_errors);
    say(&format!(
        "stress-partition: {} while partitioned",
        during.text()
    ));
    report
}
