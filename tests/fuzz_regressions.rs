//! The fuzz targets' inputs, replayed in the ordinary `cargo test`: every seed of
//! `fuzz/corpus/<target>/` and every input that once broke a target,
//! `fuzz/regressions/<target>/`, goes through the same check as the fuzz target
//! (`meshkv::fuzz_checks`), so a fixed crash stays fixed without a fuzzer.
//!
//! The seeds are written by this file (`write_seed_corpora`, run by hand) from the real
//! encoders, so they stay valid frames, files and requests of the current protocol;
//! `the_seed_corpora_are_current` fails when they no longer are.

use std::path::{Path, PathBuf};

use meshkv::clock::{NodeId, Timestamp, Version};
use meshkv::config::ClusterConfig;
use meshkv::fuzz_checks::{
    self, conversation, frame, frame_message, hello, CLUSTER, NODE_NONCE, SECRET, WALL_MS,
};
use meshkv::store::digest::{bucket_of, BUCKETS, GROUPS};
use meshkv::store::Entry;
use meshkv::wire::{DataEpoch, Lineage, Message, PROTOCOL_VERSION};

type Check = fn(&[u8]);

/// Every fuzz target and its check, as `fuzz/fuzz_targets/<target>.rs` calls it.
const TARGETS: &[(&str, Check)] = &[
    ("peer_frame", fuzz_checks::peer_frame),
    ("handshake", fuzz_checks::handshake),
    ("cluster_file", fuzz_checks::cluster_file),
    ("http_request", fuzz_checks::http_request),
    ("persist_records", fuzz_checks::persist_records),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_check() {
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{target}/ has {} seeds",
            corpus.len()
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(file).expect("input is readable");
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their fuzz check (the panics are printed above):\n{}",
        failures.join("\n")
    );
}

/// Mutated inputs per target in [`mutated_corpus_inputs_pass_their_checks`].
const MUTATIONS_PER_TARGET: usize = 4000;

/// CI's fuzzing: every target on fresh inputs, a bounded number per run. Seeded
/// mutations of its corpus (bit flips, overwritten bytes, cuts, insertions, splices of
/// two seeds, as libFuzzer's simplest mutators make) go through the target's check,
/// without coverage guidance: that runs by hand, `scripts/fuzz.sh`, whose instrumented
/// build costs more CI time than the 15 minutes allow. `MESHKV_FUZZ_SEED=N` picks
/// another stream; a failure prints the seed and the input.
#[test]
fn mutated_corpus_inputs_pass_their_checks() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("MESHKV_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x6d65_7368);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let corpus: Vec<Vec<u8>> = inputs(&fuzz_dir().join("corpus").join(target))
            .iter()
            .map(|file| std::fs::read(file).expect("input is readable"))
            .collect();
        for _ in 0..MUTATIONS_PER_TARGET {
            let mut bytes = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..=4) {
                let len = bytes.len();
                match rng.random_range(0..5) {
                    0 if len > 0 => {
                        let at = rng.random_range(0..len);
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                    1 if len > 0 => {
                        let at = rng.random_range(0..len);
                        bytes[at] = rng.random();
                    }
                    2 if len > 0 => bytes.truncate(rng.random_range(0..len)),
                    3 => {
                        let at = rng.random_range(0..=len);
                        let insert: Vec<u8> =
                            (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                        bytes.splice(at..at, insert);
                    }
                    _ => {
                        let other = &corpus[rng.random_range(0..corpus.len())];
                        let cut = rng.random_range(0..=bytes.len());
                        let from = rng.random_range(0..=other.len());
                        bytes.truncate(cut);
                        bytes.extend_from_slice(&other[from..]);
                    }
                }
            }
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                failures.push(format!("{target}: {bytes:02x?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "mutated inputs that fail their fuzz check (MESHKV_FUZZ_SEED={seed}; the panics are \
         printed above; save an input under fuzz/regressions/<target>/):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_target_has_its_check_here_and_its_seeds() {
    let targets = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    for (target, _) in TARGETS {
        assert!(
            targets.contains(&format!("fuzz_targets/{target}.rs")),
            "{target} is not a target of fuzz/Cargo.toml"
        );
    }
    let declared = targets.matches("[[bin]]").count();
    assert_eq!(
        declared,
        TARGETS.len(),
        "fuzz/Cargo.toml has {declared} targets; list each in TARGETS here"
    );
}

#[test]
fn the_seed_corpora_are_current() {
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if std::fs::read(&path).ok().as_ref() != Some(&bytes) {
            stale.push(format!("fuzz/corpus/{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seeds missing or out of date (the protocol or a format changed?); rewrite them \
         with `cargo test --test fuzz_regressions -- --ignored write_seed_corpora`:\n{}",
        stale.join("\n")
    );
}

/// Writes every seed of [`seeds`] under `fuzz/corpus/`. Run by hand after a change of
/// the protocol, the cluster file or the API.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand"]
fn write_seed_corpora() {
    let seeds = seeds();
    for (target, name, bytes) in &seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
    assert!(seeds.len() > 100, "{} seeds", seeds.len());
}

/// Every seed: `(target, file name, bytes)`.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut all = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        all.push((target, name.to_owned(), bytes));
    };
    for (name, bytes) in peer_frame_seeds() {
        add("peer_frame", &name, bytes);
    }
    for (name, bytes) in handshake_seeds() {
        add("handshake", &name, bytes);
    }
    for (name, text) in cluster_file_seeds() {
        add("cluster_file", &name, text.into_bytes());
    }
    for (name, text) in http_request_seeds() {
        add("http_request", &name, text);
    }
    let records = fuzz_checks::seed_records();
    let mut flipped = records.clone();
    flipped[records.len() / 2] ^= 0x40;
    for (name, bytes) in [
        ("records", records.clone()),
        ("records-torn", records[..records.len() - 3].to_vec()),
        ("records-flipped", flipped),
        ("records-zero-tail", [records.clone(), vec![0; 64]].concat()),
        (
            "records-doubled",
            [records.clone(), records.clone()].concat(),
        ),
        ("records-head-only", records[..8].to_vec()),
        ("records-short-header", records[..5].to_vec()),
        (
            "records-after-garbage",
            [b"garbage!".to_vec(), records.clone()].concat(),
        ),
        ("empty", Vec::new()),
        (
            "unknown-kind",
            meshkv::persist::RecordBatch::of([[9u8, 1, 2, 3]])
                .expect("a record")
                .as_bytes()
                .to_vec(),
        ),
        (
            "kind-but-no-entry",
            meshkv::persist::RecordBatch::of([[1u8, 0xc1]])
                .expect("a record")
                .as_bytes()
                .to_vec(),
        ),
    ] {
        add("persist_records", name, bytes);
    }
    all
}

fn id(node: &str) -> NodeId {
    NodeId::new(node).unwrap()
}

fn version(wall_ms: u64, logical: u32, node: &str) -> Version {
    Version {
        timestamp: Timestamp { wall_ms, logical },
        node: id(node),
    }
}

fn entry(key: &str, value: Option<&[u8]>, replaces: Option<Version>) -> Entry {
    Entry {
        key: key.to_owned(),
        version: version(WALL_MS - 1, 3, "n2"),
        value: value.map(|bytes| bytes.to_vec().into()),
        replaces,
    }
}

/// A `Welcome` from a node that knows of no retirement, with the nonce an in-memory
/// node draws first.
fn welcome() -> Message {
    Message::Welcome {
        lineage: Lineage::default(),
        wall_ms: 0,
        nonce: NODE_NONCE,
        nodes: vec![id("n1"), id("n2"), id("n3")],
    }
}

/// The `Pong` that confirms a handshake.
fn pong() -> Message {
    Message::Pong {
        wall_ms: 0,
        fenced: false,
    }
}

/// One message of every kind, with a file-name-friendly label.
fn messages() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", hello()),
        ("welcome", welcome()),
        (
            "welcome-retired",
            Message::Welcome {
                lineage: Lineage {
                    epoch: DataEpoch {
                        id: 0x1234_5678_9abc_def0,
                        created_ms: WALL_MS - 5_000,
                    },
                    retired: vec![(id("n3"), WALL_MS - 1_000)],
                },
                wall_ms: WALL_MS,
                nonce: u128::MAX,
                nodes: vec![id("n2"), id("n1")],
            },
        ),
        (
            "refuse",
            Message::Refuse {
                reason: "n9 is not a peer of n1".into(),
            },
        ),
        ("ping", Message::Ping),
        (
            "pong",
            Message::Pong {
                wall_ms: 0,
                fenced: false,
            },
        ),
        (
            "push",
            Message::Push {
                entries: vec![
                    entry(
                        "a",
                        Some(b"new alpha"),
                        Some(version(WALL_MS - 10, 0, "n1")),
                    ),
                    entry("bin", Some(&[0, 159, 146, 150]), None),
                    entry("gone", None, None),
                    entry("new/key é", Some(b""), None),
                ],
            },
        ),
        (
            "push_ack",
            Message::PushAck {
                refused: vec!["a".into(), "far-future".into()],
                wall_ms: WALL_MS,
                fenced: true,
            },
        ),
        (
            "sync_root",
            Message::SyncRoot {
                root: 0x1234_5678_9abc_def0,
            },
        ),
        (
            "in_sync",
            Message::InSync {
                hlc: Timestamp {
                    wall_ms: WALL_MS,
                    logical: 3,
                },
            },
        ),
        (
            "sync_groups",
            Message::SyncGroups {
                groups: (0..GROUPS as u64)
                    .map(|group| group * 0x0101_0101)
                    .collect(),
                hlc: Timestamp {
                    wall_ms: WALL_MS,
                    logical: 0,
                },
            },
        ),
        (
            "sync_buckets",
            Message::SyncBuckets {
                buckets: vec![(0, 1), (17, u64::MAX), ((BUCKETS - 1) as u16, 0)],
            },
        ),
        (
            "bucket_versions",
            Message::BucketVersions {
                covered: vec![3, 17],
                versions: vec![
                    ("a".into(), version(WALL_MS + 5, 0, "n2")),
                    ("other".into(), version(WALL_MS - 100, 7, "n3")),
                ],
                remaining: vec![42, 4095],
            },
        ),
        (
            "fetch",
            Message::Fetch {
                keys: vec!["a".into(), "dir/b".into(), "absent".into()],
            },
        ),
        (
            "entries",
            Message::Entries {
                entries: vec![entry("a", Some(b"from the peer"), None)],
                served: 2,
            },
        ),
        ("summarize", Message::Summarize),
        (
            "summary",
            Message::Summary {
                keys: 4,
                tombstones: 1,
                digest: 0xfeed_beef,
            },
        ),
    ]
}

/// The MessagePack payload of a message, without frame.
fn payload(message: &Message) -> Vec<u8> {
    frame_message(message, None)[4..].to_vec()
}

/// The harness's payload-list encoding (mode bit 1 of peer_frame and handshake).
fn payload_list(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

fn peer_frame_seeds() -> Vec<(String, Vec<u8>)> {
    let secret = Some(SECRET);
    let mut seeds = Vec::new();
    for (label, message) in messages() {
        seeds.push((
            label.to_string(),
            with_mode(0, &frame_message(&message, None)),
        ));
        seeds.push((
            format!("{label}-secret"),
            with_mode(1, &frame_message(&message, secret)),
        ));
    }
    let all: Vec<Vec<u8>> = messages().iter().map(|(_, m)| payload(m)).collect();
    seeds.push(("all-payloads".into(), with_mode(2, &payload_list(&all))));
    seeds.push((
        "all-payloads-secret".into(),
        with_mode(3, &payload_list(&all)),
    ));
    let stream: Vec<u8> = messages()
        .iter()
        .flat_map(|(_, m)| frame_message(m, None))
        .collect();
    // The same stream arriving one byte at a time, and in 5-byte pieces.
    seeds.push(("stream-bytewise".into(), with_mode(0, &stream)));
    seeds.push(("stream-5-bytes".into(), with_mode(3 << 3, &stream)));
    seeds.push((
        "handshake-cap-push".into(),
        with_mode(4, &frame_message(&messages()[6].1, None)),
    ));
    seeds.push((
        "oversized-prefix".into(),
        vec![0, 0xff, 0xff, 0xff, 0xff, 1],
    ));
    seeds.push(("empty-frame".into(), vec![0, 0, 0, 0, 0]));
    seeds.push(("short-tag".into(), with_mode(1, &frame(b"\x00", None))));
    let mut forged = frame_message(&Message::Ping, secret);
    forged[10] ^= 1;
    seeds.push(("bad-tag".into(), with_mode(1, &forged)));
    seeds.push((
        "truncated".into(),
        with_mode(0, &frame_message(&hello(), None)[..9]),
    ));
    seeds.push((
        "garbage".into(),
        with_mode(0, &frame(&[0xc1, 0xc1, 0xc1], None)),
    ));
    seeds
}

fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let secret = Some(SECRET);
    let frames = |messages: &[Message], key: Option<&[u8]>| -> Vec<u8> {
        messages
            .iter()
            .flat_map(|message| frame_message(message, key))
            .collect()
    };
    let hello_from = |protocol: u16, cluster: &str, from: &str, to: &str| Message::Hello {
        protocol,
        cluster: cluster.into(),
        from: id(from),
        to: id(to),
        lineage: Lineage::default(),
        nonce: 7,
        nodes: vec![],
    };
    let mut seeds = Vec::new();
    // Acceptor: a member's hello, then each request the responder answers.
    for (label, request) in messages() {
        seeds.push((
            format!("accept-{label}"),
            with_mode(0, &frames(&[hello(), request.clone()], None)),
        ));
    }
    // A whole session, each frame tagged at its position (the node's reply frames are
    // in the script only to bind the nonces: they are not part of the input).
    let mut script = vec![(true, hello()), (false, welcome())];
    for request in [
        Message::Ping,
        messages()[6].1.clone(),
        Message::SyncRoot { root: 1 },
        messages()[11].1.clone(),
        messages()[13].1.clone(),
        Message::Summarize,
    ] {
        script.push((true, request));
        script.push((false, pong()));
    }
    seeds.push((
        "accept-session-secret".into(),
        with_mode(1, &conversation(&script, secret)),
    ));
    // The same session with two requests swapped, one replayed, and one of the node's
    // own frames reflected back: each ends it.
    let mut ours: Vec<Vec<u8>> = Vec::new();
    let mut wire = conversation(&script, secret);
    while !wire.is_empty() {
        let len = 4 + u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        ours.push(wire.drain(..len).collect());
    }
    let swapped = [&ours[..2], &[ours[3].clone(), ours[2].clone()], &ours[4..]].concat();
    seeds.push((
        "accept-session-swapped-secret".into(),
        with_mode(1, &swapped.concat()),
    ));
    let replayed = [&ours[..3], &[ours[2].clone()], &ours[3..]].concat();
    seeds.push((
        "accept-session-replayed-secret".into(),
        with_mode(1, &replayed.concat()),
    ));
    let reflected = conversation(
        &[
            (false, hello()),
            (true, welcome()),
            (false, Message::Ping),
            (true, pong()),
        ],
        secret,
    );
    seeds.push((
        "accept-session-reflected-secret".into(),
        with_mode(1, &[&ours[..2].concat()[..], &reflected].concat()),
    ));
    let requests: Vec<Vec<u8>> = [3usize, 5, 7, 10, 12, 14]
        .iter()
        .map(|&index| payload(&messages()[index].1))
        .collect();
    seeds.push((
        "accept-payloads".into(),
        with_mode(4 | 2, &payload_list(&requests)),
    ));
    seeds.push((
        "accept-payloads-secret".into(),
        with_mode(4 | 2 | 1, &payload_list(&requests)),
    ));
    let refusals = [
        (
            "protocol",
            hello_from(PROTOCOL_VERSION + 1, CLUSTER, "n2", "n1"),
        ),
        ("cluster", hello_from(PROTOCOL_VERSION, "other", "n2", "n1")),
        (
            "not-member",
            hello_from(PROTOCOL_VERSION, CLUSTER, "n9", "n1"),
        ),
        ("self", hello_from(PROTOCOL_VERSION, CLUSTER, "n1", "n1")),
        (
            "wrong-node",
            hello_from(PROTOCOL_VERSION, CLUSTER, "n2", "n3"),
        ),
        ("no-hello", Message::Ping),
    ];
    for (label, first) in refusals {
        seeds.push((
            format!("refuse-{label}"),
            with_mode(0, &frames(&[first], None)),
        ));
    }
    seeds.push((
        "refuse-bad-tag".into(),
        with_mode(1, &frames(&[hello()], Some(b"another-cluster-secret"))),
    ));
    seeds.push((
        "accept-oversized-after-hello".into(),
        with_mode(4, &[0x7f, 0xff, 0xff, 0xff, 0x90]),
    ));
    // Initiator: what a peer answers to our hello and the anti-entropy round after it.
    let round = |label: &str, replies: Vec<Message>| {
        let mut all = vec![welcome(), pong()];
        all.extend(replies);
        (
            format!("initiate-{label}"),
            with_mode(8, &frames(&all, None)),
        )
    };
    let in_sync = Message::InSync {
        hlc: Timestamp {
            wall_ms: WALL_MS,
            logical: 0,
        },
    };
    seeds.push(round("in-sync", vec![in_sync.clone()]));
    // Every group differs; the buckets of "a" and "dir/b" hold differences: the peer is
    // newer for "a", lacks "dir/b", and has "other", which we lack.
    let repair = vec![
        Message::SyncGroups {
            groups: vec![0; GROUPS],
            hlc: Timestamp {
                wall_ms: WALL_MS + 5,
                logical: 0,
            },
        },
        Message::BucketVersions {
            covered: vec![bucket_of("a"), bucket_of("dir/b")],
            versions: vec![
                ("a".into(), version(WALL_MS + 5, 0, "n2")),
                ("other".into(), version(WALL_MS - 100, 7, "n3")),
            ],
            remaining: vec![],
        },
        Message::PushAck {
            refused: vec![],
            wall_ms: 0,
            fenced: false,
        },
        Message::Entries {
            entries: vec![
                entry("a", Some(b"newer on the peer"), None),
                entry("other", None, None),
            ],
            served: 2,
        },
        Message::BucketVersions {
            covered: vec![],
            versions: vec![],
            remaining: vec![],
        },
    ];
    seeds.push(round("repair", repair.clone()));
    seeds.push(round(
        "unexpected",
        vec![Message::Pong {
            wall_ms: 0,
            fenced: false,
        }],
    ));
    seeds.push((
        "initiate-refused".into(),
        with_mode(8, &frames(&[messages()[3].1.clone()], None)),
    ));
    // Our node dials with the first nonce it draws.
    let mut dialer = hello();
    if let Message::Hello { nonce, .. } = &mut dialer {
        *nonce = NODE_NONCE;
    }
    seeds.push((
        "initiate-secret".into(),
        with_mode(
            8 | 1,
            &conversation(
                &[
                    (false, dialer.clone()),
                    (true, welcome()),
                    (false, Message::Ping),
                    (true, pong()),
                    (false, Message::SyncRoot { root: 1 }),
                    (true, in_sync),
                ],
                secret,
            ),
        ),
    ));
    let replies: Vec<Vec<u8>> = [welcome(), pong()]
        .into_iter()
        .chain(repair)
        .map(|message| payload(&message))
        .collect();
    seeds.push((
        "initiate-payloads".into(),
        with_mode(8 | 2, &payload_list(&replies)),
    ));
    seeds
}

fn cluster_file_seeds() -> Vec<(String, String)> {
    let node = |n: usize| {
        format!(
            "[[nodes]]\nid   = \"n{n}\"\nhttp = \"127.0.0.1{n}:700{n}\"\npeer = \"127.0.0.1{n}:710{n}\"\n\n"
        )
    };
    let two = format!("{}{}", node(1), node(2));
    let mut seeds = vec![
        ("one-node".to_owned(), node(1)),
        ("api-example".to_owned(), format!("# cluster.toml\n{two}")),
        ("local-3".to_owned(), ClusterConfig::local_file(3, 7001, 7101)),
        ("local-4".to_owned(), ClusterConfig::local_file(4, 7001, 7101)),
        (
            "ipv6".to_owned(),
            "[[nodes]]\nid = \"a_1\"\nhttp = \"[::1]:7001\"\npeer = \"[::1]:7101\"\n".to_owned(),
        ),
        (
            "inline-tables".to_owned(),
            "cluster = \"c\"\nnodes = [{ id = \"n1\", http = \"127.0.0.1:1\", peer = \"127.0.0.1:2\" }, { id = \"n-2\", http = \"127.0.0.2:1\", peer = \"127.0.0.2:2\" }]\n".to_owned(),
        ),
        (
            "secret".to_owned(),
            format!("cluster = \"prod\"\nsecret_file = \"secret.key\"\n{two}"),
        ),
        (
            "every-key".to_owned(),
            format!(
                "cluster = \"tuned\"\nmax_key_bytes = 512\nmax_value_bytes = 65536\n\
                 max_clock_skew_ms = 250\nlive_timeout_ms = 300\nstrong_timeout_ms = 900\n\
                 anti_entropy_interval_ms = 0\nheartbeat_interval_ms = 100\n\
                 suspect_after_ms = 400\nstartup_sync_timeout_ms = 3000\n\
                 connect_timeout_ms = 200\nrequest_timeout_ms = 1000\n\
                 peer_idle_timeout_ms = 5000\nmax_backoff_ms = 500\n\
                 max_frame_bytes = 1048576\nbatch_bytes = 262144\noutbox_max_keys = 5000\n\
                 max_peer_connections = 8\nmax_http_connections = 64\n\
                 http_timeout_ms = 2000\nhttp_header_timeout_ms = 1000\n{two}"
            ),
        ),
        (
            "huge-values".to_owned(),
            format!(
                "max_frame_bytes = 9223372036854775807\nmax_value_bytes = 4611686018427387904\n\
                 outbox_max_keys = 9223372036854775807\nhttp_timeout_ms = 9223372036854775807\n{}",
                node(1)
            ),
        ),
        ("empty".to_owned(), String::new()),
        ("no-nodes".to_owned(), "cluster = \"x\"\n".to_owned()),
        ("typo".to_owned(), format!("live_timeout = 5\n{two}")),
        ("bad-id".to_owned(), node(1).replace("n1", "N 1")),
        ("duplicate-id".to_owned(), format!("{}{}", node(1), node(1))),
        (
            "duplicate-address".to_owned(),
            node(1).replace("7101", "7001"),
        ),
        ("zero-timeout".to_owned(), format!("strong_timeout_ms = 0\n{two}")),
        ("negative".to_owned(), format!("max_key_bytes = -1\n{two}")),
        (
            "frame-too-small".to_owned(),
            format!("max_frame_bytes = 10\n{two}"),
        ),
        ("bad-address".to_owned(), node(1).replace("127.0.0.11:7001", "localhost:7001")),
        ("bad-toml".to_owned(), "[[nodes]\nid = \"n1\n".to_owned()),
    ];
    seeds.sort();
    seeds
}

fn http_request_seeds() -> Vec<(String, Vec<u8>)> {
    let request = |head: &str, body: &[u8]| {
        let mut bytes = head.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        bytes
    };
    let long_key = "k".repeat(fuzz_checks::limits().max_key_bytes + 1);
    let big_value = vec![b'v'; fuzz_checks::limits().max_value_bytes + 1];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("get", request("GET /v1/kv/a\n", b"")),
        ("get-absent", request("GET /v1/kv/nope\n", b"")),
        ("get-deleted", request("GET /v1/kv/gone\n", b"")),
        ("get-binary", request("GET /v1/kv/bin\n", b"")),
        ("get-slash", request("GET /v1/kv/dir/b\n", b"")),
        ("get-slash-encoded", request("GET /v1/kv/dir%2Fb\n", b"")),
        (
            "get-unicode",
            request("GET /v1/kv/cl%C3%A9%20%D0%BA%D0%BB%D1%8E%D1%87\n", b""),
        ),
        (
            "get-json",
            request("GET /v1/kv/a\nAccept: application/json\n", b""),
        ),
        (
            "get-json-binary",
            request("GET /v1/kv/bin\nAccept: application/json\n", b""),
        ),
        (
            "get-quorum",
            request("GET /v1/kv/a?consistency=quorum\n", b""),
        ),
        ("get-all", request("GET /v1/kv/a?consistency=all\n", b"")),
        (
            "get-bad-level",
            request("GET /v1/kv/a?consistency=most\n", b""),
        ),
        ("head", request("HEAD /v1/kv/a\n", b"")),
        ("head-absent", request("HEAD /v1/kv/nope\n", b"")),
        (
            "put",
            request("PUT /v1/kv/a\nContent-Type: text/plain\n", b"new value"),
        ),
        (
            "put-new",
            request("PUT /v1/kv/fresh?consistency=one\n", b"x"),
        ),
        (
            "put-binary",
            request("PUT /v1/kv/b?consistency=live\n", &[0, 255, 254, 10]),
        ),
        ("put-empty", request("PUT /v1/kv/empty\n", b"")),
        (
            "put-quorum",
            request("PUT /v1/kv/q?consistency=quorum\n", b"q"),
        ),
        ("put-too-large", request("PUT /v1/kv/big\n", &big_value)),
        (
            "put-content-length-lies",
            request("PUT /v1/kv/a\nContent-Length: 99999999\n", b"short"),
        ),
        (
            "put-key-too-long",
            request(&format!("PUT /v1/kv/{long_key}\n"), b"v"),
        ),
        ("put-control", request("PUT /v1/kv/a%0Ab\n", b"v")),
        ("put-not-utf8", request("PUT /v1/kv/%FF%FE\n", b"v")),
        ("put-empty-key", request("PUT /v1/kv/\n", b"v")),
        (
            "put-bad-query",
            request("PUT /v1/kv/a?consistency=%FF&consistency=one\n", b"v"),
        ),
        ("delete", request("DELETE /v1/kv/a\n", b"")),
        (
            "delete-absent",
            request("DELETE /v1/kv/nope?consistency=all\n", b""),
        ),
        ("post", request("POST /v1/kv/a\n", b"v")),
        ("patch-list", request("PATCH /v1/kv\n", b"")),
        ("list", request("GET /v1/kv\n", b"")),
        ("list-prefix", request("GET /v1/kv?prefix=d&limit=1\n", b"")),
        (
            "list-page",
            request("GET /v1/kv?limit=2&start_after=a\n", b""),
        ),
        ("list-bad-limit", request("GET /v1/kv?limit=10001\n", b"")),
        ("list-negative-limit", request("GET /v1/kv?limit=-1\n", b"")),
        ("convergence", request("GET /v1/convergence\n", b"")),
        (
            "convergence-cluster",
            request("GET /v1/convergence?cluster=true\n", b""),
        ),
        (
            "convergence-bad",
            request("GET /v1/convergence?cluster=maybe\n", b""),
        ),
        ("cluster", request("GET /v1/cluster\n", b"")),
        ("health", request("GET /health\n", b"")),
        ("metrics", request("GET /metrics\n", b"")),
        ("metrics-post", request("POST /metrics\n", b"")),
        ("not-found", request("GET /v2/kv/a\n", b"")),
        ("root", request("GET /\n", b"")),
        (
            "absolute-uri",
            request("GET http://node:7001/v1/kv/a?consistency=one\n", b""),
        ),
        (
            "version-text",
            b"1764127282000-0000000003-n1\n\"0000000000001-1-a_b\"\none\nall\n".to_vec(),
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes))
        .collect()
}
