//! `meshkv test SUITE`: the test suites of API.md §6, run against any cluster that
//! serves the public HTTP API.
//!
//! Owns: the command-line arguments ([`TestArgs`]), dispatch to the suites, the shared
//! context ([`Ctx`]: the nodes' clients, the seed, the fault commands, what the run
//! expects), the checks made before each suite, convergence waits and final reads, the
//! one place where a suite reads or writes a key ([`read()`], [`write()`]), and a small
//! seeded random generator.
//! Knows nothing of: the server's internals. The suites speak only the client API
//! through [`crate::tools::client::Client`] and read the node list from the cluster file; they
//! never touch the store, replication or wire modules. They need only `/v1/kv` of
//! API.md §3: `/v1/cluster` and `/v1/convergence` are used where a store offers them.
//!
//! Every suite measures the same figures whatever `--expect` says; the mode decides
//! which checks fail the run (see `report.rs` and docs/testing.md).
//!
//! | file | owns |
//! | --- | --- |
//! | `checker.rs` | the write-chain consistency checker |
//! | `report.rs` | samples, latency, availability, expectations and verdicts, tables, JSON |
//! | `progress.rs` | a progress bar per phase (plain lines off a terminal), narration |
//! | `views.rs` | the optional `/v1/cluster` and `/v1/convergence`, waits built on them |
//! | `faults.rs` | running the kill / restart / partition / heal commands |
//! | `throughput.rs` | `throughput` |
//! | `consistency.rs` | `consistency`, and the sequential writer shared by `failure` and `stress-partition` |
//! | `failure.rs` | `failure` |
//! | `partition.rs` | `partition` |
//! | `stress_partition.rs` | `stress-partition` |

pub mod checker;
pub mod consistency;
pub mod failure;
pub mod faults;
pub mod partition;
pub mod progress;
pub mod report;
pub mod stress_partition;
pub mod throughput;
pub mod views;

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::config::ClusterConfig;
use crate::tools::client::{AccessToken, Ca, Client, DEFAULT_TIMEOUT};
use crate::tools::inspect::parse_duration;

use self::faults::Faults;
use self::progress::{say, Phase};
use self::report::{Check, Expect, Op, Recorder, Rule, SuiteReport};
use self::views::{Seen, POLL_INTERVAL};

/// A suite of API.md §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SuiteName {
    /// 10 clients read and write 100 keys on random nodes: ops/s and latency.
    Throughput,
    /// One client writes 40 keys in order over every node: the `previous` chains.
    Consistency,
    /// `consistency` on the first two nodes while the last node is killed.
    Failure,
    /// One key written on both sides of a partition, then healed: who wins.
    Partition,
    /// `consistency` while the servers are partitioned and healed partway.
    StressPartition,
    /// Every suite in turn.
    All,
}

impl SuiteName {
    fn name(self) -> &'static str {
        match self {
            SuiteName::Throughput => "throughput",
            SuiteName::Consistency => "consistency",
            SuiteName::Failure => "failure",
            SuiteName::Partition => "partition",
            SuiteName::StressPartition => "stress-partition",
            SuiteName::All => "all",
        }
    }
}

/// Arguments of `meshkv test`.
#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    /// The suite to run.
    #[arg(value_enum)]
    pub suite: SuiteName,
    /// The cluster file (API.md §1).
    #[arg(long)]
    pub cluster: PathBuf,
    /// Send the client token in FILE with every request (API.md §3.6; the suites need
    /// an `admin` token, for /v1/cluster); without it, `$MESHKV_TOKEN` if set.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Also write every figure to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Concurrent clients of `throughput` (default 10).
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Operations per client of `throughput` (default: random in 500-5000 per client).
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Keys (default: 100 for `throughput`, 40 for the others).
    #[arg(long, value_name = "N")]
    pub keys: Option<usize>,
    /// Rounds of the write-chain suites (default: random in 500-1000).
    #[arg(long, value_name = "N")]
    pub rounds: Option<u64>,
    /// Command that kills a node; `{node}` is its id [default: scripts/nemesis.sh kill {node}].
    #[arg(long, value_name = "CMD")]
    pub kill_cmd: Option<String>,
    /// Command that starts a killed node again [default: scripts/nemesis.sh restart {node}].
    #[arg(long, value_name = "CMD")]
    pub restart_cmd: Option<String>,
    /// Command that partitions the servers; `{groups}` is like `n1,n2|n3,n4`
    /// [default: scripts/nemesis.sh partition {groups}].
    #[arg(long, value_name = "CMD")]
    pub partition_cmd: Option<String>,
    /// Command that heals every partition [default: scripts/nemesis.sh heal].
    #[arg(long, value_name = "CMD")]
    pub heal_cmd: Option<String>,
    /// Seed of the random choices (default: from the clock; printed for reruns).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// What the store promises, which decides what fails the run: `ap` (meshkv's
    /// promises), `cp` (strong consistency: a minority may refuse, no read is stale)
    /// or `report` (measure only; fail only when a suite could not run).
    #[arg(long, value_enum, default_value = "ap")]
    pub expect: Expect,
    /// Longest wait for the nodes to agree (after the last write, a heal, a restart),
    /// e.g. 500ms, 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub converge_timeout: Duration,
    /// How long the `partition` suite holds its partition before reading both sides.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub partition_hold: Duration,
}

/// One node of the cluster, as the suites see it.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// A client of its HTTP API.
    pub client: Client,
}

/// What every suite gets.
pub struct Ctx {
    /// The nodes, in the order of the cluster file.
    pub nodes: Vec<Node>,
    /// The seed of this suite's random choices.
    pub seed: u64,
    /// A tag unique to this run, part of every key.
    pub run: String,
    /// The fault commands.
    pub faults: Faults,
    /// When the suite started.
    pub start: Instant,
    /// The command-line sizes.
    pub args: TestArgs,
    /// The suite running now.
    pub suite: SuiteName,
}

impl Ctx {
    /// The name of the suite running now.
    pub fn suite_name(&self) -> &'static str {
        self.suite.name()
    }

    /// What the run expects of the store.
    pub fn expect(&self) -> Expect {
        self.args.expect
    }

    /// An empty report of `suite` for this run.
    pub fn report(&self, suite: &str) -> SuiteReport {
        SuiteReport::new(suite, self.seed, self.args.expect)
    }

    /// A key that no suite writes, read to see whether a node answers.
    pub fn probe_key(&self) -> String {
        format!("probe-{}/never-written", self.run)
    }

    /// The key `k{index}` of this run of `suite`.
    pub fn key(&self, suite: &str, index: usize) -> String {
        format!("{suite}-{}/k{index}", self.run)
    }

    /// The nodes' ids, in order.
    pub fn node_ids(&self, indexes: &[usize]) -> Vec<String> {
        indexes.iter().map(|i| self.nodes[*i].id.clone()).collect()
    }
}

/// Runs the suite: `Ok(true)` when it ran and its checks hold, `Ok(false)` when a check
/// failed, `Err(sentence)` on bad usage.
pub async fn run(args: TestArgs) -> Result<bool, String> {
    let config = ClusterConfig::load(&args.cluster).map_err(|error| error.to_string())?;
    validate(&args, &config)?;
    let token =
        AccessToken::resolve(args.token_file.as_deref()).map_err(|error| error.to_string())?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
            .unwrap_or(1)
            % 1_000_000_000
    });
    let start = Instant::now();
    // With TLS (the cluster file's tls_ca_file), every node is spoken to over HTTPS.
    let ca = Ca::of_cluster(&config)?;
    let nodes: Vec<Node> = config
        .nodes
        .iter()
        .map(|spec| Node {
            id: spec.id.to_string(),
            client: Client::new(&spec.http.to_string(), DEFAULT_TIMEOUT)
                .with_ca(ca.as_ref())
                .with_token(token.clone()),
        })
        .collect();
    let faults = Faults::new(
        args.kill_cmd.clone(),
        args.restart_cmd.clone(),
        args.partition_cmd.clone(),
        args.heal_cmd.clone(),
        &args.cluster,
        start,
    );
    let run_tag = format!(
        "{:x}",
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            ^ seed.rotate_left(17))
            & 0xff_ffff_ffff
    );
    let mut ctx = Ctx {
        nodes,
        seed,
        run: run_tag,
        faults,
        start,
        args: args.clone(),
        suite: args.suite,
    };

    let suites: Vec<SuiteName> = match args.suite {
        SuiteName::All => vec![
            SuiteName::Throughput,
            SuiteName::Consistency,
            SuiteName::Failure,
            SuiteName::Partition,
            SuiteName::StressPartition,
        ],
        one => vec![one],
    };
    let mut reports = Vec::new();
    for (number, suite) in suites.iter().enumerate() {
        ctx.seed = seed.wrapping_add(number as u64);
        ctx.suite = *suite;
        say(&format!(
            "meshkv test {} --expect {}: {} nodes ({}), seed {} (rerun with --seed {seed})",
            suite.name(),
            args.expect.name(),
            ctx.nodes.len(),
            ctx.node_ids(&(0..ctx.nodes.len()).collect::<Vec<_>>())
                .join(", "),
            ctx.seed,
        ));
        // Every suite starts from a cluster that answers and, where the store offers a
        // view, in which every node sees every peer alive (a node restarted or a
        // partition healed by the previous suite may still be reconnecting).
        let before = settle(&ctx).await;
        ctx.start = Instant::now();
        ctx.faults.reset(ctx.start);
        let answered = before
            .iter()
            .all(|check| check.held || check.rule != Rule::SuiteRan);
        let outcome = if answered {
            tokio::select! {
                report = run_one(*suite, &ctx) => Some(report),
                _ = tokio::signal::ctrl_c() => None,
            }
        } else {
            // Nothing to measure against a cluster that does not answer.
            Some(ctx.report(suite.name()))
        };
        let Some(report) = outcome else {
            say("interrupted");
            if ctx.faults.partitioned() {
                say("healing the partition before exiting");
                if let Err(error) = ctx.faults.heal().await {
                    say(&error);
                }
            }
            return Ok(false);
        };
        let mut report = report.with_first_checks(before);
        report.elapsed = ctx.start.elapsed();
        report.print();
        reports.push(report);
    }
    let passed = reports.iter().all(SuiteReport::passed);
    if reports.len() > 1 {
        println!(
            "\n== meshkv test all (--expect {}): {} ==",
            args.expect.name(),
            if passed { "PASSED" } else { "FAILED" }
        );
        print!("{}", report::summary_table(&reports));
    }
    if let Some(path) = &args.json {
        let document = if reports.len() == 1 {
            reports[0].to_json()
        } else {
            json!({
                "expect": args.expect.name(),
                "passed": passed,
                "seed": seed,
                "suites": reports.iter().map(SuiteReport::to_json).collect::<Vec<Value>>(),
            })
        };
        let text = serde_json::to_string_pretty(&document)
            .map_err(|error| format!("cannot encode the JSON report: {error}"))?;
        std::fs::write(path, text + "\n").map_err(|error| {
            format!(
                "cannot write the JSON report to {}: {error}",
                path.display()
            )
        })?;
        say(&format!("JSON report written to {}", path.display()));
    }
    Ok(passed)
}

fn validate(args: &TestArgs, config: &ClusterConfig) -> Result<(), String> {
    let positive = [
        ("--clients", args.clients.map(|n| n as u64)),
        ("--ops", args.ops),
        ("--keys", args.keys.map(|n| n as u64)),
        ("--rounds", args.rounds),
    ];
    for (flag, value) in positive {
        if value == Some(0) {
            return Err(format!("{flag} must be positive"));
        }
    }
    if args.clients.is_some_and(|n| n > 1000) {
        return Err("--clients must be at most 1000".into());
    }
    if args.ops.is_some_and(|n| n > 10_000_000) || args.rounds.is_some_and(|n| n > 1_000_000) {
        return Err("--ops and --rounds must be at most 10000000 and 1000000".into());
    }
    if args.keys.is_some_and(|n| n > 100_000) {
        return Err("--keys must be at most 100000".into());
    }
    let nodes = config.nodes.len();
    match args.suite {
        SuiteName::Failure | SuiteName::All if nodes < 3 => Err(format!(
            "the failure suite needs at least 3 nodes (it writes to the first two and kills the last); {} has {nodes}",
            args.cluster.display()
        )),
        SuiteName::Partition | SuiteName::StressPartition if nodes < 2 => Err(format!(
            "the partition suites need at least 2 nodes; {} has {nodes}",
            args.cluster.display()
        )),
        _ => Ok(()),
    }
}

async fn run_one(suite: SuiteName, ctx: &Ctx) -> SuiteReport {
    match suite {
        SuiteName::Throughput => throughput::run(ctx).await,
        SuiteName::Consistency => consistency::run(ctx).await,
        SuiteName::Failure => failure::run(ctx).await,
        SuiteName::Partition => partition::run(ctx).await,
        SuiteName::StressPartition => stress_partition::run(ctx).await,
        SuiteName::All => unreachable!("`all` is expanded by `run`"),
    }
}

/// The two halves of the cluster: first half of the nodes | the rest.
pub fn halves(count: usize) -> (Vec<usize>, Vec<usize>) {
    let half = count / 2;
    ((0..half).collect(), (half..count).collect())
}

/// A small seeded generator (SplitMix64): reproducible runs without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// An index below `count` (> 0).
    pub fn below(&mut self, count: usize) -> usize {
        (self.next_u64() % count as u64) as usize
    }
}

/// The checks made before a suite starts: every node answers a read (else the suite
/// cannot run), and every node sees every peer alive where the store offers a view.
async fn settle(ctx: &Ctx) -> Vec<Check> {
    let answered = views::wait_until_answering(&ctx.nodes, &ctx.probe_key(), SETTLE_TIMEOUT).await;
    let mut checks = vec![Check {
        what: "at the start, every node answered a read".to_owned(),
        rule: Rule::SuiteRan,
        held: answered.is_ok(),
        detail: match &answered {
            Ok(took) => format!("after {:.0} ms", report::ms(*took)),
            Err(silent) => format!(
                "not within {} s, so the suite did not run: {silent}",
                SETTLE_TIMEOUT.as_secs()
            ),
        },
    }];
    if answered.is_err() {
        say(&format!(
            "WARNING: the cluster does not answer; the suite cannot run: {}",
            checks[0].detail
        ));
        return checks;
    }
    let alive = views::wait_for_peers_alive(&ctx.nodes, SETTLE_TIMEOUT).await;
    match &alive {
        Seen::After(took) if *took > Duration::from_millis(100) => say(&format!(
            "waited {:.0} ms for every node to see every peer alive",
            report::ms(*took)
        )),
        Seen::Never(view) => say(&format!(
            "WARNING: the cluster is not settled after {} s: {view}",
            SETTLE_TIMEOUT.as_secs()
        )),
        _ => {}
    }
    checks.push(Check {
        what: "at the start, every node saw every peer alive".to_owned(),
        rule: Rule::ApAndCp,
        held: alive.ok(),
        detail: match &alive {
            Seen::NotOffered => "not checked: no node offers /v1/cluster".to_owned(),
            Seen::After(took) => format!("after {:.0} ms", report::ms(*took)),
            Seen::Never(view) => view.clone(),
        },
    });
    checks
}

/// Reads `key` from node `index`, recording the request: `Ok(None)` when absent.
/// With [`write()`], the only place where the suites look at a value.
pub async fn read(
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

/// Writes `key` on node `index`, recording the request: the `previous` it answered.
pub async fn write(
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

/// Whether the nodes' digests came to agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digests {
    /// The store offers no `/v1/convergence`: values alone judge convergence.
    NotOffered,
    /// Equal on every node, this long after the wait began.
    EqualAfter(Duration),
    /// Not equal within the bound (or not polled: the values never agreed).
    NeverEqual,
}

/// What each node holds for each key after a convergence wait.
pub struct FinalState {
    /// Time until every node agreed, if they did within the bound.
    pub converged_after: Option<Duration>,
    /// `values[key][node]`: the value (`None`: absent), or the error of the last read.
    pub values: Vec<Vec<Result<Option<String>, String>>>,
    /// Whether the digests agreed too.
    pub digests: Digests,
}

impl FinalState {
    /// The value every node agrees on for key `index`, if they agree.
    pub fn agreed(&self, index: usize) -> Option<Option<String>> {
        let row = &self.values[index];
        let first = row.first()?.as_ref().ok()?;
        row.iter()
            .all(|value| value.as_ref().ok() == Some(first))
            .then(|| first.clone())
    }

    /// Every node agreed on the values and, where offered, on the digests.
    pub fn converged(&self) -> bool {
        self.converged_after.is_some() && self.digests != Digests::NeverEqual
    }

    /// The digests figure: ms, `null` (never), or `"not offered"`.
    pub fn digests_figure(&self) -> Value {
        match self.digests {
            Digests::NotOffered => json!("not offered"),
            Digests::EqualAfter(took) => json!(report::ms(took)),
            Digests::NeverEqual => Value::Null,
        }
    }

    /// What the convergence wait saw, in a sentence.
    pub fn describe(&self) -> String {
        match (self.converged_after, &self.digests) {
            (Some(values), Digests::EqualAfter(digests)) => format!(
                "values after {:.0} ms, digests after {:.0} ms",
                report::ms(values),
                report::ms(*digests)
            ),
            (Some(values), Digests::NotOffered) => format!(
                "values after {:.0} ms (the store offers no /v1/convergence digest)",
                report::ms(values)
            ),
            (Some(values), Digests::NeverEqual) => format!(
                "values agreed after {:.0} ms but the digests never did",
                report::ms(values)
            ),
            (None, _) => "the nodes still disagree".to_owned(),
        }
    }
}

/// Reads every key from every node in `nodes`.
async fn read_all(
    ctx: &Ctx,
    nodes: &[usize],
    keys: &[String],
    recorder: &mut Recorder,
) -> Vec<Vec<Result<Option<String>, String>>> {
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let mut row = Vec::with_capacity(nodes.len());
        for &index in nodes {
            row.push(read(ctx, index, key, recorder).await);
        }
        values.push(row);
    }
    values
}

/// Polls every key on every node of `nodes` until all agree (bounded by
/// `--converge-timeout`), then the nodes' digests likewise where the store offers
/// them. Reads are recorded.
pub async fn wait_for_convergence(
    ctx: &Ctx,
    nodes: &[usize],
    keys: &[String],
    recorder: &mut Recorder,
) -> FinalState {
    let started = Instant::now();
    let deadline = started + ctx.args.converge_timeout;
    let phase = Phase::start(
        ctx.suite_name(),
        "waiting for the nodes to agree",
        None,
        "polls",
    );
    let mut values;
    let mut converged_after = None;
    loop {
        values = read_all(ctx, nodes, keys, recorder).await;
        phase.inc();
        let agreeing = values
            .iter()
            .filter(|row| {
                row.first().is_some_and(|first| {
                    first.is_ok()
                        && row
                            .iter()
                            .all(|value| value.as_ref().ok() == first.as_ref().ok())
                })
            })
            .count();
        phase.message(&format!("{agreeing} of {} keys agree", keys.len()));
        if agreeing == keys.len() {
            converged_after = Some(started.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Then the digests, bounded by the same deadline (plus one poll). When the values
    // never agreed, one poll still tells whether the store offers digests at all.
    let mut digests = Digests::NeverEqual;
    loop {
        let mut seen = Vec::new();
        let mut offered = false;
        for &index in nodes {
            let node = &ctx.nodes[index];
            let sent = Instant::now();
            let result = views::digest(&node.client).await;
            match &result {
                Ok(None) => seen.push(None),
                Ok(Some(digest)) => {
                    offered = true;
                    seen.push(Some(digest.clone()));
                }
                Err(_) => {
                    // An offered endpoint that failed is a failed request.
                    offered = true;
                    seen.push(None);
                }
            }
            if !matches!(result, Ok(None)) {
                recorder.record(&node.id, Op::Convergence, sent, &result);
            }
        }
        if !offered {
            digests = Digests::NotOffered;
            break;
        }
        if converged_after.is_none() {
            break;
        }
        if seen[0].is_some() && seen.iter().all(|d| d == &seen[0]) {
            digests = Digests::EqualAfter(started.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    FinalState {
        converged_after,
        values,
        digests,
    }
}

/// Longest wait for every node to answer, and to see every peer alive, before a suite.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Milliseconds of an optional duration, for figures (`null` when absent).
pub fn ms_or_null(duration: Option<Duration>) -> Value {
    duration.map_or(Value::Null, |d| json!(report::ms(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.between(500, 5000);
            assert_eq!(x, b.between(500, 5000));
            assert!((500..=5000).contains(&x));
            assert!(a.below(3) < 3);
            b.below(3);
        }
    }

    #[test]
    fn halves_split_first_and_second_half() {
        assert_eq!(halves(4), (vec![0, 1], vec![2, 3]));
        assert_eq!(halves(3), (vec![0], vec![1, 2]));
        assert_eq!(halves(2), (vec![0], vec![1]));
    }
}
