//! Resident bytes per key of the store alone (no HTTP, no runtime), for DESIGN.md §10.
//!
//! ```sh
//! cargo run --release --example store_memory -- [KEYS] [VALUE_BYTES]
//! ```
//!
//! Merges keys `k1`… `kKEYS` (the keys of `bench/kv.lua`) with values of the given size
//! into one [`Store`], in that order, as the HTTP handler stores them (each value in an
//! allocation of its own), then reads every value once as a GET does, then overwrites
//! every key once (the register then also holds the version it replaced). Prints the
//! process's resident set after each step, per key.

use std::time::Instant;

use bytes::Bytes;
use meshkv::clock::{NodeId, Timestamp, Version};
use meshkv::store::{Entry, Store};

fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keys: u64 = args.first().map_or(1_000_000, |n| n.parse().expect("KEYS"));
    let value_bytes: usize = args.get(1).map_or(100, |n| n.parse().expect("VALUE_BYTES"));
    let node = NodeId::new("n1").expect("node id");
    let body = vec![b'v'; value_bytes];
    let key_bytes: u64 = (1..=keys).map(|n| format!("k{n}").len() as u64).sum();
    let mean = key_bytes as f64 / keys as f64 + value_bytes as f64 + 16.0;
    let report = |step: &str, base: u64, started: Instant| {
        let per_key = (resident() - base) as f64 / keys as f64;
        println!(
            "{step:<34} {per_key:6.1} B/key ({:.2}x key + value + version), {:.2} s",
            per_key / mean,
            started.elapsed().as_secs_f64()
        );
    };
    let write = |store: &mut Store, n: u64, wall_ms: u64| {
        store.merge(Entry {
            key: format!("k{n}"),
            version: Version {
                timestamp: Timestamp {
                    wall_ms,
                    logical: 0,
                },
                node: node.clone(),
            },
            value: Some(Bytes::copy_from_slice(&body)),
            replaces: store.entry(&format!("k{n}")).map(|entry| entry.version),
        });
    };
    let base = resident();
    println!(
        "{keys} keys (mean {:.2} B), {value_bytes}-byte values; key + value + version = {mean:.1} B",
        key_bytes as f64 / keys as f64
    );
    let started = Instant::now();
    let mut store = Store::new();
    for n in 1..=keys {
        write(&mut store, n, 1_800_000_000_000 + n);
    }
    report("after writing every key once", base, started);
    let started = Instant::now();
    let mut read = 0;
    for n in 1..=keys {
        read += store
            .read(&format!("k{n}"))
            .map_or(0, |(_, value)| value.map_or(0, |v| v.len()));
    }
    assert_eq!(read, keys as usize * value_bytes);
    report("after reading every key", base, started);
    let started = Instant::now();
    for n in 1..=keys {
        write(&mut store, n, 1_800_001_000_000 + n);
    }
    report("after overwriting every key", base, started);
    assert_eq!(store.summary().keys, keys as usize);
}
