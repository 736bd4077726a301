//! The `partition` suite: one key, written before a partition, then on both sides of it
//! (the second side later), then healed.
//!
//! Owns: the steps (write and read from two nodes, partition into halves, write on each
//! side, read every node, heal, poll every node until they agree) and what it reports:
//! whether each side accepted its write, whether the sides diverged, stale reads while
//! partitioned, the time to converge after the heal, the final value and whether it is
//! the later write. Whether the partition took effect is judged by fault-level signals
//! (the command's status, the views where offered), never by divergence: a store that
//! stays consistent through a partition has done nothing wrong.
//! Knows nothing of: how the partition is made (the `--partition-cmd` / `--heal-cmd`).

use std::time::{Duration, Instant};

use serde_json::json;

use super::checker::{self, FinalValue, KeyHistory};
use super::consistency::{add_fault_checks, FaultEffect, CUT_TIMEOUT};
use super::progress::{say, Phase};
use super::report::{Group, Recorder, Rule, SuiteReport};
use super::views::{self, Seen};
use super::{halves, ms_or_null, read, wait_for_convergence, write, Ctx, SETTLE_TIMEOUT};

/// Pause between the two sides' writes, so that the second is clearly later.
const GAP_BETWEEN_SIDES: Duration = Duration::from_millis(250);

fn shown(value: &Result<Option<String>, String>) -> String {
    match value {
        Ok(Some(value)) => format!("{value:?}"),
        Ok(None) => "(absent)".to_owned(),
        Err(error) => format!("error: {error}"),
    }
}

/// Records a write's outcome in the key's history.
fn record(history: &mut KeyHistory, value: &str, result: &Result<Option<String>, String>) {
    match result {
        Ok(previous) => history.acked(value, previous.as_deref()),
        Err(_) => history.failed(value),
    }
}

/// `partition`.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = ctx.report("partition");
    let mut recorder = Recorder::new(ctx.start);
    let count = ctx.nodes.len();
    let key = ctx.key("partition", 0);
    let mut history = KeyHistory::new(&key);
    let (left, right) = halves(count);
    let left_ids = ctx.node_ids(&left);
    let right_ids = ctx.node_ids(&right);
    let (a, b) = (left[0], right[0]);

    // 1. Write, then read from two different nodes.
    let phase = Phase::start("partition", "before the partition", None, "requests");
    let initial = format!("initial:{}", ctx.run);
    say(&format!(
        "partition: writing {key} = {initial:?} on {}",
        ctx.nodes[0].id
    ));
    let first_write = write(ctx, 0, &key, &initial, &mut recorder).await;
    record(&mut history, &initial, &first_write);
    let first_read = read(ctx, 0, &key, &mut recorder).await;
    let last_read = read(ctx, count - 1, &key, &mut recorder).await;
    say(&format!(
        "partition: {} reads {}, {} reads {}",
        ctx.nodes[0].id,
        shown(&first_read),
        ctx.nodes[count - 1].id,
        shown(&last_read)
    ));
    let expected_initial: Result<Option<String>, String> = Ok(Some(initial.clone()));
    report.check(
        Rule::ApAndCp,
        "before the partition, two nodes read the value just written",
        first_write.is_ok() && first_read == expected_initial && last_read == expected_initial,
        format!(
            "{} read {}, {} read {}",
            ctx.nodes[0].id,
            shown(&first_read),
            ctx.nodes[count - 1].id,
            shown(&last_read)
        ),
    );
    drop(phase);

    // 2. Partition; the views (where offered) are watched while the sides are written.
    let phase = Phase::start("partition", "partitioned", None, "requests");
    say(&format!(
        "partition: cutting {} | {}",
        left_ids.join(","),
        right_ids.join(",")
    ));
    let partitioned = Instant::now();
    let groups = vec![left_ids.clone(), right_ids.clone()];
    let partition_result = ctx.faults.partition(&groups).await;
    if let Err(error) = &partition_result {
        say(&format!("partition: {error}"));
    }
    let hold = ctx.args.partition_hold;
    let watch = tokio::spawn(views::watch_cut(
        ctx.nodes.clone(),
        groups,
        partitioned + hold.max(CUT_TIMEOUT),
    ));

    // 3. A different value on each side, the second side's later.
    let value_a = format!("side-a:{}:{}", ctx.nodes[a].id, ctx.run);
    let value_b = format!("side-b:{}:{}", ctx.nodes[b].id, ctx.run);
    let write_a = write(ctx, a, &key, &value_a, &mut recorder).await;
    record(&mut history, &value_a, &write_a);
    phase.inc();
    tokio::time::sleep(GAP_BETWEEN_SIDES).await;
    let write_b = write(ctx, b, &key, &value_b, &mut recorder).await;
    record(&mut history, &value_b, &write_b);
    phase.inc();
    let accepted = |result: &Result<Option<String>, String>| {
        if result.is_ok() {
            "acknowledged".to_owned()
        } else {
            "REFUSED".to_owned()
        }
    };
    say(&format!(
        "partition: wrote {value_a:?} on {} ({}), then {value_b:?} on {} ({})",
        ctx.nodes[a].id,
        accepted(&write_a),
        ctx.nodes[b].id,
        accepted(&write_b),
    ));

    // 4. Every node's answer while partitioned, once the views showed the cut (where
    //    offered) and the partition has held `--partition-hold`.
    phase.message("waiting for the views to show the cut");
    let seen = watch
        .await
        .unwrap_or_else(|e| Seen::Never(format!("the watch failed: {e}")));
    let held = partitioned.elapsed();
    if held < hold {
        phase.message("holding the partition");
        tokio::time::sleep(hold - held).await;
    }
    let expected_during = history.acceptable_last();
    let mut during = Vec::new();
    for index in 0..count {
        during.push(read(ctx, index, &key, &mut recorder).await);
        phase.inc();
    }
    let stale_during: Vec<usize> = (0..count)
        .filter(|i| matches!(&during[*i], Ok(value) if !expected_during.contains(value)))
        .collect();
    let refused_during = during.iter().filter(|value| value.is_err()).count();
    let left_values: Vec<_> = left.iter().map(|i| &during[*i]).collect();
    let right_values: Vec<_> = right.iter().map(|i| &during[*i]).collect();
    let diverged = left_values.iter().any(|l| {
        right_values
            .iter()
            .any(|r| l.is_ok() && r.is_ok() && l != r)
    });
    for (index, value) in during.iter().enumerate() {
        say(&format!(
            "partition: while partitioned, {} reads {}",
            ctx.nodes[index].id,
            shown(value)
        ));
    }
    drop(phase);

    // 5. Heal and wait until every node agrees.
    say("partition: healing");
    let heal_result = ctx.faults.heal().await;
    if let Err(error) = &heal_result {
        say(&format!("partition: {error}"));
    }
    let healed = Instant::now();
    let all: Vec<usize> = (0..count).collect();
    let state = wait_for_convergence(ctx, &all, std::slice::from_ref(&key), &mut recorder).await;
    let peers_alive = match views::wait_for_peers_alive(&ctx.nodes, SETTLE_TIMEOUT).await {
        Seen::After(_) => Seen::After(healed.elapsed()),
        other => other,
    };
    let final_value = state.agreed(0);
    history.final_value = match &final_value {
        Some(value) => FinalValue::Known(value.clone()),
        None => FinalValue::Unknown,
    };
    let expected_final = history.acceptable_last();
    let outcome = checker::check(std::slice::from_ref(&history));
    let final_ok = (0..count)
        .all(|i| matches!(&state.values[0][i], Ok(value) if expected_final.contains(value)));
    let later_won = final_value.as_ref() == Some(&Some(value_b.clone()));
    say(&format!(
        "partition: after the heal: {}",
        all.iter()
            .map(|i| format!("{} = {}", ctx.nodes[*i].id, shown(&state.values[0][*i])))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let (w, av, c, cv) = (
        Group::Workload,
        Group::Availability,
        Group::Consistency,
        Group::Convergence,
    );
    report.figure(w, "key", "key", key.clone());
    report.figure(
        w,
        "groups",
        "partition",
        format!("{} | {}", left_ids.join(","), right_ids.join(",")),
    );
    report.figure(
        w,
        "value_side_a",
        "written on side a (first)",
        value_a.clone(),
    );
    report.figure(
        w,
        "value_side_b",
        "written on side b (later)",
        value_b.clone(),
    );
    report.figure(
        av,
        "side_a_accepted",
        "side a accepted its write",
        write_a.is_ok(),
    );
    report.figure(
        av,
        "side_b_accepted",
        "side b accepted its write",
        write_b.is_ok(),
    );
    report.figure(
        av,
        "reads_refused_during_partition",
        "reads refused while partitioned",
        refused_during,
    );
    report.figure(
        c,
        "stale_reads_during_partition",
        "stale reads while partitioned (not the last acknowledged write)",
        stale_during.len(),
    );
    report.figure(c, "stale_reads", "stale reads", stale_during.len());
    report.figure(
        c,
        "violations",
        "violations (PUT previous not the last write)",
        outcome.violations.len(),
    );
    report.figure(
        c,
        "lost_values",
        "lost acknowledged writes",
        outcome.lost.len(),
    );
    report.figure(cv, "diverged", "sides diverged while partitioned", diverged);
    report.figure(
        cv,
        "converged_after_heal_ms",
        "values agree after the heal (ms)",
        ms_or_null(state.converged_after),
    );
    report.figure(
        cv,
        "digests_equal_after_heal_ms",
        "digests equal after the heal (ms)",
        state.digests_figure(),
    );
    report.figure(
        cv,
        "peers_alive_after_heal_ms",
        "every node sees every peer alive after the heal (ms)",
        peers_alive.figure(),
    );
    report.figure(
        cv,
        "final_value",
        "final value",
        match &final_value {
            Some(Some(value)) => json!(value),
            Some(None) => json!("(absent)"),
            None => json!("(nodes disagree)"),
        },
    );
    report.figure(cv, "later_write_won", "the later write won", later_won);
    report.detail(
        "reads_during_partition",
        json!(all
            .iter()
            .map(|i| json!({"node": ctx.nodes[*i].id, "value": shown(&during[*i])}))
            .collect::<Vec<_>>()),
    );
    report.detail(
        "reads_after_heal",
        json!(all
            .iter()
            .map(|i| json!({"node": ctx.nodes[*i].id, "value": shown(&state.values[0][*i])}))
            .collect::<Vec<_>>()),
    );

    let outcome_text = |result: &Result<Option<String>, String>| {
        result
            .as_ref()
            .map_or_else(Clone::clone, |_| "ok".to_owned())
    };
    report.check(
        Rule::Ap,
        "both sides accepted their write",
        write_a.is_ok() && write_b.is_ok(),
        format!(
            "side a: {}, side b: {}",
            outcome_text(&write_a),
            outcome_text(&write_b)
        ),
    );
    let reads_text = format!(
        "side a read {}, side b read {}",
        left_values
            .iter()
            .map(|v| shown(v))
            .collect::<Vec<_>>()
            .join(" / "),
        right_values
            .iter()
            .map(|v| shown(v))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    report.check(
        Rule::Cp,
        "no read while partitioned was stale (refusing is allowed)",
        stale_during.is_empty(),
        if stale_during.is_empty() {
            format!("0 stale reads; {reads_text}")
        } else {
            format!(
                "{} stale reads ({}); {reads_text}",
                stale_during.len(),
                ctx.node_ids(&stale_during).join(", ")
            )
        },
    );
    report.check(
        Rule::Cp,
        "the acknowledged writes chain into one order (no fork, none lost)",
        outcome.violations.is_empty() && outcome.duplicates.is_empty() && outcome.lost.is_empty(),
        format!(
            "{} violations, {} forks, {} lost",
            outcome.violations.len(),
            outcome.duplicates.len(),
            outcome.lost.len()
        ),
    );
    report.check(
        Rule::ApAndCp,
        &format!(
            "every node agrees within {:.1} s of the heal",
            ctx.args.converge_timeout.as_secs_f64()
        ),
        state.converged(),
        state.describe(),
    );
    report.check(
        Rule::ApAndCp,
        "after the heal, every node holds the last acknowledged write",
        final_ok,
        format!(
            "expected {}, nodes hold {}",
            expected_final
                .iter()
                .map(|v| shown(&Ok(v.clone())))
                .collect::<Vec<_>>()
                .join(" or "),
            all.iter()
                .map(|i| format!("{} {}", ctx.nodes[*i].id, shown(&state.values[0][*i])))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    report.check(
        Rule::Ap,
        "the later write (side b) won on every node",
        later_won,
        match &final_value {
            Some(Some(value)) => format!("every node holds {value:?}"),
            Some(None) => "every node lost the key".to_owned(),
            None => "the nodes disagree".to_owned(),
        },
    );
    report.add_availability(&recorder.samples, &ctx.faults.events());
    let effects = [
        FaultEffect {
            what: format!("partition {}|{}", left_ids.join(","), right_ids.join(",")),
            error: partition_result.err(),
            seen,
        },
        FaultEffect {
            what: "heal".to_owned(),
            error: heal_result.err(),
            seen: Seen::NotOffered,
        },
    ];
    add_fault_checks(&mut report, &effects, &[]);
    report
}
