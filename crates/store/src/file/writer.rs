//! The writer: group commit of queued appends, one write and one sync per batch, pipelined.
//!
//! Two stages. The writer task collects the appends queued at that moment, validates them
//! against the durable index *and* the batches still on their way to disk, and encodes them into
//! one buffer. The I/O thread writes that buffer with one `write`, syncs it once, publishes the
//! new durable head and answers. While one batch syncs, the next one is being collected and
//! encoded, so the disk never waits for the CPU and vice versa. How many of the waiting appends
//! one batch takes is [`super::cohorts`]'s decision.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::format::{self, RecordMeta, HEADER_LEN};
use super::index::{IdLookup, MixState, Segment, MAX_POSITION};
use super::io::{LogFile, LogIo};
use super::{read_on_worker, Shared};
use crate::{AppendOutcome, AppendRequest, Durability, ExpectedVersion, Head, StoreError};

/// A batch stops growing at this many events or bytes (a single larger append still goes).
const MAX_BATCH_EVENTS: usize = 8192;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Largest single append.
const MAX_APPEND_BYTES: usize = crate::MAX_APPEND_BYTES;
/// How often the writer yields to let more appends join a batch before writing it.
const MAX_YIELDS: usize = 4;

pub(crate) type Results = Vec<Result<AppendOutcome, StoreError>>;

pub(crate) enum Msg {
    Append {
        requests: Vec<AppendRequest>,
        reply: oneshot::Sender<Results>,
    },
    /// Appends as another store recorded them (`EventStore::restore`), each with its pin.
    Restore {
        appends: Vec<(AppendRequest, Pin)>,
        reply: oneshot::Sender<Results>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What a restored append must keep from the log it comes from.
pub(crate) struct Pin {
    /// `recorded_at`, microseconds.
    pub recorded_at: i64,
    pub first_position: u64,
    pub last_hash: [u8; 32],
}

/// One encoded batch on its way to disk.
pub(crate) struct Job {
    seq: u64,
    /// Start a new segment at this first position before writing.
    roll: Option<u64>,
    buf: Vec<u8>,
    /// (segment offset, recorded_at, stream, event id) of every record in `buf`.
    entries: Vec<(u32, i64, Uuid, Uuid)>,
    head: Head,
    /// Length of the active segment once `buf` is written.
    seg_len: u64,
    /// Answers to give once durable (or `Unavailable` for all if the write fails).
    replies: Vec<(oneshot::Sender<Results>, Results)>,
    close: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// No batch: a look at the active segment on an idle store ([`IDLE_CHECK`]).
    check_idle: bool,
}

/// How often an idle store looks whether its active segment is still in place
/// (`LogFile::check_in_place`; before every batch otherwise): a segment deleted or replaced
/// while no append comes makes `/readyz` say `unavailable` within about this long, and a
/// shutdown then says the stop was not clean, instead of finding out at the next start.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub jobs: mpsc::Sender<Job>,
    /// Signalled by the I/O thread after each job.
    pub idle: Arc<tokio::sync::Notify>,
    pub seg_len: u64,
    pub next_position: u64,
    pub last_hash: [u8; 32],
    pub last_recorded_at: i64,
    pub segment_size: u64,
    /// A close request was processed: appends queued after it fail.
    pub closed: bool,
    /// Batches handed to the I/O thread and maybe not durable yet (oldest first).
    pub inflight: VecDeque<Overlay>,
    pub seq: u64,
    /// Whether to split the appenders in two cohorts, and how.
    pub cohorts: super::cohorts::Cohorts,
}

/// The times an append is checked and recorded against (see [`Building`]).
#[derive(Clone, Copy)]
struct Times {
    /// Its `recorded_at`.
    at: i64,
    /// `recorded_at` of the last record before it.
    last: i64,
}

/// What the writer knows about an event id already recorded (durably or earlier in the batch).
struct Existing {
    position: u64,
    stream_id: Uuid,
    stream_version: u64,
    event_type: String,
    data: String,
    append_index: u32,
    append_len: u32,
}

/// The events of one batch, by stream and by id (positions refer into `requests`).
#[derive(Default)]
pub(crate) struct Maps {
    streams: HashMap<Uuid, u64, MixState>,
    ids: HashMap<Uuid, (usize, usize, usize, RecordMeta), MixState>,
}

/// A batch handed to the I/O thread: what later batches must see until it is in the index.
pub(crate) struct Overlay {
    seq: u64,
    requests: Vec<Vec<AppendRequest>>,
    maps: Maps,
}

/// A batch being collected while the I/O thread is busy.
pub(crate) struct Building {
    requests: Vec<Vec<AppendRequest>>,
    replies: Vec<oneshot::Sender<Results>>,
    results: Vec<Results>,
    ctx: BatchCtx,
    roll: Option<u64>,
    /// `recorded_at` of the last record in the batch (or in the log): no append goes before
    /// it.
    last_time: i64,
    events: usize,
    bytes: usize,
}

impl Building {
    fn is_full(&self) -> bool {
        self.events >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES
    }
}

/// A batch's encoded records and their index entries, kept for reuse once written.
#[derive(Default)]
pub(crate) struct Buffers {
    buf: Vec<u8>,
    entries: Vec<(u32, i64, Uuid, Uuid)>,
}

/// Spare buffers kept at most (one batch being built, one being written, one to spare).
const SPARE_BUFFERS: usize = 2;
/// Larger buffers are not kept (a batch is at most `MAX_BATCH_BYTES` plus one request).
const SPARE_MAX_BYTES: usize = 64 << 20;

/// The records of the batch being built.
#[derive(Default)]
struct BatchCtx {
    maps: Maps,
    buf: Vec<u8>,
    entries: Vec<(u32, i64, Uuid, Uuid)>,
}

fn request_bytes(r: &AppendRequest) -> usize {
    r.events
        .iter()
        .map(|e| format::encoded_len_estimate(&e.event_type, &r.recorded_by, &e.data))
        .sum()
}

fn find(maps: &Maps, requests: &[Vec<AppendRequest>], id: &Uuid) -> Option<Existing> {
    let (mi, ri, ei, meta) = maps.ids.get(id)?;
    let e = &requests[*mi][*ri].events[*ei];
    Some(Existing {
        position: meta.position,
        stream_id: meta.stream_id,
        stream_version: meta.stream_version,
        event_type: e.event_type.clone(),
        data: e.data.get().to_string(),
        append_index: meta.append_index,
        append_len: meta.append_len,
    })
}

impl Writer {
    /// Collects appends into a batch (validating and encoding each as it arrives) while the I/O
    /// thread syncs the previous one, and hands the batch over as soon as that thread is free:
    /// everything that queued up during a sync shares the next one.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut building: Option<Building> = None;
        let mut busy = false;
        let mut input_done = false;
        let mut close: Option<oneshot::Sender<Result<(), StoreError>>> = None;
        let mut next_idle_check = tokio::time::Instant::now() + IDLE_CHECK;
        loop {
            if !busy {
                if let Some(b) = building.take() {
                    busy = self.hand_over(b).await;
                    continue;
                }
                if let Some(reply) = close.take() {
                    self.closed = true;
                    // If the I/O thread is gone the reply is dropped: close then reports Ok.
                    busy = self
                        .jobs
                        .send(self.job_without_batch(Some(reply)))
                        .await
                        .is_ok();
                    continue;
                }
                if input_done {
                    break;
                }
            }
            let full = self.takes_no_more(&building);
            let accepting = !full && !input_done && close.is_none();
            tokio::select! {
                biased;
                _ = self.idle.notified(), if busy => {
                    busy = false;
                    let waiting = building.as_ref().map_or(0, |b| b.events) + rx.len();
                    self.cohorts
                        .io_idle(Instant::now(), self.shared.io_times(), waiting);
                    // The appenders the I/O thread just answered are about to submit again:
                    // let them join the batch that goes out now (up to the cohorts' cap), so
                    // that they share one sync instead of waiting for the next.
                    if building.is_some() && accepting {
                        let end = self.drain(&mut rx, None, &mut building, true).await;
                        input_done |= end.0;
                        close = close.or(end.1);
                    }
                }
                // The I/O thread is gone (it panicked): nothing will signal `idle` again. The
                // next hand-over fails and poisons; a close request is answered.
                _ = self.jobs.closed(), if busy => {
                    busy = false;
                }
                msg = rx.recv(), if accepting => {
                    let end = self.drain(&mut rx, Some(msg), &mut building, !busy).await;
                    input_done |= end.0;
                    close = close.or(end.1);
                }
                _ = tokio::time::sleep_until(next_idle_check),
                    if !busy && building.is_none() && accepting && self.unavailable().is_none() =>
                {
                    next_idle_check = tokio::time::Instant::now() + IDLE_CHECK;
                    busy = self.jobs.send(self.job_without_batch(None)).await.is_ok();
                }
                // Unreachable by construction (an idle I/O thread means we accept input).
                else => break,
            }
        }
        // Dropping `jobs` lets the I/O thread finish (and sync what relaxed mode left).
    }

    /// A job that writes nothing: the close (`close`), or else the idle store's look at its
    /// active segment.
    fn job_without_batch(&self, close: Option<oneshot::Sender<Result<(), StoreError>>>) -> Job {
        Job {
            seq: self.seq,
            roll: None,
            buf: Vec::new(),
            entries: Vec::new(),
            head: Head::default(),
            seg_len: self.seg_len,
            replies: Vec::new(),
            check_idle: close.is_none(),
            close,
        }
    }

    /// Adds `first` (a received message, or `None` to only poll) and whatever else is queued
    /// to the batch being built. With `linger`, yields a few times while that brings more (an
    /// idle I/O thread means the batch goes out next). Returns (input closed, close request).
    async fn drain(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        first: Option<Option<Msg>>,
        building: &mut Option<Building>,
        linger: bool,
    ) -> (bool, Option<oneshot::Sender<Result<(), StoreError>>>) {
        let mut yields = 0;
        let mut next = first;
        loop {
            match next.take() {
                Some(None) => return (true, None),
                Some(Some(Msg::Append { requests, reply })) => {
                    self.add(building, requests, None, reply)
                }
                Some(Some(Msg::Restore { appends, reply })) => {
                    let (requests, pins) = appends.into_iter().unzip();
                    self.add(building, requests, Some(pins), reply)
                }
                Some(Some(Msg::Close { reply })) => return (false, Some(reply)),
                None => {}
            }
            if self.takes_no_more(building) {
                return (false, None);
            }
            next = match rx.try_recv() {
                Ok(m) => Some(Some(m)),
                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                Err(mpsc::error::TryRecvError::Empty) if linger && yields < MAX_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                    match rx.try_recv() {
                        Ok(m) => Some(Some(m)),
                        Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                        Err(mpsc::error::TryRecvError::Empty) => return (false, None),
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return (false, None),
            };
        }
    }

    /// The batch being built takes no more appends: its size limits, or (two cohorts) half
    /// of the appends in hand.
    fn takes_no_more(&self, building: &Option<Building>) -> bool {
        building
            .as_ref()
            .is_some_and(|b| b.is_full() || b.events >= self.cohorts.cap())
    }

    fn unavailable(&self) -> Option<String> {
        if let Some(reason) = self.shared.poison_reason() {
            return Some(reason);
        }
        if self.closed {
            return Some("the store is closed".into());
        }
        None
    }

    /// Validates and encodes one message's appends into the batch being built. With `pins`
    /// (a restore), once one request fails every later one of the message fails too.
    fn add(
        &mut self,
        building: &mut Option<Building>,
        requests: Vec<AppendRequest>,
        pins: Option<Vec<Pin>>,
        reply: oneshot::Sender<Results>,
    ) {
        if let Some(why) = self.unavailable() {
            let _ = reply.send(
                requests
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(why.clone())))
                    .collect(),
            );
            return;
        }
        let b = building.get_or_insert_with(|| self.start_batch());
        b.events += requests.iter().map(|r| r.events.len()).sum::<usize>();
        b.bytes += requests.iter().map(request_bytes).sum::<usize>();
        let mi = b.requests.len();
        b.requests.push(requests);
        b.replies.push(reply);
        let Building {
            requests,
            ctx,
            results,
            last_time,
            ..
        } = b;
        let mut rs = Vec::with_capacity(requests[mi].len());
        // A request earlier in this message that would have written failed its check: no
        // later one writes (see `append_many`).
        let mut stopped = false;
        let mut restore_failed = false;
        for (ri, req) in requests[mi].iter().enumerate() {
            let pin = pins.as_ref().and_then(|p| p.get(ri));
            if pins.is_some() && (pin.is_none() || restore_failed) {
                rs.push(Err(StoreError::InvalidInput(
                    "not restored: an earlier append of the restore failed".into(),
                )));
                continue;
            }
            let after_failure = stopped;
            // Raised before the clock is read (`Shared::stamping_upto`), and set to what was
            // really stamped once the request is decided.
            let upto = self.next_position + (req.events.len() as u64).max(1) - 1;
            self.shared.stamping_upto.store(upto, Ordering::SeqCst);
            // An ordinary append is recorded when the writer takes it, after it was decided
            // (a restore re-decides it at that time), and never before the record ahead of it.
            let at = pin.map_or_else(
                || {
                    let now = chrono::Utc::now().timestamp_micros();
                    crate::clock::warn_if_behind(crate::clock::Clock::Machine, now, *last_time);
                    now.max(*last_time)
                },
                |p| p.recorded_at,
            );
            let times = Times {
                at,
                last: *last_time,
            };
            let r = self.accept(requests, (mi, ri), req, ctx, times, pin, after_failure);
            self.shared
                .stamping_upto
                .store(self.next_position - 1, Ordering::SeqCst);
            match &r {
                Ok(o) if !o.duplicate => {
                    *last_time = at;
                }
                Ok(_) => {}
                Err(e) => {
                    restore_failed = true;
                    if e.is_check_failure() && req.expected_version != ExpectedVersion::NEVER {
                        stopped = true;
                    }
                }
            }
            rs.push(r);
        }
        results.push(rs);
    }

    /// An empty batch, on spare buffers when the I/O thread has handed some back, and on the
    /// maps of a published batch when there is one.
    fn fresh_ctx(&self, maps: Option<Maps>) -> BatchCtx {
        let spare = self
            .shared
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let maps = maps.map_or_else(Maps::default, |mut m| {
            m.streams.clear();
            m.ids.clear();
            m
        });
        BatchCtx {
            maps,
            buf: spare.buf,
            entries: spare.entries,
        }
    }

    fn start_batch(&mut self) -> Building {
        // Batches the I/O thread has published are in the index now.
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        // Their maps are cleared for this batch (keeping their capacity).
        let mut maps = None;
        while self.inflight.front().is_some_and(|o| o.seq <= durable) {
            maps = self.inflight.pop_front().map(|o| o.maps);
        }
        let roll = if self.seg_len >= self.segment_size && self.seg_len > HEADER_LEN as u64 {
            self.seg_len = HEADER_LEN as u64;
            Some(self.next_position)
        } else {
            None
        };
        Building {
            requests: Vec::new(),
            replies: Vec::new(),
            results: Vec::new(),
            ctx: self.fresh_ctx(maps),
            roll,
            last_time: self.last_recorded_at,
            events: 0,
            bytes: 0,
        }
    }

    /// Sends a built batch to the I/O thread; false if that thread is gone.
    async fn hand_over(&mut self, b: Building) -> bool {
        let Building {
            requests,
            replies,
            results,
            ctx,
            roll,
            last_time,
            ..
        } = b;
        if !ctx.entries.is_empty() {
            self.last_recorded_at = last_time;
        }
        self.seg_len += ctx.buf.len() as u64;
        self.seq += 1;
        self.cohorts.handed_over(ctx.entries.len());
        let job = Job {
            seq: self.seq,
            roll,
            buf: ctx.buf,
            entries: ctx.entries,
            head: Head {
                position: self.next_position - 1,
                hash: self.last_hash,
            },
            seg_len: self.seg_len,
            replies: replies.into_iter().zip(results).collect(),
            close: None,
            check_idle: false,
        };
        self.inflight.push_back(Overlay {
            seq: self.seq,
            requests,
            maps: ctx.maps,
        });
        if self.jobs.send(job).await.is_err() {
            // The I/O thread is gone (it only stops when poisoned or closed): the replies
            // were dropped with the job, so those appenders see `Unavailable`.
            self.shared
                .set_poisoned("the log I/O thread has stopped".into());
            return false;
        }
        true
    }

    /// The stream's version counting the batch being built and the batches in flight.
    fn stream_version(&self, ctx: &BatchCtx, stream: &Uuid) -> u64 {
        if let Some(v) = ctx.maps.streams.get(stream) {
            return *v;
        }
        for o in self.inflight.iter().rev() {
            if let Some(v) = o.maps.streams.get(stream) {
                return *v;
            }
        }
        self.shared.index().stream_version(stream)
    }

    /// Looks an event id up in this batch, the batches in flight, then the durable log.
    fn existing(
        &self,
        requests: &[Vec<AppendRequest>],
        ctx: &BatchCtx,
        id: &Uuid,
    ) -> Result<Option<Existing>, StoreError> {
        if let Some(x) = find(&ctx.maps, requests, id) {
            return Ok(Some(x));
        }
        for o in self.inflight.iter().rev() {
            if let Some(x) = find(&o.maps, &o.requests, id) {
                return Ok(Some(x));
            }
        }
        let loc = {
            let index = self.shared.index();
            match index.lookup_id(id) {
                IdLookup::Absent => return Ok(None),
                IdLookup::Exact(p) | IdLookup::Candidate(p) => index.locate(p),
            }
        };
        let Some(loc) = loc else { return Ok(None) };
        read_on_worker(&loc, &self.shared, |meta, event| {
            (meta.event_id == *id).then(|| Existing {
                position: meta.position,
                stream_id: meta.stream_id,
                stream_version: meta.stream_version,
                event_type: event.event_type.to_string(),
                data: event.data.get().to_string(),
                append_index: meta.append_index,
                append_len: meta.append_len,
            })
        })
    }

    /// Validates one request against the log and the batch so far; encodes it when accepted.
    /// `after_failure`: an earlier request of the same message failed its check, so this one
    /// may only be answered as a repeat.
    /// `pin`: a restored append, which keeps its time, position and hash.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        requests: &[Vec<AppendRequest>],
        (mi, ri): (usize, usize),
        req: &AppendRequest,
        ctx: &mut BatchCtx,
        times: Times,
        pin: Option<&Pin>,
        after_failure: bool,
    ) -> Result<AppendOutcome, StoreError> {
        let n = req.events.len();
        if n == 0 {
            return Err(StoreError::InvalidInput(
                "an append needs at least one event".into(),
            ));
        }
        if let Some(pin) = pin {
            if pin.first_position != self.next_position {
                return Err(StoreError::InvalidInput(format!(
                    "the restored append starts at position {} but the log's next position is {}",
                    pin.first_position, self.next_position
                )));
            }
            if pin.recorded_at < times.last {
                return Err(StoreError::InvalidInput(format!(
                    "the restored append at position {} was recorded before the log's last event",
                    pin.first_position
                )));
            }
            if req.expected_version == ExpectedVersion::Any {
                return Err(StoreError::InvalidInput(
                    "a restored append needs an exact expected version".into(),
                ));
            }
        }
        let now = times.at;
        // Most appends carry one or a few events: compare pairs rather than build a set.
        let dup = if n <= 16 {
            (1..n).find_map(|i| {
                let id = req.events[i].event_id;
                req.events[..i]
                    .iter()
                    .any(|e| e.event_id == id)
                    .then_some(id)
            })
        } else {
            let mut seen = HashSet::with_capacity(n);
            req.events
                .iter()
                .find_map(|e| (!seen.insert(e.event_id)).then_some(e.event_id))
        };
        if let Some(id) = dup {
            return Err(StoreError::InvalidInput(format!(
                "event id {id} appears twice in one append"
            )));
        }
        if request_bytes(req) > MAX_APPEND_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "append too large (at most {MAX_APPEND_BYTES} bytes)"
            )));
        }

        // Idempotency first.
        let mut found = Vec::with_capacity(n);
        for e in &req.events {
            found.push(self.existing(requests, ctx, &e.event_id)?);
        }
        if pin.is_some() {
            // A restored event id must be new: its recorded copy is at another position.
            if let Some((e, x)) = req
                .events
                .iter()
                .zip(&found)
                .find_map(|(e, f)| f.as_ref().map(|x| (e, x)))
            {
                return Err(StoreError::EventIdConflict {
                    event_id: e.event_id,
                    position: x.position,
                });
            }
        }
        if found.iter().any(Option::is_some) {
            let first = found
                .iter()
                .flatten()
                .next()
                .map(|x| x.position)
                .unwrap_or(0);
            let mut conflict: Option<(Uuid, u64)> = None;
            for (i, (e, f)) in req.events.iter().zip(&found).enumerate() {
                let same = f.as_ref().is_some_and(|x| {
                    x.position == first + i as u64
                        && x.stream_id == req.stream_id
                        && x.event_type == e.event_type
                        && x.data == e.data.get()
                        && x.append_len as usize == n
                        && x.append_index as usize == i
                });
                if !same {
                    let at = f.as_ref().map(|x| x.position);
                    if let Some(position) = at {
                        conflict = Some((e.event_id, position));
                        break;
                    }
                    if conflict.is_none() {
                        conflict = Some((e.event_id, 0));
                    }
                }
            }
            return match conflict {
                None => Ok(AppendOutcome {
                    stream_id: req.stream_id,
                    version: found[n - 1].as_ref().map_or(0, |x| x.stream_version),
                    first_position: first,
                    last_position: first + n as u64 - 1,
                    duplicate: true,
                    recorded_at: None,
                }),
                Some((event_id, position)) => {
                    // Name an event that *is* recorded when the first mismatch is a new one.
                    let (event_id, position) = if position == 0 {
                        req.events
                            .iter()
                            .zip(&found)
                            .find_map(|(e, f)| f.as_ref().map(|x| (e.event_id, x.position)))
                            .unwrap_or((event_id, position))
                    } else {
                        (event_id, position)
                    };
                    Err(StoreError::EventIdConflict { event_id, position })
                }
            };
        }

        // Then the expected version.
        let current = self.stream_version(ctx, &req.stream_id);
        if after_failure {
            return Err(StoreError::WrongExpectedVersion {
                stream_id: req.stream_id,
                expected: req.expected_version,
                actual: current,
            });
        }
        if let ExpectedVersion::Exact(v) = req.expected_version {
            if v != current {
                return Err(StoreError::WrongExpectedVersion {
                    stream_id: req.stream_id,
                    expected: req.expected_version,
                    actual: current,
                });
            }
        }
        let first = self.next_position;
        if first + n as u64 - 1 > MAX_POSITION {
            return Err(StoreError::Unavailable("the file log is full".into()));
        }

        // Encode; roll back this request's bytes if one event cannot be encoded.
        let mark = (ctx.buf.len(), self.last_hash, ctx.entries.len());
        let mut metas = Vec::with_capacity(n);
        for (i, e) in req.events.iter().enumerate() {
            let offset = self.seg_len + ctx.buf.len() as u64;
            let meta = RecordMeta {
                position: first + i as u64,
                prev_hash: self.last_hash,
                stream_id: req.stream_id,
                event_id: e.event_id,
                stream_version: current + i as u64 + 1,
                recorded_at: now,
                append_index: i as u32,
                append_len: n as u32,
            };
            match format::encode_record(
                &mut ctx.buf,
                &meta,
                &e.event_type,
                &req.recorded_by,
                &e.data,
            ) {
                Ok(hash) => self.last_hash = hash,
                Err(reason) => {
                    ctx.buf.truncate(mark.0);
                    self.last_hash = mark.1;
                    ctx.entries.truncate(mark.2);
                    return Err(StoreError::InvalidInput(reason));
                }
            }
            // The record's end must fit too: recovery refuses a segment of 4 GiB or more.
            let end = self.seg_len + ctx.buf.len() as u64;
            let (Ok(offset), true) = (u32::try_from(offset), end <= u64::from(u32::MAX)) else {
                ctx.buf.truncate(mark.0);
                self.last_hash = mark.1;
                ctx.entries.truncate(mark.2);
                return Err(StoreError::Unavailable("segment offset overflow".into()));
            };
            ctx.entries.push((offset, now, req.stream_id, e.event_id));
            metas.push(meta);
        }
        if let Some(pin) = pin.filter(|p| p.last_hash != self.last_hash) {
            ctx.buf.truncate(mark.0);
            let got = std::mem::replace(&mut self.last_hash, mark.1);
            ctx.entries.truncate(mark.2);
            return Err(StoreError::InvalidInput(format!(
                "the restored append ending at position {} comes out with hash {}, not {}: it was changed",
                first + n as u64 - 1,
                crate::to_hex(&got),
                crate::to_hex(&pin.last_hash)
            )));
        }
        for (ei, meta) in metas.into_iter().enumerate() {
            ctx.maps.ids.insert(meta.event_id, (mi, ri, ei, meta));
        }
        ctx.maps.streams.insert(req.stream_id, current + n as u64);
        self.next_position += n as u64;
        Ok(AppendOutcome {
            stream_id: req.stream_id,
            version: current + n as u64,
            first_position: first,
            last_position: first + n as u64 - 1,
            duplicate: false,
            recorded_at: chrono::DateTime::from_timestamp_micros(now),
        })
    }
}

/// Poisons the store when the I/O thread unwinds from a panic: the batch it held is neither
/// known durable nor cut off the file, so no later append may go after it.
struct PoisonOnUnwind(Arc<Shared>);

impl Drop for PoisonOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the log I/O thread panicked: refusing appends until the store is reopened"
            );
            self.0.set_poisoned("the log I/O thread panicked".into());
        }
    }
}

/// The I/O stage: owns the active segment file; writes, syncs, publishes, answers.
pub(crate) struct IoStage {
    pub shared: Arc<Shared>,
    pub idle: Arc<tokio::sync::Notify>,
    pub io: Arc<dyn LogIo>,
    pub log_dir: PathBuf,
    pub file: Option<Box<dyn LogFile>>,
    pub durability: Durability,
    /// Relaxed durability: bytes written but not yet synced.
    pub unsynced: bool,
    /// The head of what has been written (synced or not).
    pub written: Head,
    /// Keeps `log/SYNCED` up to date (none when read-only).
    pub marker: Option<super::synced::Marker>,
    /// The data directory's lock (one process per directory). Held here, not by the store
    /// handle: released only once the last batch is written and the mark final, so that an
    /// open right after a drop can never recover the log while this thread still writes to
    /// it. Declared last: dropped last.
    pub _lock: super::DataDirLock,
}

impl IoStage {
    pub(crate) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            self.handle(job);
        }
        // Every handle is gone: flush what relaxed durability left unsynced.
        if self.unsynced && self.shared.poison_reason().is_none() {
            if let Err(e) = self.sync() {
                // Nobody is left to answer: the log is all that can be told.
                tracing::error!(
                    "the last sync of appends made with relaxed durability failed: {e}; they \
                     may be lost (the next start keeps what reached the disk)"
                );
            }
        }
    }

    fn handle(&mut self, job: Job) {
        let started = Instant::now();
        let since = self.shared.epoch_ms(started);
        self.shared.io_busy_since_ms.store(since, Ordering::Relaxed);
        let Job {
            seq,
            roll,
            mut buf,
            mut entries,
            head,
            seg_len,
            replies,
            close,
            check_idle,
        } = job;
        // Declared after `replies`, so dropped before them when unwinding: an appender that
        // sees its answer dropped finds the store already refusing appends.
        let _poison_on_unwind = PoisonOnUnwind(self.shared.clone());
        let written = match self.shared.poison_reason() {
            Some(why) => Err(why),
            None if check_idle => match self.file.as_mut() {
                Some(file) => file.check_in_place(),
                None => Ok(()),
            },
            None => self.write(roll, &buf, seg_len),
        };
        match &written {
            Ok(()) => {
                if !entries.is_empty() {
                    self.written = head;
                    if !self.unsynced {
                        self.mark_synced();
                    }
                    self.shared.writes.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .written_events
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    {
                        let mut index = self.shared.index_mut();
                        for (offset, at, stream, id) in entries.drain(..) {
                            index.push(offset, at, stream, id);
                        }
                        if let Some(s) = index.segments.last_mut() {
                            s.len = seg_len;
                        }
                        index.head = head;
                    }
                    // Readers see the events through the index first, then learn of the head.
                    self.shared.head_tx.send_replace(head.position);
                }
                self.shared.durable_seq.store(seq, Ordering::Release);
            }
            Err(why) => {
                if self.shared.poison_reason().is_none() {
                    let what = if check_idle {
                        "the log's active segment is not in place"
                    } else {
                        "log write failed"
                    };
                    tracing::error!(reason = %why, "{what}: refusing appends until the store is reopened");
                    self.shared.set_poisoned(why.clone());
                }
            }
        }
        if let Some(reply) = close {
            let _ = reply.send(self.close());
        }
        if buf.capacity() <= SPARE_MAX_BYTES {
            buf.clear();
            entries.clear();
            let mut spare = self.shared.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < SPARE_BUFFERS {
                spare.push(Buffers { buf, entries });
            }
        }
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.io_busy_ns.fetch_add(busy, Ordering::Relaxed);
        self.shared.io_busy_since_ms.store(0, Ordering::Relaxed);
        // The writer before the appenders: woken after them, it would queue for a core behind
        // every task their answers wake, while the next batch waits to be handed over.
        self.idle.notify_one();
        for (reply, results) in replies {
            let results = match &written {
                Ok(()) => results,
                Err(why) => results
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(why.clone())))
                    .collect(),
            };
            let _ = reply.send(results);
        }
    }

    /// Writes (and, strict, syncs) one batch that ends the active segment at `seg_len`. When
    /// the write or the sync fails, the batch is cut off the file again: its appends are
    /// answered with an error, so they must not reappear after a restart either.
    fn write(&mut self, roll: Option<u64>, buf: &[u8], seg_len: u64) -> Result<(), String> {
        if let Some(first) = roll {
            self.roll(first)
                .map_err(|e| format!("starting a new segment failed: {e}"))?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let strict = self.durability == Durability::Strict;
        let file = self.file.as_mut().ok_or("the store is closed")?;
        // Nothing written yet: a refused batch leaves the file as it found it.
        file.check_in_place()?;
        let started = Instant::now();
        let written = file
            .write_all(buf)
            .map_err(|e| format!("write failed: {e}"))
            .and_then(|()| match strict {
                true => file
                    .sync_data()
                    .map_err(|e| format!("fdatasync failed: {e}")),
                false => Ok(()),
            });
        let took = started.elapsed();
        let disk = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.shared.io_disk_ns.fetch_add(disk, Ordering::Relaxed);
        match written {
            Ok(()) => {
                self.unsynced |= !strict;
                if let Some(observe) = self.shared.write_observer.get() {
                    observe(took);
                }
                Ok(())
            }
            Err(why) => {
                let before = seg_len.saturating_sub(buf.len() as u64);
                match file.set_len(before).and_then(|()| file.sync_data()) {
                    Ok(()) => tracing::warn!(
                        offset = before,
                        "cut the failed batch off the active segment"
                    ),
                    Err(e) => tracing::error!(
                        offset = before,
                        error = %e,
                        "could not cut the failed batch off the active segment: its \
                         unacknowledged appends may reappear after a restart"
                    ),
                }
                Err(why)
            }
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(file) = self.file.as_mut() {
            file.sync_data()
                .map_err(|e| format!("fdatasync failed: {e}"))?;
        }
        self.unsynced = false;
        self.mark_synced();
        Ok(())
    }

    /// Everything written is on stable storage: the synced mark may name it.
    fn mark_synced(&self) {
        if let Some(m) = &self.marker {
            if self.written.position > 0 {
                m.synced(self.written);
            }
        }
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if self.shared.poison_reason().is_none() && self.unsynced {
            if let Err(why) = self.sync() {
                self.shared.set_poisoned(why.clone());
                return Err(StoreError::Unavailable(why));
            }
        }
        if let Some(file) = self.file.as_mut() {
            // Not needed for recovery (which takes the zeros for a reserve), but a closed
            // log's files end with their last record, as older versions and copies expect.
            if let Err(e) = file.trim_reserve() {
                tracing::warn!(error = %e, "could not give back the space reserved past the end of the log");
            }
        }
        self.file = None;
        // The mark names the final head before close answers.
        if let Some(mut m) = self.marker.take() {
            m.stop();
        }
        Ok(())
    }

    /// Seals the active segment and starts the next one at `first`.
    fn roll(&mut self, first: u64) -> std::io::Result<()> {
        if self.unsynced {
            self.sync().map_err(std::io::Error::other)?;
        }
        // Before the next segment exists: only the last segment may end in reserved zeros.
        if let Some(old) = self.file.as_mut() {
            old.trim_reserve()?;
            old.sealed();
        }
        let path = super::scan::segment_path(&self.log_dir, first);
        let mut f = self.io.open_append(&path, true, 0)?;
        f.write_all(&format::encode_header(first))?;
        f.sync_data()?;
        super::io::sync_dir(&self.log_dir)?;
        let reader = super::scan::open_segment(&path)?;
        self.file = Some(f);
        self.shared.index_mut().segments.push(Segment {
            first_position: first,
            path,
            file: Arc::new(reader),
            len: HEADER_LEN as u64,
        });
        Ok(())
    }
}
