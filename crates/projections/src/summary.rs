//! Regional summaries: per-(region, day) buckets that keep their own history, so a summary
//! for any window at any position touches only the buckets of the window.
//!
//! - `Summaries::entries`: every version of every incident's contribution, in creation order,
//!   with the position it was superseded at (an arena; append-only except for stamping
//!   `removed`);
//! - `Bucket::changes`: one record per position that changed the bucket (entry added and/or
//!   removed, as arena indexes);
//! - `Bucket::checkpoints`: the bucket's totals after every `CHECKPOINT_EVERY` (16) changes.
//!
//! Totals at position p = newest checkpoint at or before p + fewer than `CHECKPOINT_EVERY`
//! changes. The live state is the same query at the current position. Days only partly inside
//! a timestamp window, and the min/max `occurred_at`, scan the entries of one bucket.
use std::collections::BTreeMap;

use crate::events::Kind;
use crate::state::{chunk, vec_bytes, Contrib};
use crate::view::{ByKind, CasualtiesView, ClaimCounts, Figure, RegionSummary, StrikeCounts};
use crate::{OccurredAt, Region, Window};

/// Default number of changes of a bucket between two checkpoints of its totals.
pub(crate) const CHECKPOINT_EVERY: usize = 16;
const NONE: u32 = u32::MAX;

/// One version of one incident's contribution to a bucket (created at the position of the
/// change that added it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Position it was superseded at (u64::MAX while live).
    pub(crate) removed: u64,
    /// `occurred_at` in parts (keeps the entry at 72 bytes instead of 80).
    nanos: i64,
    contrib: Contrib,
    kind: Kind,
    timestamp: bool,
}

impl Entry {
    fn occurred_at(&self) -> OccurredAt {
        OccurredAt::from_parts(self.nanos, self.timestamp)
    }
}

#[derive(Clone, Copy, Debug)]
struct Change {
    pos: u64,
    added: u32,
    removed: u32,
}

/// Totals of a set of entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    incidents: u64,
    strikes: [u64; 4],
    killed: [u64; 3],
    injured: [u64; 3],
    civilians: u64,
    children: u64,
    claims: [u64; 4],
}

impl Sums {
    /// `sign` = 1 adds, u64::MAX (i.e. -1 in wrapping arithmetic) subtracts.
    fn add_entry(&mut self, e: &Entry, sign: u64) {
        let m = |x: u32| u64::from(x).wrapping_mul(sign);
        self.incidents = self.incidents.wrapping_add(sign);
        if e.kind.is_strike() {
            let k = e.kind as usize;
            self.strikes[k] = self.strikes[k].wrapping_add(sign);
        }
        for i in 0..3 {
            self.killed[i] = self.killed[i].wrapping_add(m(e.contrib.killed[i]));
            self.injured[i] = self.injured[i].wrapping_add(m(e.contrib.injured[i]));
        }
        self.civilians = self.civilians.wrapping_add(m(e.contrib.civilians));
        self.children = self.children.wrapping_add(m(e.contrib.children));
        for i in 0..4 {
            self.claims[i] = self.claims[i].wrapping_add(m(e.contrib.claims[i]));
        }
    }

    fn add(&mut self, o: &Sums) {
        self.incidents += o.incidents;
        for i in 0..4 {
            self.strikes[i] += o.strikes[i];
            self.claims[i] += o.claims[i];
        }
        for i in 0..3 {
            self.killed[i] += o.killed[i];
            self.injured[i] += o.injured[i];
        }
        self.civilians += o.civilians;
        self.children += o.children;
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Bucket {
    region: u32,
    /// Indexes into `Summaries::entries`.
    changes: Vec<Change>,
    checkpoints: Vec<Sums>,
    /// Totals after the last change (a checkpoint is a copy of them).
    totals: Sums,
}

impl Bucket {
    fn apply_change(entries: &[Entry], s: &mut Sums, c: &Change) {
        if c.removed != NONE {
            s.add_entry(&entries[c.removed as usize], u64::MAX);
        }
        if c.added != NONE {
            s.add_entry(&entries[c.added as usize], 1);
        }
    }

    fn push_change(&mut self, c: Change, every: usize, entries: &[Entry]) {
        // Both entries were just written, so this reads cached memory.
        Self::apply_change(entries, &mut self.totals, &c);
        self.changes.push(c);
        if self.changes.len().is_multiple_of(every) {
            self.checkpoints.push(self.totals);
        }
    }

    /// Totals of the whole bucket after position `p`.
    fn sums_at(&self, p: u64, every: usize, entries: &[Entry]) -> Sums {
        let n = self.changes.partition_point(|c| c.pos <= p);
        let k = n / every;
        let mut s = if k > 0 {
            self.checkpoints[k - 1]
        } else {
            Sums::default()
        };
        for c in &self.changes[k * every..n] {
            Self::apply_change(entries, &mut s, c);
        }
        s
    }

    /// Entries live after position `p` (each incident at most once).
    fn live_at<'e>(&'e self, p: u64, entries: &'e [Entry]) -> impl Iterator<Item = &'e Entry> {
        let n = self.changes.partition_point(|c| c.pos <= p);
        self.changes[..n]
            .iter()
            .filter(|c| c.added != NONE)
            .map(move |c| &entries[c.added as usize])
            .filter(move |e| e.removed > p)
    }

    fn scan_sums(&self, p: u64, w: &Window, entries: &[Entry]) -> Sums {
        let mut s = Sums::default();
        for e in self
            .live_at(p, entries)
            .filter(|e| w.contains(e.occurred_at()))
        {
            s.add_entry(e, 1);
        }
        s
    }

    fn min_max(&self, p: u64, w: &Window, entries: &[Entry]) -> Option<(OccurredAt, OccurredAt)> {
        let mut it = self
            .live_at(p, entries)
            .map(Entry::occurred_at)
            .filter(|t| w.contains(*t));
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))))
    }

    pub(crate) fn history_bytes(&self) -> usize {
        vec_bytes(&self.changes) + vec_bytes(&self.checkpoints)
    }
}

/// Where an incident's live entry is (indexes, so updates need no map lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) bucket: u32,
    pub(crate) entry: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct RegionBuckets {
    pub(crate) region: Region,
    /// Position of the first entry ever created in this region.
    pub(crate) first_position: u64,
    /// day -> index in `Summaries::buckets`.
    pub(crate) days: BTreeMap<i32, u32>,
}

/// All regions' buckets.
#[derive(Clone, Debug)]
pub(crate) struct Summaries {
    pub(crate) checkpoint_every: usize,
    /// Every entry version of every bucket, in order of creation: one arena, so buckets never
    /// reallocate large arrays (and the tail being written stays in cache).
    pub(crate) entries: Vec<Entry>,
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) regions: Vec<RegionBuckets>,
    /// code -> index in `regions` (sorted by code, so iteration is in code order).
    pub(crate) index: BTreeMap<&'static str, u32>,
}

impl Default for Summaries {
    fn default() -> Self {
        Summaries::with_checkpoint_every(CHECKPOINT_EVERY)
    }
}

impl Summaries {
    pub(crate) fn with_checkpoint_every(every: usize) -> Self {
        Summaries {
            checkpoint_every: every.max(1),
            entries: Vec::new(),
            buckets: Vec::new(),
            regions: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    fn region_id(&mut self, r: Region, pos: u64) -> u32 {
        if let Some(i) = self.index.get(r.code()) {
            return *i;
        }
        let i = self.regions.len() as u32;
        self.regions.push(RegionBuckets {
            region: r,
            first_position: pos,
            days: BTreeMap::new(),
        });
        self.index.insert(r.code(), i);
        i
    }

    pub(crate) fn entry(&self, l: Link) -> Option<&Entry> {
        self.entries.get(l.entry as usize)
    }

    fn bucket_id(&mut self, r: Region, day: i32, pos: u64) -> u32 {
        let region = self.region_id(r, pos);
        let next = self.buckets.len() as u32;
        let b = *self.regions[region as usize]
            .days
            .entry(day)
            .or_insert(next);
        if b == next {
            self.buckets.push(Bucket {
                region,
                ..Bucket::default()
            });
        }
        b
    }

    /// Replaces an incident's entry (`old`) by `new` at position `pos`; returns the new link.
    /// Does nothing when the contribution is unchanged.
    pub(crate) fn update(
        &mut self,
        pos: u64,
        old: Option<Link>,
        new: Option<(Region, OccurredAt, Kind, Contrib)>,
    ) -> Option<Link> {
        // The common case (casualties, claims, sources): same region and day, so the same
        // bucket; no map lookup at all.
        let mut same_bucket = None;
        if let (Some(l), Some((r, t, k, c))) = (old, new) {
            if let Some(e) = self.entry(l) {
                let b = &self.buckets[l.bucket as usize];
                if self.regions[b.region as usize].region == r && e.occurred_at().day() == t.day() {
                    if e.occurred_at() == t && e.kind == k && e.contrib == c {
                        return old;
                    }
                    same_bucket = Some(l.bucket);
                }
            }
        }
        let new_link = new.map(|(r, t, k, c)| {
            let bucket = match same_bucket {
                Some(b) => b,
                None => self.bucket_id(r, t.day(), pos),
            };
            self.entries.push(Entry {
                removed: u64::MAX,
                nanos: t.nanos(),
                timestamp: !t.is_date(),
                kind: k,
                contrib: c,
            });
            Link {
                bucket,
                // u32 indexes: 4 billion entry versions would need ~300 GB of memory first.
                entry: (self.entries.len() - 1) as u32,
            }
        });
        if let Some(l) = old {
            self.entries[l.entry as usize].removed = pos;
            let b = &mut self.buckets[l.bucket as usize];
            let added = match (same_bucket, new_link) {
                (Some(_), Some(n)) => n.entry,
                _ => NONE,
            };
            b.push_change(
                Change {
                    pos,
                    added,
                    removed: l.entry,
                },
                self.checkpoint_every,
                &self.entries,
            );
        }
        if let Some(n) = new_link.filter(|_| same_bucket.is_none()) {
            self.buckets[n.bucket as usize].push_change(
                Change {
                    pos,
                    added: n.entry,
                    removed: NONE,
                },
                self.checkpoint_every,
                &self.entries,
            );
        }
        new_link
    }

    /// The summary of one region after position `p` (None: nothing recorded there by then).
    pub(crate) fn summary(&self, region: &Region, w: &Window, p: u64) -> Option<RegionSummary> {
        let id = *self.index.get(region.code())?;
        let rb = &self.regions[id as usize];
        if rb.first_position > p {
            return None;
        }
        Some(rb.summary(self, w, p))
    }

    pub(crate) fn history_bytes(&self) -> usize {
        // BTreeMap nodes: about 16 bytes of key and value per day plus node overhead.
        let maps: usize = self.regions.iter().map(|r| r.days.len() * 24).sum();
        // The arena's slack beyond its length is address space the process never touched.
        chunk(self.entries.len() * std::mem::size_of::<Entry>())
            + vec_bytes(&self.buckets)
            + self
                .buckets
                .iter()
                .map(Bucket::history_bytes)
                .sum::<usize>()
            + maps
    }
}

impl RegionBuckets {
    pub(crate) fn summary(&self, all: &Summaries, w: &Window, p: u64) -> RegionSummary {
        let buckets = &all.buckets;
        let mut total = Sums::default();
        let mut first: Option<i32> = None;
        let mut last: Option<i32> = None;
        for (day, b) in self.days.range(w.lo_day()..=w.hi_day()) {
            let b = &buckets[*b as usize];
            let s = if w.covers_day(*day) {
                b.sums_at(p, all.checkpoint_every, &all.entries)
            } else {
                b.scan_sums(p, w, &all.entries)
            };
            if s.incidents > 0 {
                first.get_or_insert(*day);
                last = Some(*day);
                total.add(&s);
            }
        }
        let mm = |d: Option<i32>| {
            d.and_then(|d| self.days.get(&d))
                .and_then(|b| buckets[*b as usize].min_max(p, w, &all.entries))
        };
        let mut out = RegionSummary::empty(&self.region, p);
        out.incidents = total.incidents;
        out.strikes = StrikeCounts {
            total: total.strikes.iter().sum(),
            by_kind: ByKind(total.strikes),
        };
        let fig = |f: [u64; 3]| Figure {
            low: f[0],
            best: f[1],
            high: f[2],
        };
        out.casualties = CasualtiesView {
            killed: fig(total.killed),
            injured: fig(total.injured),
            civilians_killed: total.civilians,
            children_killed: total.children,
        };
        out.claims = ClaimCounts {
            total: total.claims.iter().sum(),
            unverified: total.claims[0],
            disputed: total.claims[1],
            confirmed: total.claims[2],
            refuted: total.claims[3],
        };
        out.first_occurred_at = mm(first).map(|(lo, _)| lo);
        out.last_occurred_at = mm(last).map(|(_, hi)| hi);
        out
    }
}
