//! What one seed runs: the cluster, the workload's shape, and the fault schedule, all
//! drawn from the seed before the simulation starts.
//!
//! Owns: [`Plan`], [`Event`], [`Fault`] and the drawing of them ([`Plan::draw`]), and the
//! cluster file of a run ([`Plan::cluster_file`]).
//! Knows nothing of: turmoil (the runner applies the events), the node.
//!
//! # The faults, and what each means for a protocol over TCP
//! * `partition` (both ways, a majority from a minority or any split) and `one-way`:
//!   turmoil drops the segments. TCP here never retransmits, so a connection that lost
//!   a segment stays stalled for good, like a real one whose retransmissions all went
//!   into the void: only the nodes' deadlines (request, connect, idle) notice, and a new
//!   connection is needed after the heal. A one-way cut lets requests through and drops
//!   the replies (or the reverse).
//! * `hold` (delay): segments wait on the link and are delivered in order on release, as
//!   when TCP's retransmissions finally get through; the deadlines may or may not fire
//!   first. Requests may then arrive after their sender gave up and re-sent them on a
//!   new connection: duplicates, and old frames overtaking newer ones across connections
//!   (the only reordering TCP allows).
//! * `latency`: one link's delay rises (up to hundreds of ms) for a while.
//! * `loss`: turmoil's random link failure: every segment in flight on the link is
//!   dropped now and then (connections stall, as above).
//! * `reset`: every open connection of a node fails at once (ECONNRESET), injected at
//!   the transport seam. The driver gives its in-flight push back to the queue and sends
//!   it again on the next connection: a duplicate if the first copy was applied.
//! * `crash` and `restart`: the host's runtime is dropped (every task and socket, as
//!   `kill -9` does: peers see the connections close) and later started again: empty
//!   for a memory-only node, from what its simulated disk synced for a durable one
//!   (about half the nodes, drawn per seed: [`Plan::durable`]).
//! * `hang`: every link of a node, clients' too, is held for a while, as SIGSTOP does;
//!   then released.
//! * `clock`: a node's wall clock jumps to an offset and drifts from then on, within
//!   `max_clock_skew_ms` of the others or beyond it.
//!
//! Clients also retry a write whose connection failed, once, on another node: the same
//! value may then be applied twice, under two versions.
//!
//! Link faults follow one another (turmoil's hold, partition and release act on one
//! state per link, so overlapping them would undo each other); crashes, resets and
//! clock changes overlap anything. At the heal every link is released and repaired,
//! crashed nodes restart and clocks return to true time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Timing of the simulated cluster: the defaults halved, so that simulated time (which
/// costs real time) is spent on faults rather than on waits; ratios as in production.
pub const TUNING: &str = r#"
max_clock_skew_ms = 500
live_timeout_ms = 250
strong_timeout_ms = 500
anti_entropy_interval_ms = 500
heartbeat_interval_ms = 100
suspect_after_ms = 300
startup_sync_timeout_ms = 2500
connect_timeout_ms = 250
request_timeout_ms = 750
peer_idle_timeout_ms = 5000
max_backoff_ms = 150
http_timeout_ms = 5000
http_header_timeout_ms = 2500
"#;

/// `max_clock_skew_ms` of [`TUNING`].
pub const MAX_CLOCK_SKEW_MS: i64 = 500;

/// Client HTTP port of every node (each node has its own IP).
pub const HTTP_PORT: u16 = 7001;
/// Peer port of every node.
pub const PEER_PORT: u16 = 7101;

/// A set of nodes, by index (0 is `n1`).
pub type Group = Vec<usize>;

/// One change to the simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Drop everything between the two groups, both ways.
    Partition {
        /// One side.
        a: Group,
        /// The other side.
        b: Group,
    },
    /// Drop everything sent from `from` to `to`.
    OneWay {
        /// Senders whose segments are dropped.
        from: Group,
        /// Their destinations.
        to: Group,
    },
    /// Hold every segment between the two groups until the link is healed.
    Hold {
        /// One side.
        a: Group,
        /// The other side.
        b: Group,
    },
    /// The link between two nodes delays each segment by up to `max_ms`.
    Latency {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Largest delay.
        max_ms: u64,
    },
    /// The link between two nodes fails at random with this probability per segment.
    Loss {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Per-segment failure probability, in thousandths.
        per_mille: u32,
    },
    /// Every link of a node is held: the process is hung.
    Hang {
        /// The node.
        node: usize,
    },
    /// Every link fault ends: held segments are delivered, cuts repaired, latency and
    /// loss back to normal.
    HealLinks,
    /// Every open connection of a node is reset.
    Reset {
        /// The node.
        node: usize,
    },
    /// The node's process dies.
    Crash {
        /// The node.
        node: usize,
    },
    /// The node starts again: empty, or from its disk if it is durable.
    Restart {
        /// The node.
        node: usize,
    },
    /// The node's wall clock is `offset_ms` off from now on, drifting by `drift_ppm`.
    Clock {
        /// The node.
        node: usize,
        /// Offset from true time.
        offset_ms: i64,
        /// Drift from now on, parts per million.
        drift_ppm: i64,
    },
}

/// A fault at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

fn group(nodes: &Group) -> String {
    nodes
        .iter()
        .map(|node| format!("n{}", node + 1))
        .collect::<Vec<_>>()
        .join(",")
}

impl Fault {
    /// A short name of the kind of fault, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one-way",
            Fault::Hold { .. } => "hold",
            Fault::Latency { .. } => "latency",
            Fault::Loss { .. } => "loss",
            Fault::Hang { .. } => "hang",
            Fault::HealLinks => "heal-links",
            Fault::Reset { .. } => "reset",
            Fault::Crash { .. } => "crash",
            Fault::Restart { .. } => "restart",
            Fault::Clock {
                offset_ms,
                drift_ppm,
                ..
            } => {
                if *drift_ppm == 0 && offset_ms.abs() <= WITHIN_OFFSET_MS {
                    "clock-steady"
                } else if offset_ms.abs() <= WITHIN_OFFSET_MS && drift_ppm.abs() <= WITHIN_DRIFT_PPM
                {
                    "clock-within"
                } else {
                    "clock-beyond"
                }
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { a, b } => write!(f, "partition {} | {}", group(a), group(b)),
            Fault::OneWay { from, to } => {
                write!(f, "one-way {} -> {} dropped", group(from), group(to))
            }
            Fault::Hold { a, b } => write!(f, "hold {} | {}", group(a), group(b)),
            Fault::Latency { a, b, max_ms } => {
                write!(f, "latency n{}-n{} up to {max_ms} ms", a + 1, b + 1)
            }
            Fault::Loss { a, b, per_mille } => {
                write!(f, "loss n{}-n{} {per_mille}‰ of segments", a + 1, b + 1)
            }
            Fault::Hang { node } => write!(f, "hang n{}", node + 1),
            Fault::HealLinks => f.write_str("heal links"),
            Fault::Reset { node } => write!(f, "reset connections of n{}", node + 1),
            Fault::Crash { node } => write!(f, "crash n{}", node + 1),
            Fault::Restart { node } => write!(f, "restart n{}", node + 1),
            Fault::Clock {
                node,
                offset_ms,
                drift_ppm,
            } => {
                write!(
                    f,
                    "clock n{} offset {offset_ms:+} ms drift {drift_ppm:+} ppm",
                    node + 1
                )
            }
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6} ms  {}", self.at.as_millis(), self.fault)
    }
}

/// How far a seed's clocks stray from true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClockFaults {
    /// Every clock is true.
    None,
    /// Clocks are off from the start, by constant offsets within the bound of each
    /// other, and neither drift nor step: inside the assumptions of docs/API.md §3.2.
    Steady,
    /// Clocks step and drift (far faster than 15 ppm), but any two stay within
    /// `max_clock_skew_ms` of each other.
    Within,
    /// At least one clock goes beyond the bound.
    Beyond,
}

impl ClockFaults {
    /// A name for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockFaults::None => "true clocks",
            ClockFaults::Steady => "steady offsets",
            ClockFaults::Within => "clocks within the bound",
            ClockFaults::Beyond => "a clock beyond the bound",
        }
    }
}

/// The drift the real-time guarantee allows between two samples (docs/API.md §3.2).
pub const CONTRACT_DRIFT_PPM: i64 = 15;

/// Everything a seed decides before the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Nodes in the cluster (3 to 5).
    pub nodes: usize,
    /// Concurrent clients (2 to 4).
    pub clients: usize,
    /// Keys `k0`.. the clients use (few, so that writes collide).
    pub keys: usize,
    /// When clients stop and every fault ends.
    pub heal_at: Duration,
    /// How far the clocks stray.
    pub clocks: ClockFaults,
    /// The faults, in time order.
    pub events: Vec<Event>,
    /// Per node: whether it keeps its journal on a simulated disk (else memory only,
    /// and a restart is empty).
    pub durable: Vec<bool>,
    /// Whether the cluster has a secret, so every peer frame is tagged and bound to its
    /// connection: odd seeds (not drawn, so the schedules stay those of their seeds).
    pub secret: bool,
}

/// The largest clock offset the schedule may set, in ms (it bounds how long refused
/// versions wait after the heal).
pub const MAX_OFFSET_MS: i64 = 4 * MAX_CLOCK_SKEW_MS;

impl Plan {
    /// Draws the plan of `seed`.
    pub fn draw(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = rng.random_range(3..=5);
        let clients = rng.random_range(2..=4);
        let keys = rng.random_range(3..=8);
        let heal_at = Duration::from_millis(rng.random_range(3_000..=7_000));
        let mut events = Vec::new();
        let ms = Duration::from_millis;
        let heal_ms = heal_at.as_millis() as u64;

        // Clocks: true everywhere, or off within the bound, or some beyond it; at the
        // start or later.
        let clocks = match rng.random_range(0..100) {
            0..25 => ClockFaults::None,
            25..45 => ClockFaults::Steady,
            45..70 => ClockFaults::Within,
            _ => ClockFaults::Beyond,
        };
        let mut steady = vec![false; nodes];
        if clocks == ClockFaults::Steady {
            for (node, steady) in steady.iter_mut().enumerate() {
                if rng.random_bool(0.8) {
                    *steady = true;
                    events.push(Event {
                        at: ms(0),
                        fault: Fault::Clock {
                            node,
                            offset_ms: rng.random_range(-WITHIN_OFFSET_MS..=WITHIN_OFFSET_MS),
                            drift_ppm: 0,
                        },
                    });
                }
            }
        } else if clocks != ClockFaults::None {
            let beyond = (clocks == ClockFaults::Beyond).then(|| rng.random_range(0..nodes));
            for node in 0..nodes {
                if beyond == Some(node) || rng.random_bool(0.7) {
                    let at = if rng.random_bool(0.5) {
                        0
                    } else {
                        rng.random_range(0..heal_ms)
                    };
                    let fault = clock_fault(&mut rng, node, beyond == Some(node));
                    events.push(Event { at: ms(at), fault });
                }
            }
        }

        // Link faults, one after another.
        let mut t = rng.random_range(200..1_000);
        while t + 100 < heal_ms {
            let duration = rng.random_range(100..2_000).min(heal_ms - t);
            let fault = link_fault(&mut rng, nodes);
            events.push(Event { at: ms(t), fault });
            events.push(Event {
                at: ms(t + duration),
                fault: Fault::HealLinks,
            });
            t += duration + rng.random_range(0..800);
        }

        // Crashes: at least one node always runs.
        let mut down_until = vec![0u64; nodes];
        for _ in 0..rng.random_range(0..=3) {
            let at = rng.random_range(200..heal_ms);
            let node = rng.random_range(0..nodes);
            let running_then = (0..nodes).filter(|&other| down_until[other] <= at).count();
            if down_until[node] > at || running_then <= 1 {
                continue;
            }
            let back = (at + rng.random_range(50..3_000)).min(heal_ms);
            down_until[node] = back;
            events.push(Event {
                at: ms(at),
                fault: Fault::Crash { node },
            });
            events.push(Event {
                at: ms(back),
                fault: Fault::Restart { node },
            });
        }

        // Connection resets.
        for _ in 0..rng.random_range(0..=3) {
            let at = rng.random_range(200..heal_ms);
            let node = rng.random_range(0..nodes);
            events.push(Event {
                at: ms(at),
                fault: Fault::Reset { node },
            });
        }

        // Durable nodes, drawn last so that the schedules above stay as they were.
        let durable = (0..nodes).map(|_| rng.random_bool(0.5)).collect();

        // The heal: every link healed, clocks back to true time (as NTP would step
        // them). Crashed nodes are back by then (above).
        events.push(Event {
            at: heal_at,
            fault: Fault::HealLinks,
        });
        // Steady clocks keep their offsets: within the bound, nothing needs stepping.
        for node in (0..nodes).filter(|&node| !steady[node]) {
            events.push(Event {
                at: heal_at,
                fault: Fault::Clock {
                    node,
                    offset_ms: 0,
                    drift_ppm: 0,
                },
            });
        }
        // A stable sort keeps each fault's end after its start at equal times.
        events.sort_by_key(|event| event.at);
        Self {
            seed,
            nodes,
            clients,
            keys,
            heal_at,
            clocks,
            events,
            durable,
            secret: seed % 2 == 1,
        }
    }

    /// The cluster file of the run; `ip(i)` is the address of node `i`.
    pub fn cluster_file(&self, ip: impl Fn(usize) -> std::net::IpAddr) -> String {
        let mut text = String::from(TUNING);
        if self.secret {
            text.push_str(&format!("secret_file = {:?}\n", secret_file().display()));
        }
        for node in 0..self.nodes {
            text.push_str(&format!(
                "\n[[nodes]]\nid = \"n{n}\"\nhttp = \"{ip}:{HTTP_PORT}\"\npeer = \"{ip}:{PEER_PORT}\"\n",
                n = node + 1,
                ip = ip(node),
            ));
        }
        text
    }

    /// When the clocks first leave the assumptions of the real-time guarantee
    /// (docs/API.md §3.2: no clock moves against another by more than 15 ppm between
    /// samples, and a peer never measured is at most `max_clock_skew_ms` behind): the
    /// first step of a clock after the start, the start of a drift beyond 15 ppm, or
    /// offsets at the start further apart than the bound. `None`: never.
    pub fn clock_break(&self) -> Option<Duration> {
        let mut clocks = vec![(0i64, 0i64); self.nodes];
        for event in &self.events {
            let Fault::Clock {
                node,
                offset_ms,
                drift_ppm,
            } = event.fault
            else {
                continue;
            };
            let (old_offset, old_drift) = clocks[node];
            clocks[node] = (offset_ms, drift_ppm);
            let steps = event.at > Duration::ZERO
                && (old_drift != 0 || old_offset != offset_ms || old_drift != drift_ppm);
            let spread = clocks.iter().map(|c| c.0).max().unwrap_or(0)
                - clocks.iter().map(|c| c.0).min().unwrap_or(0);
            if steps || drift_ppm.abs() > CONTRACT_DRIFT_PPM || spread > MAX_CLOCK_SKEW_MS {
                return Some(event.at);
            }
        }
        None
    }

    /// How many faults of each kind the schedule injects.
    pub fn fault_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for event in &self.events {
            let neutral = matches!(event.fault, Fault::HealLinks | Fault::Restart { .. })
                || matches!(
                    event.fault,
                    Fault::Clock {
                        offset_ms: 0,
                        drift_ppm: 0,
                        ..
                    }
                );
            if !neutral {
                let kind = match event.fault {
                    Fault::Crash { node } if self.durable[node] => "crash-durable",
                    _ => event.fault.kind(),
                };
                *counts.entry(kind).or_default() += 1;
            }
        }
        counts
    }
}

/// A file holding the cluster secret of the seeds that have one (a real file: the
/// node reads it at start, before the simulation's disk exists). Written once per
/// process, whole (a rename), as shards start in parallel.
fn secret_file() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("meshkv-sim-secret-{}", std::process::id()));
        let partial = dir.join(format!("meshkv-sim-secret-{}.partial", std::process::id()));
        std::fs::write(&partial, "a simulated cluster's secret\n").expect("secret written");
        std::fs::rename(&partial, &path).expect("secret in place");
        path
    })
    .clone()
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} nodes, {} clients, {} keys, heal at {} ms, {}{}",
            self.seed,
            self.nodes,
            self.clients,
            self.keys,
            self.heal_at.as_millis(),
            self.clocks.as_str(),
            if self.secret {
                ", a cluster secret"
            } else {
                ""
            },
        )?;
        let durable: Group = (0..self.nodes).filter(|&node| self.durable[node]).collect();
        writeln!(
            f,
            "  durable (a simulated disk; the others restart empty): {}",
            if durable.is_empty() {
                "none".to_owned()
            } else {
                group(&durable)
            }
        )?;
        for event in &self.events {
            writeln!(f, "  {event}")?;
        }
        Ok(())
    }
}

/// The largest offset of a clock "within the bound".
pub const WITHIN_OFFSET_MS: i64 = MAX_CLOCK_SKEW_MS / 4;
/// The largest drift of a clock "within the bound": 1 %, at most 70 ms over a run.
/// With [`WITHIN_OFFSET_MS`], any two such clocks stay less than the bound apart.
pub const WITHIN_DRIFT_PPM: i64 = 10_000;

/// A clock fault for `node`: within the skew bound, or beyond it.
fn clock_fault(rng: &mut ChaCha8Rng, node: usize, beyond: bool) -> Fault {
    let bound = MAX_CLOCK_SKEW_MS;
    let (offset_ms, drift_ppm) = if !beyond {
        (
            rng.random_range(-WITHIN_OFFSET_MS..=WITHIN_OFFSET_MS),
            rng.random_range(-WITHIN_DRIFT_PPM..=WITHIN_DRIFT_PPM),
        )
    } else {
        let magnitude = rng.random_range(bound + bound / 5..=MAX_OFFSET_MS);
        let sign = if rng.random_bool(0.5) { 1 } else { -1 };
        (sign * magnitude, rng.random_range(-100_000..=100_000))
    };
    Fault::Clock {
        node,
        offset_ms,
        drift_ppm,
    }
}

/// Splits the nodes in two non-empty groups: a minority and a majority, or any split.
fn split(rng: &mut ChaCha8Rng, nodes: usize) -> (Group, Group) {
    let mut all: Group = (0..nodes).collect();
    all.shuffle(rng);
    let cut = if rng.random_bool(0.6) {
        (nodes - 1) / 2
    } else {
        rng.random_range(1..nodes)
    };
    let cut = cut.max(1);
    let (mut a, mut b) = (all[..cut].to_vec(), all[cut..].to_vec());
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

fn two_nodes(rng: &mut ChaCha8Rng, nodes: usize) -> (usize, usize) {
    let all: Vec<usize> = (0..nodes).collect();
    let pair: Vec<usize> = all.choose_multiple(rng, 2).copied().collect();
    (pair[0].min(pair[1]), pair[0].max(pair[1]))
}

fn link_fault(rng: &mut ChaCha8Rng, nodes: usize) -> Fault {
    match rng.random_range(0..7) {
        0 | 1 => {
            let (a, b) = split(rng, nodes);
            Fault::Partition { a, b }
        }
        2 => {
            let (from, to) = split(rng, nodes);
            if rng.random_bool(0.5) {
                Fault::OneWay { from, to }
            } else {
                Fault::OneWay { from: to, to: from }
            }
        }
        3 => {
            let (a, b) = split(rng, nodes);
            Fault::Hold { a, b }
        }
        4 => {
            let (a, b) = two_nodes(rng, nodes);
            Fault::Latency {
                a,
                b,
                max_ms: rng.random_range(50..=400),
            }
        }
        5 => {
            let (a, b) = two_nodes(rng, nodes);
            Fault::Loss {
                a,
                b,
                per_mille: rng.random_range(5..=100),
            }
        }
        _ => Fault::Hang {
            node: rng.random_range(0..nodes),
        },
    }
}
