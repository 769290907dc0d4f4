//! Restoring a log from its recorded events (an export, or another backend's log): the
//! events are regrouped into the appends that recorded them, every chain hash is checked on
//! the way, and [`EventStore::restore`](crate::EventStore::restore) writes them again with
//! their positions, times and hashes unchanged.
//!
//! An event's hash covers its index in its append and the append's length
//! (proto-docs/storage-format.md), which a recorded event does not carry: the append's
//! length is the one under which its first event's hash comes out right. A shorter guess
//! cannot match (that would be a BLAKE3 collision), so the events of one append are collected
//! until the first one's hash matches, and each further event must then chain.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::chain::{chain_hash, RecordFields};
use crate::{AppendRequest, ExpectedVersion, Head, NewEvent, RecordedEvent, StoreError, StreamId};

/// One append as another store recorded it.
#[derive(Clone, Debug)]
pub struct RecordedAppend {
    /// The append; `expected_version` is `Exact`: the stream's version before it.
    pub request: AppendRequest,
    /// When it was recorded (every event of an append shares the time).
    pub recorded_at: DateTime<Utc>,
    /// Global position of its first event.
    pub first_position: u64,
    /// Chain hash of its last event: the restored record must come out with it.
    pub last_hash: [u8; 32],
}

impl RecordedAppend {
    /// Global position of its last event.
    pub fn last_position(&self) -> u64 {
        self.first_position + self.request.events.len() as u64 - 1
    }
}

/// Regroups a log's recorded events, handed in in global order from the log's start, into
/// the appends that recorded them. Besides the hashes (which anyone can recompute for a forged
/// log) it checks what a store would refuse half-way through a restore: every stream's
/// versions run 1, 2, 3, ..., no event id comes twice, `recorded_at` never decreases. So a
/// file it accepts whole restores whole into an empty store.
#[derive(Debug)]
pub struct Regrouper {
    /// Position and hash of the last event of the last complete append.
    head: Head,
    last_recorded_at: Option<DateTime<Utc>>,
    /// The events of an append whose length is not known yet.
    pending: Vec<RecordedEvent>,
    /// Each stream's version after the complete appends.
    versions: HashMap<StreamId, u64>,
    /// Every event id seen (pending ones included).
    ids: HashSet<Uuid>,
    /// Bytes of the pending events (the stores' limit on one append).
    pending_bytes: usize,
}

fn invalid(reason: String) -> StoreError {
    StoreError::InvalidInput(reason)
}

fn hash_as(prev: &[u8; 32], e: &RecordedEvent, index: usize, len: usize) -> [u8; 32] {
    chain_hash(prev, &RecordFields::of(e, index as u32, len as u32))
}

/// Whether `event`, chained after `prev` (the hash of the event before it in the log), is the
/// last event of its append, so that a log cut after it holds whole appends (what
/// [`Regrouper`] and `restore` need). Its hash tells: each index the event could have in its
/// append is tried (an append's events are consecutive versions of one stream, so fewer than
/// its `stream_version`).
pub fn ends_an_append(prev: &[u8; 32], event: &RecordedEvent) -> bool {
    let most = event.stream_version.min(event.global_position);
    (0..most).any(|i| {
        let i = i as usize;
        hash_as(prev, event, i, i + 1) == event.hash
    })
}

impl Default for Regrouper {
    fn default() -> Regrouper {
        Regrouper::new()
    }
}

impl Regrouper {
    /// Starts at the beginning of a log.
    pub fn new() -> Regrouper {
        Regrouper {
            head: Head::default(),
            last_recorded_at: None,
            pending: Vec::new(),
            versions: HashMap::new(),
            ids: HashSet::new(),
            pending_bytes: 0,
        }
    }

    /// Takes the next event; returns its append once that is complete. An event that cannot
    /// follow (a gap in positions, a hash that does not chain) is an `InvalidInput` error.
    pub fn push(&mut self, event: RecordedEvent) -> Result<Option<RecordedAppend>, StoreError> {
        let p = event.global_position;
        let expected = self.head.position + self.pending.len() as u64 + 1;
        if p != expected {
            return Err(invalid(format!(
                "event at position {p} where position {expected} was expected: a restore needs every event of the log, in order"
            )));
        }
        if let (Some(first), Some(last)) = (self.pending.first(), self.pending.last()) {
            let same_append = event.stream_id == first.stream_id
                && event.stream_version == last.stream_version + 1
                && event.recorded_at == first.recorded_at
                && event.recorded_by == first.recorded_by;
            if !same_append {
                return Err(self.no_append_fits());
            }
        } else {
            let before = self.versions.get(&event.stream_id).copied().unwrap_or(0);
            if event.stream_version != before + 1 {
                return Err(invalid(format!(
                    "event at position {p} has stream_version {}, but its stream is at version {before} before it",
                    event.stream_version
                )));
            }
            if self.last_recorded_at.is_some_and(|t| event.recorded_at < t) {
                return Err(invalid(format!(
                    "event at position {p} was recorded before the event at position {}: recorded_at never decreases along a log",
                    p - 1
                )));
            }
        }
        let size = event.event_type.len() + event.data.get().len() + event.recorded_by.len();
        if size > crate::MAX_EVENT_BYTES {
            return Err(invalid(format!(
                "event at position {p} is too large ({size} bytes, at most {})",
                crate::MAX_EVENT_BYTES
            )));
        }
        // Counted as the stores count an append: with each record's framing.
        let framed = size + crate::RECORD_OVERHEAD;
        self.pending_bytes = if self.pending.is_empty() {
            framed
        } else {
            self.pending_bytes + framed
        };
        if self.pending_bytes > crate::MAX_APPEND_BYTES {
            return Err(invalid(format!(
                "the append at position {} is too large (more than {} bytes)",
                self.pending.first().map_or(p, |e| e.global_position),
                crate::MAX_APPEND_BYTES
            )));
        }
        if !self.ids.insert(event.event_id) {
            return Err(invalid(format!(
                "event id {} at position {p} appears earlier in the log",
                event.event_id
            )));
        }
        // Is this event the last of its append? Then its hash comes out right with its index
        // and the length that makes it the last. Only this event is hashed, so an append
        // costs two hashes per event, however long.
        let index = self.pending.len();
        let prev_given = self.pending.last().map_or(self.head.hash, |e| e.hash);
        let last = hash_as(&prev_given, &event, index, index + 1) == event.hash;
        self.pending.push(event);
        if !last {
            return Ok(None);
        }
        let len = self.pending.len();
        // The earlier events, chained from the head with this length. The last one was
        // checked above against the hash given before it, which this makes the chain's.
        let mut prev = self.head.hash;
        for (i, e) in self.pending[..len - 1].iter().enumerate() {
            if hash_as(&prev, e, i, len) != e.hash {
                return Err(invalid(format!(
                    "the hash of the event at position {} does not chain: the event or one before it was changed",
                    e.global_position
                )));
            }
            prev = e.hash;
        }
        let prev = self.pending[len - 1].hash;
        let mut events = std::mem::take(&mut self.pending).into_iter();
        let Some(first) = events.next() else {
            return Ok(None);
        };
        let first_position = first.global_position;
        let first_version = first.stream_version;
        let recorded_at = first.recorded_at;
        let request = AppendRequest {
            stream_id: first.stream_id,
            expected_version: ExpectedVersion::Exact(first_version - 1),
            recorded_by: first.recorded_by.clone(),
            events: std::iter::once(first)
                .chain(events)
                .map(|e| NewEvent {
                    event_id: e.event_id,
                    event_type: e.event_type,
                    data: e.data,
                })
                .collect(),
        };
        self.head = Head {
            position: first_position + len as u64 - 1,
            hash: prev,
        };
        self.last_recorded_at = Some(recorded_at);
        self.versions
            .insert(request.stream_id, first_version + len as u64 - 1);
        let append = RecordedAppend {
            request,
            recorded_at,
            first_position,
            last_hash: prev,
        };
        Ok(Some(append))
    }

    /// Ends the input: the last append must be complete. Returns the head it reaches.
    pub fn finish(&self) -> Result<Head, StoreError> {
        if self.pending.is_empty() {
            Ok(self.head)
        } else {
            Err(self.no_append_fits())
        }
    }

    fn no_append_fits(&self) -> StoreError {
        let p = self.pending.first().map_or(0, |e| e.global_position);
        invalid(format!(
            "the hash of the event at position {p} matches no append it could belong to: the event or one before it was changed, or the log was cut off"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// A log of single-event appends, (stream, version, id) each, with the hashes recomputed:
    /// what a forger can always produce.
    fn forged(events: &[(StreamId, u64, Uuid)]) -> Vec<RecordedEvent> {
        let mut prev = [0u8; 32];
        let at = DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap_or_default();
        events
            .iter()
            .enumerate()
            .map(|(i, &(stream_id, stream_version, event_id))| {
                let mut e = RecordedEvent {
                    global_position: i as u64 + 1,
                    stream_id,
                    stream_version,
                    event_id,
                    event_type: "Thing".into(),
                    data: RawValue::from_string("{}".into()).unwrap(),
                    recorded_at: at,
                    recorded_by: "forger".into(),
                    hash: [0; 32],
                };
                e.hash = hash_as(&prev, &e, 0, 1);
                prev = e.hash;
                e
            })
            .collect()
    }

    fn regroup(events: Vec<RecordedEvent>) -> Result<usize, StoreError> {
        let mut r = Regrouper::new();
        let mut appends = 0;
        for e in events {
            appends += usize::from(r.push(e)?.is_some());
        }
        r.finish()?;
        Ok(appends)
    }

    #[test]
    fn a_forged_chain_must_still_be_a_log_a_store_could_have_written() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let good = [
            (a, 1, ids[0]),
            (b, 1, ids[1]),
            (a, 2, ids[2]),
            (b, 2, ids[3]),
        ];
        assert_eq!(regroup(forged(&good)).unwrap(), 4);

        let skipped = [(a, 1, ids[0]), (a, 3, ids[1])];
        let err = regroup(forged(&skipped)).unwrap_err().to_string();
        assert!(err.contains("stream_version 3"), "{err}");
        let zero = [(a, 0, ids[0])];
        assert!(regroup(forged(&zero)).is_err());
        let again = [(a, 1, ids[0]), (b, 1, ids[0])];
        let err = regroup(forged(&again)).unwrap_err().to_string();
        assert!(err.contains("appears earlier"), "{err}");
        let mut back_in_time = forged(&good);
        back_in_time[2].recorded_at -= chrono::Duration::seconds(1);
        // Re-chain from the changed event on, as a forger would.
        let mut prev = back_in_time[1].hash;
        for e in &mut back_in_time[2..] {
            e.hash = hash_as(&prev, e, 0, 1);
            prev = e.hash;
        }
        let err = regroup(back_in_time).unwrap_err().to_string();
        assert!(err.contains("recorded before"), "{err}");
    }

    /// The ends of appends are told from the hashes alone: a log of appends of 1, 3 and 2
    /// events (stream a: one, then three; stream b: two).
    #[test]
    fn an_append_s_last_event_is_known_by_its_hash() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let appends: [(StreamId, u64, usize); 3] = [(a, 1, 1), (a, 2, 3), (b, 1, 2)];
        let at = DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap_or_default();
        let mut log = Vec::new();
        let mut prev = [0u8; 32];
        for (stream_id, first_version, len) in appends {
            for i in 0..len {
                let mut e = RecordedEvent {
                    global_position: log.len() as u64 + 1,
                    stream_id,
                    stream_version: first_version + i as u64,
                    event_id: Uuid::new_v4(),
                    event_type: "Thing".into(),
                    data: RawValue::from_string("{}".into()).unwrap(),
                    recorded_at: at,
                    recorded_by: "desk".into(),
                    hash: [0; 32],
                };
                e.hash = hash_as(&prev, &e, i, len);
                prev = e.hash;
                log.push(e);
            }
        }
        let mut prev = [0u8; 32];
        let mut ends = Vec::new();
        for e in &log {
            ends.push(ends_an_append(&prev, e));
            prev = e.hash;
        }
        assert_eq!(ends, [true, false, false, true, false, true]);
        assert_eq!(regroup(log).unwrap(), 3);
    }
}
