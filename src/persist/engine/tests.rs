//! Tests of the file engine: reopen, torn tails, damage, repair, locking, identity,
//! policies, rotation, compaction (with crashes between its steps) and the lease.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::persist::record::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn options(dir: &Path) -> JournalOptions {
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    JournalOptions::new(dir, "test", node("n1"), clock)
}

/// Opens and collects every recovered payload.
fn open_with(
    options: JournalOptions,
) -> Result<(FileJournal, Vec<Vec<u8>>, Recovery), JournalError> {
    let mut records = Vec::new();
    let (journal, recovery) = FileJournal::open(options, |payload| records.push(payload.to_vec()))?;
    Ok((journal, records, recovery))
}

fn open(dir: &Path) -> (FileJournal, Vec<Vec<u8>>, Recovery) {
    open_with(options(dir)).unwrap()
}

fn append(journal: &FileJournal, payloads: &[&str]) -> Lsn {
    journal
        .try_append(RecordBatch::of(payloads.iter().map(|p| p.as_bytes())).unwrap())
        .unwrap()
}

fn strings(records: &[Vec<u8>]) -> Vec<String> {
    records
        .iter()
        .map(|record| String::from_utf8(record.clone()).unwrap())
        .collect()
}

/// Segment files in id order.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| segment::parse_name(entry.unwrap().file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    ids.into_iter().map(|id| segment::path(dir, id)).collect()
}

/// The last segment file that holds records.
fn last_written_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir)
        .into_iter()
        .rev()
        .find(|path| std::fs::metadata(path).unwrap().len() > SEGMENT_HEADER_BYTES as u64)
        .unwrap()
}

#[test]
fn reopen_after_clean_shutdown_replays_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, records, recovery) = open(dir.path());
    assert!(recovery.created);
    assert!(records.is_empty());
    assert_eq!(append(&journal, &["a", "b"]), 1);
    assert_eq!(append(&journal, &["c"]), 2);
    journal.shutdown().unwrap();
    assert!(matches!(append_result(&journal), Err(JournalError::Closed)));
    drop(journal);

    let (journal, records, recovery) = open(dir.path());
    assert!(!recovery.created);
    assert_eq!(strings(&records), ["a", "b", "c"]);
    assert_eq!(recovery.records, 3);
    assert!(recovery.truncations.is_empty());
    append(&journal, &["d"]);
    drop(journal);
    let (_journal, records, _) = open(dir.path());
    assert_eq!(strings(&records), ["a", "b", "c", "d"]);
}

fn append_result(journal: &FileJournal) -> Result<Lsn, JournalError> {
    journal.try_append(RecordBatch::of([b"x"]).unwrap())
}

#[test]
fn a_torn_last_record_is_cut_away_and_reported() {
    for torn_bytes in [3usize, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 4] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = open(dir.path());
        append(&journal, &["first", "second"]);
        drop(journal);
        let path = last_written_segment(dir.path());
        let clean_len = std::fs::metadata(&path).unwrap().len();
        let next = RecordBatch::of([b"third record"]).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&next.as_bytes()[..torn_bytes]);
        std::fs::write(&path, &bytes).unwrap();

        let (journal, records, recovery) = open(dir.path());
        assert_eq!(strings(&records), ["first", "second"]);
        assert_eq!(
            recovery.truncations,
            [Truncation {
                file: path.clone(),
                offset: clean_len,
                bytes_dropped: torn_bytes as u64,
                reason: "the file ends inside a record".to_owned(),
                torn: true,
            }]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), clean_len);
        drop(journal);
        let (_journal, records, recovery) = open(dir.path());
        assert_eq!(records.len(), 2);
        assert!(recovery.truncations.is_empty());
    }
}

#[test]
fn a_last_record_with_a_bad_checksum_or_a_zero_tail_is_torn() {
    for tail in ["checksum", "zeros", "cut short"] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = open(dir.path());
        append(&journal, &["first", "second"]);
        drop(journal);
        let path = last_written_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        match tail {
            "checksum" => bytes[len - 1] ^= 0x01,
            "zeros" => bytes.extend_from_slice(&[0u8; 4096]),
            _ => {
                // A third record whose write stopped half-way, in preallocated space.
                let third = RecordBatch::of([b"third record"]).unwrap();
                let half = third.as_bytes().len() / 2;
                bytes.extend_from_slice(&third.as_bytes()[..half]);
                bytes.extend_from_slice(&[0u8; 4096]);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let (_journal, records, recovery) = open(dir.path());
        let expected: &[&str] = if tail == "checksum" {
            &["first"]
        } else {
            &["first", "second"]
        };
        assert_eq!(recovery.truncations.len(), 1, "{tail}");
        assert_eq!(strings(&records), expected, "{tail}");
        assert!(recovery.truncations[0].torn, "{tail}");
    }
}

/// A copy of the directory taken while the journal runs is what a kill -9 leaves:
/// durable records, then the preallocated (zero) rest of the active segment.
#[tokio::test]
async fn a_snapshot_of_a_running_journal_opens_with_every_durable_record() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    let lsn = append(&journal, &["one", "two"]);
    journal.wait_durable(lsn).await.unwrap();
    let active = last_written_segment(dir.path());
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        DEFAULT_SEGMENT_BYTES,
        "the active segment is preallocated"
    );
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    drop(journal);
    assert!(
        std::fs::metadata(&active).unwrap().len() < 100,
        "a clean shutdown trims the preallocated tail"
    );

    let (_journal, records, recovery) = open(copy.path());
    assert_eq!(strings(&records), ["one", "two"]);
    assert_eq!(recovery.truncations.len(), 1);
    let truncation = &recovery.truncations[0];
    assert!(truncation.torn);
    assert_eq!(
        truncation.reason,
        "zeros to the end: preallocated space never written"
    );
}

#[test]
fn a_segment_whose_creation_was_cut_short_is_removed() {
    for contents in [vec![0u8; 10], vec![0u8; 4096], b"MKV".to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = open(dir.path());
        append(&journal, &["kept"]);
        drop(journal);
        let files = segment_files(dir.path());
        let last_id =
            segment::parse_name(files.last().unwrap().file_name().unwrap().to_str().unwrap())
                .unwrap();
        let cut_short = segment::path(dir.path(), last_id + 1);
        std::fs::write(&cut_short, &contents).unwrap();
        let (_journal, records, recovery) = open(dir.path());
        assert_eq!(strings(&records), ["kept"]);
        assert_eq!(recovery.truncations.len(), 1);
        assert!(recovery.truncations[0].torn);
        assert_eq!(recovery.truncations[0].file, cut_short);
    }
    // Not the last segment: that is damage, not a crash.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(segment::path(dir.path(), 0), vec![0u8; 4096]).unwrap();
    assert!(matches!(
        open_with(options(dir.path())),
        Err(JournalError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn a_flipped_byte_in_the_middle_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    append(&journal, &["first", "second", "third"]);
    drop(journal);
    let path = last_written_segment(dir.path());
    let second = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + "first".len()) as u64;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[second as usize + RECORD_HEADER_BYTES + 2] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let error = open_with(options(dir.path())).unwrap_err();
    match &error {
        JournalError::Corrupt { file, offset, .. } => {
            assert_eq!(file, &path);
            assert_eq!(*offset, second);
        }
        other => panic!("expected a corruption error, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("at byte {second}")), "{message}");
    // Refusing changed nothing.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn repair_keeps_the_readable_prefix_and_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    append(&journal, &["a1", "a2", "a3"]);
    drop(journal);
    let damaged = last_written_segment(dir.path());
    let (journal, _, _) = open(dir.path());
    append(&journal, &["b1", "b2"]);
    drop(journal);
    let second = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 2) as u64;
    let mut bytes = std::fs::read(&damaged).unwrap();
    let len = bytes.len() as u64;
    bytes[second as usize + 3] ^= 0xff; // the length of a2 becomes impossible
    std::fs::write(&damaged, &bytes).unwrap();

    assert!(open_with(options(dir.path())).is_err());
    let mut repairing = options(dir.path());
    repairing.repair = true;
    let (journal, records, recovery) = open_with(repairing).unwrap();
    assert_eq!(strings(&records), ["a1", "b1", "b2"]);
    assert_eq!(recovery.truncations.len(), 1);
    assert_eq!(recovery.truncations[0].offset, second);
    assert_eq!(recovery.truncations[0].bytes_dropped, len - second);
    assert!(!recovery.truncations[0].torn);
    drop(journal);
    let (_journal, records, _) = open(dir.path());
    assert_eq!(strings(&records), ["a1", "b1", "b2"]);
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    let error = open_with(options(dir.path())).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "data directory {} is in use by another process (pid {})",
            dir.path().display(),
            std::process::id()
        )
    );
    drop(journal);
    open(dir.path());
}

#[test]
fn another_node_cluster_or_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let mut other_node = options(dir.path());
    other_node.node = node("n2");
    let error = open_with(other_node).unwrap_err();
    assert!(
        error.to_string().ends_with("belongs to node n1, not n2"),
        "{error}"
    );
    let mut other_cluster = options(dir.path());
    other_cluster.cluster = "prod".to_owned();
    let error = open_with(other_cluster).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("belongs to cluster test, not prod"),
        "{error}"
    );

    let meta_path = dir.path().join(META_FILE);
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(&meta_path, text.replace("format = 1", "format = 3")).unwrap();
    let error = open_with(options(dir.path())).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "data directory {} has format 3, this meshkv reads 1",
            dir.path().display()
        )
    );
}

#[test]
fn a_segment_from_another_directory_is_refused() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(first.path());
    append(&journal, &["a"]);
    drop(journal);
    drop(open(second.path()));
    let stranger = last_written_segment(first.path());
    std::fs::copy(&stranger, segment::path(second.path(), 0x100)).unwrap();
    let error = open_with(options(second.path())).unwrap_err();
    assert!(
        error.to_string().contains("another data directory"),
        "{error}"
    );
}

#[tokio::test]
async fn every_policy_reaches_durability_and_writes_share_syncs() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path());
        options.fsync = policy;
        let (journal, _, _) = open_with(options).unwrap();
        let journal = Arc::new(journal);
        let writers: Vec<_> = (0..16)
            .map(|writer| {
                let journal = Arc::clone(&journal);
                tokio::spawn(async move {
                    for index in 0..20 {
                        let slot = journal.reserve().await.unwrap();
                        let payload = format!("{writer}-{index}");
                        let lsn = journal
                            .append(slot, RecordBatch::of([payload]).unwrap())
                            .unwrap();
                        journal.wait_durable(lsn).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let stats = journal.stats();
        assert_eq!(stats.appended, 320, "{policy}");
        assert_eq!(stats.durable, 320, "{policy}");
        assert_eq!(
            *journal.subscribe().borrow(),
            Progress {
                durable: 320,
                failure: None,
                closed: false
            }
        );
        journal.shutdown().unwrap();
        assert!(journal.wait_durable(321).await.is_err());
        drop(journal);
        let (_journal, records, _) = open(dir.path());
        assert_eq!(records.len(), 320, "{policy}");
    }
}

#[test]
fn a_full_queue_pushes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.queue_appends = 2;
    let (journal, _, _) = open_with(options).unwrap();
    let first = journal.try_reserve().unwrap();
    let second = journal.try_reserve().unwrap();
    assert!(matches!(journal.try_reserve(), Err(JournalError::Full)));
    journal.append(first, RecordBatch::new()).unwrap();
    drop(second);
    journal.try_reserve().unwrap();
}

#[test]
fn segments_rotate_at_their_size_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.segment_bytes = 128;
    let (journal, _, _) = open_with(options.clone()).unwrap();
    let expected: Vec<String> = (0..50).map(|index| format!("record-{index:03}")).collect();
    for payload in &expected {
        append(&journal, &[payload]);
    }
    journal.shutdown().unwrap();
    let stats = journal.stats();
    assert!(stats.segments > 5, "{stats:?}");
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    assert_eq!(stats.disk_bytes, on_disk);
    drop(journal);
    let (_journal, records, recovery) = open_with(options).unwrap();
    assert_eq!(strings(&records), expected);
    assert!(recovery.segments > 5);
}

/// A toy LWW map over payloads `key@version` (`key@version!` is a tombstone), with the
/// liveness predicate a node would give.
#[derive(Default)]
struct Model {
    map: Mutex<BTreeMap<String, u64>>,
}

impl Model {
    fn parse(payload: &[u8]) -> (String, u64) {
        let text = std::str::from_utf8(payload).unwrap();
        let (key, version) = text.split_once('@').unwrap();
        (
            key.to_owned(),
            version.trim_end_matches('!').parse().unwrap(),
        )
    }

    fn apply(&self, payload: &[u8]) {
        let (key, version) = Self::parse(payload);
        let mut map = self.map.lock().unwrap();
        let current = map.entry(key).or_insert(version);
        *current = (*current).max(version);
    }

    fn state(records: &[Vec<u8>]) -> BTreeMap<String, u64> {
        let model = Model::default();
        for record in records {
            model.apply(record);
        }
        model.map.into_inner().unwrap()
    }
}

impl Liveness for Model {
    fn is_live(&self, payload: &[u8]) -> bool {
        let (key, version) = Self::parse(payload);
        self.map.lock().unwrap().get(&key) == Some(&version)
    }
}

/// Writes keys 0..10 three times over in small segments; key 9 is deleted and then
/// forgotten (the caller collected its tombstone).
fn build_history(dir: &Path) -> (JournalOptions, Arc<Model>) {
    let mut options = options(dir);
    options.segment_bytes = 96;
    let (journal, _, _) = open_with(options.clone()).unwrap();
    let model = Arc::new(Model::default());
    for round in 1..=3u64 {
        for key in 0..10 {
            let payload = format!("k{key}@{round}");
            append(&journal, &[&payload]);
            model.apply(payload.as_bytes());
        }
    }
    append(&journal, &["k9@4!"]);
    model.map.lock().unwrap().remove("k9");
    drop(journal);
    (options, model)
}

#[test]
fn compaction_keeps_exactly_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let (options, model) = build_history(dir.path());
    let (journal, records, _) = open_with(options.clone()).unwrap();
    assert_eq!(records.len(), 31);
    journal.set_liveness(model.clone());
    append(&journal, &["k0@5"]);
    model.apply(b"k0@5");
    let before = journal.stats();
    let report = journal.compact_now().unwrap().unwrap();
    assert_eq!(report.records_in, 32);
    assert_eq!(report.records_out, 9);
    let after = journal.stats();
    assert!(after.disk_bytes < before.disk_bytes, "{before:?} {after:?}");
    assert_eq!(after.segments, 2, "{after:?}");
    assert_eq!(after.last_compaction, Some(report));
    // Appends go on after a compaction, and a second compaction includes the first.
    append(&journal, &["k1@6"]);
    model.apply(b"k1@6");
    journal.compact_now().unwrap().unwrap();
    drop(journal);

    let (_journal, records, _) = open_with(options).unwrap();
    let mut kept = strings(&records);
    kept.sort();
    let mut expected: Vec<String> = model
        .map
        .lock()
        .unwrap()
        .iter()
        .map(|(key, version)| format!("{key}@{version}"))
        .collect();
    expected.sort();
    assert_eq!(kept, expected);
    assert!(!kept.iter().any(|record| record.starts_with("k9")));
}

#[test]
fn a_crash_between_merge_steps_opens_to_the_same_state() {
    for step in [
        MergeStep::Rename,
        MergeStep::RemoveOld,
        MergeStep::RemoveRest,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (options, model) = build_history(dir.path());
        let (journal, records, _) = open_with(options.clone()).unwrap();
        let mut before = Model::state(&records);
        before.remove("k9"); // the caller forgot it
        journal.set_liveness(model.clone());
        assert_eq!(journal.compact_until(step).unwrap(), None);
        drop(journal);

        let (journal, records, recovery) = open_with(options.clone()).unwrap();
        let mut state = Model::state(&records);
        if step == MergeStep::Rename {
            // Nothing was committed: the old segments are intact, k9's tombstone too.
            assert_eq!(state.remove("k9"), Some(4));
            assert_eq!(recovery.removed.len(), 1, "{step:?}: {recovery:?}");
        } else {
            assert!(!recovery.removed.is_empty(), "{step:?}: {recovery:?}");
        }
        assert_eq!(state, before, "{step:?}");
        drop(journal);
        // And the state stays put on a further reopen.
        let (_journal, records, recovery) = open_with(options).unwrap();
        let mut again = Model::state(&records);
        again.remove("k9");
        assert_eq!(again, before, "{step:?}");
        assert!(recovery.removed.is_empty(), "{step:?}");
    }
}

#[test]
fn compaction_starts_by_itself_once_garbage_dominates() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.segment_bytes = 256;
    options.compaction_min_bytes = 512;
    let (journal, _, _) = open_with(options).unwrap();
    let model = Arc::new(Model::default());
    journal.set_liveness(model.clone());
    for version in 1..=200u64 {
        let payload = format!("k@{version}");
        model.apply(payload.as_bytes());
        append(&journal, &[&payload]);
        if version > 1 {
            journal.record_garbage(payload.len() as u64);
        }
    }
    // Bounded polling: the writer starts a compaction after a group once the trigger
    // holds; appends (each ends a group) keep giving it the chance.
    let mut compacted = false;
    for attempt in 0..500 {
        if journal.stats().last_compaction.is_some() {
            compacted = true;
            break;
        }
        let payload = format!("k@{}", 201 + attempt);
        model.apply(payload.as_bytes());
        append(&journal, &[&payload]);
        journal.record_garbage(payload.len() as u64);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(compacted, "{:?}", journal.stats());
}

#[test]
fn the_lease_survives_reopen_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _, _) = open(dir.path());
    assert_eq!(journal.read_lease(), None);
    journal.extend_lease(5_000).unwrap();
    journal.extend_lease(4_000).unwrap();
    assert_eq!(journal.read_lease(), Some(5_000));
    drop(journal);
    let (journal, _, _) = open(dir.path());
    assert_eq!(journal.read_lease(), Some(5_000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any bytes in a segment: open returns an error or a journal, never panics; with
    /// repair it always opens, keeping the records before the damage.
    #[test]
    fn opening_arbitrary_segment_bytes_never_panics(
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        keep_header in any::<bool>(),
        as_last in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = open(dir.path());
        append(&journal, &["before"]);
        drop(journal);
        let path = last_written_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        if !keep_header {
            bytes.clear();
        }
        bytes.extend_from_slice(&garbage);
        std::fs::write(&path, &bytes).unwrap();
        if !as_last {
            let (journal, _, _) = open_with(options(dir.path())).unwrap_or_else(|_| {
                let mut repairing = options(dir.path());
                repairing.repair = true;
                open_with(repairing).unwrap()
            });
            append(&journal, &["after"]);
            drop(journal);
        }
        let _ = open_with(options(dir.path()));
        let mut repairing = options(dir.path());
        repairing.repair = true;
        let (_journal, records, _) = open_with(repairing).unwrap();
        if keep_header {
            prop_assert_eq!(records.first().map(Vec::as_slice), Some(&b"before"[..]));
        }
    }
}
