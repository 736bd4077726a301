//! The `partition` suite: one key, written before a partition, then on both sides of it
//! (the second side later), then healed.
//!
//! Owns: the steps (write and read from two nodes, partition into halves, write on each
//! side, read every node, heal, poll every node until they agree) and what it reports:
//! whether the sides diverged, the time to converge after the heal, the final value and
//! whether it is the later write.
//! Knows nothing of: how the partition is made (the `--partition-cmd` / `--heal-cmd`).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::json;

use super::consistency::add_fault_errors;
use super::report::{self, say, Op, Recorder, SuiteReport};
use super::{halves, ms_or_null, wait_for_convergence, wait_for_peers_alive, Ctx, SETTLE_TIMEOUT};

/// Pause between the two sides' writes, so that the second is clearly later.
const GAP_BETWEEN_SIDES: Duration = Duration::from_millis(250);
/// How long the partition lasts before the sides are read: long enough for the failure
/// detectors to mark the other side down and for anti-entropy to try (and fail) to cross.
const PARTITION_HOLD: Duration = Duration::from_secs(3);

/// Reads `key` from node `index`, recording the request.
async fn read(
    ctx: &Ctx,
    index: usize,
    key: &str,
    recorder: &mut Recorder,
) -> Result<Option<String>, String> {
    let node = &ctx.nodes[index];
    let sent = Instant::now();
    let result = node.client.get(key, None).await;
    recorder.record(&node.id, Op::Get, sent, &result);
    result
        .map(|reply| reply.map(|r| r.text().into_owned()))
        .map_err(|e| e.to_string())
}

/// Writes `key` on node `index`, recording the request.
async fn write(
    ctx: &Ctx,
    index: usize,
    key: &str,
    value: &str,
    recorder: &mut Recorder,
) -> Result<Option<String>, String> {
    let node = &ctx.nodes[index];
    let sent = Instant::now();
    let result = node.client.put(key, value, None).await;
    recorder.record(&node.id, Op::Put, sent, &result);
    result
        .map(|reply| reply.previous_text().map(Cow::into_owned))
        .map_err(|e| e.to_string())
}

fn shown(value: &Result<Option<String>, String>) -> String {
    match value {
        Ok(Some(value)) => format!("{value:?}"),
        Ok(None) => "(absent)".to_owned(),
        Err(error) => format!("error: {error}"),
    }
}

/// `partition`.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = SuiteReport::new("partition", ctx.seed);
    let mut recorder = Recorder::new(ctx.start);
    let mut fault_errors = Vec::new();
    let count = ctx.nodes.len();
    let key = ctx.key("partition", 0);
    let (left, right) = halves(count);
    let left_ids = ctx.node_ids(&left);
    let right_ids = ctx.node_ids(&right);
    let (a, b) = (left[0], right[0]);

    // 1. Write, then read from two different nodes.
    let initial = format!("initial:{}", ctx.run);
    say(&format!(
        "partition: writing {key} = {initial:?} on {}",
        ctx.nodes[0].id
    ));
    let first_write = write(ctx, 0, &key, &initial, &mut recorder).await;
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

    // 2. Partition.
    say(&format!(
        "partition: cutting {} | {}",
        left_ids.join(","),
        right_ids.join(",")
    ));
    let partitioned = Instant::now();
    if let Err(error) = ctx
        .faults
        .partition(&[left_ids.clone(), right_ids.clone()])
        .await
    {
        say(&format!("partition: {error}"));
        fault_errors.push(error);
    }

    // 3. A different value on each side, the second side's later.
    let value_a = format!("side-a:{}:{}", ctx.nodes[a].id, ctx.run);
    let value_b = format!("side-b:{}:{}", ctx.nodes[b].id, ctx.run);
    let write_a = write(ctx, a, &key, &value_a, &mut recorder).await;
    tokio::time::sleep(GAP_BETWEEN_SIDES).await;
    let write_b = write(ctx, b, &key, &value_b, &mut recorder).await;
    say(&format!(
        "partition: wrote {value_a:?} on {} ({}), then {value_b:?} on {} ({})",
        ctx.nodes[a].id,
        if write_a.is_ok() {
            "acknowledged"
        } else {
            "FAILED"
        },
        ctx.nodes[b].id,
        if write_b.is_ok() {
            "acknowledged"
        } else {
            "FAILED"
        },
    ));

    // 4. Every node's answer while partitioned (once the partition has held a while).
    let held = partitioned.elapsed();
    if held < PARTITION_HOLD {
        tokio::time::sleep(PARTITION_HOLD - held).await;
    }
    let mut during = Vec::new();
    for index in 0..count {
        during.push(read(ctx, index, &key, &mut recorder).await);
    }
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

    // 5. Heal and wait until every node agrees.
    say("partition: healing");
    let heal_result = ctx.faults.heal().await;
    if let Err(error) = heal_result {
        say(&format!("partition: {error}"));
        fault_errors.push(error);
    }
    let healed = Instant::now();
    let all: Vec<usize> = (0..count).collect();
    let state = wait_for_convergence(ctx, &all, std::slice::from_ref(&key), &mut recorder).await;
    let peers_alive = wait_for_peers_alive(ctx, &all, SETTLE_TIMEOUT)
        .await
        .ok()
        .map(|_| healed.elapsed());
    let final_value = state.agreed(0);
    let later_won = final_value.as_ref() == Some(&Some(value_b.clone()));
    say(&format!(
        "partition: after the heal: {}",
        all.iter()
            .map(|i| format!("{} = {}", ctx.nodes[*i].id, shown(&state.values[0][*i])))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    report.figure("key", "key", key.clone());
    report.figure(
        "groups",
        "partition",
        format!("{} | {}", left_ids.join(","), right_ids.join(",")),
    );
    report.figure("value_side_a", "written on side a (first)", value_a.clone());
    report.figure("value_side_b", "written on side b (later)", value_b.clone());
    report.figure("diverged", "sides diverged while partitioned", diverged);
    report.figure(
        "converged_after_heal_ms",
        "values agree after the heal (ms)",
        ms_or_null(state.converged_after),
    );
    report.figure(
        "digests_equal_after_heal_ms",
        "digests equal after the heal (ms)",
        ms_or_null(state.digests_after),
    );
    report.figure(
        "peers_alive_after_heal_ms",
        "every node sees every peer alive after the heal (ms)",
        ms_or_null(peers_alive),
    );
    report.figure(
        "final_value",
        "final value",
        match &final_value {
            Some(Some(value)) => json!(value),
            Some(None) => json!("(absent)"),
            None => json!("(nodes disagree)"),
        },
    );
    report.figure("later_write_won", "the later write won", later_won);
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

    report.check(
        "both sides accepted their write",
        write_a.is_ok() && write_b.is_ok(),
        format!(
            "side a: {}, side b: {}",
            write_a
                .as_ref()
                .map_or_else(Clone::clone, |_| "ok".to_owned()),
            write_b
                .as_ref()
                .map_or_else(Clone::clone, |_| "ok".to_owned())
        ),
    );
    report.check(
        "the sides diverged while partitioned (the partition took effect)",
        diverged,
        format!(
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
        ),
    );
    report.check(
        &format!(
            "every node agrees within {} s of the heal",
            super::CONVERGENCE_TIMEOUT.as_secs()
        ),
        state.converged_after.is_some() && state.digests_after.is_some(),
        match (state.converged_after, state.digests_after) {
            (Some(v), Some(d)) => format!(
                "values after {:.0} ms, digests after {:.0} ms",
                report::ms(v),
                report::ms(d)
            ),
            (Some(v), None) => format!("values after {:.0} ms, digests never", report::ms(v)),
            _ => "the nodes still disagree".to_owned(),
        },
    );
    report.check(
        "the later write (side b) won on every node",
        later_won,
        match &final_value {
            Some(Some(value)) => format!("every node holds {value:?}"),
            Some(None) => "every node lost the key".to_owned(),
            None => "the nodes disagree".to_owned(),
        },
    );
    report.add_availability(&recorder.samples, &ctx.faults.events());
    add_fault_errors(&mut report, &fault_errors);
    report
}
