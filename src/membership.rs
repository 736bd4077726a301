//! Failure detection: which peers are `alive`, `suspect` or `down`.
//!
//! Owns: [`FailureDetector`], a pure state machine fed with link events and asked
//! about a given instant. Knows nothing of: sockets, tokio, what the messages mean.
//!
//! # The rule
//! Each node keeps one outbound link per peer and sends something at least every
//! heartbeat interval (a push, an anti-entropy step or a ping), always expecting a
//! reply. Evidence comes from three events:
//! * a reply or an inbound request: the peer is alive, now;
//! * a request sent and still unanswered: if it stays so for `suspect_after`, the peer
//!   is `suspect` (it may be hung, or packets are being dropped);
//! * the link failed (connection refused or reset, reply deadline passed): `down`
//!   until a new link completes its handshake.
//!
//! A killed process answers with a RST at once, so it is `down` within one round trip;
//! a hung one (SIGSTOP, or a partition that drops packets) is `suspect` after
//! `suspect_after` and `down` when the request deadline drops the link. Writes wait
//! only for `alive` peers, so a write never waits on a peer already known to be lost.

use std::collections::HashMap;
use std::fmt;

use crate::clock::NodeId;

/// A peer's state as seen from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Answering.
    Alive,
    /// A request has been unanswered for longer than `suspect_after`.
    Suspect,
    /// No working link.
    Down,
}

impl PeerState {
    /// The name used by the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }

    /// The value of the `meshkv_peer_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            PeerState::Alive => 0,
            PeerState::Suspect => 1,
            PeerState::Down => 2,
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default)]
struct Evidence {
    link_up: bool,
    /// Last reply on our link or request on the peer's.
    last_heard_ms: Option<u64>,
    /// Last request on the peer's own link (it dialed us).
    last_inbound_ms: Option<u64>,
    /// When our link last failed or could not be opened.
    link_failed_ms: Option<u64>,
    awaiting_since_ms: Option<u64>,
    last_sync_ms: Option<u64>,
}

/// What the detector knows of one peer at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The peer.
    pub id: NodeId,
    /// Its state.
    pub state: PeerState,
    /// Milliseconds since it was last heard from (`None`: never).
    pub last_seen_ms: Option<u64>,
    /// Milliseconds since the last completed anti-entropy round with it (`None`: never).
    pub last_sync_ms: Option<u64>,
}

/// The failure detector of one node. Times are milliseconds on a monotonic clock.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    suspect_after_ms: u64,
    peers: HashMap<NodeId, Evidence>,
}

impl FailureDetector {
    /// A detector for `peers`, all initially `down`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>, suspect_after_ms: u64) -> Self {
        Self {
            suspect_after_ms,
            peers: peers
                .into_iter()
                .map(|id| (id, Evidence::default()))
                .collect(),
        }
    }

    fn evidence(&mut self, peer: &NodeId) -> Option<&mut Evidence> {
        self.peers.get_mut(peer)
    }

    /// Our link to `peer` completed its handshake.
    pub fn link_up(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.link_up = true;
            evidence.last_heard_ms = Some(now_ms);
            evidence.awaiting_since_ms = None;
        }
    }

    /// Our link to `peer` failed or could not be opened.
    pub fn link_down(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.link_up = false;
            evidence.link_failed_ms = Some(now_ms);
            evidence.awaiting_since_ms = None;
        }
    }

    /// We sent `peer` a request and wait for the reply.
    pub fn request_sent(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.awaiting_since_ms.get_or_insert(now_ms);
        }
    }

    /// `peer` answered our request.
    pub fn reply_received(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.last_heard_ms = Some(now_ms);
            evidence.awaiting_since_ms = None;
        }
    }

    /// `peer` sent us a request on its own link: it is running.
    pub fn heard_from(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.last_heard_ms = Some(now_ms);
            evidence.last_inbound_ms = Some(now_ms);
        }
    }

    /// An anti-entropy round with `peer` completed.
    pub fn synced(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(evidence) = self.evidence(peer) {
            evidence.last_sync_ms = Some(now_ms);
        }
    }

    /// Whether `peer` dialed us and sent a request within `suspect_after`, after our
    /// own link to it last failed. A peer that just (re)started dials us before our
    /// reconnect backoff dials it: it is running, and writes that promise to reach
    /// every running peer must wait for it. A peer whose last sign of life predates
    /// our link's failure (it was killed) does not count.
    pub fn recently_heard(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|evidence| match evidence.last_inbound_ms {
                Some(inbound) => {
                    now_ms.saturating_sub(inbound) <= self.suspect_after_ms
                        && evidence
                            .link_failed_ms
                            .is_none_or(|failed| inbound > failed)
                }
                None => false,
            })
    }

    /// Whether this node has settled its view of `peer` since it started: an
    /// anti-entropy round completed with it, or our link to it was tried and failed.
    /// A node serves clients once every peer is settled (see [`crate::replication`]).
    pub fn settled(&self, peer: &NodeId) -> bool {
        self.peers.get(peer).is_some_and(|evidence| {
            evidence.last_sync_ms.is_some()
                || (evidence.link_failed_ms.is_some() && !evidence.link_up)
        })
    }

    /// Whether every peer is settled and at least one round completed.
    pub fn synced_with_all(&self) -> bool {
        self.peers
            .values()
            .all(|evidence| evidence.last_sync_ms.is_some())
    }

    /// The state of `peer` at `now_ms` (`Down` for an unknown peer).
    pub fn state(&self, peer: &NodeId, now_ms: u64) -> PeerState {
        match self.peers.get(peer) {
            Some(evidence) => Self::judge(evidence, now_ms, self.suspect_after_ms),
            None => PeerState::Down,
        }
    }

    fn judge(evidence: &Evidence, now_ms: u64, suspect_after_ms: u64) -> PeerState {
        if !evidence.link_up {
            return PeerState::Down;
        }
        match evidence.awaiting_since_ms {
            Some(since) if now_ms.saturating_sub(since) > suspect_after_ms => PeerState::Suspect,
            _ => PeerState::Alive,
        }
    }

    /// Every peer's view, sorted by id.
    pub fn views(&self, now_ms: u64) -> Vec<PeerView> {
        let mut views: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(id, evidence)| PeerView {
                id: id.clone(),
                state: Self::judge(evidence, now_ms, self.suspect_after_ms),
                last_seen_ms: evidence.last_heard_ms.map(|t| now_ms.saturating_sub(t)),
                last_sync_ms: evidence.last_sync_ms.map(|t| now_ms.saturating_sub(t)),
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn peers_start_down_and_come_alive_with_a_link() {
        let mut detector = FailureDetector::new([n("n2")], 600);
        assert_eq!(detector.state(&n("n2"), 0), PeerState::Down);
        detector.link_up(&n("n2"), 10);
        assert_eq!(detector.state(&n("n2"), 10), PeerState::Alive);
        assert_eq!(
            detector.state(&n("n9"), 10),
            PeerState::Down,
            "unknown peers are down"
        );
    }

    #[test]
    fn an_unanswered_request_makes_a_peer_suspect_then_a_reply_clears_it() {
        let mut detector = FailureDetector::new([n("n2")], 600);
        detector.link_up(&n("n2"), 0);
        detector.request_sent(&n("n2"), 100);
        // A second request while waiting does not reset the clock.
        detector.request_sent(&n("n2"), 500);
        assert_eq!(detector.state(&n("n2"), 700), PeerState::Alive);
        assert_eq!(detector.state(&n("n2"), 701), PeerState::Suspect);
        detector.reply_received(&n("n2"), 800);
        assert_eq!(detector.state(&n("n2"), 800), PeerState::Alive);
        let view = &detector.views(900)[0];
        assert_eq!(view.last_seen_ms, Some(100));
    }

    #[test]
    fn a_failed_link_is_down_until_a_new_handshake() {
        let mut detector = FailureDetector::new([n("n2")], 600);
        detector.link_up(&n("n2"), 0);
        detector.link_down(&n("n2"), 1);
        assert_eq!(detector.state(&n("n2"), 1), PeerState::Down);
        // Inbound traffic alone does not revive our link.
        detector.heard_from(&n("n2"), 2);
        assert_eq!(detector.state(&n("n2"), 2), PeerState::Down);
        detector.link_up(&n("n2"), 3);
        assert_eq!(detector.state(&n("n2"), 3), PeerState::Alive);
    }

    #[test]
    fn a_peer_heard_on_its_own_link_is_recently_heard_while_ours_is_down() {
        let mut detector = FailureDetector::new([n("n2")], 600);
        assert!(!detector.recently_heard(&n("n2"), 0));
        detector.heard_from(&n("n2"), 100);
        assert_eq!(detector.state(&n("n2"), 100), PeerState::Down);
        assert!(detector.recently_heard(&n("n2"), 700));
        assert!(!detector.recently_heard(&n("n2"), 701));
        // Replies on our own link are not evidence that the peer dialed us.
        detector.link_up(&n("n2"), 800);
        detector.reply_received(&n("n2"), 900);
        assert!(!detector.recently_heard(&n("n2"), 900));
    }

    #[test]
    fn a_killed_peer_is_not_recently_heard_after_our_link_fails() {
        let mut detector = FailureDetector::new([n("n2")], 600);
        detector.link_up(&n("n2"), 0);
        detector.heard_from(&n("n2"), 100);
        detector.link_down(&n("n2"), 150);
        assert!(
            !detector.recently_heard(&n("n2"), 200),
            "its last word predates the failure"
        );
        detector.heard_from(&n("n2"), 300);
        assert!(
            detector.recently_heard(&n("n2"), 300),
            "it dialed us again: it restarted"
        );
    }

    #[test]
    fn peers_settle_by_a_completed_round_or_a_failed_attempt() {
        let mut detector = FailureDetector::new([n("n2"), n("n3")], 600);
        assert!(!detector.settled(&n("n2")));
        detector.link_up(&n("n2"), 0);
        assert!(!detector.settled(&n("n2")), "linked but not synced yet");
        detector.synced(&n("n2"), 10);
        assert!(detector.settled(&n("n2")));
        detector.link_down(&n("n3"), 5);
        assert!(detector.settled(&n("n3")), "tried and found down");
        assert!(!detector.synced_with_all());
        detector.synced(&n("n3"), 20);
        assert!(detector.synced_with_all());
    }

    #[test]
    fn views_report_ages() {
        let mut detector = FailureDetector::new([n("n3"), n("n2")], 600);
        detector.link_up(&n("n2"), 100);
        detector.synced(&n("n2"), 150);
        let views = detector.views(400);
        assert_eq!(views[0].id, n("n2"));
        assert_eq!(views[0].last_seen_ms, Some(300));
        assert_eq!(views[0].last_sync_ms, Some(250));
        assert_eq!(views[1].state, PeerState::Down);
        assert_eq!(views[1].last_seen_ms, None);
    }
}
