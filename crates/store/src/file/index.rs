//! In-memory indexes of the durable log, rebuilt by a sequential scan on open.
//!
//! Per event: its offset in its segment (u32), the previous
//! position of its stream (u32, a backwards linked list), and one entry in the event-id table
//! keyed by 64 bits folded from the id (a colliding id goes to a small exact table). Positions
//! are stored as u32 internally: the file store holds at most `u32::MAX` events.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use crate::Head;

/// One in this many positions keeps its `recorded_at` in memory.
pub(crate) const RECORDED_AT_STRIDE: u32 = 64;

/// Largest global position the file store accepts.
pub(crate) const MAX_POSITION: u64 = u32::MAX as u64;

/// A fast keyed hasher for random-looking ids (SipHash would dominate open time). The key is
/// random per process so clients cannot aim at one bucket.
#[derive(Clone, Copy)]
pub(crate) struct MixState(u64);

impl Default for MixState {
    fn default() -> Self {
        MixState(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

pub(crate) struct MixHasher {
    state: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        mix(self.state)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.state = mix(self.state ^ u64::from_le_bytes(a));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.state = mix(self.state ^ n);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl BuildHasher for MixState {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher { state: self.0 }
    }
}

/// 64 bits folded from an event id, stored as two u32 so a table entry is 12 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IdKey([u32; 2]);

impl IdKey {
    /// Keyed by the process's random `seed`: with a fixed fold (`hi ^ rotl(lo, 32)`) a client
    /// could make ids that share a key with any recorded one at will, and each such id costs a
    /// read of the log to tell them apart, on the writer's path. Ids with one `lo` never share
    /// a key (the fold is a bijection of `hi`), and which `lo`s pair up depends on the seed.
    fn of(id: &Uuid, seed: u64) -> IdKey {
        let (hi, lo) = id.as_u64_pair();
        let k = hi ^ mix(lo ^ seed);
        IdKey([k as u32, (k >> 32) as u32])
    }
}

impl std::hash::Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Event id -> position: a 12-byte entry keyed by 64 bits of the id; an id whose key is taken
/// goes to a small exact table. A hit in the main table is a candidate to confirm.
#[derive(Default)]
pub(crate) struct IdTable {
    ids: HashMap<IdKey, u32, MixState>,
    overflow: HashMap<Uuid, u32, MixState>,
}

impl IdTable {
    pub(crate) fn with_capacity(n: usize) -> IdTable {
        IdTable {
            ids: HashMap::with_capacity_and_hasher(n, MixState::default()),
            overflow: HashMap::default(),
        }
    }

    pub(crate) fn insert(&mut self, event_id: Uuid, position: u32) {
        match self.ids.entry(IdKey::of(&event_id, self.ids.hasher().0)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(event_id, position);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(position);
            }
        }
    }

    fn lookup(&self, id: &Uuid) -> IdLookup {
        if let Some(p) = self.overflow.get(id) {
            return IdLookup::Exact(u64::from(*p));
        }
        match self.ids.get(&IdKey::of(id, self.ids.hasher().0)) {
            Some(p) => IdLookup::Candidate(u64::from(*p)),
            None => IdLookup::Absent,
        }
    }

    fn memory_bytes(&self) -> usize {
        table(&self.ids) + table(&self.overflow)
    }
}

/// Bytes of a hash table, from its capacity (hashbrown: power-of-two buckets at 7/8 load,
/// one control byte per bucket).
fn table<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    let cap = m.capacity();
    let buckets = if cap == 0 {
        0
    } else if cap < 8 {
        (cap + 1).next_power_of_two()
    } else {
        (cap * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamMeta {
    pub last: u32,
    pub version: u32,
}

pub(crate) struct Segment {
    pub first_position: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes of the file that hold durable records (header included).
    pub len: u64,
}

/// Result of an event-id lookup.
pub(crate) enum IdLookup {
    Absent,
    /// Certainly this position.
    Exact(u64),
    /// This position if its record carries the id (64-bit key match only).
    Candidate(u64),
}

pub(crate) struct Index {
    pub segments: Vec<Segment>,
    offsets: Vec<u32>,
    /// `recorded_at` of every `RECORDED_AT_STRIDE`-th position (1, 1 + stride, ...); the rest is
    /// read from the records when `position_at` needs it.
    recorded_at: Vec<i64>,
    stream_prev: Vec<u32>,
    streams: HashMap<Uuid, StreamMeta, MixState>,
    pub ids: IdTable,
    pub head: Head,
    pub last_recorded_at: i64,
}

/// Where one record lives.
#[derive(Clone)]
pub(crate) struct Location {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            segments: Vec::new(),
            offsets: Vec::new(),
            recorded_at: Vec::new(),
            stream_prev: Vec::new(),
            streams: HashMap::default(),
            ids: IdTable::default(),
            head: Head::default(),
            last_recorded_at: i64::MIN,
        }
    }

    /// Number of durable events (= the durable head position).
    pub(crate) fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    pub(crate) fn stream_version(&self, id: &Uuid) -> u64 {
        self.streams.get(id).map_or(0, |s| u64::from(s.version))
    }

    pub(crate) fn lookup_id(&self, id: &Uuid) -> IdLookup {
        self.ids.lookup(id)
    }

    /// Adds the next event (position `len() + 1`), which lives in the last segment.
    pub(crate) fn push(&mut self, offset: u32, recorded_at: i64, stream_id: Uuid, event_id: Uuid) {
        let position = self.push_without_id(offset, recorded_at, stream_id).0;
        self.ids.insert(event_id, position);
    }

    /// [`Index::push`] minus the event-id table (recovery fills that one on another thread).
    /// Returns the position and the stream version given to the event.
    pub(crate) fn push_without_id(
        &mut self,
        offset: u32,
        recorded_at: i64,
        stream_id: Uuid,
    ) -> (u32, u32) {
        let position = self.offsets.len() as u32 + 1;
        self.offsets.push(offset);
        if (position - 1).is_multiple_of(RECORDED_AT_STRIDE) {
            self.recorded_at.push(recorded_at);
        }
        self.last_recorded_at = self.last_recorded_at.max(recorded_at);
        let entry = self.streams.entry(stream_id).or_insert(StreamMeta {
            last: 0,
            version: 0,
        });
        self.stream_prev.push(entry.last);
        entry.last = position;
        entry.version += 1;
        (position, entry.version)
    }

    fn segment_of(&self, position: u64) -> usize {
        self.segments
            .partition_point(|s| s.first_position <= position)
            .saturating_sub(1)
    }

    /// Location of the durable record at `position` (1..=len()).
    pub(crate) fn locate(&self, position: u64) -> Option<Location> {
        if position == 0 || position > self.len() {
            return None;
        }
        let (seg, start, end) = self.span(position, position)?;
        Some(Location {
            file: self.segments[seg].file.clone(),
            path: self.segments[seg].path.clone(),
            start,
            end,
        })
    }

    /// Segment index and byte range of positions `from..=to`, which must share a segment.
    fn span(&self, from: u64, to: u64) -> Option<(usize, u64, u64)> {
        let seg = self.segment_of(from);
        let segment = self.segments.get(seg)?;
        let start = u64::from(*self.offsets.get(from as usize - 1)?);
        let next_in_same = to < self.len()
            && self
                .segments
                .get(seg + 1)
                .is_none_or(|n| n.first_position > to + 1);
        let end = if next_in_same {
            u64::from(self.offsets[to as usize])
        } else {
            segment.len
        };
        Some((seg, start, end))
    }

    /// Byte ranges covering positions `from..=to`, one per segment touched.
    pub(crate) fn ranges(&self, from: u64, to: u64) -> Vec<(Location, u64, u64)> {
        let mut out = Vec::new();
        let mut p = from;
        while p <= to && p <= self.len() {
            let seg = self.segment_of(p);
            let seg_last = match self.segments.get(seg + 1) {
                Some(n) => to.min(n.first_position - 1),
                None => to,
            };
            let Some((seg, start, end)) = self.span(p, seg_last) else {
                break;
            };
            let s = &self.segments[seg];
            out.push((
                Location {
                    file: s.file.clone(),
                    path: s.path.clone(),
                    start,
                    end,
                },
                p,
                seg_last,
            ));
            p = seg_last + 1;
        }
        out
    }

    /// Positions of the stream's versions `after + 1 ..= after + limit`, in order. The chain
    /// runs backwards from the last version, so this walks the versions after `after` only.
    pub(crate) fn stream_positions_after(&self, id: &Uuid, after: u64, limit: usize) -> Vec<u64> {
        let Some(meta) = self.streams.get(id) else {
            return Vec::new();
        };
        let version = u64::from(meta.version);
        if after >= version || limit == 0 {
            return Vec::new();
        }
        let last_wanted = after.saturating_add(limit as u64).min(version);
        let mut out = Vec::with_capacity((last_wanted - after) as usize);
        let mut p = meta.last;
        let mut v = version;
        while p != 0 && v > after {
            if v <= last_wanted {
                out.push(u64::from(p));
            }
            p = self.stream_prev[p as usize - 1];
            v -= 1;
        }
        out.reverse();
        out
    }

    /// Narrows "last position with `recorded_at <= micros`" to a range: `None` when no event
    /// qualifies, else `(lo, hi)` where `lo` qualifies, `hi + 1` does not (or is past the head),
    /// and the answer is in `lo..=hi` (at most `RECORDED_AT_STRIDE` positions).
    pub(crate) fn position_at_range(&self, micros: i64) -> Option<(u64, u64)> {
        let k = self.recorded_at.partition_point(|t| *t <= micros) as u64;
        if k == 0 {
            return None;
        }
        let stride = u64::from(RECORDED_AT_STRIDE);
        let lo = (k - 1) * stride + 1;
        let hi = (k * stride).min(self.len());
        Some((lo, hi))
    }

    /// Bytes held by the index structures, from their capacities.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.offsets.capacity() * 4
            + self.recorded_at.capacity() * 8
            + self.stream_prev.capacity() * 4
            + table(&self.streams)
            + self.ids.memory_bytes()
            + self.segments.capacity() * std::mem::size_of::<Segment>()
    }

    /// Pre-sizes the per-event vectors (open knows roughly how many events it will load).
    pub(crate) fn reserve(&mut self, events: usize) {
        self.offsets.reserve(events);
        self.recorded_at
            .reserve(events / RECORDED_AT_STRIDE as usize + 1);
        self.stream_prev.reserve(events);
    }

    pub(crate) fn shrink(&mut self) {
        self.offsets.shrink_to_fit();
        self.recorded_at.shrink_to_fit();
        self.stream_prev.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids made to share a key under a fixed fold (`hi ^ rotl(lo, 32)`) do not share one under
    /// the process's keyed fold; ids that do share a key (made here with the seed, which a
    /// client does not know) are still told apart: the later one exactly.
    #[test]
    fn id_keys_are_keyed_and_collisions_stay_exact() {
        let mut table = IdTable::with_capacity(16);
        let seed = table.ids.hasher().0;
        let recorded = Uuid::new_v4();
        let (hi, lo) = recorded.as_u64_pair();
        table.insert(recorded, 1);

        // Aimed at the old fold: same key as `recorded` there, not here.
        let lo2 = lo ^ 0x0123_4567_89ab_cdef;
        let aimed = Uuid::from_u64_pair(hi ^ lo.rotate_left(32) ^ lo2.rotate_left(32), lo2);
        assert!(IdKey::of(&aimed, seed) != IdKey::of(&recorded, seed));
        assert!(matches!(table.lookup(&aimed), IdLookup::Absent));

        // Made with the seed: one key, both ids found.
        let lo3 = lo ^ 0xfedc_ba98_7654_3210;
        let twin = Uuid::from_u64_pair(hi ^ mix(lo ^ seed) ^ mix(lo3 ^ seed), lo3);
        assert!(IdKey::of(&twin, seed) == IdKey::of(&recorded, seed));
        table.insert(twin, 2);
        assert!(matches!(table.lookup(&twin), IdLookup::Exact(2)));
        assert!(matches!(table.lookup(&recorded), IdLookup::Candidate(1)));
    }
}
