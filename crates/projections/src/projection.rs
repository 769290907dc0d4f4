//! The live views of the whole log: incidents, regional summaries, as-of, digest.
use std::collections::HashMap;

use foldhash::fast::RandomState as FastHash;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::chunked::Chunked;
use crate::events::*;
use crate::state::{chunk, decode_envelope, IncidentState, Interner, Stamp};
use crate::summary::{Link, Summaries};
use crate::view::{IncidentView, RegionSummary};
use crate::{Envelope, FieldError, ProjectionError, Region, Window};

/// Default and largest page size of the incident listing.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Incidents per block of the digest's serialization.
const DIGEST_BLOCK: usize = 1024;

/// Filters of `GET /v1/incidents`.
#[derive(Clone, Debug, Default)]
pub struct IncidentQuery {
    pub region: Option<Region>,
    pub kind: Option<Kind>,
    /// Incidents with at least one claim in this status.
    pub claim_status: Option<ClaimStatus>,
    /// Window on `occurred_at`.
    pub window: Window,
    /// `None` = active incidents only; retracted ones only with `Some(Retracted)`.
    pub status: Option<IncidentStatus>,
    /// Default 100, at most 1000.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of the incident listing, in order of the incidents' first global position.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IncidentPage {
    pub incidents: Vec<IncidentView>,
    pub next_cursor: Option<String>,
}

/// A page of [`Projection::incidents`] built over several looks at the projection, each
/// scanning a bounded number of incidents, so that a caller holding a lock per look lets
/// writers in between (a filter that matches few incidents otherwise scans them all under
/// one hold). Each incident is as the look that found it saw it; incidents are taken in
/// order of first appearance, so one look resumes where the last one stopped.
#[derive(Debug)]
pub struct IncidentPager {
    limit: usize,
    /// The first position of the last incident looked at.
    after: u64,
    /// Matches so far, with their first position; one more than `limit` tells that there is
    /// a next page.
    found: Vec<(u64, IncidentView)>,
    done: bool,
}

impl IncidentPager {
    /// A pager for `q`'s page (its limit and cursor checked).
    pub fn new(q: &IncidentQuery) -> Result<IncidentPager, FieldError> {
        // Above the maximum is clamped, as `GET /v1/events` does; 0 cannot make a page.
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        if limit == 0 {
            return Err(FieldError::new(
                "/limit",
                format!("must be between 1 and {MAX_LIMIT} (more is taken as {MAX_LIMIT})"),
            ));
        }
        let after = match &q.cursor {
            None => 0,
            Some(c) => decode_cursor(c).ok_or_else(|| {
                FieldError::new(
                    "/cursor",
                    "is not a cursor this server returned (use next_cursor as is)",
                )
            })?,
        };
        Ok(IncidentPager {
            limit,
            after,
            found: Vec::new(),
            done: false,
        })
    }

    /// Whether the page is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Looks at up to `max_scanned` more incidents of `p` for `q` (the query the pager was
    /// made for).
    pub fn scan(&mut self, p: &Projection, q: &IncidentQuery, max_scanned: usize) {
        if self.done {
            return;
        }
        let start = p
            .slots
            .partition_point(|s| s.state.first_position <= self.after);
        for (scanned, slot) in p.slots.iter_from(start).enumerate() {
            if scanned == max_scanned {
                return;
            }
            self.after = slot.state.first_position;
            if !matches(slot, q, false) {
                continue;
            }
            if let Some(v) = IncidentView::from_state(&slot.state) {
                self.found.push((slot.state.first_position, v));
                if self.found.len() > self.limit {
                    break;
                }
            }
        }
        self.done = true;
    }

    /// The page: at most `limit` incidents, and a cursor when another one matched after them.
    pub fn finish(mut self) -> IncidentPage {
        let next_cursor = if self.found.len() > self.limit {
            self.found.truncate(self.limit);
            self.found.last().map(|(first, _)| encode_cursor(*first))
        } else {
            None
        };
        IncidentPage {
            incidents: self.found.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        }
    }
}

/// The slots of `slots` whose incident passes `q`'s filters.
fn matching_slots<'a>(
    slots: impl Iterator<Item = &'a Slot> + 'a,
    q: &'a IncidentQuery,
    any_status: bool,
) -> impl Iterator<Item = &'a Slot> + 'a {
    slots.filter(move |s| matches(s, q, any_status))
}

/// Whether `slot`'s incident passes `q`'s filters (`any_status`: whatever `q.status` says).
fn matches(slot: &Slot, q: &IncidentQuery, any_status: bool) -> bool {
    let status = q.status.unwrap_or(IncidentStatus::Active);
    let st = &slot.state;
    let Some(core) = st.core.as_deref() else {
        return false;
    };
    let retracted = st.retraction.is_some();
    (any_status || retracted == (status == IncidentStatus::Retracted))
        && q.region.is_none_or(|r| r == core.region)
        && q.kind.is_none_or(|k| k == core.kind)
        && q.window.contains(core.occurred_at)
        && q.claim_status
            .is_none_or(|cs| st.claims.iter().any(|c| c.status() == cs))
}

#[derive(Clone, Debug)]
struct Slot {
    state: IncidentState,
    link: Option<Link>,
}

/// Memory held by a projection, estimated from sizes and capacities with a glibc-style
/// allocator's overhead per allocation (deterministic, unlike the process's RSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    pub incidents: u64,
    /// Live incident state (views and decision state) including the id index.
    pub live_bytes: u64,
    /// Summary buckets with their as-of history.
    pub history_bytes: u64,
    pub events: u64,
}

/// A recorded event decoded ahead of its fold and owning its data, so that a rebuild can
/// decode on the thread that reads the log while another folds in position order.
#[derive(Debug, PartialEq)]
pub struct DecodedEvent {
    stamp: Stamp,
    event: IncidentEvent<'static>,
}

impl DecodedEvent {
    /// Decodes like [`Projection::apply`] would (the same errors).
    pub fn decode(e: &Envelope<'_>) -> Result<DecodedEvent, ProjectionError> {
        Ok(DecodedEvent {
            stamp: Stamp::of(e),
            event: decode_envelope(e)?.into_owned(),
        })
    }

    /// An event of an append the store just recorded, from the validated event itself rather
    /// than from its record: equal to [`DecodedEvent::decode`] of that record, because the
    /// store keeps `event.canonical_data()`, which decodes back to `event`. The caller
    /// vouches for the stamp: the position, stream version and `recorded_at` the store gave
    /// this event.
    pub fn appended(
        event: TypedEvent,
        position: u64,
        incident_id: Uuid,
        stream_version: u64,
        recorded_at: DateTime<Utc>,
    ) -> DecodedEvent {
        DecodedEvent {
            stamp: Stamp {
                position,
                incident_id,
                stream_version,
                recorded_at,
            },
            event: event.event,
        }
    }

    pub fn global_position(&self) -> u64 {
        self.stamp.position
    }
}

/// Every view of the log, kept by folding events in position order.
#[derive(Clone, Debug)]
pub struct Projection {
    position: u64,
    events: u64,
    /// foldhash, seeded per process: SipHash was a tenth of the fold.
    ids: HashMap<Uuid, u32, FastHash>,
    /// In order of first position (so also of first appearance). Chunked: a million slots
    /// are not copied whenever they outgrow their array.
    slots: Chunked<Slot>,
    summaries: Summaries,
    /// One copy of each name shared by all incidents.
    names: Interner,
}

impl Default for Projection {
    fn default() -> Self {
        Projection {
            position: 0,
            events: 0,
            ids: HashMap::default(),
            slots: Chunked::default(),
            summaries: Summaries::default(),
            names: Interner::on(),
        }
    }
}

impl Projection {
    pub fn new() -> Self {
        Self::default()
    }

    /// A projection that checkpoints each summary bucket's totals every `n` changes of that
    /// bucket (default 32): smaller is faster as-of, larger uses less memory. Tests use tiny
    /// values to exercise the checkpoint path.
    pub fn with_checkpoint_every(n: usize) -> Self {
        Projection {
            summaries: Summaries::with_checkpoint_every(n),
            ..Self::default()
        }
    }

    /// Reserves room for folding about `events` more events, so that a rebuild of a known log
    /// grows no large arrays on the way (each growth copies them and faults in fresh pages).
    pub fn reserve(&mut self, events: usize) {
        self.summaries.entries.reserve(events);
        let incidents = events / 4;
        self.slots.reserve(incidents);
        self.ids.reserve(incidents);
    }

    /// Folds one recorded event. Positions must increase (gaps are tolerated). On error
    /// nothing changes.
    pub fn apply(&mut self, e: &Envelope) -> Result<(), ProjectionError> {
        self.check_order(e.global_position)?;
        let ev = decode_envelope(e)?;
        self.apply_stamped(Stamp::of(e), ev)
    }

    /// [`Projection::apply`] of an event decoded beforehand (the same result).
    pub fn apply_decoded(&mut self, d: DecodedEvent) -> Result<(), ProjectionError> {
        self.check_order(d.stamp.position)?;
        self.apply_stamped(d.stamp, d.event)
    }

    fn check_order(&self, position: u64) -> Result<(), ProjectionError> {
        if position <= self.position {
            return Err(ProjectionError::OutOfOrder {
                position,
                last: self.position,
            });
        }
        Ok(())
    }

    fn apply_stamped(&mut self, e: Stamp, ev: IncidentEvent<'_>) -> Result<(), ProjectionError> {
        let (idx, old_link) = match self.ids.get(&e.incident_id) {
            Some(i) => {
                let slot = &mut self.slots[*i as usize];
                slot.state.apply_decoded(&e, ev, &mut self.names)?;
                (*i as usize, slot.link)
            }
            None => {
                let mut state = IncidentState::new();
                state.apply_decoded(&e, ev, &mut self.names)?;
                self.ids.insert(e.incident_id, self.slots.len() as u32);
                self.slots.push(Slot { state, link: None });
                (self.slots.len() - 1, None)
            }
        };
        let slot = &mut self.slots[idx];
        let st = &slot.state;
        let new = match (&st.core, &st.retraction) {
            (Some(c), None) => Some((c.region, c.occurred_at, c.kind, st.contrib())),
            _ => None,
        };
        slot.link = self.summaries.update(e.position, old_link, new);
        self.position = e.position;
        self.events += 1;
        Ok(())
    }

    /// Last applied global position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Number of events applied.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Number of incidents (retracted ones included).
    pub fn incident_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of incidents retracted by the current position.
    pub fn retracted_count(&self) -> usize {
        self.slots.iter().filter(|s| s.state.is_retracted()).count()
    }

    /// Number of regions that ever had an incident (retracted or moved away ones included).
    pub fn region_count(&self) -> usize {
        self.summaries.regions.len()
    }

    /// The live view of one incident.
    pub fn incident(&self, id: Uuid) -> Option<IncidentView> {
        let i = self.ids.get(&id)?;
        IncidentView::from_state(&self.slots[*i as usize].state)
    }

    /// Every incident's view (retracted ones included), in order of first appearance in the
    /// log.
    pub fn views(&self) -> impl Iterator<Item = IncidentView> + '_ {
        self.slots
            .iter()
            .filter_map(|slot| IncidentView::from_state(&slot.state))
    }

    /// Every incident matching `q`'s filters (not its limit or cursor), in order of first
    /// global position, as the pages of [`Projection::incidents`] list them one after the
    /// other. `any_status` takes active and retracted incidents alike, whatever `q.status`
    /// says (the views' export).
    pub fn matching<'a>(
        &'a self,
        q: &'a IncidentQuery,
        any_status: bool,
    ) -> impl Iterator<Item = IncidentView> + 'a {
        matching_slots(self.slots.iter(), q, any_status)
            .filter_map(|slot| IncidentView::from_state(&slot.state))
    }

    /// One page of incidents matching `q`, in one look (see [`IncidentPager`] for one over
    /// several).
    pub fn incidents(&self, q: &IncidentQuery) -> Result<IncidentPage, FieldError> {
        let mut pager = IncidentPager::new(q)?;
        pager.scan(self, q, usize::MAX);
        Ok(pager.finish())
    }

    /// The regions with an incident recorded at or before `at_position` (default: now;
    /// clamped to the projection's position), sorted by code: those
    /// [`Projection::region_summaries`] looks at.
    pub fn regions_recorded(&self, at_position: Option<u64>) -> Vec<Region> {
        let p = self.clamp(at_position);
        self.summaries
            .index
            .values()
            .map(|i| &self.summaries.regions[*i as usize])
            .filter(|r| r.first_position <= p)
            .map(|r| r.region)
            .collect()
    }

    fn clamp(&self, at_position: Option<u64>) -> u64 {
        at_position.map_or(self.position, |p| p.min(self.position))
    }

    /// The summary of one region after `at_position` (default: now; clamped to the projection's
    /// position). None when nothing was ever recorded in the region by then.
    pub fn region_summary(
        &self,
        region: &Region,
        window: &Window,
        at_position: Option<u64>,
    ) -> Option<RegionSummary> {
        self.summaries
            .summary(region, window, self.clamp(at_position))
    }

    /// Summaries of every region with at least one counted incident (window and position
    /// applied), sorted by region code.
    pub fn region_summaries(
        &self,
        window: &Window,
        at_position: Option<u64>,
    ) -> Vec<RegionSummary> {
        // What a caller that takes a lock per region does (the api's `region_summaries_at`).
        let p = self.clamp(at_position);
        self.regions_recorded(Some(p))
            .iter()
            .filter_map(|r| self.region_summary(r, window, Some(p)))
            .filter(|s| s.incidents > 0)
            .collect()
    }

    /// BLAKE3 (hex) of the complete view state: the position, every incident view sorted by id
    /// as one JSON line each, every region's summary. Equal states give equal digests on any
    /// machine.
    ///
    /// The views are serialized in blocks and hashed in order, so the byte stream (and the
    /// digest) is the same as a line-by-line serialization; hashing whole blocks also lets
    /// BLAKE3 use its wide SIMD path, where tiny `update`s from a JSON writer would not. On
    /// the calling thread: [`Projection::digest_on`] spreads the serialization over threads.
    pub fn digest(&self) -> String {
        self.digest_on(1)
    }

    /// [`Projection::digest`] serialized on `threads` threads (1: the calling thread; more:
    /// that many scoped threads, the caller hashing). Any count gives the same digest (tests
    /// check that). The caller knows how many cores it has: this crate asks the machine
    /// nothing.
    pub fn digest_on(&self, threads: usize) -> String {
        let mut h = blake3::Hasher::new();
        // v2: recorded times always with six fraction digits (v1 let chrono drop trailing zeros).
        h.update(b"incidentlog views v2\n");
        h.update(format!("position {}\n", self.position).as_bytes());
        let mut order: Vec<(Uuid, u32)> = self.ids.iter().map(|(k, v)| (*k, *v)).collect();
        order.sort_unstable();
        let blocks: Vec<&[(Uuid, u32)]> = order.chunks(DIGEST_BLOCK).collect();
        let threads = threads.clamp(1, blocks.len().max(1));
        if threads <= 1 {
            let mut buf = Vec::new();
            for block in &blocks {
                buf.clear();
                self.write_views(block, &mut buf);
                h.update(&buf);
            }
        } else {
            // Worker k serializes blocks k, k + threads, ...; the caller hashes them in order,
            // taking block i from worker i % threads. Bounded channels keep memory at a few
            // blocks per worker.
            std::thread::scope(|scope| {
                let mut outputs = Vec::with_capacity(threads);
                for k in 0..threads {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
                    let mine: Vec<&[(Uuid, u32)]> =
                        blocks.iter().skip(k).step_by(threads).copied().collect();
                    scope.spawn(move || {
                        for block in mine {
                            let mut buf = Vec::with_capacity(block.len() * 1024);
                            self.write_views(block, &mut buf);
                            if tx.send(buf).is_err() {
                                return;
                            }
                        }
                    });
                    outputs.push(rx);
                }
                for i in 0..blocks.len() {
                    // A worker only stops early if it panicked, which scope re-raises.
                    if let Ok(buf) = outputs[i % threads].recv() {
                        h.update(&buf);
                    }
                }
            });
        }
        let mut buf = Vec::new();
        for r in self.summaries.index.values() {
            let s = self.summaries.regions[*r as usize].summary(
                &self.summaries,
                &Window::all(),
                self.position,
            );
            // Serializing these plain structs into a vector cannot fail.
            let _ = serde_json::to_writer(&mut buf, &s);
            buf.push(b'\n');
        }
        h.update(&buf);
        h.finalize().to_hex().to_string()
    }

    /// One JSON line per incident view of `block` (incidents without a view are skipped).
    /// The views borrow their text from the states: the same JSON as the owned views the API
    /// serves, without copying every string of the log (half the digest's time).
    fn write_views(&self, block: &[(Uuid, u32)], buf: &mut Vec<u8>) {
        for (_, i) in block {
            if let Some(v) = IncidentView::<&str>::build(&self.slots[*i as usize].state) {
                // Serializing these plain structs into a vector cannot fail.
                let _ = serde_json::to_writer(&mut *buf, &v);
                buf.push(b'\n');
            }
        }
    }

    /// Decision state of one incident as of the last applied position (version 0 if unknown),
    /// decision-only ([`IncidentState::decision_only_copy`]): a decision reads nothing else,
    /// and copying the figures, sources and corrections of a long-lived incident for every
    /// append to it was a tenth of a live bulk import's CPU.
    pub fn decision_state(&self, id: Uuid) -> IncidentState {
        match self.ids.get(&id) {
            Some(i) => self.slots[*i as usize].state.decision_only_copy(),
            None => IncidentState::with_id(id).into_decision_only(),
        }
    }

    /// Memory held, estimated from sizes and capacities.
    pub fn memory(&self) -> MemoryUsage {
        let index = chunk(self.ids.capacity() * (std::mem::size_of::<(Uuid, u32)>() + 1));
        let live: usize = self
            .slots
            .iter()
            .map(|s| s.state.heap_bytes())
            .sum::<usize>()
            + self.slots.heap_bytes()
            + index
            + self.names.heap_bytes();
        MemoryUsage {
            incidents: self.slots.len() as u64,
            live_bytes: live as u64,
            history_bytes: self.summaries.history_bytes() as u64,
            events: self.events,
        }
    }
}

fn encode_cursor(first_position: u64) -> String {
    format!("p{first_position:x}")
}

fn decode_cursor(c: &str) -> Option<u64> {
    let hex = c.strip_prefix('p')?;
    // Only what `encode_cursor` writes (`from_str_radix` would also take a leading `+`).
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The view of one incident from its events (used for as-of of one incident).
pub fn fold_incident<'a>(
    events: impl IntoIterator<Item = Envelope<'a>>,
) -> Result<Option<IncidentView>, ProjectionError> {
    let mut st = IncidentState::new();
    for e in events {
        st.apply(&e)?;
    }
    Ok(IncidentView::from_state(&st))
}
