//! The writer thread: the only code that writes to the active segment.
//!
//! Owns: the active segment's file handle, group commit, rotation, and publishing the
//! durable LSN.
//! Knows nothing of: callers, compaction internals (it only answers `Rotate` and
//! `Sync` requests, and starts a compaction when the trigger says so).
//!
//! Requests arrive on an unbounded std channel whose length is bounded by the queue
//! semaphore (each append carries its [`Slot`] until written). The thread blocks for
//! the first request, then drains whatever else is queued (up to [`GROUP_MAX_BYTES`])
//! and handles the group: appends are copied into one buffer and written with a single
//! `write`; under `batch` one fdatasync follows for the whole group. So the more
//! writers wait, the more each fsync carries, with no timer and no added latency at
//! low load.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::engine::Shared;
use super::record::{RecordBatch, SEGMENT_HEADER_BYTES};
use super::{io_error, segment, FsyncPolicy, JournalError, Lsn, Slot};

/// A group stops draining the queue past this many bytes, bounding the buffer.
const GROUP_MAX_BYTES: usize = 8 << 20;

/// What the writer thread is asked to do.
pub(super) enum Request {
    /// Write a batch.
    Append {
        lsn: Lsn,
        batch: RecordBatch,
        /// Held until the batch is written, so the queue bound covers it.
        slot: Slot,
    },
    /// Seal the active segment (if it holds records) and start a new one. Replies
    /// whether it rotated.
    Rotate(SyncSender<Result<bool, JournalError>>),
    /// Write and fdatasync everything queued before this request, whatever the policy.
    Sync(SyncSender<Result<(), JournalError>>),
    /// Like `Sync`, then stop.
    Shutdown(SyncSender<Result<(), JournalError>>),
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) requests: Receiver<Request>,
    pub(super) file: File,
    pub(super) active_id: u64,
    pub(super) active_bytes: u64,
    /// Bytes written to the OS but not yet flushed to `file` (one write per group).
    pub(super) buffer: Vec<u8>,
    /// The last LSN whose bytes are in `buffer` or the file.
    pub(super) written: Lsn,
    /// Set after the first I/O error; everything later fails with it.
    pub(super) failure: Option<std::sync::Arc<str>>,
}

impl Writer {
    /// The thread's body. Returns when asked to shut down (or the channel closes).
    pub(super) fn run(mut self) {
        let mut group = Vec::new();
        while let Ok(first) = self.requests.recv() {
            let mut bytes = request_bytes(&first);
            group.push(first);
            while bytes < GROUP_MAX_BYTES {
                match self.requests.try_recv() {
                    Ok(request) => {
                        bytes += request_bytes(&request);
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            let stop = self.handle_group(&mut group);
            if stop {
                return;
            }
            self.shared.maybe_compact();
            // Let the producers run before parking: the appends they queue meanwhile
            // join the next group instead of each waking this thread (a futex wake and
            // two context switches per append, measured as most of the journal's CPU
            // cost under load with `never`, or with a fast disk).
            std::thread::yield_now();
        }
    }

    /// Handles one group; returns whether to stop.
    fn handle_group(&mut self, group: &mut Vec<Request>) -> bool {
        let policy = self.shared.options.fsync;
        let mut stop = false;
        for request in group.drain(..) {
            match request {
                Request::Append { lsn, batch, slot } => {
                    let result = self.write(lsn, &batch);
                    drop(slot);
                    if result.is_ok() && policy == FsyncPolicy::Always {
                        let _ = self.sync().map(|()| self.publish());
                    }
                }
                Request::Rotate(reply) => {
                    let result = self.rotate();
                    let _ = reply.send(result);
                }
                Request::Sync(reply) => {
                    let result = self.sync().map(|()| self.publish());
                    let _ = reply.send(result);
                }
                Request::Shutdown(reply) => {
                    let result = self.trim().map(|()| self.publish());
                    let _ = reply.send(result);
                    stop = true;
                }
            }
        }
        let result = match policy {
            FsyncPolicy::Batch => self.sync(),
            FsyncPolicy::Never | FsyncPolicy::Always => self.flush(),
        };
        if result.is_ok() {
            self.publish();
        }
        self.shared.set_active_bytes(self.active_bytes);
        stop
    }

    /// Adds a batch to the group's buffer, rotating first if it would overflow the
    /// segment (a batch never spans two segments).
    fn write(&mut self, lsn: Lsn, batch: &RecordBatch) -> Result<(), JournalError> {
        self.check()?;
        let len = batch.as_bytes().len() as u64;
        let used = self.active_bytes + self.buffer.len() as u64;
        if used > SEGMENT_HEADER_BYTES as u64 && used + len > self.shared.options.segment_bytes {
            self.rotate()?;
        }
        self.buffer.extend_from_slice(batch.as_bytes());
        self.written = lsn;
        Ok(())
    }

    /// Writes the buffer to the OS.
    fn flush(&mut self) -> Result<(), JournalError> {
        self.check()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        // Positioned writes: the file is preallocated, so "append" is "write at the end
        // of the valid bytes".
        let result = self.file.write_all_at(&self.buffer, self.active_bytes);
        let result = self.fail_on(result);
        if result.is_ok() {
            self.shared
                .written_bytes
                .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
            self.active_bytes += self.buffer.len() as u64;
            self.buffer.clear();
        }
        result
    }

    /// Writes the buffer and fdatasyncs the active segment.
    fn sync(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        let result = self.file.sync_data();
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fail_on(result)
    }

    /// Makes the written LSN the durable one (the caller synced, or the policy is
    /// `never`).
    fn publish(&self) {
        self.shared.publish_durable(self.written);
    }

    /// Writes everything, cuts the preallocated tail off the active segment and syncs
    /// it: what a sealed segment (or one closed cleanly) looks like.
    fn trim(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        let result = self
            .file
            .set_len(self.active_bytes)
            .and_then(|()| self.file.sync_all());
        self.fail_on(result)
    }

    /// Seals the active segment if it holds records and opens the next one.
    fn rotate(&mut self) -> Result<bool, JournalError> {
        if self.active_bytes + (self.buffer.len() as u64) <= SEGMENT_HEADER_BYTES as u64 {
            self.sync()?;
            return Ok(false);
        }
        self.trim()?;
        let next_id = self.active_id + 1;
        let path = segment::path(&self.shared.dir, next_id);
        let file = segment::create(
            &path,
            self.shared.epoch,
            next_id,
            self.shared.options.segment_bytes,
        );
        let file = match file {
            Ok(file) => file,
            Err(error) => {
                self.fail(&error.to_string());
                return Err(error);
            }
        };
        // Everything in the old segment is synced: what is durable can be published.
        self.publish();
        self.shared.seal_active(self.active_id, self.active_bytes);
        self.file = file;
        self.active_id = next_id;
        self.active_bytes = SEGMENT_HEADER_BYTES as u64;
        Ok(true)
    }

    fn check(&self) -> Result<(), JournalError> {
        match &self.failure {
            Some(message) => Err(JournalError::Failed(message.clone())),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: std::io::Result<()>) -> Result<(), JournalError> {
        result.map_err(|error| {
            let path = segment::path(&self.shared.dir, self.active_id);
            let error = io_error(format!("writing {}", path.display()), error);
            self.fail(&error.to_string());
            error
        })
    }

    /// Enters the failed state: after a failed write or fsync the kernel may have
    /// dropped the dirty pages, so retrying could report durable data that is not.
    fn fail(&mut self, message: &str) {
        if self.failure.is_none() {
            tracing::error!("journal write failed, no more writes accepted: {message}");
            let message: Arc<str> = Arc::from(message);
            self.failure = Some(message.clone());
            self.shared.publish_failure(message);
        }
    }
}

fn request_bytes(request: &Request) -> usize {
    match request {
        Request::Append { batch, .. } => batch.as_bytes().len(),
        _ => 0,
    }
}
