//! Clock offsets to the peers, and the self-fencing rule that follows from them.
//!
//! Owns: [`SkewMonitor`], a pure state machine fed with timing samples of exchanges the
//! node already makes (handshake, ping, push), which estimates each peer's clock offset
//! and decides whether this node may stamp client writes; and [`SkewMonitor::lag_bound_ms`],
//! the bound the write path's commit-wait uses.
//! Knows nothing of: sockets, tasks, the store. Time comes in as values.
//!
//! # Estimating an offset (NTP's on-wire method, one timestamp each way)
//! The initiator reads its wall clock `t1` and starts a monotonic stopwatch when it
//! sends a request; the replier puts its wall clock `t2` in the reply; the reply arrives
//! after `rtt` ms. The replier read `t2` somewhere within the round trip, so its offset
//! (peer minus us) is `θ = t2 − (t1 + rtt/2)`, give or take `rtt/2`, plus 1 ms for the
//! millisecond resolution of the readings: the error bound `ε = rtt/2 + 1`. The true
//! offset lies in `[θ − ε, θ + ε]`. A sample with a long round trip is not wrong, only
//! vague; so of the last [`WINDOW`] samples the estimate is the one with the smallest
//! error once widened by its age at [`DRIFT_PER_MS`], up to [`MAX_DRIFT_MS`] (NTP's
//! clock filter: a minimum round-trip filter).
//!
//! # The fencing rule
//! A peer is *far* when each of its last [`CONFIRM`] samples says so for certain
//! (`|θ| − ε > max_skew`), and *near* again when each of its last [`CONFIRM`] samples
//! allows it (`|θ| − ε ≤ max_skew`); otherwise it keeps its class, and a peer never
//! measured counts as near (fencing needs evidence). So one noisy sample never changes
//! anything. The node counts itself and every peer that is not far; if that is less than
//! a majority of the cluster (`n/2 + 1`), it is *fenced*: it refuses client writes.
//! * 3 nodes, one clock off: the odd node sees both peers far and fences; each healthy
//!   node sees one far peer, counts 2 of 3 and stays writable.
//! * 2 nodes: a majority is 2, so a node fences as soon as its one peer is far. Neither
//!   can tell which clock is wrong, so both fence, and the cluster refuses writes until
//!   the clocks agree again. That is the safe choice: letting either side write could
//!   let a later acknowledged write lose.
//! * 1 node: nothing to compare with, never fenced.
//!
//! # Leaving the fence, and why it takes a while
//! A fenced node tells its peers so in every reply (`fenced`), and a peer that has heard
//! it may leave the node out of its commit-wait (below) for a lease of [`LEASE_MS`]
//! after the reply, minus the reply's round trip. When the rule allows writes again the
//! node stops saying `fenced` at once but keeps refusing writes for that lease plus
//! `max_skew` plus how far it may still lag its most advanced peer: by then no peer
//! leaves it out any more, and every write acknowledged while it was left out carries a
//! stamp below its clock.
//!
//! # Commit-wait
//! The guarantee (API.md §3.2) is that a write acknowledged before another starts never
//! loses to it. A peer that acknowledged our write has folded its version into its HLC,
//! so its later stamps are larger. A peer that did not may stamp from its own clock, so
//! the write path waits, before acknowledging, until our clock is past the write's stamp
//! by how far that peer's clock may be behind ours ([`SkewMonitor::lag_bound_ms`]: the
//! upper end of the estimate; for a peer never measured, the whole `max_skew`). In a
//! healthy cluster at `live` every peer acknowledges and the wait is zero.

use std::collections::{BTreeMap, VecDeque};

use crate::clock::NodeId;

/// Samples kept per peer.
pub const WINDOW: usize = 8;
/// Consecutive samples that must agree to change a peer's class.
pub const CONFIRM: usize = 3;
/// How fast an old sample's error grows: 15 ppm, NTP's bound for a disciplined clock.
pub const DRIFT_PER_MS: f64 = 15e-6;
/// The most an old sample's error grows by drift (reached after about 22 minutes
/// without a sample): the commit-wait assumes that clocks out of touch for longer still
/// stay within this of where they were. Without a cap, a peer down for hours would make
/// every write wait (see DESIGN.md).
pub const MAX_DRIFT_MS: f64 = 20.0;
/// How long a peer's report that it is fenced lets us leave it out of commit-waits.
pub const LEASE_MS: u64 = 1_000;

/// One timing sample of an exchange with a peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Our wall clock when the request left.
    pub sent_wall_ms: u64,
    /// The peer's wall clock in its reply.
    pub peer_wall_ms: u64,
    /// The round trip, on our monotonic clock.
    pub rtt_ms: u64,
    /// Our monotonic clock when the reply arrived.
    pub at_ms: u64,
}

impl Sample {
    /// The measured offset, peer minus us, in ms.
    pub fn offset_ms(&self) -> f64 {
        self.peer_wall_ms as f64 - (self.sent_wall_ms as f64 + self.rtt_ms as f64 / 2.0)
    }

    /// The error bound of [`Sample::offset_ms`], in ms.
    pub fn error_ms(&self) -> f64 {
        self.rtt_ms as f64 / 2.0 + 1.0
    }
}

/// The current estimate of one peer's offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Peer's clock minus ours, ms.
    pub offset_ms: f64,
    /// The true offset lies within this of `offset_ms` (widened by the sample's age).
    pub error_ms: f64,
}

/// Whether a peer's clock is within the allowed skew of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Near,
    Far,
}

#[derive(Debug)]
struct PeerClock {
    samples: VecDeque<Sample>,
    class: Class,
    /// Until when (our monotonic ms) the peer's report "I am fenced" holds.
    fenced_until_ms: Option<u64>,
}

/// This node's write fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Writes are allowed.
    Open,
    /// Writes are refused: the clock is too far from a majority.
    Fenced,
    /// The clock is back within bounds; writes are allowed from `until_ms` (monotonic).
    Releasing {
        /// When writes are allowed again.
        until_ms: u64,
    },
}

/// A change of the fence, for the one log line each.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// The node fenced itself; the offsets of the far peers.
    Fenced(Vec<(NodeId, f64)>),
    /// The node accepts writes again.
    Recovered,
}

/// Why a write is refused: the offsets that make this node's clock untrustworthy.
#[derive(Clone, Debug, PartialEq)]
pub struct Fenced {
    /// The far peers and their offsets (peer minus us), ms.
    pub offsets: Vec<(NodeId, f64)>,
    /// True while the node is back within bounds but still waiting to resume.
    pub releasing: bool,
}

/// Offsets to every peer and the fence: see the module header.
#[derive(Debug)]
pub struct SkewMonitor {
    max_skew_ms: u64,
    peers: BTreeMap<NodeId, PeerClock>,
    fence: Fence,
}

impl SkewMonitor {
    /// A monitor of `peers` that fences beyond `max_skew_ms`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>, max_skew_ms: u64) -> Self {
        Self {
            max_skew_ms,
            peers: peers
                .into_iter()
                .map(|id| {
                    (
                        id,
                        PeerClock {
                            samples: VecDeque::new(),
                            class: Class::Near,
                            fenced_until_ms: None,
                        },
                    )
                })
                .collect(),
            fence: Fence::Open,
        }
    }

    /// Records a sample of `peer`, and whether its reply said it is fenced (`None`: the
    /// reply does not say). Returns a change of this node's fence, if any.
    pub fn record(
        &mut self,
        peer: &NodeId,
        sample: Sample,
        peer_fenced: Option<bool>,
    ) -> Option<Transition> {
        let max_skew = self.max_skew_ms as f64;
        let clock = self.peers.get_mut(peer)?;
        if clock.samples.len() == WINDOW {
            clock.samples.pop_front();
        }
        clock.samples.push_back(sample);
        if clock.samples.len() >= CONFIRM {
            let far = |s: &Sample| s.offset_ms().abs() - s.error_ms() > max_skew;
            let recent = clock.samples.iter().rev().take(CONFIRM);
            let far_count = recent.filter(|s| far(s)).count();
            if far_count == CONFIRM {
                clock.class = Class::Far;
            } else if far_count == 0 {
                clock.class = Class::Near;
            }
        }
        match peer_fenced {
            Some(true) => {
                let lease = LEASE_MS.saturating_sub(sample.rtt_ms);
                clock.fenced_until_ms = (lease > 0).then_some(sample.at_ms + lease);
            }
            Some(false) => clock.fenced_until_ms = None,
            None => {}
        }
        self.update(sample.at_ms)
    }

    /// Moves the fence on with time (a release ends). Returns a change, if any.
    pub fn poll(&mut self, now_ms: u64) -> Option<Transition> {
        self.update(now_ms)
    }

    fn far_peers(&self) -> Vec<(NodeId, f64)> {
        self.peers
            .iter()
            .filter(|(_, clock)| clock.class == Class::Far)
            .filter_map(|(id, clock)| Some((id.clone(), estimate_of(clock, None)?.offset_ms)))
            .collect()
    }

    fn update(&mut self, now_ms: u64) -> Option<Transition> {
        let cluster = self.peers.len() + 1;
        let agreeing = 1 + self
            .peers
            .values()
            .filter(|clock| clock.class == Class::Near)
            .count();
        // A majority is `cluster / 2 + 1`.
        let ok = agreeing > cluster / 2;
        match (self.fence, ok) {
            (Fence::Open, true) => None,
            (Fence::Open, false) => {
                self.fence = Fence::Fenced;
                Some(Transition::Fenced(self.far_peers()))
            }
            (Fence::Fenced, false) => None,
            (Fence::Fenced, true) => {
                let until_ms = now_ms + LEASE_MS + self.max_skew_ms + self.own_lag_ms(now_ms) + 1;
                self.fence = Fence::Releasing { until_ms };
                None
            }
            (Fence::Releasing { .. }, false) => {
                self.fence = Fence::Fenced;
                None
            }
            (Fence::Releasing { until_ms }, true) if now_ms >= until_ms => {
                self.fence = Fence::Open;
                Some(Transition::Recovered)
            }
            (Fence::Releasing { .. }, true) => None,
        }
    }

    /// How far our clock may be behind the most advanced peer, ms (0 if none is ahead).
    fn own_lag_ms(&self, now_ms: u64) -> u64 {
        self.peers
            .values()
            .filter_map(|clock| estimate_of(clock, Some(now_ms)))
            .map(|e| (e.offset_ms + e.error_ms).max(0.0).ceil() as u64)
            .max()
            .unwrap_or(0)
    }

    /// The fence now.
    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// What replies tell peers: true while fenced (not while releasing, so that peers
    /// stop leaving us out of their commit-waits before we write again).
    pub fn reports_fenced(&self) -> bool {
        self.fence == Fence::Fenced
    }

    /// `Ok` if this node may stamp client writes now, else why not.
    pub fn check_write(&mut self, now_ms: u64) -> Result<(), Fenced> {
        self.update(now_ms);
        match self.fence {
            Fence::Open => Ok(()),
            Fence::Fenced | Fence::Releasing { .. } => Err(Fenced {
                offsets: self.far_peers(),
                releasing: matches!(self.fence, Fence::Releasing { .. }),
            }),
        }
    }

    /// The estimate of `peer`'s offset at `now_ms` (monotonic), `None` until measured.
    pub fn estimate(&self, peer: &NodeId, now_ms: u64) -> Option<Estimate> {
        estimate_of(self.peers.get(peer)?, Some(now_ms))
    }

    /// How far `peer`'s clock may be behind ours now, in whole ms, for commit-wait;
    /// `None` if the peer said it is fenced recently enough that it cannot stamp a write
    /// before its lease ends. A peer never measured is assumed `max_skew_ms` behind.
    ///
    /// From the newest sample alone, not the [`estimate`](Self::estimate): an older
    /// sample with a tighter error bound is wrong after a clock step between it and the
    /// newest, and the guarantee (API.md §3.2) assumes only that no clock moves between
    /// a peer's last sample and the write. The estimate's filter would keep a step of
    /// 60 ms out of the bound for up to [`WINDOW`] samples.
    pub fn lag_bound_ms(&self, peer: &NodeId, now_ms: u64) -> Option<u64> {
        let Some(clock) = self.peers.get(peer) else {
            return Some(0);
        };
        if self.peer_fenced(peer, now_ms) {
            return None;
        }
        Some(match newest_of(clock, now_ms) {
            Some(e) => (e.error_ms - e.offset_ms).max(0.0).ceil() as u64,
            None => self.max_skew_ms,
        })
    }

    /// The peers whose clocks are certainly more than the allowed skew behind ours now
    /// (`−θ − ε > max_skew`) and that have not said they are fenced, with how far behind
    /// (ms): a write stamped now would be refused by them and could not be acknowledged,
    /// so the write path refuses it before applying it.
    pub fn too_far_behind(&self, now_ms: u64) -> Vec<(NodeId, f64)> {
        self.peers
            .iter()
            .filter(|(id, _)| !self.peer_fenced(id, now_ms))
            .filter_map(|(id, clock)| {
                let e = estimate_of(clock, Some(now_ms))?;
                (-e.offset_ms - e.error_ms > self.max_skew_ms as f64)
                    .then(|| (id.clone(), e.offset_ms))
            })
            .collect()
    }

    /// Whether `peer` said it is fenced, recently enough that it cannot stamp a write
    /// before its lease ends.
    pub fn peer_fenced(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .and_then(|clock| clock.fenced_until_ms)
            .is_some_and(|until| now_ms < until)
    }

    /// The allowed skew.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }
}

/// The newest sample, aged to `now_ms`: the only one a clock step before it cannot
/// have made wrong.
fn newest_of(clock: &PeerClock, now_ms: u64) -> Option<Estimate> {
    clock.samples.back().map(|s| {
        let age = now_ms.saturating_sub(s.at_ms) as f64;
        Estimate {
            offset_ms: s.offset_ms(),
            error_ms: s.error_ms() + (age * DRIFT_PER_MS).min(MAX_DRIFT_MS),
        }
    })
}

/// The sample with the smallest error once aged to `now_ms` (or as measured, `None`).
fn estimate_of(clock: &PeerClock, now_ms: Option<u64>) -> Option<Estimate> {
    clock
        .samples
        .iter()
        .map(|s| {
            let age = now_ms.map_or(0, |now| now.saturating_sub(s.at_ms)) as f64;
            Estimate {
                offset_ms: s.offset_ms(),
                error_ms: s.error_ms() + (age * DRIFT_PER_MS).min(MAX_DRIFT_MS),
            }
        })
        // Ties go to the newest sample.
        .rev()
        .min_by(|a, b| a.error_ms.total_cmp(&b.error_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// A simulated exchange: our clock `us`, the peer's clock at `us + offset_ms`, a
    /// round trip of `rtt_ms` (the peer reads its clock halfway, or at `skew_read`).
    fn exchange(us: &ManualClock, offset_ms: i64, rtt_ms: u64, read_at: u64) -> Sample {
        let sent_wall_ms = us.wall_ms();
        us.advance_ms(read_at);
        let peer_wall_ms = (us.wall_ms() as i64 + offset_ms) as u64;
        us.advance_ms(rtt_ms - read_at);
        Sample {
            sent_wall_ms,
            peer_wall_ms,
            rtt_ms,
            at_ms: us.monotonic_ms(),
        }
    }

    fn three(max_skew: u64) -> SkewMonitor {
        SkewMonitor::new([id("n2"), id("n3")], max_skew)
    }

    #[test]
    fn the_estimate_brackets_the_true_offset_and_prefers_short_round_trips() {
        let us = ManualClock::new(1_000_000);
        let mut monitor = three(1_000);
        // A slow exchange where the peer read its clock right at the start…
        let slow = exchange(&us, 250, 400, 0);
        assert!((slow.offset_ms() - 250.0).abs() <= slow.error_ms());
        monitor.record(&id("n2"), slow, None);
        // …then a fast one: the estimate follows the fast one.
        monitor.record(&id("n2"), exchange(&us, 250, 2, 1), None);
        let estimate = monitor.estimate(&id("n2"), us.monotonic_ms()).unwrap();
        assert_eq!(estimate.offset_ms, 250.0);
        assert_eq!(estimate.error_ms, 2.0);
        assert!(monitor.estimate(&id("n3"), 0).is_none(), "never measured");
    }

    #[test]
    fn a_node_three_seconds_ahead_fences_itself_and_recovers_once_fixed() {
        let us = ManualClock::new(1_000_000);
        // We are n1, 3 s ahead: both peers read 3 s behind us.
        let mut monitor = three(1_000);
        for round in 0..CONFIRM {
            assert_eq!(
                monitor.check_write(us.monotonic_ms()),
                Ok(()),
                "round {round}"
            );
            for peer in ["n2", "n3"] {
                let transition = monitor.record(&id(peer), exchange(&us, -3_000, 2, 1), None);
                if round == CONFIRM - 1 && peer == "n3" {
                    assert!(
                        matches!(transition, Some(Transition::Fenced(ref far)) if far.len() == 2)
                    );
                } else {
                    assert_eq!(transition, None);
                }
            }
        }
        let refused = monitor.check_write(us.monotonic_ms()).unwrap_err();
        assert_eq!(refused.offsets[0].1.round(), -3_000.0);
        assert!(monitor.reports_fenced());
        // The clock is fixed: after CONFIRM good samples of each peer the node stops
        // reporting fenced, but writes wait for the lease and the skew window.
        for _ in 0..CONFIRM {
            for peer in ["n2", "n3"] {
                monitor.record(&id(peer), exchange(&us, 0, 2, 1), Some(false));
            }
        }
        assert!(!monitor.reports_fenced());
        assert!(
            monitor
                .check_write(us.monotonic_ms())
                .unwrap_err()
                .releasing
        );
        us.advance_ms(LEASE_MS + 1_000 + 2);
        assert_eq!(monitor.poll(us.monotonic_ms()), Some(Transition::Recovered));
        assert_eq!(monitor.check_write(us.monotonic_ms()), Ok(()));
    }

    #[test]
    fn a_node_three_seconds_behind_fences_too_and_the_healthy_ones_do_not() {
        let us = ManualClock::new(1_000_000);
        let mut behind = three(1_000);
        for _ in 0..CONFIRM {
            behind.record(&id("n2"), exchange(&us, 3_000, 2, 1), None);
            behind.record(&id("n3"), exchange(&us, 3_000, 2, 1), None);
        }
        assert!(behind.check_write(us.monotonic_ms()).is_err());
        // A healthy node: one peer 3 s behind (and saying it is fenced), one in sync.
        let mut healthy = SkewMonitor::new([id("n1"), id("n3")], 1_000);
        for _ in 0..2 * CONFIRM {
            healthy.record(&id("n3"), exchange(&us, -3_000, 2, 1), Some(true));
            healthy.record(&id("n1"), exchange(&us, 0, 2, 1), Some(false));
        }
        assert_eq!(healthy.check_write(us.monotonic_ms()), Ok(()));
        let now = us.monotonic_ms();
        // The fenced peer is left out of the commit-wait while its lease holds…
        assert_eq!(healthy.lag_bound_ms(&id("n3"), now), None);
        assert_eq!(healthy.lag_bound_ms(&id("n1"), now), Some(2));
        assert!(healthy.too_far_behind(now).is_empty());
        // …and counted again, with its full lag, once the lease ran out.
        assert_eq!(healthy.lag_bound_ms(&id("n3"), now + LEASE_MS), Some(3_003));
        assert_eq!(healthy.too_far_behind(now + LEASE_MS).len(), 1);
    }

    #[test]
    fn the_commit_wait_bound_follows_a_step_at_the_first_sample_after_it() {
        let us = ManualClock::new(1_000_000);
        let mut monitor = three(500);
        // A tight sample of a peer whose clock is ours…
        monitor.record(&id("n2"), exchange(&us, 0, 2, 1), None);
        assert_eq!(monitor.lag_bound_ms(&id("n2"), us.monotonic_ms()), Some(2));
        // …then its clock steps back 60 ms, and a vaguer sample shows it: the estimate
        // still prefers the old, tighter sample, but the commit-wait must not.
        us.advance_ms(100);
        monitor.record(&id("n2"), exchange(&us, -60, 6, 3), None);
        let now = us.monotonic_ms();
        assert_eq!(monitor.estimate(&id("n2"), now).unwrap().offset_ms, 0.0);
        assert_eq!(monitor.lag_bound_ms(&id("n2"), now), Some(64));
        // The bound ages with the sample, at 15 ppm.
        assert_eq!(monitor.lag_bound_ms(&id("n2"), now + 1_000_000), Some(79));
    }

    #[test]
    fn one_noisy_sample_does_not_fence() {
        let us = ManualClock::new(1_000_000);
        let mut monitor = three(1_000);
        for round in 0..20 {
            // Every fifth exchange of each peer is wildly wrong (say, a paused process
            // whose reply was read late): certain-looking but alone.
            let offset = if round % 5 == 4 { -5_000 } else { 10 };
            monitor.record(&id("n2"), exchange(&us, offset, 1, 0), None);
            monitor.record(&id("n3"), exchange(&us, offset, 1, 0), None);
            assert_eq!(
                monitor.check_write(us.monotonic_ms()),
                Ok(()),
                "round {round}"
            );
        }
        // Vague samples (1.9 s round trips, the peers reading their clocks at the
        // start) point 1.75 s away but cannot rule out the truth, 0.8 s: not far.
        for _ in 0..CONFIRM {
            let vague = exchange(&us, -800, 1_900, 0);
            assert_eq!(vague.offset_ms(), -1_750.0);
            monitor.record(&id("n2"), vague, None);
            monitor.record(&id("n3"), exchange(&us, -800, 1_900, 0), None);
        }
        assert_eq!(monitor.check_write(us.monotonic_ms()), Ok(()));
    }

    #[test]
    fn a_drifting_clock_fences_when_it_crosses_the_bound_and_recovers_when_it_returns() {
        let us = ManualClock::new(1_000_000);
        let mut monitor = three(1_000);
        let mut fenced_at = None;
        let mut recovered_at = None;
        // Our clock drifts 50 ms per exchange away from both peers, up to 2 s, then back.
        for step in 0..160i64 {
            let drift = if step < 80 {
                step * 25
            } else {
                (160 - step) * 25
            };
            for peer in ["n2", "n3"] {
                match monitor.record(&id(peer), exchange(&us, -drift, 2, 1), Some(false)) {
                    Some(Transition::Fenced(_)) => fenced_at = fenced_at.or(Some(drift)),
                    Some(Transition::Recovered) => recovered_at = Some(step),
                    None => {}
                }
            }
            us.advance_ms(200);
            if let Some(Transition::Recovered) = monitor.poll(us.monotonic_ms()) {
                recovered_at = Some(step);
            }
        }
        let fenced_at = fenced_at.expect("the drift crossed the bound");
        assert!(
            (1_000..=1_100).contains(&fenced_at),
            "fenced at {fenced_at} ms"
        );
        assert!(recovered_at.is_some(), "recovered once the drift came back");
        assert_eq!(monitor.check_write(us.monotonic_ms()), Ok(()));
    }

    #[test]
    fn two_nodes_both_fence_and_one_node_never_does() {
        let us = ManualClock::new(1_000_000);
        let mut a = SkewMonitor::new([id("b")], 1_000);
        let mut b = SkewMonitor::new([id("a")], 1_000);
        for _ in 0..CONFIRM {
            a.record(&id("b"), exchange(&us, 2_000, 2, 1), None);
            b.record(&id("a"), exchange(&us, -2_000, 2, 1), None);
        }
        assert!(a.check_write(0).is_err() && b.check_write(0).is_err());
        let mut alone = SkewMonitor::new([], 1_000);
        assert_eq!(alone.check_write(0), Ok(()));
    }

    #[test]
    fn never_measured_peers_count_as_near_but_lag_the_whole_skew() {
        let mut monitor = three(1_000);
        assert_eq!(monitor.check_write(0), Ok(()));
        assert_eq!(monitor.lag_bound_ms(&id("n2"), 0), Some(1_000));
    }
}
