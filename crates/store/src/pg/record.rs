//! Rows <-> recorded events, and the hash chain.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{RecordedEvent, StoreError};

/// What a record's chain hash covers: every field of the recorded event but the hash itself,
/// serialized as compact JSON in this field order.
#[derive(Serialize)]
struct HashedRecord<'a> {
    global_position: u64,
    stream_id: Uuid,
    stream_version: u64,
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a RawValue,
    recorded_at: &'a DateTime<Utc>,
    recorded_by: &'a str,
}

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
}

/// `BLAKE3(prev_hash || body)`, body = the compact JSON of [`HashedRecord`].
pub(crate) fn chain_hash(prev: &[u8; 32], r: &RecordFields<'_>) -> [u8; 32] {
    let body = HashedRecord {
        global_position: r.global_position,
        stream_id: r.stream_id,
        stream_version: r.stream_version,
        event_id: r.event_id,
        event_type: r.event_type,
        data: r.data,
        recorded_at: r.recorded_at,
        recorded_by: r.recorded_by,
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    // Serializing plain fields and an already-valid RawValue into a Vec cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    hasher.update(&bytes);
    *hasher.finalize().as_bytes()
}

pub(crate) fn event_hash(prev: &[u8; 32], e: &RecordedEvent) -> [u8; 32] {
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
        },
    )
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
    let position: i64 = row.get(0);
    let bad = |e: tokio_postgres::Error| corrupt(position, format!("undecodable row: {e}"));
    let data: String = row.try_get(5).map_err(bad)?;
    let data = RawValue::from_string(data)
        .map_err(|e| corrupt(position, format!("data is not JSON: {e}")))?;
    let hash: &[u8] = row.try_get(8).map_err(bad)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt(position, "hash is not 32 bytes"))?;
    Ok(RecordedEvent {
        global_position: to_u64(position, position, "position")?,
        stream_id: row.try_get(1).map_err(bad)?,
        stream_version: to_u64(position, row.try_get(2).map_err(bad)?, "stream_version")?,
        event_id: row.try_get(3).map_err(bad)?,
        event_type: row.try_get(4).map_err(bad)?,
        data,
        recorded_at: row.try_get(6).map_err(bad)?,
        recorded_by: row.try_get(7).map_err(bad)?,
        hash,
    })
}
