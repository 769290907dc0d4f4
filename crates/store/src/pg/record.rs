//! Rows <-> recorded events, and the hash chain.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{RecordedEvent, StoreError};

/// The fields a chain hash is computed over (borrowed, so the writer need not build a
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

/// A recorded event with where it sits in its append (part of what its hash covers).
pub(crate) struct StoredEvent {
    pub event: RecordedEvent,
    pub append_index: u32,
    pub append_len: u32,
}

impl StoredEvent {
    /// The chain hash this record must have after `prev`.
    pub(crate) fn expected_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let e = &self.event;
        chain_hash(
            prev,
            &RecordFields {
                global_position: e.global_position,
                stream_id: e.stream_id,
                stream_version: e.stream_version,
                event_id: e.event_id,
                event_type: &e.event_type,
                data: &e.data,
                recorded_at: &e.recorded_at,
                recorded_by: &e.recorded_by,
                append_index: self.append_index,
                append_len: self.append_len,
            },
        )
    }
}

/// `recorded_at` as PostgreSQL stores it (microseconds), so the hash computed before the
/// insert is the hash of what is read back.
pub(crate) fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

pub(crate) fn corrupt(position: i64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: "PostgreSQL table events".to_owned(),
        offset: u64::try_from(position).unwrap_or(0),
        reason: reason.into(),
    }
}

fn to_u64(position: i64, v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(position, format!("negative {what} {v}")))
}

/// Decodes a row selected with the event columns of `conn`.
pub(crate) fn from_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    stored_from_row(row).map(|s| s.event)
}

/// Decodes a row selected with the event columns of `conn`, append bounds included.
pub(crate) fn stored_from_row(row: &Row) -> Result<StoredEvent, StoreError> {
    let position: i64 = row.get(0);
    let bad = |e: tokio_postgres::Error| corrupt(position, format!("undecodable row: {e}"));
    let data: String = row.try_get(5).map_err(bad)?;
    let data = RawValue::from_string(data)
        .map_err(|e| corrupt(position, format!("data is not JSON: {e}")))?;
    let hash: &[u8] = row.try_get(8).map_err(bad)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt(position, "hash is not 32 bytes"))?;
    let append_first: i64 = row.try_get(9).map_err(bad)?;
    let append_last: i64 = row.try_get(10).map_err(bad)?;
    let (append_index, append_len) = match (
        u32::try_from(position - append_first),
        u32::try_from(append_last - append_first + 1),
    ) {
        (Ok(i), Ok(n)) if i < n => (i, n),
        _ => return Err(corrupt(position, "position outside its append")),
    };
    let event = RecordedEvent {
        global_position: to_u64(position, position, "position")?,
        stream_id: row.try_get(1).map_err(bad)?,
        stream_version: to_u64(position, row.try_get(2).map_err(bad)?, "stream_version")?,
        event_id: row.try_get(3).map_err(bad)?,
        event_type: row.try_get(4).map_err(bad)?,
        data,
        recorded_at: row.try_get(6).map_err(bad)?,
        recorded_by: row.try_get(7).map_err(bad)?,
        hash,
    };
    Ok(StoredEvent {
        event,
        append_index,
        append_len,
    })
}
