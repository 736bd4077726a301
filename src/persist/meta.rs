//! The identity of a data directory and the lock that gives it to one process.
//!
//! Owns: the `meta` file ([`Meta`]: format version, cluster, node, data epoch, creation
//! time), its atomic replacement ([`write_atomically`]), and the `LOCK` file
//! ([`DirLock`]).
//! Knows nothing of: segments, records, the lease.
//!
//! `meta` is a small TOML file so an operator can read it. It is written once, when the
//! directory is created, through a temporary file, fsync, rename and an fsync of the
//! directory: after a crash it is either absent or whole. The data epoch is a random
//! 64-bit number chosen then; every segment header carries it, so a segment copied in
//! from another directory is refused.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_error, JournalError, FORMAT_VERSION};
use crate::clock::NodeId;

/// File name of the identity file.
pub const META_FILE: &str = "meta";
/// File name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// What the `meta` file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The on-disk format version.
    pub format: u32,
    /// The cluster the directory belongs to.
    pub cluster: String,
    /// The node the directory belongs to.
    pub node: String,
    /// A random number chosen when the directory was created, as 16 hex digits.
    pub epoch: String,
    /// When the directory was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// Only the format field, read first so that a future format with other fields still
/// yields "format N" rather than a parse error.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

impl Meta {
    /// A new identity for `node` of `cluster`, created at `created_ms` (wall clock),
    /// with a fresh random epoch.
    pub fn create(cluster: &str, node: &NodeId, created_ms: u64) -> Result<Self, JournalError> {
        let epoch = getrandom::u64().map_err(|error| JournalError::Io {
            context: "drawing a random data epoch".to_owned(),
            source: std::io::Error::other(error.to_string()),
        })?;
        Ok(Self {
            format: FORMAT_VERSION,
            cluster: cluster.to_owned(),
            node: node.as_str().to_owned(),
            epoch: format!("{epoch:016x}"),
            created_ms,
        })
    }

    /// The data epoch as a number.
    pub fn epoch(&self) -> Option<u64> {
        u64::from_str_radix(&self.epoch, 16).ok()
    }

    /// Reads and checks `dir/meta` against the expected identity.
    pub fn load(dir: &Path, cluster: &str, node: &NodeId) -> Result<Self, JournalError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|error| io_error(format!("reading {}", path.display()), error))?;
        let invalid = |reason: String| JournalError::MetaInvalid {
            path: path.clone(),
            reason,
        };
        let format = toml::from_str::<FormatOnly>(&text)
            .map_err(|error| invalid(error.message().to_owned()))?
            .format;
        if format != FORMAT_VERSION {
            return Err(JournalError::FormatMismatch {
                dir: dir.to_owned(),
                found: format,
            });
        }
        let meta: Meta =
            toml::from_str(&text).map_err(|error| invalid(error.message().to_owned()))?;
        if meta.epoch().is_none() {
            return Err(invalid(format!(
                "epoch {:?} is not 16 hex digits",
                meta.epoch
            )));
        }
        if meta.cluster != cluster {
            return Err(JournalError::WrongOwner {
                dir: dir.to_owned(),
                what: "cluster",
                found: meta.cluster,
                expected: cluster.to_owned(),
            });
        }
        if meta.node != node.as_str() {
            return Err(JournalError::WrongOwner {
                dir: dir.to_owned(),
                what: "node",
                found: meta.node,
                expected: node.as_str().to_owned(),
            });
        }
        Ok(meta)
    }

    /// Writes `dir/meta` atomically.
    pub fn store(&self, dir: &Path) -> Result<(), JournalError> {
        let text = toml::to_string(self).map_err(|error| JournalError::Io {
            context: "encoding the meta file".to_owned(),
            source: std::io::Error::other(error.to_string()),
        })?;
        let header =
            "# meshkv data directory identity. Do not edit: a node refuses a directory of\n\
                      # another format, cluster or node.\n";
        write_atomically(dir, META_FILE, format!("{header}{text}").as_bytes())
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the new content:
/// temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), JournalError> {
    let target = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)
        .map_err(|error| io_error(format!("creating {}", temporary.display()), error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error(format!("writing {}", temporary.display()), error))?;
    drop(file);
    std::fs::rename(&temporary, &target)
        .map_err(|error| io_error(format!("renaming into {}", target.display()), error))?;
    sync_dir(dir)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| io_error(format!("syncing directory {}", dir.display()), error))
}

/// An exclusive lock on a data directory, held until dropped (or the process dies: the
/// kernel releases it, so a killed node never leaves a stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| io_error(format!("opening {}", path.display()), error))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse::<u32>().ok());
                return Err(JournalError::InUse {
                    dir: dir.to_owned(),
                    pid,
                });
            }
            Err(TryLockError::Error(error)) => {
                return Err(io_error(format!("locking {}", path.display()), error));
            }
        }
        // Only the holder writes its pid, for the message a second process prints.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|error| io_error(format!("writing {}", path.display()), error))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn meta_round_trips_and_checks_identity() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::create("prod", &node("n1"), 1_764_000_000_000).unwrap();
        meta.store(dir.path()).unwrap();
        assert_eq!(Meta::load(dir.path(), "prod", &node("n1")).unwrap(), meta);
        assert!(!dir.path().join("meta.tmp").exists());

        let other_node = Meta::load(dir.path(), "prod", &node("n2")).unwrap_err();
        assert!(
            other_node
                .to_string()
                .contains("belongs to node n1, not n2"),
            "{other_node}"
        );
        let other_cluster = Meta::load(dir.path(), "test", &node("n1")).unwrap_err();
        assert!(
            other_cluster
                .to_string()
                .contains("belongs to cluster prod, not test"),
            "{other_cluster}"
        );
    }

    #[test]
    fn another_format_is_refused_by_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(META_FILE),
            "format = 3\nsomething_new = true\n",
        )
        .unwrap();
        let error = Meta::load(dir.path(), "prod", &node("n1")).unwrap_err();
        assert!(
            error.to_string().contains("format 3, this meshkv reads 1"),
            "{error}"
        );
    }

    #[test]
    fn garbage_meta_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(META_FILE), [0xff, 0x00, 0x13]).unwrap();
        assert!(Meta::load(dir.path(), "prod", &node("n1")).is_err());
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let error = DirLock::acquire(dir.path()).unwrap_err();
        let expected = format!(
            "data directory {} is in use by another process (pid {})",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(error.to_string(), expected);
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }
}
