//! Loads a node with many keys, for measuring restart time, memory and disk per key
//! (DESIGN.md §10).
//!
//! ```sh
//! cargo run --release --example load -- http://127.0.0.1:7001 1000000 100 64 [KEYS]
//! ```
//!
//! Writes each key once, with values of the given size, through the public HTTP API
//! (`consistency=one`), from the given number of concurrent requests, and prints the
//! rate. Keys are `load/0000000`… (12 bytes), or with `KEYS` = `k` the keys of
//! `bench/kv.lua`, `k1`… `kN` (about 7 bytes for a million). Exits 1 if any write
//! failed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshkv::tools::client::Client;

const USAGE: &str =
    "usage: cargo run --release --example load -- URL KEYS VALUE_BYTES CONCURRENCY [k]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, keys, value_bytes, concurrency, short_keys) = match args.as_slice() {
        [url, keys, value_bytes, concurrency] => (url, keys, value_bytes, concurrency, false),
        [url, keys, value_bytes, concurrency, style] if style == "k" => {
            (url, keys, value_bytes, concurrency, true)
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (Ok(keys), Ok(value_bytes), Ok(concurrency)) = (
        keys.parse::<u64>(),
        value_bytes.parse::<usize>(),
        concurrency.parse::<u64>(),
    ) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let value: Arc<[u8]> = vec![b'v'; value_bytes].into();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, failed, value) = (next.clone(), failed.clone(), value.clone());
            let client = Client::new(url, Duration::from_secs(10));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= keys {
                        return;
                    }
                    let key = if short_keys {
                        format!("k{}", n + 1)
                    } else {
                        format!("load/{n:07}")
                    };
                    if let Err(error) = client.put(&key, &value[..], Some("one")).await {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("load: {key}: {error}");
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "load: {keys} keys of {value_bytes} bytes in {:.1} s ({:.0} writes/s), {failed} failed",
        elapsed.as_secs_f64(),
        keys as f64 / elapsed.as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
