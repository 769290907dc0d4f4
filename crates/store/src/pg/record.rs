//! Rows <-> recorded events, and the hash chain.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_postgres::Row;

use crate::chain::{chain_hash, RecordFields};
use crate::{RecordedEvent, StoreError};

/// A recorded event with where it sits in its append (part of what its hash covers).
pub(crate) struct StoredEvent {
    pub event: RecordedEvent,
    pub append_index: u32,
    pub append_len: u32,
}

impl StoredEvent {
    /// The chain hash this record must have after `prev`.
    pub(crate) fn expected_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        chain_hash(
            prev,
            &RecordFields::of(&self.event, self.append_index, self.append_len),
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

/// A position, version or count read from the database (`what`, in the row at `position`): a
/// negative one is damage, named as such, never taken as 0.
pub(crate) fn to_u64(position: i64, v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(position, format!("negative {what} {v}")))
}

/// Decodes a row selected with the event columns of `conn`.
pub(crate) fn from_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    stored_from_row(row).map(|s| s.event)
}

/// Decodes a row selected with the event columns of `conn`, append bounds included.
pub(crate) fn stored_from_row(row: &Row) -> Result<StoredEvent, StoreError> {
    let position: i64 = row
        .try_get(0)
        .map_err(|e| corrupt(0, format!("undecodable row: {e}")))?;
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
    // Checked: the bounds of a row edited by hand can be anything.
    let index = position.checked_sub(append_first).map(u32::try_from);
    let len = append_last
        .checked_sub(append_first)
        .and_then(|d| d.checked_add(1))
        .map(u32::try_from);
    let (append_index, append_len) = match (index, len) {
        (Some(Ok(i)), Some(Ok(n))) if i < n => (i, n),
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
