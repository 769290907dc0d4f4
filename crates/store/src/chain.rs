//! The chain hash both backends give every record (proto-docs/storage-format.md).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The fields a chain hash is computed over (borrowed, so a writer need not build a
/// `RecordedEvent`).
pub(crate) struct RecordFields<'a> {
    pub global_position: u64,
    pub stream_id: Uuid,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub data: &'a RawValue,
    pub recorded_at: &'a DateTime<Utc>,
    pub recorded_by: &'a str,
    /// Index of the event in its append (0-based) and the append's event count.
    pub append_index: u32,
    pub append_len: u32,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    recorded_by: &'a str,
    data: &'a RawValue,
}

impl<'a> RecordFields<'a> {
    /// The fields of a recorded event at `append_index` of an append of `append_len` events.
    pub(crate) fn of(e: &'a crate::RecordedEvent, append_index: u32, append_len: u32) -> Self {
        RecordFields {
            global_position: e.global_position,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_id: e.event_id,
            event_type: &e.event_type,
            data: &e.data,
            recorded_at: &e.recorded_at,
            recorded_by: &e.recorded_by,
            append_index,
            append_len,
        }
    }
}

/// The fixed-size fields a chain hash covers, in the order they are written. The file store's
/// records hold exactly these bytes (`file::format::RecordMeta` is this type), so there is one
/// layout to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CoveredHead {
    pub position: u64,
    pub prev_hash: [u8; 32],
    pub stream_id: Uuid,
    pub event_id: Uuid,
    pub stream_version: u64,
    /// Microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// Index of the event in its append (0-based) and the append's event count: recovery
    /// uses them to cut an append that was only partly written.
    pub append_index: u32,
    pub append_len: u32,
}

/// Appends what a chain hash covers to `out` (proto-docs/storage-format.md): `global_position
/// u64 | prev_hash [32] | stream_id [16] | event_id [16] | stream_version u64 |
/// recorded_at_micros i64 | append_index u32 | append_len u32 | {"type","recorded_by","data"}`
/// (integers little endian, the body compact JSON in that key order). The one definition: the
/// file store writes these bytes into its records, and [`chain_hash`] (PostgreSQL, `restore`)
/// hashes them, so `verify` and every event's `hash` mean the same on both backends.
pub(crate) fn write_covered(
    out: &mut Vec<u8>,
    head: &CoveredHead,
    event_type: &str,
    recorded_by: &str,
    data: &RawValue,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(&head.position.to_le_bytes());
    out.extend_from_slice(&head.prev_hash);
    out.extend_from_slice(head.stream_id.as_bytes());
    out.extend_from_slice(head.event_id.as_bytes());
    out.extend_from_slice(&head.stream_version.to_le_bytes());
    out.extend_from_slice(&head.recorded_at.to_le_bytes());
    out.extend_from_slice(&head.append_index.to_le_bytes());
    out.extend_from_slice(&head.append_len.to_le_bytes());
    serde_json::to_writer(
        &mut *out,
        &Body {
            event_type,
            recorded_by,
            data,
        },
    )
}

/// The chain hash of `r` after `prev`: BLAKE3 of [`write_covered`]'s bytes.
pub(crate) fn chain_hash(prev: &[u8; 32], r: &RecordFields<'_>) -> [u8; 32] {
    let head = CoveredHead {
        position: r.global_position,
        prev_hash: *prev,
        stream_id: r.stream_id,
        event_id: r.event_id,
        stream_version: r.stream_version,
        recorded_at: r.recorded_at.timestamp_micros(),
        append_index: r.append_index,
        append_len: r.append_len,
    };
    let mut covered =
        Vec::with_capacity(96 + 40 + r.event_type.len() + r.recorded_by.len() + r.data.get().len());
    // Into a Vec, strings and an already-valid RawValue always serialize; were it otherwise,
    // the hash of nothing matches no record, so the event would fail its check, not pass it.
    if write_covered(&mut covered, &head, r.event_type, r.recorded_by, r.data).is_err() {
        covered.clear();
    }
    *blake3::hash(&covered).as_bytes()
}
