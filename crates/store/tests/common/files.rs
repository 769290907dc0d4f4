//! Helpers for file-store tests: building logs, walking raw segment bytes, copying dirs.

use std::path::{Path, PathBuf};

use incidentlog_store::{
    AppendRequest, Durability, EventStore, ExpectedVersion, FileStore, NewEvent, OpenOptions,
    StoreError,
};
use serde_json::value::RawValue;
use uuid::Uuid;

pub const HEADER_LEN: usize = 32;

pub fn opts(dir: &Path, segment_size: u64) -> OpenOptions {
    let mut o = OpenOptions::new(dir);
    o.segment_size = segment_size;
    o.durability = Durability::Strict;
    o
}

pub fn new_event(i: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Thing".into(),
        data: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
    }
}

pub fn append_req(stream: Uuid, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream,
        expected_version: ExpectedVersion::Any,
        events,
        recorded_by: "t".into(),
    }
}

/// Segment files of a data dir, sorted.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The synced mark (`log/SYNCED`): the last position known to be on stable storage.
pub fn synced_mark(data_dir: &Path) -> PathBuf {
    data_dir.join("log").join("SYNCED")
}

/// Removes the synced mark, as after a crash that came before the mark named the log's last
/// records: only such records can be torn (a crash loses unsynced bytes only), so a test
/// that tears records of a cleanly closed log must forget that they were synced.
pub fn forget_synced(data_dir: &Path) {
    std::fs::remove_file(synced_mark(data_dir)).unwrap();
}

/// The store's checksum of `bytes` (CRC32C, masked as LevelDB masks it), for tests that edit a
/// segment and keep its checksums valid.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// Byte ranges `(start, end)` of the records of one segment's bytes (trusting `len`; a zero
/// `len` is no record: the zeros a running store reserves after its last one).
pub fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let end = at + 8 + len + 4;
        if end > bytes.len() {
            break;
        }
        out.push((at, end));
        at = end;
    }
    out
}

/// Builds a log of `appends` appends of 1..=3 events; returns each append's event ids.
pub async fn build_log(dir: &Path, segment_size: u64, appends: usize) -> Vec<Vec<Uuid>> {
    let store = FileStore::open(&opts(dir, segment_size)).await.unwrap();
    let streams = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let mut out = Vec::new();
    for a in 0..appends {
        let evs: Vec<_> = (0..1 + a % 3)
            .map(|k| new_event((a * 10 + k) as u64))
            .collect();
        out.push(evs.iter().map(|e| e.event_id).collect());
        store.append(append_req(streams[a % 3], evs)).await.unwrap();
    }
    store.close().await.unwrap();
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Event ids of the whole log, in order.
pub async fn log_ids<S: EventStore>(store: &S) -> Vec<Uuid> {
    store
        .read_all(0, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

/// Opens with `o`, expecting the refusal of a log that lost events the synced mark names (or
/// whose history under it changed); returns the refusal's file, offset and reason. The
/// reason names the mark.
pub async fn refused_by_the_mark(o: &OpenOptions) -> (String, u64, String) {
    match FileStore::open(o).await {
        Err(StoreError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert!(reason.contains("SYNCED"), "{reason}");
            (file, offset, reason)
        }
        other => panic!("opened a log that lost acknowledged events: {other:?}"),
    }
}

/// [`refused_by_the_mark`] because marked records are missing, naming `seg` at `ends_at`
/// (where the log's records end), with `seg` left as `bytes`.
pub async fn refused_as_missing(
    o: &OpenOptions,
    seg: &std::path::Path,
    ends_at: usize,
    bytes: &[u8],
) {
    let (file, offset, reason) = refused_by_the_mark(o).await;
    assert!(
        reason.contains("acknowledged events are missing"),
        "{reason}"
    );
    assert_eq!(
        (file.as_str(), offset),
        (seg.to_str().unwrap(), ends_at as u64),
        "{reason}"
    );
    assert_eq!(std::fs::read(seg).unwrap(), bytes, "left as found");
}

pub fn is_corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt { .. })
}
