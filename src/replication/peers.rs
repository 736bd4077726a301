//! Everything this node keeps per peer, one owned [`Peer`] each.
//!
//! Owns: [`Peer`] (the peer's outbox, the sender of its driver's job queue and the
//! receiver until the driver takes it, the `Notify` that wakes the driver out of its
//! backoff), [`Peers`] (all of them, in id order), [`Job`], and [`Peers::ask`], which
//! hands a request to several drivers and collects the replies.
//! Knows nothing of: links and what the driver does with a job; consistency levels.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::stream::FuturesUnordered;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};

use super::outbox::Outbox;
use super::state::NodeState;
use crate::clock::NodeId;
use crate::peer::LinkError;
use crate::wire::Message;

/// Jobs queued for one peer before further ones are refused.
pub const JOB_QUEUE: usize = 256;

/// A request another task wants sent to the peer (a `quorum` read, a summary).
pub struct Job {
    /// The request.
    pub request: Message,
    /// Where the reply (or the link's failure) goes.
    pub reply: oneshot::Sender<Result<Message, LinkError>>,
}

/// What this node keeps for one peer.
pub(super) struct Peer {
    id: NodeId,
    outbox: Outbox,
    jobs: mpsc::Sender<Job>,
    /// The other end of `jobs`, until the peer's driver takes it.
    job_queue: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Wakes the driver out of its reconnect backoff.
    wake: Notify,
}

impl Peer {
    fn new(id: NodeId, outbox_max_keys: usize) -> Self {
        let (jobs, job_queue) = mpsc::channel(JOB_QUEUE);
        Self {
            id,
            outbox: Outbox::new(outbox_max_keys),
            jobs,
            job_queue: Mutex::new(Some(job_queue)),
            wake: Notify::new(),
        }
    }

    /// The peer's id.
    pub(super) fn id(&self) -> &NodeId {
        &self.id
    }

    /// The writes the peer has not acknowledged yet.
    pub(super) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The peer is running (it dialed us, or a write waits for it): its driver should
    /// try to link now rather than at the end of its backoff.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`Peer::wake`] is called.
    pub(super) fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// The job queue, for the peer's driver; `None` once taken.
    pub(super) fn take_jobs(&self) -> Option<mpsc::Receiver<Job>> {
        self.job_queue
            .lock()
            .expect("job queue lock poisoned")
            .take()
    }
}

/// Every peer of this node, in id order.
pub(super) struct Peers {
    by_id: BTreeMap<NodeId, Arc<Peer>>,
}

impl Peers {
    /// One [`Peer`] per id, each outbox holding at most `outbox_max_keys` keys.
    pub(super) fn new(ids: &[NodeId], outbox_max_keys: usize) -> Self {
        let by_id = ids
            .iter()
            .map(|id| (id.clone(), Arc::new(Peer::new(id.clone(), outbox_max_keys))))
            .collect();
        Self { by_id }
    }

    /// How many peers there are.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the node is alone.
    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every peer, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_id.values()
    }

    /// Every peer's id, in order.
    pub(super) fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.by_id.keys()
    }

    /// The peer `id`, if it is one.
    pub(super) fn get(&self, id: &NodeId) -> Option<&Arc<Peer>> {
        self.by_id.get(id)
    }

    /// Sends `request` to every peer in `targets` through their drivers; the stream
    /// yields each peer's reply as it comes (failures and full queues as `None`).
    pub(super) fn ask(
        &self,
        node: &NodeState,
        targets: &[NodeId],
        request: &Message,
    ) -> FuturesUnordered<impl Future<Output = (NodeId, Option<Message>)>> {
        let asks = FuturesUnordered::new();
        for peer in targets {
            let (reply_tx, reply_rx) = oneshot::channel();
            let job = Job {
                request: request.clone(),
                reply: reply_tx,
            };
            let queued = self
                .get(peer)
                .is_some_and(|peer| peer.jobs.try_send(job).is_ok());
            if !queued {
                node.bound_hit("job_queue", peer);
            }
            let peer = peer.clone();
            asks.push(async move {
                let reply = if queued {
                    reply_rx.await.ok().and_then(Result::ok)
                } else {
                    None
                };
                (peer, reply)
            });
        }
        asks
    }
}
