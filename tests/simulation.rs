//! Deterministic simulation of real meshkv nodes (every task of `node::run_with`: the
//! HTTP API, replication drivers, failure detector, anti-entropy, startup gate) on
//! turmoil's simulated network and clocks, under a fault schedule drawn from a seed.
//!
//! Every seed checks, once the faults stop and the network heals:
//! * every node reaches the same digest (`/v1/convergence`) within a bound;
//! * no acknowledged write is lost, and a deleted key does not come back: each key ends
//!   at a version at least that of every acknowledged write, unless a crash left no
//!   running node and no disk holding it (see `sim/check.rs`); a key whose tombstone
//!   was collected everywhere ends absent;
//! * a durable node (simulated disk, `sim/disk.rs`) has every write it acknowledged on
//!   its disk when it crashes, and recovers all of it when it restarts;
//! * no value comes from nowhere, and a value matches its version;
//! * a `quorum`/`all` read sees every `quorum`/`all` write acknowledged before it was
//!   sent; a `quorum`/`all` acknowledgement is backed by that many replicas the moment
//!   the client has it (read from the nodes' states, outside the network);
//! * no panic; each node's versions increase in real-time order, across restarts;
//! * real-time order of writes (a write sent after another was acknowledged gets a
//!   larger version, docs/API.md §3.2), wherever the clocks keep the guarantee's
//!   assumptions: on seeds with true or steady clocks, and on the others until the
//!   first clock step or fast drift. After that it is reported, and enforced only with
//!   `MESHKV_SIM_REALTIME=enforce`.
//!
//! Environment:
//! * `MESHKV_SIM_SEED=N`: run seed N alone, printing its schedule and history;
//! * `MESHKV_SIM_SEEDS=N` (default 300) and `MESHKV_SIM_FIRST=S` (default 0): the seeds
//!   S..S+N of the sweep, for soaks;
//! * `MESHKV_SIM_REALTIME=enforce`: real-time order violations outside the guarantee's
//!   assumptions fail the run too.

mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sim::check::Coverage;
use sim::plan::ClockFaults;
use sim::run::{run, Report};

/// Seeds that once failed, kept as regression tests whatever the sweep's range. No
/// seed has failed on the node code as it is; these caught deliberate breakages
/// (DESIGN §9): 1 and 3 a `quorum` write acknowledged one replica short, 0 an HLC
/// that forgot remote stamps (with the clock draws of the time).
const REGRESSION_SEEDS: &[u64] = &[0, 1, 3];

/// Seeds whose runs violate real-time order outside the guarantee's assumptions: in
/// each, a clock stepped after the acknowledging node's last sample of it (during a
/// partition or hold, or within a heartbeat), which no node can see. Run with
/// `--ignored` to watch how far beyond its promise the node goes.
const KNOWN_REALTIME_FAILURES: &[u64] = &[19, 44, 46, 86, 111, 112, 116, 154, 219];

/// The sweep's seeds split into this many tests, which run in parallel.
const SHARDS: u64 = 2;

/// Seeds in the sweep unless `MESHKV_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 300;

/// Seeds whose schedules crash (durable and memory-only nodes), hang or hold, and
/// reset nodes, for the determinism test.
const DETERMINISM_SEEDS: [u64; 2] = [2, 10];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}"))
    })
}

/// Whether real-time order fails a seed where the clocks left the assumptions of its
/// guarantee (docs/API.md §3.2). Inside them it is an invariant like the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RealTime {
    /// Reported only (the default).
    Contract,
    /// Fails the seed too (`MESHKV_SIM_REALTIME=enforce`): how far the node goes
    /// beyond its promise.
    Enforce,
}

impl RealTime {
    fn from_env() -> Self {
        match std::env::var("MESHKV_SIM_REALTIME").as_deref() {
            Err(_) | Ok("") | Ok("contract") => RealTime::Contract,
            Ok("enforce") => RealTime::Enforce,
            Ok(other) => {
                panic!("MESHKV_SIM_REALTIME must be enforce or contract, not {other:?}")
            }
        }
    }

    /// True if `report` fails.
    fn fails(self, report: &Report) -> bool {
        !report.findings.violations.is_empty()
            || (self == RealTime::Enforce && !report.findings.realtime.is_empty())
    }
}

/// Runs `seeds`, prints a line per seed and a summary, and returns the failure
/// reports.
fn sweep(label: &str, seeds: impl Iterator<Item = u64>, realtime: RealTime) -> Vec<String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut realtime_seeds: BTreeMap<ClockFaults, Vec<u64>> = BTreeMap::new();
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let mut coverage = Coverage::default();
    let (mut runs, mut simulated, mut ops) = (0, Duration::ZERO, 0);
    // Seeds whose clocks kept the guarantee's assumptions all along.
    let mut promised_seeds = 0;
    for seed in seeds {
        let report = run(seed);
        println!(
            "seed {seed}: {} nodes, {}, {} ops, {:.1} s simulated, converged {:?} after the heal, {} violations, {} real-time, trace {}",
            report.plan.nodes,
            report.plan.clocks.as_str(),
            report.ops.len(),
            report.simulated.as_secs_f64(),
            report.converged_after,
            report.findings.violations.len(),
            report.findings.realtime.len(),
            &report.trace_hash[..16],
        );
        runs += 1;
        promised_seeds += usize::from(report.plan.clock_break().is_none());
        simulated += report.simulated;
        ops += report.ops.len();
        coverage += report.findings.coverage;
        for (kind, count) in report.plan.fault_counts() {
            *faults.entry(kind).or_default() += count;
        }
        if !report.findings.realtime.is_empty() {
            realtime_seeds
                .entry(report.plan.clocks)
                .or_default()
                .push(seed);
        }
        if realtime.fails(&report) {
            failures.push(report.describe(realtime == RealTime::Enforce));
        }
    }
    println!(
        "{label}: {runs} seeds, {ops} ops, {:.0} s simulated in {:.1} s; {} failed",
        simulated.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        failures.len(),
    );
    println!("{label}: faults injected {faults:?}");
    println!("{label}: checked {coverage:?}");
    println!(
        "{label}: real-time order enforced on the whole run of {promised_seeds} seeds, and until the first clock change on the others"
    );
    for (clocks, seeds) in &realtime_seeds {
        println!(
            "{label}: real-time order violated with {}: {} seeds {seeds:?}",
            clocks.as_str(),
            seeds.len()
        );
    }
    failures
}

fn assert_none(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn print_report(report: &Report) {
    print!("{}", report.plan);
    for op in &report.ops {
        println!("  {op}");
    }
    println!(
        "simulated {:?}; converged {:?} after the heal; digests {:?}; trace {}",
        report.simulated, report.converged_after, report.digests, report.trace_hash
    );
    println!(
        "faults {:?}; outcomes {:?}",
        report.plan.fault_counts(),
        report.outcome_counts()
    );
    println!("checked {:?}", report.findings.coverage);
    for violation in report
        .findings
        .violations
        .iter()
        .chain(&report.findings.realtime)
    {
        println!("VIOLATION {violation}");
    }
}

/// The sweep, shard `shard`; or, with `MESHKV_SIM_SEED`, that seed alone (in shard 0).
fn sweep_shard(shard: u64) {
    let realtime = RealTime::from_env();
    if let Some(seed) = env_u64("MESHKV_SIM_SEED") {
        if shard == 0 {
            let report = run(seed);
            print_report(&report);
            assert!(!realtime.fails(&report), "{}", report.describe(true));
        }
        return;
    }
    let first = env_u64("MESHKV_SIM_FIRST").unwrap_or(0);
    let count = env_u64("MESHKV_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let seeds = (first..first + count).filter(|seed| seed % SHARDS == shard);
    assert_none(sweep(&format!("shard {shard}"), seeds, realtime));
}

#[test]
fn seeds_shard_0() {
    sweep_shard(0);
}

#[test]
fn seeds_shard_1() {
    sweep_shard(1);
}

#[test]
fn regression_seeds() {
    assert_none(sweep(
        "regressions",
        REGRESSION_SEEDS.iter().copied(),
        RealTime::from_env(),
    ));
}

/// Two seeds with crashes, hangs and resets, each run twice, in both orders on one
/// thread (while the sweep's shards run on others): the traces must not change. Task
/// ids are process-wide in tokio, so this also checks that nothing depends on them.
#[test]
fn one_seed_gives_one_trace() {
    let seeds = [
        DETERMINISM_SEEDS[0],
        DETERMINISM_SEEDS[1],
        DETERMINISM_SEEDS[1],
        DETERMINISM_SEEDS[0],
    ];
    let reports: Vec<Report> = seeds.iter().map(|&seed| run(seed)).collect();
    for (first, second) in [(&reports[0], &reports[3]), (&reports[1], &reports[2])] {
        let seed = first.plan.seed;
        assert!(!first.ops.is_empty(), "seed {seed} did something");
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} ran twice differently"
        );
        assert_eq!(
            first.digests, second.digests,
            "seed {seed} ended twice differently"
        );
    }
}

#[test]
#[ignore = "outside the real-time guarantee's assumptions (docs/API.md §3.2): clock steps after the last sample"]
fn known_realtime_failures() {
    assert_none(sweep(
        "known real-time failures",
        KNOWN_REALTIME_FAILURES.iter().copied(),
        RealTime::Enforce,
    ));
}
