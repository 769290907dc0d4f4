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

/// The file store's chain hash (proto-docs/storage-format.md), so `verify` and every event's
/// `hash` mean the same on both backends: `BLAKE3(covered)` with `covered` =
/// `global_position u64 | prev_hash [32] | stream_id [16] | event_id [16] | stream_version u64 |
/// recorded_at_micros i64 | append_index u32 | append_len u32 | {"type","recorded_by","data"}`
/// (integers little endian, the body compact JSON in that key order).
pub(crate) fn chain_hash(prev: &[u8; 32], r: &RecordFields<'_>) -> [u8; 32] {
    let mut covered =
        Vec::with_capacity(96 + 40 + r.event_type.len() + r.recorded_by.len() + r.data.get().len());
    covered.extend_from_slice(&r.global_position.to_le_bytes());
    covered.extend_from_slice(prev);
    covered.extend_from_slice(r.stream_id.as_bytes());
    covered.extend_from_slice(r.event_id.as_bytes());
    covered.extend_from_slice(&r.stream_version.to_le_bytes());
    covered.extend_from_slice(&r.recorded_at.timestamp_micros().to_le_bytes());
    covered.extend_from_slice(&r.append_index.to_le_bytes());
    covered.extend_from_slice(&r.append_len.to_le_bytes());
    let body = Body {
        event_type: r.event_type,
        recorded_by: r.recorded_by,
        data: r.data,
    };
    // Strings and an already-valid RawValue always serialize into a Vec.
    if serde_json::to_writer(&mut covered, &body).is_err() {
        covered.clear();
    }
    *blake3::hash(&covered).as_bytes()
}
