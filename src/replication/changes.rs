//! The change feed: every change the node applies to its store, handed to watchers.
//!
//! Owns: [`ChangeFeed`] (the subscribers, each with its prefix and its own bounded
//! buffer), [`Change`] (one applied entry and whether it was a local write or came from
//! a peer), [`Watch`] (one subscriber's end) and the watch metrics.
//! Knows nothing of: HTTP or server-sent events, the wire format, how entries are
//! merged (`state` publishes here after a merge that changed the store).
//!
//! # Bounds
//! Each subscriber has a buffer of `capacity` changes, filled only with changes under
//! its prefix. Publishing never waits: a subscriber whose buffer is full is cut off on
//! the spot (its buffer keeps what it holds, then [`Watch::next`] reports
//! [`WatchEvent::Overflow`]), so a slow consumer costs at most `capacity` shared
//! [`Arc`]s and never slows a write. At most `max_watchers` subscribers exist at once.
//!
//! # Order
//! `state` publishes under its core lock, right after the merge, so every subscriber
//! sees changes in the order the store applied them, and subscribing under that same
//! lock (see `NodeState::watch`) cuts the history exactly: a change is either in the
//! snapshot taken then or in the buffer, never both and never neither.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::Entry;

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client's write on this node.
    Local,
    /// An entry from a peer: a push, an anti-entropy repair or a read repair.
    Replicated,
}

impl Origin {
    /// `local` or `replicated`, as the watch API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Replicated => "replicated",
        }
    }
}

/// One change the store applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The entry as stored (`value: None` is a deletion).
    pub entry: Entry,
    /// Where it came from.
    pub origin: Origin,
}

/// What a watcher receives next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A change under the watched prefix.
    Change(Arc<Change>),
    /// The buffer filled up: changes were lost, and the watch is over.
    Overflow {
        /// The buffer size that was exceeded.
        capacity: usize,
    },
}

/// Why a subscription was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyWatchers {
    /// The limit reached.
    pub limit: usize,
}

impl std::fmt::Display for TooManyWatchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit {
            0 => write!(f, "watches are turned off on this node (max_watchers = 0)"),
            limit => write!(
                f,
                "{limit} watchers are open on this node already (max_watchers); try again later"
            ),
        }
    }
}

impl std::error::Error for TooManyWatchers {}

struct Subscriber {
    prefix: String,
    sender: mpsc::Sender<Arc<Change>>,
    /// Set when the buffer was full: the watch reports an overflow once drained.
    overflowed: Arc<AtomicBool>,
}

struct Shared {
    subscribers: Mutex<BTreeMap<u64, Subscriber>>,
    /// Subscribers open, so that publishing with none costs one atomic load.
    open: AtomicUsize,
    next_id: AtomicUsize,
    /// Set by [`ChangeFeed::close`]: no new subscriber is accepted.
    closed: AtomicBool,
    capacity: usize,
    max_watchers: usize,
    metrics: Arc<Metrics>,
}

/// The node's change feed. See the module header.
pub struct ChangeFeed {
    shared: Arc<Shared>,
}

impl ChangeFeed {
    /// A feed giving each subscriber a buffer of `capacity` changes (at least 1), with at
    /// most `max_watchers` subscribers.
    pub fn new(capacity: usize, max_watchers: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                subscribers: Mutex::new(BTreeMap::new()),
                open: AtomicUsize::new(0),
                next_id: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                capacity: capacity.max(1),
                max_watchers,
                metrics,
            }),
        }
    }

    /// The change that merging `entry` would make, if anyone is watching: taken before
    /// the merge consumes the entry, sent by [`ChangeFeed::publish`] once it applied.
    pub fn capture(&self, entry: &Entry, origin: Origin) -> Option<Change> {
        (self.shared.open.load(Ordering::Acquire) > 0).then(|| Change {
            entry: Entry {
                key: entry.key.clone(),
                version: entry.version.clone(),
                value: entry.value.clone(),
                replaces: None,
            },
            origin,
        })
    }

    /// Hands `change` to every subscriber watching its key; never waits. A subscriber
    /// whose buffer is full is dropped (it reports an overflow once it has drained).
    pub fn publish(&self, change: Option<Change>) {
        let Some(change) = change else { return };
        let change = Arc::new(change);
        let mut subscribers = self.shared.lock();
        let mut cut = Vec::new();
        for (id, subscriber) in subscribers.iter() {
            if !change.entry.key.starts_with(&subscriber.prefix) {
                continue;
            }
            match subscriber.sender.try_send(change.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.overflowed.store(true, Ordering::Release);
                    self.shared.metrics.watch_overflows.inc();
                    cut.push(*id);
                }
                // The watcher is being dropped; its `Drop` removes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in cut {
            subscribers.remove(&id);
        }
    }

    /// A new subscriber to the changes under `prefix`. After [`ChangeFeed::close`] the
    /// watch it returns is already over.
    pub fn subscribe(&self, prefix: &str) -> Result<Watch, TooManyWatchers> {
        let shared = &self.shared;
        let mut subscribers = shared.lock();
        // `open` counts watchers (a cut-off one stays open until its consumer is done),
        // not subscribers.
        if shared.open.load(Ordering::Acquire) >= shared.max_watchers {
            return Err(TooManyWatchers {
                limit: shared.max_watchers,
            });
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let (sender, receiver) = mpsc::channel(shared.capacity);
        let overflowed = Arc::new(AtomicBool::new(false));
        if !shared.closed.load(Ordering::Acquire) {
            subscribers.insert(
                id,
                Subscriber {
                    prefix: prefix.to_owned(),
                    sender,
                    overflowed: overflowed.clone(),
                },
            );
        }
        shared.open.fetch_add(1, Ordering::AcqRel);
        shared.metrics.watchers.inc();
        Ok(Watch {
            id,
            receiver,
            overflowed,
            shared: shared.clone(),
            finished: false,
        })
    }

    /// Ends every watch (node shutdown): each one drains its buffer, then ends; later
    /// subscriptions end at once.
    pub fn close(&self) {
        let mut subscribers = self.shared.lock();
        self.shared.closed.store(true, Ordering::Release);
        subscribers.clear();
    }

    /// Watchers open now.
    pub fn watchers(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Subscriber>> {
        self.subscribers.lock().expect("subscribers lock poisoned")
    }
}

/// One subscriber's end of the feed; dropping it unsubscribes.
pub struct Watch {
    id: u64,
    receiver: mpsc::Receiver<Arc<Change>>,
    overflowed: Arc<AtomicBool>,
    shared: Arc<Shared>,
    finished: bool,
}

impl Watch {
    /// The next change, an overflow (then `None` for ever after), or `None` once the
    /// feed was closed.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        if self.finished {
            return None;
        }
        match self.receiver.recv().await {
            Some(change) => {
                self.shared.metrics.watch_events.inc();
                Some(WatchEvent::Change(change))
            }
            None => {
                self.finished = true;
                // The sender is gone: cut off for a full buffer, or the feed closed.
                self.overflowed
                    .load(Ordering::Acquire)
                    .then_some(WatchEvent::Overflow {
                        capacity: self.shared.capacity,
                    })
            }
        }
    }

    /// Counts events the caller sends that did not come through [`Watch::next`] (the
    /// snapshot of a resumed watch).
    pub fn count_sent(&self, events: usize) {
        self.shared.metrics.watch_events.inc_by(events as u64);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().remove(&self.id);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.watchers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp, Version};

    fn entry(key: &str, wall_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms,
                    logical: 0,
                },
                node: NodeId::new("n1").unwrap(),
            },
            value: Some(bytes::Bytes::from_static(b"v")),
            replaces: None,
        }
    }

    fn publish(feed: &ChangeFeed, key: &str, wall_ms: u64) {
        feed.publish(feed.capture(&entry(key, wall_ms), Origin::Local));
    }

    async fn keys(watch: &mut Watch, count: usize) -> Vec<String> {
        let mut keys = Vec::new();
        for _ in 0..count {
            match watch.next().await {
                Some(WatchEvent::Change(change)) => keys.push(change.entry.key.clone()),
                other => panic!("expected a change, got {other:?}"),
            }
        }
        keys
    }

    #[tokio::test]
    async fn watchers_get_their_prefix_in_order() {
        let metrics = Metrics::new();
        let feed = ChangeFeed::new(8, 4, metrics.clone());
        // Nobody watches: nothing is even captured.
        assert!(feed.capture(&entry("a/1", 1), Origin::Local).is_none());
        let mut a = feed.subscribe("a/").unwrap();
        let mut all = feed.subscribe("").unwrap();
        publish(&feed, "a/1", 1);
        publish(&feed, "b/1", 2);
        publish(&feed, "a/2", 3);
        assert_eq!(keys(&mut a, 2).await, ["a/1", "a/2"]);
        assert_eq!(keys(&mut all, 3).await, ["a/1", "b/1", "a/2"]);
        assert_eq!(metrics.watch_events.get(), 5);
        assert_eq!(metrics.watchers.get(), 2);
        drop(a);
        assert_eq!((feed.watchers(), metrics.watchers.get()), (1, 1));
    }

    #[tokio::test]
    async fn a_full_buffer_cuts_the_watcher_off_after_what_it_holds() {
        let metrics = Metrics::new();
        let feed = ChangeFeed::new(2, 4, metrics.clone());
        let mut slow = feed.subscribe("").unwrap();
        let mut other = feed.subscribe("b/").unwrap();
        for wall_ms in 1..=5 {
            publish(&feed, &format!("a/{wall_ms}"), wall_ms);
        }
        assert_eq!(keys(&mut slow, 2).await, ["a/1", "a/2"]);
        assert_eq!(
            slow.next().await,
            Some(WatchEvent::Overflow { capacity: 2 })
        );
        assert_eq!(slow.next().await, None);
        assert_eq!(metrics.watch_overflows.get(), 1);
        // A watcher of another prefix saw none of it and is still subscribed.
        publish(&feed, "b/1", 6);
        assert_eq!(keys(&mut other, 1).await, ["b/1"]);
    }

    #[tokio::test]
    async fn the_cap_refuses_and_close_ends_every_watch() {
        let feed = ChangeFeed::new(4, 1, Metrics::new());
        let mut first = feed.subscribe("").unwrap();
        assert_eq!(feed.subscribe("").err(), Some(TooManyWatchers { limit: 1 }));
        publish(&feed, "k", 1);
        feed.close();
        assert_eq!(keys(&mut first, 1).await, ["k"]);
        assert_eq!(first.next().await, None);
        drop(first);
        let mut late = feed.subscribe("").unwrap();
        assert_eq!(late.next().await, None);
    }
}
