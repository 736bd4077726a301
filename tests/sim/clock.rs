//! Simulated time for one node: the [`Clock`] seam driven by turmoil's simulated time,
//! with a per-node offset and drift that the fault schedule changes during a run.
//!
//! Owns: [`ClockControl`] (one per node, kept across its restarts, like a hardware
//! clock) and [`SimClock`] (one per life of the node).
//! Knows nothing of: the node, the network.
//!
//! Wall time is `EPOCH_MS + t + offset(t)`, `t` the simulated time since the start of
//! the run, where `offset(t) = offset_at_anchor + (t - anchor) × drift`: piecewise
//! linear, so a change of drift bends the clock without making it jump, and a change of
//! offset is a jump (an NTP step). Monotonic time is tokio's simulated clock, which
//! turmoil advances for every host at the same rate: only the wall clock drifts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshkv::clock::Clock;

/// Wall time at the start of every run: 2025-11-26T03:21:22Z. Fixed, so a run's
/// versions do not depend on when it ran.
pub const EPOCH_MS: u64 = 1_764_127_282_000;

/// A node's clock error: an offset at an anchor time, and a drift from then on.
#[derive(Debug, Default, Clone, Copy)]
struct Skew {
    /// Simulated microseconds at which `offset_us` held.
    anchor_us: i64,
    /// The offset at the anchor, in microseconds.
    offset_us: i64,
    /// Parts per million the clock gains (positive) or loses from the anchor on.
    drift_ppm: i64,
}

impl Skew {
    fn offset_us(&self, now_us: i64) -> i64 {
        self.offset_us + (now_us - self.anchor_us) * self.drift_ppm / 1_000_000
    }
}

/// The error of one node's wall clock, shared by every life of the node and by the
/// fault schedule that changes it.
#[derive(Debug, Default)]
pub struct ClockControl {
    skew: Mutex<Skew>,
}

impl ClockControl {
    /// From simulated time `now` on, the clock is `offset_ms` off and drifts by
    /// `drift_ppm`.
    pub fn set(&self, now: Duration, offset_ms: i64, drift_ppm: i64) {
        *self.skew.lock().expect("clock lock") = Skew {
            anchor_us: now.as_micros() as i64,
            offset_us: offset_ms * 1000,
            drift_ppm,
        };
    }

    /// The wall clock at simulated time `now`.
    pub fn wall_ms(&self, now: Duration) -> u64 {
        let skew = *self.skew.lock().expect("clock lock");
        let now_us = now.as_micros() as i64;
        let wall_us = (EPOCH_MS as i64) * 1000 + now_us + skew.offset_us(now_us);
        (wall_us / 1000) as u64
    }
}

/// The [`Clock`] of one life of a node.
pub struct SimClock {
    control: Arc<ClockControl>,
    /// tokio's simulated clock at the start of this life (a restarted host gets a new
    /// runtime, whose instants mean nothing to the old one's).
    origin: tokio::time::Instant,
    /// The last simulated time read, for the rare call from outside the simulation
    /// (a destructor run while the harness tears a host down).
    last_us: AtomicU64,
}

impl SimClock {
    /// A clock for a life of the node starting now, on the node's runtime.
    pub fn new(control: Arc<ClockControl>) -> Self {
        Self {
            control,
            origin: tokio::time::Instant::now(),
            last_us: AtomicU64::new(0),
        }
    }

    fn sim_now(&self) -> Duration {
        match turmoil::sim_elapsed() {
            Some(now) => {
                self.last_us
                    .store(now.as_micros() as u64, Ordering::Relaxed);
                now
            }
            None => Duration::from_micros(self.last_us.load(Ordering::Relaxed)),
        }
    }
}

impl Clock for SimClock {
    fn wall_ms(&self) -> u64 {
        self.control.wall_ms(self.sim_now())
    }

    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}
