//! Storage engines for meshkv, measured on the node's workload: meshkv's own journal
//! (a Bitcask-style log), redb (copy-on-write B-tree) and fjall (LSM tree).
//!
//! Records: a 7-byte key, a 16-byte version and a 100-byte value (random, so
//! compression flatters no one). Every figure is the median of `--runs` runs.
//!
//! ```text
//! cargo run --release --manifest-path bench/storage-engines/Cargo.toml -- [--dir D] [--keys N]
//!     [--seconds S] [--runs R] [writes] [restart] [space] [code]
//! ```
//! Without a section name, all run. `--dir` must be on the disk being measured
//! (default `/tmp/meshkv-storage-bench`). Cold restarts drop the page cache
//! (`/proc/sys/vm/drop_caches`, needs root; otherwise they are reported warm).

mod adapters;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshkv::persist::{Journal, MemoryOnly};

use adapters::fjall::Fjall;
use adapters::group_commit::{GroupCommit, GroupEngine};
use adapters::redb::Redb;

/// One write as the node stores it: key, and version + value (version only for a
/// tombstone).
#[derive(Clone)]
pub struct Record {
    pub key: Vec<u8>,
    pub stored: Vec<u8>,
}

const VERSION_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;

/// A small xorshift generator: values only need to be incompressible, not secure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(index: usize) -> Vec<u8> {
    format!("k{index:06}").into_bytes()
}

fn version(counter: u64) -> [u8; VERSION_BYTES] {
    let mut bytes = [0u8; VERSION_BYTES];
    bytes[..8].copy_from_slice(&(1_764_000_000_000 + counter).to_be_bytes());
    bytes[12..].copy_from_slice(&1u32.to_be_bytes());
    bytes
}

fn record(index: usize, counter: u64, rng: &mut Rng) -> Record {
    let mut stored = Vec::with_capacity(VERSION_BYTES + VALUE_BYTES);
    stored.extend_from_slice(&version(counter));
    while stored.len() < VERSION_BYTES + VALUE_BYTES {
        stored.extend_from_slice(&rng.next().to_le_bytes());
    }
    stored.truncate(VERSION_BYTES + VALUE_BYTES);
    Record {
        key: key(index),
        stored,
    }
}

fn tombstone(index: usize, counter: u64) -> Record {
    Record {
        key: key(index),
        stored: version(counter).to_vec(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Memory,
    Meshkv,
    Redb,
    Fjall,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Meshkv => "meshkv log",
            Self::Redb => "redb",
            Self::Fjall => "fjall",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Meshkv => "meshkv",
            Self::Redb => "redb",
            Self::Fjall => "fjall",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "memory" => Self::Memory,
            "meshkv" => Self::Meshkv,
            "redb" => Self::Redb,
            "fjall" => Self::Fjall,
            other => panic!("unknown engine {other}"),
        }
    }
}

const DISK_ENGINES: [Engine; 3] = [Engine::Meshkv, Engine::Redb, Engine::Fjall];

/// An engine opened for durable single writes.
enum Target {
    Journal(Arc<dyn Journal>),
    Redb(GroupCommit<Redb>),
    Fjall(GroupCommit<Fjall>),
}

impl Target {
    fn open(engine: Engine, dir: &Path) -> Self {
        match engine {
            Engine::Memory => Self::Journal(Arc::new(MemoryOnly::new())),
            Engine::Meshkv => Self::Journal(Arc::new(adapters::meshkv::open(dir, &mut |_, _| {}))),
            Engine::Redb => Self::Redb(GroupCommit::new(Redb::open(dir))),
            Engine::Fjall => Self::Fjall(GroupCommit::new(Fjall::open(dir))),
        }
    }

    async fn write(&self, record: Record) {
        match self {
            Self::Journal(journal) => adapters::meshkv::write(journal, &record).await,
            Self::Redb(engine) => engine.write(record).await,
            Self::Fjall(engine) => engine.write(record).await,
        }
    }
}

struct Settings {
    dir: PathBuf,
    keys: usize,
    seconds: f64,
    runs: usize,
}

fn fresh_dir(settings: &Settings, name: &str) -> PathBuf {
    let dir = settings.dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Durable writes per second with `writers` concurrent writers, each waiting for its
/// write to be durable before the next.
fn writes_per_second(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    engine: Engine,
    writers: usize,
) -> f64 {
    let dir = fresh_dir(settings, "writes");
    let target = Arc::new(Target::open(engine, &dir));
    let duration = Duration::from_secs_f64(settings.seconds);
    let keys_per_writer = settings.keys / writers;
    let total: u64 = runtime.block_on(async {
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (writer as u64 + 1));
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        let index = writer * keys_per_writer + (done as usize % keys_per_writer);
                        target.write(record(index, done, &mut rng)).await;
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    });
    let rate = total as f64 / duration.as_secs_f64();
    drop(target);
    rate
}

/// Writes `records` in large non-durable groups, then makes them durable.
fn bulk_write(
    runtime: &tokio::runtime::Runtime,
    engine: Engine,
    dir: &Path,
    batches: &[Vec<Record>],
    garbage: bool,
) {
    match engine {
        Engine::Memory => {}
        Engine::Meshkv => {
            let journal: Arc<dyn Journal> = Arc::new(adapters::meshkv::open(dir, &mut |_, _| {}));
            for records in batches {
                runtime.block_on(adapters::meshkv::bulk(&journal, records));
                if garbage {
                    for record in records {
                        journal.record_garbage((1 + record.key.len() + record.stored.len()) as u64);
                    }
                }
            }
            journal.shutdown().unwrap();
        }
        Engine::Redb => {
            let redb = Redb::open(dir);
            for records in batches {
                for chunk in records.chunks(10_000) {
                    redb.write_group(chunk, false);
                }
            }
            redb.write_group(&[], true);
        }
        Engine::Fjall => {
            let fjall = Fjall::open(dir);
            for records in batches {
                for chunk in records.chunks(10_000) {
                    fjall.write_group(chunk, false);
                }
            }
            fjall.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            dir_bytes(&entry.path())
        } else {
            metadata.len()
        };
    }
    total
}

/// Bytes of fjall's journal files (`*.jnl`) at the top of `dir`.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".jnl"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Child process: opens `dir` and loads it. `mode`: `map` (load every key, version and
/// value into a HashMap, as the node does), `count` (scan only, for the engine's own
/// memory), `open` (open only).
fn child(engine: Engine, dir: &Path, mode: &str) {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut map: HashMap<Box<[u8]>, Box<[u8]>> = HashMap::new();
    let mut count = 0u64;
    let mut visit = |key: &[u8], stored: &[u8]| {
        count += 1;
        if mode == "map" {
            map.insert(key.into(), stored.into());
        }
    };
    let opened;
    let keep_open: Box<dyn std::any::Any> = match engine {
        Engine::Meshkv => {
            let journal = adapters::meshkv::open(dir, &mut visit);
            opened = started.elapsed();
            Box::new(journal)
        }
        Engine::Redb => {
            let redb = Redb::open(dir);
            opened = started.elapsed();
            if mode != "open" {
                redb.scan(&mut visit);
            }
            Box::new(redb)
        }
        Engine::Fjall => {
            let fjall = Fjall::open(dir);
            opened = started.elapsed();
            if mode != "open" {
                fjall.scan(&mut visit);
            }
            Box::new(fjall)
        }
        Engine::Memory => unreachable!(),
    };
    let loaded = started.elapsed();
    let rss_after = rss_bytes();
    let entries = if mode == "map" {
        map.len() as u64
    } else {
        count
    };
    println!(
        "open_ms={:.1} load_ms={:.1} entries={entries} rss_delta={}",
        opened.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        rss_after.saturating_sub(rss_before)
    );
    drop(keep_open);
}

struct ChildResult {
    open_ms: f64,
    load_ms: f64,
    entries: u64,
    rss_delta: u64,
}

fn run_child(engine: Engine, dir: &Path, mode: &str, cold: bool) -> ChildResult {
    if cold {
        drop_caches();
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["child", engine.arg(), dir.to_str().unwrap(), mode])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    ChildResult {
        open_ms: field("open_ms"),
        load_ms: field("load_ms"),
        entries: field("entries") as u64,
        rss_delta: field("rss_delta") as u64,
    }
}

fn populate(settings: &Settings, rng: &mut Rng) -> Vec<Record> {
    (0..settings.keys)
        .map(|index| record(index, 1, rng))
        .collect()
}

/// Milliseconds per 125-byte append + fdatasync on a fresh file: the disk's state.
fn fsync_probe(settings: &Settings) -> f64 {
    use std::io::Write;
    let dir = fresh_dir(settings, "probe");
    let mut file = std::fs::File::create(dir.join("probe")).unwrap();
    let started = Instant::now();
    for _ in 0..200 {
        file.write_all(&[7u8; 125]).unwrap();
        file.sync_data().unwrap();
    }
    started.elapsed().as_secs_f64() * 1e3 / 200.0
}

fn section_writes(runtime: &tokio::runtime::Runtime, settings: &Settings) {
    let engines = [Engine::Memory, Engine::Meshkv, Engine::Redb, Engine::Fjall];
    // BENCH_ONLY=fjall (say) runs one engine alone, e.g. under strace.
    let only = std::env::var("BENCH_ONLY").ok();
    let engines: Vec<Engine> = engines
        .into_iter()
        .filter(|engine| only.as_deref().is_none_or(|name| name == engine.arg()))
        .collect();
    let concurrency = [1, 8, 64];
    // Rounds: every engine once per round, in a rotating order, so that load from
    // elsewhere on the machine (the disk is shared) hits every engine alike; the
    // ratios are taken within a round.
    let mut samples = vec![vec![Vec::new(); concurrency.len()]; engines.len()];
    let mut probes = Vec::new();
    for round in 0..settings.runs {
        probes.push(fsync_probe(settings));
        for (writers_index, writers) in concurrency.iter().enumerate() {
            for offset in 0..engines.len() {
                let engine_index = (round + offset) % engines.len();
                let rate = writes_per_second(runtime, settings, engines[engine_index], *writers);
                samples[engine_index][writers_index].push(rate);
            }
        }
    }
    let base = engines
        .iter()
        .position(|engine| *engine == Engine::Meshkv)
        .unwrap_or(0);
    let meshkv = samples[base].clone();
    println!(
        "\n### Durable writes/s: each write acknowledged once durable (median of {} rounds of {} s; \
         in brackets: the median of per-round ratios to the meshkv log)\n",
        settings.runs, settings.seconds
    );
    println!("| engine | 1 writer | 8 writers | 64 writers |");
    println!("| --- | ---: | ---: | ---: |");
    for (engine, row) in engines.iter().zip(samples) {
        let cells: Vec<String> = row
            .into_iter()
            .zip(&meshkv)
            .map(|(cell, base)| {
                let ratios = cell
                    .iter()
                    .zip(base)
                    .map(|(rate, base)| rate / base)
                    .collect();
                format!("{:.0} (×{:.2})", median(cell), median(ratios))
            })
            .collect();
        println!("| {} | {} |", engine.name(), cells.join(" | "));
    }
    probes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "\nfdatasync of a 125-byte append, probed before each round: median {:.2} ms (min {:.2}, max {:.2}).",
        median(probes.clone()),
        probes[0],
        probes[probes.len() - 1]
    );
}

fn section_restart(runtime: &tokio::runtime::Runtime, settings: &Settings) {
    let cold_possible = drop_caches();
    println!(
        "\n### Restart with {} keys (median of {}; cold = page cache dropped{})\n",
        settings.keys,
        settings.runs,
        if cold_possible {
            ""
        } else {
            ": NOT POSSIBLE here, cold = warm"
        }
    );
    println!("| engine | open only, cold | open + load into map, cold | open + load into map, warm | open + scan (no map), warm | engine memory (RSS delta after a full scan) | disk after load |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rng = Rng(42);
    let records = populate(settings, &mut rng);
    for engine in DISK_ENGINES {
        let dir = fresh_dir(settings, "restart");
        bulk_write(runtime, engine, &dir, std::slice::from_ref(&records), false);
        let runs = |mode: &str, cold: bool| -> Vec<ChildResult> {
            (0..settings.runs)
                .map(|_| run_child(engine, &dir, mode, cold))
                .collect()
        };
        let open_only = if engine == Engine::Meshkv {
            "(= open + load)".to_owned()
        } else {
            format!(
                "{:.0} ms",
                median(runs("open", true).iter().map(|r| r.open_ms).collect())
            )
        };
        let cold = runs("map", true);
        assert!(
            cold.iter().all(|r| r.entries == settings.keys as u64),
            "every key loaded"
        );
        let warm = runs("map", false);
        let memory = runs("count", false);
        println!(
            "| {} | {open_only} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} B/key | {:.0} B/key |",
            engine.name(),
            median(cold.iter().map(|r| r.load_ms).collect()),
            median(warm.iter().map(|r| r.load_ms).collect()),
            median(memory.iter().map(|r| r.load_ms).collect()),
            median(memory.iter().map(|r| r.rss_delta as f64).collect()) / settings.keys as f64,
            dir_bytes(&dir) as f64 / settings.keys as f64,
        );
    }
}

fn section_space(runtime: &tokio::runtime::Runtime, settings: &Settings) {
    println!(
        "\n### Disk bytes per key: {} keys written, each overwritten once, 10% deleted (tombstones), then compacted\n",
        settings.keys
    );
    println!("| engine | before compaction | after compaction | of which a write-ahead journal (fjall keeps up to 512 MiB) | compaction time |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut rng = Rng(7);
    let first = populate(settings, &mut rng);
    let second: Vec<Record> = (0..settings.keys)
        .map(|index| record(index, 2, &mut rng))
        .collect();
    let deletes: Vec<Record> = (0..settings.keys)
        .step_by(10)
        .map(|index| tombstone(index, 3))
        .collect();
    let batches = [first, second, deletes];
    let per_key = |bytes: u64| bytes as f64 / settings.keys as f64;
    for engine in DISK_ENGINES {
        let dir = fresh_dir(settings, "space");
        // Overwrites are garbage for the journal's trigger; the first write is not.
        bulk_write(runtime, engine, &dir, &batches[..1], false);
        bulk_write(runtime, engine, &dir, &batches[1..], true);
        let before = dir_bytes(&dir);
        let started = Instant::now();
        match engine {
            Engine::Meshkv => {
                let versions: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
                let journal = adapters::meshkv::open(&dir, &mut |key, stored| {
                    let mut versions = versions.lock().unwrap();
                    let current = versions.entry(key.to_vec()).or_default();
                    if stored[..VERSION_BYTES] > current[..] {
                        *current = stored[..VERSION_BYTES].to_vec();
                    }
                });
                let started_after_load = Instant::now();
                let live = Arc::clone(&versions);
                journal.set_liveness(Arc::new(move |payload: &[u8]| {
                    let (key, stored) = adapters::meshkv::decode(payload);
                    live.lock()
                        .unwrap()
                        .get(key)
                        .is_some_and(|v| v[..] == stored[..VERSION_BYTES])
                }));
                journal.compact_now().unwrap();
                drop(journal);
                let elapsed = started_after_load.elapsed();
                println!(
                    "| {} | {:.0} B/key | {:.0} B/key | {:.0} B/key | {:.0} ms |",
                    engine.name(),
                    per_key(before),
                    per_key(dir_bytes(&dir)),
                    per_key(journal_bytes(&dir)),
                    elapsed.as_secs_f64() * 1e3
                );
                continue;
            }
            Engine::Redb => {
                let mut redb = Redb::open(&dir);
                redb.compact();
            }
            Engine::Fjall => {
                let fjall = Fjall::open(&dir);
                fjall.compact();
            }
            Engine::Memory => unreachable!(),
        }
        println!(
            "| {} | {:.0} B/key | {:.0} B/key | {:.0} B/key | {:.0} ms |",
            engine.name(),
            per_key(before),
            per_key(dir_bytes(&dir)),
            per_key(journal_bytes(&dir)),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Lines of a Rust file: (non-blank, code = non-blank and not a comment), stopping at
/// its `#[cfg(test)]` module.
fn count_lines(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = (0, 0);
    for line in text.lines() {
        let line = line.trim();
        if line == "#[cfg(test)]" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        lines.0 += 1;
        if !line.starts_with("//") {
            lines.1 += 1;
        }
    }
    lines
}

fn section_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let persist = root.join("../../src/persist");
    let engine_files = [
        "mod.rs",
        "record.rs",
        "segment.rs",
        "meta.rs",
        "lease.rs",
        "writer.rs",
        "engine.rs",
        "engine/compaction.rs",
    ];
    let sum = |files: &[PathBuf]| {
        files
            .iter()
            .map(|path| count_lines(path))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let ours = sum(&engine_files.map(|file| persist.join(file)));
    let adapters = root.join("src/adapters");
    let rows = [
        ("meshkv log: the persist module, tests excluded", ours),
        (
            "meshkv log: adapter (record codec, open, write)",
            sum(&[adapters.join("meshkv.rs")]),
        ),
        (
            "redb: adapter + group commit",
            sum(&[adapters.join("redb.rs"), adapters.join("group_commit.rs")]),
        ),
        (
            "fjall: adapter + group commit",
            sum(&[adapters.join("fjall.rs"), adapters.join("group_commit.rs")]),
        ),
    ];
    println!("\n### Code to own\n");
    println!("| what | non-blank lines | of which code (no comments) |");
    println!("| --- | ---: | ---: |");
    for (what, (lines, code)) in rows {
        println!("| {what} | {lines} | {code} |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        child(Engine::parse(&args[1]), Path::new(&args[2]), &args[3]);
        return;
    }
    let mut settings = Settings {
        dir: PathBuf::from("/tmp/meshkv-storage-bench"),
        keys: 1_000_000,
        seconds: 2.0,
        runs: 3,
    };
    let mut sections = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the option");
        match arg.as_str() {
            "--dir" => settings.dir = PathBuf::from(value()),
            "--keys" => settings.keys = value().parse().expect("--keys N"),
            "--seconds" => settings.seconds = value().parse().expect("--seconds S"),
            "--runs" => settings.runs = value().parse().expect("--runs R"),
            "writes" | "restart" | "space" | "code" => sections.push(arg),
            other => panic!("unknown argument {other}"),
        }
    }
    if sections.is_empty() {
        sections = ["writes", "restart", "space", "code"]
            .map(String::from)
            .to_vec();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## Storage engines: {} keys of 7 B + 16 B version + 100 B value, dir {}",
        settings.keys,
        settings.dir.display()
    );
    for section in sections {
        match section.as_str() {
            "writes" => section_writes(&runtime, &settings),
            "restart" => section_restart(&runtime, &settings),
            "space" => section_space(&runtime, &settings),
            "code" => section_code(),
            _ => unreachable!(),
        }
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&settings.dir);
    }
}
