//! The `failure` suite: `consistency` sent only to the first two nodes while the last
//! node is killed a third of the way through.
//!
//! Owns: the plan (targets, kill round, the phases before and after the kill), the
//! post-run steps (final check on the live nodes, restart of the killed node, a
//! read-your-writes probe through it, its catching up) and the suite's checks.
//! Knows nothing of: how the node is killed (the `--kill-cmd` / `--restart-cmd` commands).

use std::time::{Duration, Instant};

use super::checker;
use super::consistency::{
    add_chain, add_fault_checks, add_final, add_phases, add_writes, drive, settle, sizes, tally,
    Action, PhasePlan, Plan,
};
use super::progress::{say, Phase};
use super::report::{self, Group, Recorder, Rule, SuiteReport};
use super::views;
use super::{ms_or_null, read, wait_for_convergence, write, Ctx, SETTLE_TIMEOUT};

/// Longest the read-your-writes probe goes on (also bounded by `--converge-timeout`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `failure`: writes to nodes 1 and 2, kills the last node at a third of the rounds,
/// then restarts it and checks that it catches up.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = ctx.report("failure");
    let (rounds, keys) = sizes(ctx);
    let count = ctx.nodes.len();
    let victim = count - 1;
    let live: Vec<usize> = (0..victim).collect();
    let kill_round = rounds / 3;
    let plan = Plan {
        suite: "failure",
        targets: vec![0, 1],
        rounds,
        keys,
        faults: vec![(kill_round, Action::Kill(victim))],
        phases: vec![
            PhasePlan {
                key: "before_kill",
                label: "before the kill",
                from_round: 0,
            },
            PhasePlan {
                key: "after_kill",
                label: "after the kill",
                from_round: kill_round,
            },
        ],
    };
    say(&format!(
        "failure: {rounds} rounds of {keys} keys to {} and {}; {} is killed at round {kill_round}",
        ctx.nodes[0].id, ctx.nodes[1].id, ctx.nodes[victim].id,
    ));
    let mut written = drive(ctx, &plan).await;

    // The live nodes must agree on every last acknowledged write.
    let state = wait_for_convergence(ctx, &live, &written.keys, &mut written.recorder).await;
    let mismatches = settle(ctx, &live, &mut written.histories, &state);
    let outcome = checker::check(&written.histories);
    let tallies = tally(&plan, &written, &outcome);

    // Then the killed node comes back and must catch up.
    say(&format!(
        "failure: restarting {} and waiting for it to catch up",
        ctx.nodes[victim].id
    ));
    let restarted = {
        let _phase = Phase::start("failure", "restarting the killed node", None, "commands");
        ctx.faults.restart(&ctx.nodes[victim].id).await
    };
    let restart_errors: Vec<String> = restarted.as_ref().err().cloned().into_iter().collect();
    let all: Vec<usize> = (0..count).collect();
    let mut rejoin_recorder = Recorder::new(ctx.start);
    let (probe, rejoined, peers_alive) = if restarted.is_ok() {
        let probe = read_your_writes_probe(ctx, victim, &mut rejoin_recorder).await;
        let rejoined = wait_for_convergence(ctx, &all, &written.keys, &mut rejoin_recorder).await;
        let alive = views::wait_for_peers_alive(&ctx.nodes, SETTLE_TIMEOUT).await;
        (Some(probe), Some(rejoined), Some(alive))
    } else {
        (None, None, None)
    };

    add_writes(&mut report, &written, &plan);
    add_chain(&mut report, &outcome, &written, Rule::ApAndCp);
    // The live nodes are a healthy majority: ap and cp alike promise consistency.
    add_phases(
        &mut report,
        &plan,
        &tallies,
        &[Rule::ApAndCp, Rule::ApAndCp],
    );
    add_final(
        ctx,
        &mut report,
        "live_",
        "live nodes after the last write",
        &state,
        &mismatches,
    );
    if let Some(rejoined) = &rejoined {
        let mut histories = written.histories.clone();
        let rejoin_mismatches = settle(ctx, &all, &mut histories, rejoined);
        add_final(
            ctx,
            &mut report,
            "rejoined_",
            "all nodes after the restart",
            rejoined,
            &rejoin_mismatches,
        );
    }
    if let Some(probe) = &probe {
        add_probe(ctx, &mut report, probe, victim);
    }
    if let Some(peers_alive) = &peers_alive {
        report.figure(
            Group::Convergence,
            "restarted_peers_alive_after_ms",
            "every node sees every peer alive after the restart (ms)",
            peers_alive.figure(),
        );
    }
    // Availability: every request of the run went to a live node.
    let failed = report.add_availability(&written.recorder.samples, &ctx.faults.events());
    report.check(
        Rule::Ap,
        "no request to the live nodes failed",
        failed == 0,
        format!("{failed} failed requests"),
    );
    add_fault_checks(&mut report, &written.effects, &restart_errors);
    report
}

/// What the read-your-writes probe through the restarted node saw.
struct Probe {
    /// Reads that returned a value older than the write just acknowledged.
    stale: usize,
    /// Reads that failed (refused, unreachable).
    refused: usize,
    /// Time from the restart until a read saw the latest write.
    fresh_after: Option<Duration>,
}

/// Right after the restart: write on the first node, read through the restarted node at
/// once, every 50 ms until the read sees the write (bounded).
async fn read_your_writes_probe(ctx: &Ctx, victim: usize, recorder: &mut Recorder) -> Probe {
    let bound = PROBE_TIMEOUT.min(ctx.args.converge_timeout);
    let phase = Phase::start(
        "failure",
        "read-your-writes through the restarted node",
        None,
        "reads",
    );
    let started = Instant::now();
    let key = ctx.key("failure-probe", 0);
    let mut probe = Probe {
        stale: 0,
        refused: 0,
        fresh_after: None,
    };
    for attempt in 0.. {
        let value = format!("probe:{attempt}");
        let written = write(ctx, 0, &key, &value, recorder).await;
        let got = read(ctx, victim, &key, recorder).await;
        phase.inc();
        if written.is_ok() {
            match got {
                Ok(Some(got)) if got == value => {
                    probe.fresh_after = Some(started.elapsed());
                    break;
                }
                Ok(_) => probe.stale += 1,
                Err(_) => probe.refused += 1,
            }
        }
        if started.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe
}

fn add_probe(ctx: &Ctx, report: &mut SuiteReport, probe: &Probe, victim: usize) {
    let (node, first) = (&ctx.nodes[victim].id, &ctx.nodes[0].id);
    report.figure(
        Group::Consistency,
        "restarted_stale_reads",
        "restarted node: stale reads of a write just made on the first node",
        probe.stale,
    );
    report.figure(
        Group::Availability,
        "restarted_refused_reads",
        "restarted node: failed reads while catching up",
        probe.refused,
    );
    report.figure(
        Group::Convergence,
        "restarted_reads_own_writes_after_ms",
        "restarted node: reads the latest write after (ms)",
        ms_or_null(probe.fresh_after),
    );
    let fresh = probe.fresh_after.map_or_else(
        || "never".to_owned(),
        |d| format!("after {:.0} ms", report::ms(d)),
    );
    report.check(
        Rule::ApAndCp,
        "the restarted node never served a stale read",
        probe.stale == 0,
        format!(
            "{} reads through {node} missed a write just acknowledged by {first}",
            probe.stale
        ),
    );
    // API.md §3: with the defaults, a client writing then reading through different
    // healthy nodes sees its latest write, a node that has just come back included.
    report.check(
        Rule::Ap,
        "read-your-writes through the restarted node as soon as it answers",
        probe.stale == 0 && probe.refused == 0 && probe.fresh_after.is_some(),
        format!(
            "{} stale and {} failed reads through {node}; fresh {fresh}",
            probe.stale, probe.refused
        ),
    );
}
