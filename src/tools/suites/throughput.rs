//! The `throughput` suite: concurrent clients (tokio tasks) randomly read and write
//! a set of keys on random nodes.
//!
//! Owns: the client tasks (10 by default, each doing `--ops` or a random 500-5000
//! operations, half reads, half writes), and the figures: ops/s, latency p50/p99/max
//! overall and per operation, errors.
//! Knows nothing of: consistency; values are unique but not checked.

use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;

use super::progress::{say, Phase};
use super::report::{self, Group, Op, Recorder, Rule, Sample, SuiteReport};
use super::{Ctx, Node, Rng};

/// One client: `ops` random operations.
async fn client(
    number: usize,
    ops: u64,
    seed: u64,
    nodes: Vec<Node>,
    keys: Arc<Vec<String>>,
    start: Instant,
    done: ProgressBar,
) -> Recorder {
    let mut rng = Rng::new(seed);
    let mut recorder = Recorder::new(start);
    for op in 0..ops {
        let k = rng.below(keys.len());
        let node = &nodes[rng.below(nodes.len())];
        let sent = Instant::now();
        if rng.next_u64() % 2 == 0 {
            let result = node.client.get(&keys[k], None).await;
            recorder.record(&node.id, Op::Get, sent, &result);
        } else {
            let value = format!("k{k}:c{number}:o{op}");
            let result = node.client.put(&keys[k], &value, None).await;
            recorder.record(&node.id, Op::Put, sent, &result);
        }
        done.inc(1);
    }
    recorder
}

/// `throughput`.
pub async fn run(ctx: &Ctx) -> SuiteReport {
    let mut report = ctx.report("throughput");
    let clients = ctx.args.clients.unwrap_or(10);
    let key_count = ctx.args.keys.unwrap_or(100);
    let mut rng = Rng::new(ctx.seed);
    let ops: Vec<u64> = (0..clients)
        .map(|_| ctx.args.ops.unwrap_or_else(|| rng.between(500, 5000)))
        .collect();
    let total: u64 = ops.iter().sum();
    let keys: Arc<Vec<String>> =
        Arc::new((0..key_count).map(|i| ctx.key("throughput", i)).collect());
    say(&format!(
        "throughput: {clients} clients, {key_count} keys, {total} operations (per client: {})",
        ops.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let phase = Phase::start("throughput", "load", Some(total), "operations");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (number, ops) in ops.iter().enumerate() {
        tasks.push(tokio::spawn(client(
            number,
            *ops,
            rng.next_u64(),
            ctx.nodes.clone(),
            keys.clone(),
            ctx.start,
            phase.counter(),
        )));
    }
    let mut samples: Vec<Sample> = Vec::with_capacity(total as usize);
    let mut crashed = 0;
    for task in tasks {
        match task.await {
            Ok(recorder) => samples.extend(recorder.samples),
            Err(_) => crashed += 1,
        }
    }
    let elapsed = started.elapsed();
    drop(phase);

    let all: Vec<&Sample> = samples.iter().collect();
    let gets: Vec<&Sample> = samples.iter().filter(|s| s.op == Op::Get).collect();
    let puts: Vec<&Sample> = samples.iter().filter(|s| s.op == Op::Put).collect();
    let errors = samples.iter().filter(|s| s.error.is_some()).count();
    let w = Group::Workload;
    report.figure(w, "clients", "clients", clients);
    report.figure(w, "keys", "keys", key_count);
    report.figure(w, "operations", "operations", samples.len());
    report.figure(
        w,
        "elapsed_s",
        "elapsed (s)",
        report::round(elapsed.as_secs_f64()),
    );
    report.figure(
        w,
        "ops_per_s",
        "ops/s",
        report::round(samples.len() as f64 / elapsed.as_secs_f64().max(1e-3)),
    );
    report.add_latency("", "all: ", &all);
    report.add_latency("get_", "get: ", &gets);
    report.add_latency("put_", "put: ", &puts);
    let mut per_node: Vec<String> = Vec::new();
    for node in &ctx.nodes {
        let count = samples.iter().filter(|s| s.node == node.id).count();
        per_node.push(format!("{} {count}", node.id));
    }
    report.figure(
        w,
        "requests_per_node",
        "requests per node",
        per_node.join(", "),
    );
    report.add_availability(&samples, &ctx.faults.events());
    report.check(
        Rule::ApAndCp,
        "no request failed (a healthy cluster)",
        errors == 0 && crashed == 0,
        format!("{errors} failed requests, {crashed} client tasks crashed"),
    );
    report
}
