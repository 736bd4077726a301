//! The storage seam: how a node obtains its [`Journal`].
//!
//! Owns: the [`Storage`] factory trait (object-safe, free of file types), its two
//! production implementations ([`MemoryStorage`]: no disk; [`DirStorage`]: a data
//! directory) and what opening yields ([`Opened`]).
//! Knows nothing of: what the replayed payloads mean (the caller decodes them), the
//! node's tasks. A simulator implements [`Storage`] with a simulated disk.

use std::path::PathBuf;
use std::sync::Arc;

use super::{
    FileJournal, FsyncPolicy, Journal, JournalError, JournalOptions, MemoryOnly, Recovery,
};
use crate::clock::{Clock, NodeId};

/// Whom a journal belongs to: a data directory refuses any other owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The cluster name of the cluster file.
    pub cluster: String,
    /// The node's id.
    pub node: NodeId,
}

/// An opened journal and what opening it found.
pub struct Opened {
    /// The journal the node appends to.
    pub journal: Arc<dyn Journal>,
    /// What recovery found; `None` for storage without a disk.
    pub recovery: Option<Recovery>,
}

/// Where a node keeps its data. Object-safe: the node holds an `Arc<dyn Storage>`.
pub trait Storage: Send + Sync {
    /// Opens the journal of `owner`, handing every stored record to `replay` in order
    /// before returning. Blocking: call it from a blocking context.
    fn open(&self, owner: &Owner, replay: &mut dyn FnMut(&[u8])) -> Result<Opened, JournalError>;

    /// Whether what is appended survives the process (false: memory only).
    fn durable(&self) -> bool;

    /// One line for the startup log, e.g. `data directory /var/lib/meshkv (fsync batch)`.
    fn describe(&self) -> String;

    /// Whether [`Storage::open`] does I/O and so belongs on a blocking thread (see
    /// [`Journal::blocks`]).
    fn blocks(&self) -> bool {
        true
    }
}

/// No disk: the node's data lives in memory only and is rebuilt from its peers after
/// a restart.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStorage;

impl Storage for MemoryStorage {
    fn open(&self, _owner: &Owner, _replay: &mut dyn FnMut(&[u8])) -> Result<Opened, JournalError> {
        Ok(Opened {
            journal: Arc::new(MemoryOnly::new()),
            recovery: None,
        })
    }

    fn durable(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "memory only".to_owned()
    }

    fn blocks(&self) -> bool {
        false
    }
}

/// A data directory on the local file system ([`FileJournal`]).
#[derive(Clone)]
pub struct DirStorage {
    /// The directory.
    pub dir: PathBuf,
    /// When appends become durable.
    pub fsync: FsyncPolicy,
    /// Drop damaged records instead of refusing to start.
    pub repair: bool,
    /// The node's clock (the directory's creation time, compaction reports).
    pub clock: Arc<dyn Clock>,
}

impl Storage for DirStorage {
    fn open(&self, owner: &Owner, replay: &mut dyn FnMut(&[u8])) -> Result<Opened, JournalError> {
        let mut options = JournalOptions::new(
            self.dir.clone(),
            owner.cluster.clone(),
            owner.node.clone(),
            self.clock.clone(),
        );
        options.fsync = self.fsync;
        options.repair = self.repair;
        let (journal, recovery) = FileJournal::open(options, |payload| replay(payload))?;
        Ok(Opened {
            journal: Arc::new(journal),
            recovery: Some(recovery),
        })
    }

    fn durable(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "data directory {} (fsync {}{})",
            self.dir.display(),
            self.fsync,
            if self.repair { ", repair" } else { "" }
        )
    }
}
