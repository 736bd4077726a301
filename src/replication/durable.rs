//! What the node's state means on disk: the record codec, recovery into a store, and
//! the HLC lease.
//!
//! Owns: the journal record format (one [`Entry`] per record), [`recover`] (opening
//! the storage and replaying it into a [`Store`] through the normal merge, so the
//! digest and bucket index are built incrementally, without a scan), and `Lease`
//! with its keeper task `keep_lease`.
//! Knows nothing of: files (the journal is a `dyn Journal` from a `dyn Storage`),
//! peers, the write path's waits.
//!
//! # Record format
//! A record's payload is a kind byte, then the MessagePack encoding of an [`Entry`]
//! (the same serde shape as on the wire; values are MessagePack `bin`). Kind 1 is
//! the only kind so far; an unknown kind or an undecodable payload (its checksum held,
//! so this is not a torn write) refuses to start unless `--repair`.
//!
//! # The lease
//! A node must never stamp a version at or below one it issued before a restart, even
//! if its wall clock went back. Every stamp's `wall_ms` is kept at or below a durable
//! bound (the `clock` file of the data directory). The keeper extends the bound to
//! `now + window` whenever less than half a window is left, in a blocking task; a
//! write whose stamp would pass the bound (the HLC ran ahead after observing a remote
//! stamp, or the wall clock jumped) waits for an extension. After a restart the HLC
//! resumes above the old bound. The window is `max_clock_skew_ms / 2` (clamped to
//! 20 ms..5 s): after a fast restart the first stamps are at most a window ahead of
//! the wall clock, and peers accept stamps up to `max_clock_skew_ms` ahead, so half
//! the skew budget stays for real clock offsets; and it costs one 512-byte fsync per
//! half window (4 per second with the default 1 s skew).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::clock::Clock;
use crate::persist::{Journal, JournalError, Owner, Recovery, Storage};
use crate::store::{Entry, Merged, Register, Store};

/// Kind byte of a record holding one [`Entry`].
const KIND_ENTRY: u8 = 1;

/// The payload of the record of `entry`.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut payload = vec![KIND_ENTRY];
    // Encoding into a Vec cannot fail for this type (no maps with non-string keys,
    // no custom serializers that error).
    rmp_serde::encode::write(&mut payload, entry).expect("an entry always encodes");
    payload
}

/// The entry a record holds; an error for a payload this build did not write.
pub fn decode(payload: &[u8]) -> Result<Entry, String> {
    match payload.split_first() {
        Some((&KIND_ENTRY, body)) => rmp_serde::from_slice(body).map_err(|e| e.to_string()),
        Some((kind, _)) => Err(format!("unknown record kind {kind}")),
        None => Err("empty record".to_owned()),
    }
}

/// About how many journal bytes the record that wrote `register` took: drives the
/// compaction trigger, so an estimate is enough.
pub(super) fn record_weight(key: &str, register: &Register) -> u64 {
    (key.len()
        + register.val.value.as_ref().map_or(0, |value| value.len())
        + 2 * register.marker.node.as_str().len()
        + 40) as u64
}

/// Why the node's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The journal refused to open (damage, wrong owner, in use, I/O).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Records whose checksum held but which do not decode (written by another
    /// version, or damaged before they were checksummed).
    #[error("{records} record(s) of the data directory cannot be decoded (first: {first}); start with --repair to skip them")]
    Undecodable {
        /// How many.
        records: u64,
        /// The first reason.
        first: String,
    },
}

/// The state rebuilt from storage.
pub struct Recovered {
    /// Every recovered entry, merged.
    pub store: Store,
    /// The journal to append to from now on.
    pub journal: Arc<dyn Journal>,
    /// What recovery found (`None`: memory only).
    pub recovery: Option<Recovery>,
    /// Whether the storage survives the process.
    pub durable: bool,
    /// Records skipped as undecodable (only with repair).
    pub skipped: u64,
}

/// Opens `storage` for `owner` and replays it into a new store. Blocking.
pub fn recover(
    storage: &dyn Storage,
    owner: &Owner,
    repair: bool,
) -> Result<Recovered, RecoverError> {
    let mut store = Store::new();
    let mut garbage = 0u64;
    let mut undecodable = 0u64;
    let mut first_error = None;
    let opened = storage.open(owner, &mut |payload| match decode(payload) {
        Ok(entry) => {
            let key = entry.key.clone();
            match store.merge(entry) {
                Merged::Applied {
                    previous: Some(previous),
                } => garbage += record_weight(&key, &previous),
                Merged::Applied { previous: None } => {}
                Merged::Stale => garbage += payload.len() as u64,
            }
        }
        Err(reason) => {
            undecodable += 1;
            first_error.get_or_insert(reason);
        }
    })?;
    if undecodable > 0 && !repair {
        let _ = opened.journal.shutdown();
        return Err(RecoverError::Undecodable {
            records: undecodable,
            first: first_error.unwrap_or_default(),
        });
    }
    opened.journal.record_garbage(garbage);
    Ok(Recovered {
        store,
        journal: opened.journal,
        recovery: opened.recovery,
        durable: storage.durable(),
        skipped: undecodable,
    })
}

/// The lease window for a skew limit (see the module header).
pub(super) fn lease_window_ms(max_clock_skew_ms: u64) -> u64 {
    (max_clock_skew_ms / 2).clamp(20, 5_000)
}

/// What the lease keeper publishes.
#[derive(Clone, Debug, Default)]
pub(super) struct LeaseState {
    /// Durable bound: no stamp's `wall_ms` may exceed it.
    pub(super) bound_ms: u64,
    /// The largest `wall_ms` a writer is waiting to stamp.
    pub(super) wanted_ms: u64,
    /// Set when an extension failed: no write can be stamped any more.
    pub(super) failure: Option<Arc<str>>,
}

/// The HLC lease of a running node.
pub(super) struct Lease {
    window_ms: u64,
    state: watch::Sender<LeaseState>,
}

impl Lease {
    /// A lease whose durable bound is `bound_ms` (`u64::MAX`: none needed, the node
    /// keeps nothing across restarts).
    pub(super) fn new(bound_ms: u64, window_ms: u64) -> Self {
        Self {
            window_ms,
            state: watch::Sender::new(LeaseState {
                bound_ms,
                ..LeaseState::default()
            }),
        }
    }

    /// The durable bound now.
    pub(super) fn bound_ms(&self) -> u64 {
        self.state.borrow().bound_ms
    }

    /// Waits until the bound covers `wall_ms` (asking the keeper for it).
    pub(super) async fn cover(&self, wall_ms: u64) -> Result<(), JournalError> {
        self.state.send_if_modified(|state| {
            let raise = wall_ms > state.wanted_ms;
            state.wanted_ms = state.wanted_ms.max(wall_ms);
            raise
        });
        let mut receiver = self.state.subscribe();
        let state = receiver
            .wait_for(|state| state.bound_ms >= wall_ms || state.failure.is_some())
            .await
            .map_err(|_| JournalError::Closed)?;
        match &state.failure {
            Some(failure) if state.bound_ms < wall_ms => Err(JournalError::Failed(failure.clone())),
            _ => Ok(()),
        }
    }
}

/// Keeps `lease` at least half a window ahead of the wall clock, and ahead of what
/// writers wait for, until `shutdown`. Extensions run in blocking tasks (in place for a
/// journal that does no I/O).
pub(super) async fn keep_lease(
    journal: Arc<dyn Journal>,
    lease: Arc<Lease>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let window = lease.window_ms;
    let mut changes = lease.state.subscribe();
    loop {
        let now = clock.wall_ms();
        let (bound, wanted) = {
            let state = lease.state.borrow();
            (state.bound_ms, state.wanted_ms)
        };
        if bound < now.saturating_add(window / 2) || wanted > bound {
            let target = now.max(wanted).saturating_add(window);
            let extended = if journal.blocks() {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || journal.extend_lease(target)).await
            } else {
                Ok(journal.extend_lease(target))
            };
            let failure = match extended {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(failure.to_string()),
                Err(join) => Some(format!("the lease task failed: {join}")),
            };
            match failure {
                None => lease.state.send_modify(|state| {
                    state.bound_ms = state.bound_ms.max(target);
                }),
                Some(failure) => {
                    error!("cannot extend the clock lease, no more writes accepted: {failure}");
                    lease
                        .state
                        .send_modify(|state| state.failure = Some(Arc::from(failure.as_str())));
                    return;
                }
            }
            continue;
        }
        changes.borrow_and_update();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis((window / 4).max(1))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp, Version};

    fn entry(value: Option<&[u8]>) -> Entry {
        Entry {
            key: "k/ü".to_owned(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms: 1_764_000_000_000,
                    logical: 7,
                },
                node: NodeId::new("n1").unwrap(),
            },
            value: value.map(|bytes| bytes.to_vec().into()),
            replaces: None,
        }
    }

    #[test]
    fn records_round_trip_values_tombstones_and_binary() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        for original in [entry(Some(b"v")), entry(None), entry(Some(&all_bytes))] {
            let payload = encode(&original);
            assert_eq!(payload[0], KIND_ENTRY);
            assert_eq!(decode(&payload).unwrap(), original);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2])
            .unwrap_err()
            .contains("unknown record kind 9"));
        assert!(decode(&[KIND_ENTRY, 0xc1]).is_err());
    }

    #[test]
    fn the_window_is_half_the_skew_within_bounds() {
        assert_eq!(lease_window_ms(1000), 500);
        assert_eq!(lease_window_ms(10), 20);
        assert_eq!(lease_window_ms(60_000), 5_000);
    }
}
