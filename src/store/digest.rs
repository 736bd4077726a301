//! The incremental digest of a store: a fixed two-level hash tree over key buckets.
//!
//! Owns: how a key maps to a bucket, how an entry hashes, and the tree of XOR sums.
//! Knows nothing of: registers' values, the network.
//!
//! Every entry `(key, version, tombstone?)` hashes to 64 bits (SHA-256, truncated). A
//! key falls in one of [`BUCKETS`] buckets by the hash of the key alone, so the same key
//! lands in the same bucket on every node. A bucket's hash is the XOR of its entries'
//! hashes; a group's hash the XOR of its [`GROUP_FANOUT`] buckets; the root the XOR of
//! the groups. XOR makes every update O(1): to replace an entry, XOR its old hash out
//! and its new hash in, along the path leaf → group → root. Nothing ever walks the map.
//!
//! Two stores holding the same registers have equal roots. The converse holds up to
//! hash collisions (2^-64 per comparison for honest data); anti-entropy compares the
//! root, then the groups, then buckets, then the `(key, version)` pairs themselves.

use sha2::{Digest as _, Sha256};

use crate::clock::Version;

/// Buckets in the tree's bottom level.
pub const BUCKETS: usize = 4096;
/// Buckets per group; also the number of groups.
pub const GROUP_FANOUT: usize = 64;
/// Groups in the tree's middle level.
pub const GROUPS: usize = BUCKETS / GROUP_FANOUT;

/// Index of a bucket, `0..BUCKETS`.
pub type BucketId = u16;

/// The bucket a key belongs to, the same on every node.
pub fn bucket_of(key: &str) -> BucketId {
    bucket_and_tag(key).0
}

/// The bucket of a key and 32 further bits of the same hash: a tag the store orders a
/// bucket's keys by, so that finding one compares integers, not keys.
pub fn bucket_and_tag(key: &str) -> (BucketId, u32) {
    let hash = Sha256::digest(key.as_bytes());
    let bucket = (u16::from_be_bytes([hash[0], hash[1]]) as usize % BUCKETS) as BucketId;
    (
        bucket,
        u32::from_be_bytes([hash[2], hash[3], hash[4], hash[5]]),
    )
}

/// The group a bucket belongs to.
pub fn group_of(bucket: BucketId) -> usize {
    bucket as usize / GROUP_FANOUT
}

/// The 64-bit hash of one register: key, version and whether it is a tombstone.
/// The value itself is not hashed: a version is unique per write, so it names the value.
pub fn entry_hash(key: &str, version: &Version, tombstone: bool) -> u64 {
    entry_hash_parts(
        key,
        version.timestamp.wall_ms,
        version.timestamp.logical,
        version.node.as_str(),
        tombstone,
    )
}

/// [`entry_hash`] of a version given by its parts.
pub fn entry_hash_parts(key: &str, wall_ms: u64, logical: u32, node: &str, tombstone: bool) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((key.len() as u64).to_be_bytes());
    hasher.update(key.as_bytes());
    hasher.update(wall_ms.to_be_bytes());
    hasher.update(logical.to_be_bytes());
    hasher.update(node.as_bytes());
    hasher.update([tombstone as u8]);
    let hash = hasher.finalize();
    u64::from_be_bytes(hash[..8].try_into().expect("sha256 is 32 bytes"))
}

/// The hash tree. Cheap to update, cheap to compare level by level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: Vec<u64>,
    groups: Vec<u64>,
    root: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            groups: vec![0; GROUPS],
            root: 0,
        }
    }
}

impl Digest {
    /// XORs `hash` in (or out: XOR is its own inverse) along the bucket's path.
    pub fn toggle(&mut self, bucket: BucketId, hash: u64) {
        self.buckets[bucket as usize] ^= hash;
        self.groups[group_of(bucket)] ^= hash;
        self.root ^= hash;
    }

    /// The hash of the whole state.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The [`GROUPS`] group hashes.
    pub fn groups(&self) -> &[u64] {
        &self.groups
    }

    /// One bucket's hash.
    pub fn bucket(&self, bucket: BucketId) -> u64 {
        self.buckets[bucket as usize]
    }

    /// The buckets of one group, as `(bucket id, hash)`.
    pub fn buckets_of_group(&self, group: usize) -> impl Iterator<Item = (BucketId, u64)> + '_ {
        let start = group * GROUP_FANOUT;
        (start..start + GROUP_FANOUT).map(|bucket| (bucket as BucketId, self.buckets[bucket]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp};

    fn version(wall_ms: u64) -> Version {
        Version {
            timestamp: Timestamp {
                wall_ms,
                logical: 0,
            },
            node: NodeId::new("n1").unwrap(),
        }
    }

    #[test]
    fn toggling_twice_restores_the_tree() {
        let mut digest = Digest::default();
        let bucket = bucket_of("k");
        let hash = entry_hash("k", &version(1), false);
        digest.toggle(bucket, hash);
        assert_ne!(digest.root(), 0);
        assert_eq!(digest.bucket(bucket), hash);
        assert_eq!(digest.groups()[group_of(bucket)], hash);
        digest.toggle(bucket, hash);
        assert_eq!(digest, Digest::default());
    }

    #[test]
    fn hashes_distinguish_key_version_and_tombstone() {
        let base = entry_hash("k", &version(1), false);
        assert_ne!(base, entry_hash("k2", &version(1), false));
        assert_ne!(base, entry_hash("k", &version(2), false));
        assert_ne!(base, entry_hash("k", &version(1), true));
        // Length-prefixing the key keeps ("ab", node "c…") apart from ("a", "bc…").
        assert_eq!(base, entry_hash("k", &version(1), false));
    }

    #[test]
    fn buckets_are_in_range_and_stable() {
        for key in ["", "a", "b", "some/long/key", "ü"] {
            let bucket = bucket_of(key);
            assert!((bucket as usize) < BUCKETS);
            assert_eq!(bucket, bucket_of(key));
        }
    }
}
