//! The on-disk format, version 1 (see `proto-docs/storage-format.md`, kept in sync with this).
//!
//! Segment header (32 bytes):
//! `magic "ILOGSEG\0" | format_version u16 | hash_alg u8 | checksum_alg u8 |
//!  first_position u64 | reserved [8] = 0 | masked crc32c(bytes 0..28) u32`, all little endian.
//!
//! Record: `len u32 | masked crc32c(len) u32 | covered (len bytes) | masked crc32c(covered) u32`
//! where `covered` = `global_position u64 | prev_hash [32] | stream_id [16] | event_id [16] |
//! stream_version u64 | recorded_at_micros i64 | append_index u32 | append_len u32 | json body`.
//! The record's chain hash is `BLAKE3(covered)`; it is the next record's `prev_hash`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{EventRef, RecordedEvent};

pub(crate) const MAGIC: [u8; 8] = *b"ILOGSEG\0";
pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const HASH_BLAKE3: u8 = 1;
pub(crate) const CHECKSUM_CRC32C: u8 = 1;
pub(crate) const HEADER_LEN: usize = 32;
/// `len` and its checksum.
pub(crate) const FRAME_HEAD: usize = 8;
/// Trailing checksum.
pub(crate) const FRAME_TAIL: usize = 4;
/// Fixed-size part of `covered`, before the JSON body.
pub(crate) const FIXED: usize = 8 + 32 + 16 + 16 + 8 + 8 + 4 + 4;
/// Upper bound of `len`, checked before anything is allocated for a record.
pub(crate) const MAX_COVERED: usize = 32 << 20;

/// LevelDB-style CRC masking: a run of zero bytes never carries a valid checksum.
pub(crate) fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn masked_crc(bytes: &[u8]) -> u32 {
    mask(crc32c::crc32c(bytes))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

fn arr32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

pub(crate) fn encode_header(first_position: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10] = HASH_BLAKE3;
    h[11] = CHECKSUM_CRC32C;
    h[12..20].copy_from_slice(&first_position.to_le_bytes());
    let crc = masked_crc(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parses a segment header; returns its first position or why it is unusable.
pub(crate) fn parse_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < HEADER_LEN {
        return Err(format!("segment header truncated ({} bytes)", h.len()));
    }
    if h[0..8] != MAGIC {
        return Err("not a segment file (bad magic)".into());
    }
    if masked_crc(&h[0..28]) != u32_at(h, 28) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version > FORMAT_VERSION {
        return Err(format!(
            "segment format version {version} is newer than this build supports ({FORMAT_VERSION})"
        ));
    }
    if version == 0 {
        return Err("segment format version 0 is invalid".into());
    }
    if h[10] != HASH_BLAKE3 || h[11] != CHECKSUM_CRC32C {
        return Err(format!(
            "unknown hash/checksum algorithm ({}, {})",
            h[10], h[11]
        ));
    }
    Ok(u64_at(h, 12))
}

/// Fixed fields of one record: what its chain hash covers before the body.
pub(crate) type RecordMeta = crate::chain::CoveredHead;

/// Why a record whose `recorded_at` no date can hold is refused.
pub(crate) const RECORDED_AT_OUT_OF_RANGE: &str = "recorded_at out of range";

impl RecordMeta {
    /// `recorded_at` as a time; `None` when no date can hold it (a crafted record).
    pub(crate) fn recorded_at_time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_micros(self.recorded_at)
    }
}

#[derive(Deserialize)]
struct BodyBorrowed<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    recorded_by: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Size of the encoded record, for batch accounting and bounds checks.
// The overhead the store crate publishes is this estimate's.
const _: () = assert!(crate::RECORD_OVERHEAD == FRAME_HEAD + FIXED + FRAME_TAIL + 40);

pub(crate) fn encoded_len_estimate(event_type: &str, recorded_by: &str, data: &RawValue) -> usize {
    FRAME_HEAD + FIXED + FRAME_TAIL + 40 + event_type.len() + recorded_by.len() + data.get().len()
}

/// Appends one record to `out`; returns its chain hash.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    meta: &RecordMeta,
    event_type: &str,
    recorded_by: &str,
    data: &RawValue,
) -> Result<[u8; 32], String> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEAD]);
    let covered_start = out.len();
    if let Err(e) = crate::chain::write_covered(out, meta, event_type, recorded_by, data) {
        out.truncate(start);
        return Err(e.to_string());
    }
    let covered_len = out.len() - covered_start;
    if covered_len > MAX_COVERED {
        out.truncate(start);
        return Err(format!(
            "event too large ({covered_len} bytes, at most {MAX_COVERED})"
        ));
    }
    let covered = &out[covered_start..];
    let crc = masked_crc(covered);
    let hash = *blake3::hash(covered).as_bytes();
    out.extend_from_slice(&crc.to_le_bytes());
    let len = (covered_len as u32).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&masked_crc(&len).to_le_bytes());
    Ok(hash)
}

/// One record, borrowed from a buffer, with its checksums verified.
pub(crate) struct RecordView<'a> {
    pub meta: RecordMeta,
    pub json: &'a [u8],
    pub covered: &'a [u8],
    /// Bytes the whole record takes in the file.
    pub total_len: usize,
}

#[derive(Debug)]
pub(crate) enum FrameError {
    /// The buffer ends before the record does.
    Incomplete,
    /// The bytes are not a valid record.
    Bad(&'static str),
}

/// Whether `tail` (from a record's start to the end of the file) is one record whose body and
/// trailing checksum are intact although its frame head is not: damage to a complete record,
/// not a write cut short.
pub(crate) fn intact_body_to_end(tail: &[u8]) -> bool {
    if tail.len() < FRAME_HEAD + FIXED + FRAME_TAIL {
        return false;
    }
    let end = tail.len() - FRAME_TAIL;
    masked_crc(&tail[FRAME_HEAD..end]) == u32_at(tail, end)
}

/// Whether `buf` starts with a valid frame head (`len` with its checksum, within bounds).
pub(crate) fn frame_head_ok(buf: &[u8]) -> bool {
    buf.len() >= FRAME_HEAD
        && masked_crc(&buf[0..4]) == u32_at(buf, 4)
        && (FIXED..=MAX_COVERED).contains(&(u32_at(buf, 0) as usize))
}

/// Parses the record at the start of `buf`, checking both checksums and the length bound.
pub(crate) fn parse_record(buf: &[u8]) -> Result<RecordView<'_>, FrameError> {
    if buf.len() < FRAME_HEAD {
        return Err(FrameError::Incomplete);
    }
    if masked_crc(&buf[0..4]) != u32_at(buf, 4) {
        return Err(FrameError::Bad("length checksum mismatch"));
    }
    let len = u32_at(buf, 0) as usize;
    if !(FIXED..=MAX_COVERED).contains(&len) {
        return Err(FrameError::Bad("record length out of bounds"));
    }
    let total_len = FRAME_HEAD + len + FRAME_TAIL;
    if buf.len() < total_len {
        return Err(FrameError::Incomplete);
    }
    let covered = &buf[FRAME_HEAD..FRAME_HEAD + len];
    if masked_crc(covered) != u32_at(buf, FRAME_HEAD + len) {
        return Err(FrameError::Bad("record checksum mismatch"));
    }
    let c = covered;
    let meta = RecordMeta {
        position: u64_at(c, 0),
        prev_hash: arr32(c, 8),
        stream_id: Uuid::from_bytes(arr16(c, 40)),
        event_id: Uuid::from_bytes(arr16(c, 56)),
        stream_version: u64_at(c, 72),
        recorded_at: u64_at(c, 80) as i64,
        append_index: u32_at(c, 88),
        append_len: u32_at(c, 92),
    };
    Ok(RecordView {
        meta,
        json: &c[FIXED..],
        covered,
        total_len,
    })
}

impl RecordView<'_> {
    pub(crate) fn hash(&self) -> [u8; 32] {
        *blake3::hash(self.covered).as_bytes()
    }

    /// Decodes the JSON body into a full event.
    pub(crate) fn to_event(&self, hash: [u8; 32]) -> Result<RecordedEvent, String> {
        self.with_event(hash, |e| e.to_recorded())
    }

    /// Decodes the JSON body and hands the event, borrowed from the record, to `f`.
    pub(crate) fn with_event<T>(
        &self,
        hash: [u8; 32],
        f: impl FnOnce(EventRef<'_>) -> T,
    ) -> Result<T, String> {
        let body = match fast_body(self.json) {
            Some(body) => body,
            None => {
                serde_json::from_slice(self.json).map_err(|e| format!("bad record body: {e}"))?
            }
        };
        let recorded_at = self
            .meta
            .recorded_at_time()
            .ok_or_else(|| RECORDED_AT_OUT_OF_RANGE.to_string())?;
        Ok(f(EventRef {
            global_position: self.meta.position,
            stream_id: self.meta.stream_id,
            stream_version: self.meta.stream_version,
            event_id: self.meta.event_id,
            event_type: &body.event_type,
            data: body.data,
            recorded_at,
            recorded_by: &body.recorded_by,
            hash,
        }))
    }
}

/// A JSON string starting at `b[0] == '"'`: its value (borrowed unless it has escapes) and
/// the bytes it took.
fn json_string(b: &[u8]) -> Option<(Cow<'_, str>, usize)> {
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let raw = &b[..=i];
                let value = if escaped {
                    Cow::Owned(serde_json::from_slice::<String>(raw).ok()?)
                } else {
                    let inner = std::str::from_utf8(&raw[1..i]).ok()?;
                    if inner.bytes().any(|c| c < 0x20) {
                        return None;
                    }
                    Cow::Borrowed(inner)
                };
                return Some((value, i + 1));
            }
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Decodes the body as this writer lays it out (`{"type":..,"recorded_by":..,"data":..}`,
/// compact) without a general JSON parse of the envelope; `None` for any other layout, which
/// the caller then hands to serde. Only `data` is validated as JSON (`RawValue` requires it).
fn fast_body(json: &[u8]) -> Option<BodyBorrowed<'_>> {
    let rest = json.strip_prefix(br#"{"type":"#)?;
    let (event_type, used) = json_string(rest)?;
    let rest = rest[used..].strip_prefix(br#","recorded_by":"#)?;
    let (recorded_by, used) = json_string(rest)?;
    let rest = rest[used..].strip_prefix(br#","data":"#)?;
    let data = rest.strip_suffix(b"}")?;
    let data = std::str::from_utf8(data).ok()?;
    let data = serde_json::from_str::<&RawValue>(data).ok()?;
    Some(BodyBorrowed {
        event_type,
        recorded_by,
        data,
    })
}

/// Fuzzing entry point: decodes arbitrary bytes as a sequence of records; must never panic.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) -> usize {
    let mut at = if parse_header(bytes).is_ok() {
        HEADER_LEN
    } else {
        0
    };
    let mut n = 0;
    while let Ok(v) = parse_record(&bytes[at..]) {
        let _ = v.to_event(v.hash());
        at += v.total_len;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body as records hold it: what `write_covered` writes after the fixed fields.
    fn encode_body(event_type: &str, recorded_by: &str, data: &str) -> Vec<u8> {
        let data = RawValue::from_string(data.to_string()).unwrap();
        let head = RecordMeta {
            position: 1,
            prev_hash: [0; 32],
            stream_id: Uuid::nil(),
            event_id: Uuid::nil(),
            stream_version: 1,
            recorded_at: 0,
            append_index: 0,
            append_len: 1,
        };
        let mut covered = Vec::new();
        crate::chain::write_covered(&mut covered, &head, event_type, recorded_by, &data).unwrap();
        covered.split_off(FIXED)
    }

    #[test]
    fn fast_body_agrees_with_serde() {
        let cases = [
            ("IncidentReported", "alice", r#"{"a":1}"#),
            ("T\"q\\", "bob \u{1}\n\t", r#"[1,"}",{"x":"\"}"}]"#),
            ("Харків", "日本", r#""just a string""#),
            ("", "", "null"),
            ("x", "y", r#"{"data":{"type":"z"},"recorded_by":"w"}"#),
        ];
        for (t, r, d) in cases {
            let body = encode_body(t, r, d);
            let fast = fast_body(&body).expect("our own layout decodes");
            let slow: BodyBorrowed = serde_json::from_slice(&body).unwrap();
            assert_eq!(fast.event_type, t);
            assert_eq!(fast.recorded_by, r);
            assert_eq!(fast.event_type, slow.event_type);
            assert_eq!(fast.recorded_by, slow.recorded_by);
            assert_eq!(fast.data.get(), slow.data.get());
            assert_eq!(fast.data.get(), d);
        }
        // Other layouts fall back to serde.
        assert!(fast_body(br#"{"recorded_by":"a","type":"b","data":1}"#).is_none());
        assert!(fast_body(br#"{"type":"a","recorded_by":"b","data":1,"x":2}"#).is_none());
        assert!(fast_body(br#"{"type":"a","recorded_by":"b","data":}"#).is_none());
    }

    #[test]
    fn record_roundtrip_and_checks() {
        let meta = RecordMeta {
            position: 7,
            prev_hash: [3; 32],
            stream_id: Uuid::from_u128(1),
            event_id: Uuid::from_u128(2),
            stream_version: 4,
            recorded_at: 1_700_000_000_000_000,
            append_index: 1,
            append_len: 2,
        };
        let data = RawValue::from_string(r#"{"k":[1,2]}"#.into()).unwrap();
        let mut buf = Vec::new();
        let hash = encode_record(&mut buf, &meta, "T", "me", &data).unwrap();
        let v = parse_record(&buf).unwrap();
        assert_eq!(v.meta, meta);
        assert_eq!(v.total_len, buf.len());
        assert_eq!(v.hash(), hash);
        let e = v.to_event(hash).unwrap();
        assert_eq!(
            (e.event_type.as_str(), e.recorded_by.as_str(), e.data.get()),
            ("T", "me", r#"{"k":[1,2]}"#)
        );
        // Every strict prefix is incomplete; every single-byte change is rejected.
        for cut in 0..buf.len() {
            assert!(matches!(
                parse_record(&buf[..cut]),
                Err(FrameError::Incomplete)
            ));
        }
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 1;
            assert!(parse_record(&b).is_err(), "flip at {i} accepted");
        }
        // Zeroes never validate.
        assert!(matches!(parse_record(&[0u8; 200]), Err(FrameError::Bad(_))));
        // The header round-trips and a newer version is refused.
        let mut h = encode_header(42);
        assert_eq!(parse_header(&h), Ok(42));
        h[8] = 9;
        assert!(parse_header(&h).is_err());
    }
}
