//! One seed, start to finish: builds the simulated cluster from the plan, runs it while
//! applying the fault schedule, and checks the invariants.
//!
//! Owns: [`run`], [`Report`], the panic record of the simulation's thread.
//! Knows nothing of: how seeds are chosen (the test file does).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Once};
use std::time::Duration;

use meshkv::clock::Version;
use meshkv::config::ClusterConfig;
use meshkv::node::{self, NodeEnv};
use meshkv::persist::{MemoryStorage, Storage};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::check::{check, Evidence, Findings};
use super::clock::{ClockControl, SimClock};
use super::disk::{SimDisk, SimStorage};
use super::history::{History, Op};
use super::net::{Resets, SimTransport};
use super::observe::Observatory;
use super::plan::{Fault, Plan, HTTP_PORT, MAX_OFFSET_MS};
use super::workload::{self, Convergence, Shared};

/// Each simulation step advances time by this much on every host.
const TICK: Duration = Duration::from_millis(1);
/// Normal one-way delay between hosts: 1 to 10 ms (mostly near 1, exponential).
const MIN_LATENCY: Duration = Duration::from_millis(1);
const MAX_LATENCY: Duration = Duration::from_millis(10);
/// How long after the heal the nodes may take to agree: a restarted node's startup
/// gate, stalled connections' deadlines, anti-entropy rounds, and versions stamped by a
/// clock that ran ahead, which peers refuse until their own clocks catch up.
pub const CONVERGENCE_BOUND: Duration = Duration::from_millis(6_000 + 2 * MAX_OFFSET_MS as u64);

thread_local! {
    /// Panics on this thread since the last [`take_panics`].
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records every panic of the thread that runs it (a simulation runs on one thread),
/// then lets the default hook print it. A panic in a node's spawned task would
/// otherwise only end that task, unseen.
fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

fn take_panics() -> Vec<String> {
    PANICS.with(|panics| std::mem::take(&mut *panics.borrow_mut()))
}

/// The result of one seed.
pub struct Report {
    /// What the seed drew.
    pub plan: Plan,
    /// Every op.
    pub ops: Vec<Op>,
    /// What the checks found.
    pub findings: Findings,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Time from the heal to agreement.
    pub converged_after: Option<Duration>,
    /// The digests at the end.
    pub digests: Vec<Option<String>>,
    /// A hash of everything observable (ops, crash records, digests): two runs of one
    /// seed must give the same.
    pub trace_hash: String,
}

impl Report {
    /// A failure report: the seed, how to replay it, the schedule, the violations and
    /// the ops they involve; with `realtime`, the real-time findings too.
    pub fn describe(&self, realtime: bool) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "replay: MESHKV_SIM_SEED={} cargo test --test simulation -- --nocapture",
            self.plan.seed
        );
        let _ = write!(text, "{}", self.plan);
        let mut shown = Vec::new();
        let listed = self.findings.violations.iter().chain(
            realtime
                .then_some(&self.findings.realtime)
                .into_iter()
                .flatten(),
        );
        for violation in listed {
            let _ = writeln!(text, "VIOLATION {violation}");
            for &id in &violation.ops {
                let _ = writeln!(text, "    {}", self.ops[id]);
                shown.push(id);
            }
        }
        text
    }

    /// Counts of ops by outcome, for summaries.
    pub fn outcome_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for op in &self.ops {
            let name = match op.outcome {
                super::history::Outcome::Written { .. } => "written",
                super::history::Outcome::Found { .. } => "found",
                super::history::Outcome::NotFound => "not-found",
                super::history::Outcome::Unavailable(_) => "unavailable",
                super::history::Outcome::Failed(_) => "failed",
            };
            *counts.entry(name).or_default() += 1;
        }
        counts
    }
}

fn node_name(node: usize) -> String {
    format!("n{}", node + 1)
}

/// Runs seed `seed`.
pub fn run(seed: u64) -> Report {
    record_panics();
    take_panics();
    let plan = Plan::draw(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(3600))
        .min_message_latency(MIN_LATENCY)
        .max_message_latency(MAX_LATENCY)
        .tcp_capacity(1024)
        .build();

    let names: Vec<String> = (0..plan.nodes).map(node_name).collect();
    let ips: Vec<IpAddr> = names.iter().map(|name| sim.lookup(name.as_str())).collect();
    let config = Arc::new(
        ClusterConfig::parse(&plan.cluster_file(|node| ips[node])).expect("a valid cluster file"),
    );
    let observatory = Observatory::default();
    let clocks: Vec<Arc<ClockControl>> = (0..plan.nodes).map(|_| Arc::default()).collect();
    let resets: Vec<Arc<Resets>> = (0..plan.nodes).map(|_| Arc::default()).collect();

    for node in 0..plan.nodes {
        let (config, clock, resets) = (config.clone(), clocks[node].clone(), resets[node].clone());
        let observer = observatory.observer(node);
        let id = names[node].clone();
        // The disk outlives the host: a restart recovers what the last life synced.
        let disk = plan.durable[node].then(|| {
            let disk = SimDisk::new(seed.wrapping_mul(1_000).wrapping_add(node as u64 + 1));
            observatory.add_disk(node, disk.clone());
            disk
        });
        // Called at the start and at every restart: a fresh node, empty or with what
        // its disk holds.
        sim.host(names[node].as_str(), move || {
            let storage: Arc<dyn Storage> = match &disk {
                Some(disk) => Arc::new(SimStorage { disk: disk.clone() }),
                None => Arc::new(MemoryStorage),
            };
            let env = NodeEnv {
                clock: Arc::new(SimClock::new(clock.clone())),
                transport: Arc::new(SimTransport::new(resets.clone())),
                storage,
                repair: false,
                observer: Some(observer.clone()),
            };
            let (config, id) = (config.clone(), id.clone());
            async move {
                node::run_with(&config, &id, env, CancellationToken::new()).await?;
                Ok(())
            }
        });
    }

    let shared = Shared {
        nodes: Rc::new(
            ips.iter()
                .map(|&ip| SocketAddr::new(ip, HTTP_PORT))
                .collect(),
        ),
        keys: plan.keys,
        stop_at: plan.heal_at,
        history: Rc::new(RefCell::new(History::default())),
        observatory: observatory.clone(),
        running: Rc::new(RefCell::new(plan.clients)),
    };
    let mut others = Vec::new();
    for client in 0..plan.clients {
        let name = format!("c{}", client + 1);
        sim.client(
            name.as_str(),
            workload::client(shared.clone(), client, seed),
        );
        others.push(name);
    }
    let convergence = Rc::new(RefCell::new(Convergence::default()));
    sim.client(
        "checker",
        workload::checker(
            shared.clone(),
            plan.heal_at,
            CONVERGENCE_BOUND,
            convergence.clone(),
        ),
    );
    others.push("checker".to_owned());

    let keys: Vec<String> = (0..plan.keys).map(|key| format!("k{key}")).collect();
    let limit = plan.heal_at + CONVERGENCE_BOUND + Duration::from_secs(10);
    let mut run_errors = Vec::new();
    let mut injector = Injector {
        names: &names,
        others: &others,
        clocks: &clocks,
        resets: &resets,
        observatory: &observatory,
        keys: &keys,
        link_fault: None,
    };
    let mut next = 0;
    loop {
        while let Some(event) = plan
            .events
            .get(next)
            .filter(|event| event.at <= sim.elapsed())
        {
            injector.apply(&mut sim, &event.fault);
            next += 1;
        }
        let step = sim.step();
        observatory.sample_hlc(sim.elapsed());
        match step {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                run_errors.push(format!("the simulation failed: {error}"));
                break;
            }
        }
        if sim.elapsed() > limit {
            run_errors.push(format!(
                "the run did not finish within {limit:?} of simulated time"
            ));
            break;
        }
    }

    let finals: Vec<_> = (0..plan.nodes)
        .map(|node| {
            observatory.digest(node)?;
            Some(
                keys.iter()
                    .map(|key| (key.clone(), observatory.entry(node, key).flatten()))
                    .collect(),
            )
        })
        .collect();
    // A deleted key whose tombstone every node held may have been collected: its
    // final state is then "absent since that version" (the newest any node remembers).
    let collected: BTreeMap<String, Version> = keys
        .iter()
        .filter_map(|key| {
            let newest = (0..plan.nodes)
                .filter_map(|node| observatory.collected(node, key))
                .max()?;
            Some((key.clone(), newest))
        })
        .collect();
    let panics = take_panics();
    run_errors.extend(observatory.recovery_losses());
    let ops = std::mem::take(&mut shared.history.borrow_mut().ops);
    let crashes = observatory.crashes();
    let convergence = convergence.borrow().clone();
    let (hlc_samples, hlc_regressions) = observatory.hlc_findings();
    let findings = check(&Evidence {
        nodes: plan.nodes,
        clock_break: plan.clock_break(),
        durable: &plan.durable,
        ops: &ops,
        crashes: &crashes,
        finals: &finals,
        collected: &collected,
        converged_after: convergence.after_heal,
        convergence_bound: CONVERGENCE_BOUND,
        panics: &panics,
        hlc_samples,
        hlc_regressions: &hlc_regressions,
        run_errors: &run_errors,
    });

    let mut hash = Sha256::new();
    for op in &ops {
        hash.update(format!("{op} {:?}\n", op.holders_at_ack));
    }
    for crash in &crashes {
        hash.update(format!("{crash:?}\n"));
    }
    hash.update(format!("{:?} {:?}\n", convergence, sim.elapsed()));
    let trace_hash = format!("{:x}", hash.finalize());
    Report {
        simulated: sim.elapsed(),
        converged_after: convergence.after_heal,
        digests: convergence.digests,
        plan,
        ops,
        findings,
        trace_hash,
    }
}

/// Applies the fault schedule to the simulated world.
struct Injector<'a> {
    /// Node host names, by index.
    names: &'a [String],
    /// Client host names.
    others: &'a [String],
    clocks: &'a [Arc<ClockControl>],
    resets: &'a [Arc<Resets>],
    observatory: &'a Observatory,
    keys: &'a [String],
    /// The link fault in force, to restore after a crash.
    link_fault: Option<Fault>,
}

impl Injector<'_> {
    fn name(&self, node: usize) -> &str {
        self.names[node].as_str()
    }

    /// Every host but node `node`.
    fn all_but(&self, node: usize) -> Vec<&str> {
        self.names
            .iter()
            .chain(self.others)
            .filter(|other| **other != self.names[node])
            .map(String::as_str)
            .collect()
    }

    fn pairs(&self, a: &[usize], b: &[usize]) -> Vec<(&str, &str)> {
        a.iter()
            .flat_map(|x| b.iter().map(move |y| (self.name(*x), self.name(*y))))
            .collect()
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        match fault {
            Fault::Partition { .. }
            | Fault::OneWay { .. }
            | Fault::Hold { .. }
            | Fault::Latency { .. }
            | Fault::Loss { .. }
            | Fault::Hang { .. } => {
                self.apply_link_fault(sim, fault);
                self.link_fault = Some(fault.clone());
            }
            Fault::HealLinks => {
                let hosts: Vec<&String> = self.names.iter().chain(self.others).collect();
                for (index, x) in self.names.iter().enumerate() {
                    for y in hosts.iter().skip(index + 1) {
                        // `release` delivers what was held and marks the link healthy
                        // both ways, which also ends a partition.
                        sim.release(x.as_str(), y.as_str());
                        sim.set_link_max_message_latency(x.as_str(), y.as_str(), MAX_LATENCY);
                        sim.set_link_fail_rate(x.as_str(), y.as_str(), 0.0);
                    }
                }
                self.link_fault = None;
            }
            Fault::Reset { node } => self.resets[*node].reset_all(),
            Fault::Crash { node } => {
                let node = *node;
                if !sim.is_host_running(self.name(node)) {
                    return;
                }
                // The machine dies: its connections vanish without a FIN or RST, and a
                // peer's next segment is answered with a RST (the socket is gone).
                // Cutting the links while the runtime is dropped makes this
                // deterministic: tokio drops a runtime's tasks in an order that
                // depends on process-wide task ids, and so would the segments they
                // send as they go.
                for other in self.all_but(node) {
                    sim.partition(self.name(node), other);
                }
                sim.crash(self.name(node));
                for other in self.all_but(node) {
                    sim.repair(self.name(node), other);
                }
                if let Some(fault) = self.link_fault.clone() {
                    self.apply_link_fault(sim, &fault);
                }
                self.observatory.crashed(node, sim.elapsed(), self.keys);
            }
            Fault::Restart { node } => {
                if !sim.is_host_running(self.name(*node)) {
                    sim.bounce(self.name(*node));
                }
            }
            Fault::Clock {
                node,
                offset_ms,
                drift_ppm,
            } => self.clocks[*node].set(sim.elapsed(), *offset_ms, *drift_ppm),
        }
    }

    /// Applies a link fault; applying it twice changes nothing.
    fn apply_link_fault(&self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        match fault {
            Fault::Partition { a, b } => {
                for (x, y) in self.pairs(a, b) {
                    sim.partition(x, y);
                }
            }
            Fault::OneWay { from, to } => {
                for (x, y) in self.pairs(from, to) {
                    sim.partition_oneway(x, y);
                }
            }
            Fault::Hold { a, b } => {
                for (x, y) in self.pairs(a, b) {
                    sim.hold(x, y);
                }
            }
            Fault::Latency { a, b, max_ms } => {
                let latency = Duration::from_millis(*max_ms);
                sim.set_link_max_message_latency(self.name(*a), self.name(*b), latency);
            }
            Fault::Loss { a, b, per_mille } => {
                let rate = f64::from(*per_mille) / 1000.0;
                sim.set_link_fail_rate(self.name(*a), self.name(*b), rate);
            }
            Fault::Hang { node } => {
                for other in self.all_but(*node) {
                    sim.hold(self.name(*node), other);
                }
            }
            _ => unreachable!("not a link fault: {fault}"),
        }
    }
}
