//! The `failure` suite: `consistency` sent only to the first two nodes while the last
//! node is killed a third of the way through.
//!
//! Owns: the plan (targets, kill round), the post-run steps (final check on the live
//! nodes, restart of the killed node, its catching up) and the suite's checks: no
//! violation, no failed request to the live nodes, and the slowest replies around the kill.
//! Knows nothing of: how the node is killed (the `--kill-cmd` / `--restart-cmd` commands).

use std::time::{Duration, Instant};

use super::checker;
use super::consistency::{
    add_chain, add_fault_errors, add_final, add_writes, drive, settle, sizes, Action, Plan,
};
use super::report::{self, say, Op, Recorder, SuiteReport};
use super::{ms_or_null, wait_for_convergence, wait_for_peers_alive, Ctx, SETTLE_TIMEOUT};

/// `failure`: writes to nodes 1 and 2, kills the last node at a third of the rounds,
/// then restarts it and checks that it catches up.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = SuiteReport::new("failure", ctx.seed);
    let (rounds, keys) = sizes(ctx);
    let count = ctx.nodes.len();
    let victim = count - 1;
    let live: Vec<usize> = (0..victim).collect();
    let plan = Plan {
        suite: "failure",
        targets: vec![0, 1],
        rounds,
        keys,
        faults: vec![(rounds / 3, Action::Kill(victim))],
    };
    say(&format!(
        "failure: {rounds} rounds of {keys} keys to {} and {}; {} is killed at round {}",
        ctx.nodes[0].id,
        ctx.nodes[1].id,
        ctx.nodes[victim].id,
        rounds / 3
    ));
    let mut written = drive(ctx, &plan).await;

    // The live nodes must agree on every last acknowledged write.
    let state = wait_for_convergence(ctx, &live, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &live, &mut written, &state);
    let outcome = checker::check(&written.histories);
    let mut fault_errors = written.fault_errors.clone();

    // Then the killed node comes back and must catch up.
    say(&format!(
        "failure: restarting {} and waiting for it to catch up",
        ctx.nodes[victim].id
    ));
    let restarted = ctx.faults.restart(&ctx.nodes[victim].id).await;
    let restart_ok = restarted.is_ok();
    if let Err(error) = restarted {
        fault_errors.push(error);
    }
    let all: Vec<usize> = (0..count).collect();
    let mut rejoin_recorder = report::Recorder::new(ctx.start);
    let probe = if restart_ok {
        Some(read_your_writes_probe(ctx, victim, &mut rejoin_recorder).await)
    } else {
        None
    };
    let rejoined = if restart_ok {
        Some(wait_for_convergence(ctx, &all, &written.keys, &mut rejoin_recorder).await)
    } else {
        None
    };
    let peers_alive = if restart_ok {
        Some(wait_for_peers_alive(ctx, &all, SETTLE_TIMEOUT).await)
    } else {
        None
    };

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, true);
    add_final(
        &mut report,
        "live_",
        "live nodes after the last write",
        &state,
        &mismatches,
        true,
    );
    if let Some(rejoined) = &rejoined {
        let mut probe = super::consistency::Written {
            keys: written.keys.clone(),
            histories: written.histories.clone(),
            sent_at: Vec::new(),
            recorder: report::Recorder::new(ctx.start),
            fault_errors: Vec::new(),
            window: written.window,
        };
        let rejoin_mismatches = settle(ctx, &all, &mut probe, rejoined);
        add_final(
            &mut report,
            "rejoined_",
            "all nodes after the restart",
            rejoined,
            &rejoin_mismatches,
            true,
        );
    }
    if let Some(probe) = &probe {
        report.figure(
            "restarted_stale_reads",
            "restarted node: stale reads of a write just made on the first node",
            probe.stale,
        );
        report.figure(
            "restarted_reads_own_writes_after_ms",
            "restarted node: reads the latest write after (ms)",
            ms_or_null(probe.fresh_after),
        );
        // API.md §3: with the defaults, a client writing then reading through
        // different healthy nodes sees its latest write, a node that has just come
        // back and answers /health included.
        report.check(
            "read-your-writes through the restarted node once it answers /health",
            probe.stale == 0 && probe.fresh_after.is_some(),
            format!(
                "{} reads through {} missed a write just acknowledged by {} (fresh after {})",
                probe.stale,
                ctx.nodes[victim].id,
                ctx.nodes[0].id,
                probe.fresh_after.map_or_else(
                    || "never".to_owned(),
                    |d| format!("{:.0} ms", report::ms(d))
                )
            ),
        );
    }
    if let Some(peers_alive) = &peers_alive {
        report.figure(
            "restarted_peers_alive_after_ms",
            "every node sees every peer alive after the restart (ms)",
            match peers_alive {
                Ok(took) => serde_json::json!(report::ms(*took)),
                Err(_) => serde_json::Value::Null,
            },
        );
    }
    // Availability: every request of the run went to a live node.
    let failed = report.add_availability(&written.recorder.samples, &ctx.faults.events());
    report.check(
        "no request to the live nodes failed",
        failed == 0,
        format!("{failed} failed requests"),
    );
    add_fault_errors(&mut report, &fault_errors);
    report
}

/// What the read-your-writes probe through the restarted node saw.
struct Probe {
    /// Reads that missed the write just acknowledged.
    stale: usize,
    /// Time from the restart until a read saw the latest write.
    fresh_after: Option<Duration>,
}

/// Right after the restart: write on the first node, read through the restarted node at
/// once, every 50 ms until the read sees the write (bounded by 10 s).
async fn read_your_writes_probe(ctx: &Ctx, victim: usize, recorder: &mut Recorder) -> Probe {
    let started = Instant::now();
    let key = ctx.key("failure-probe", 0);
    let mut stale = 0;
    for attempt in 0..200 {
        let value = format!("probe:{attempt}");
        let (writer, reader) = (&ctx.nodes[0], &ctx.nodes[victim]);
        let sent = Instant::now();
        let written = writer.client.put(&key, &value, None).await;
        recorder.record(&writer.id, Op::Put, sent, &written);
        let sent = Instant::now();
        let read = reader.client.get(&key, None).await;
        recorder.record(&reader.id, Op::Get, sent, &read);
        if written.is_ok() {
            match read {
                Ok(Some(reply)) if reply.value == value => {
                    return Probe {
                        stale,
                        fresh_after: Some(started.elapsed()),
                    }
                }
                _ => stale += 1,
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Probe {
        stale,
        fresh_after: None,
    }
}
