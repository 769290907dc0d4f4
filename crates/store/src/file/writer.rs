//! The single writer task: group commit of queued appends, one write and one sync per batch.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::format::{self, RecordMeta, HEADER_LEN};
use super::index::{IdLookup, MixState, Segment, MAX_POSITION};
use super::io::{LogFile, LogIo};
use super::{read_record, Shared};
use crate::{AppendOutcome, AppendRequest, Durability, ExpectedVersion, Head, StoreError};

/// A batch stops growing at this many events or bytes (a single larger append still goes).
const MAX_BATCH_EVENTS: usize = 8192;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Largest single append.
const MAX_APPEND_BYTES: usize = 256 << 20;
/// How often the writer yields to let more appends join a batch before writing it.
const MAX_YIELDS: usize = 4;

pub(crate) type Results = Vec<Result<AppendOutcome, StoreError>>;

pub(crate) enum Msg {
    Append {
        requests: Vec<AppendRequest>,
        reply: oneshot::Sender<Results>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub io: Arc<dyn LogIo>,
    pub log_dir: PathBuf,
    pub file: Option<Box<dyn LogFile>>,
    pub seg_len: u64,
    pub next_position: u64,
    pub last_hash: [u8; 32],
    pub last_recorded_at: i64,
    pub durability: Durability,
    pub segment_size: u64,
    pub buf: Vec<u8>,
    /// Relaxed durability: bytes written but not yet synced.
    pub unsynced: bool,
    /// A close request was processed: appends queued after it fail.
    pub closed: bool,
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

/// Events accepted earlier in the batch, not yet durable.
#[derive(Default)]
struct BatchCtx {
    streams: HashMap<Uuid, u64, MixState>,
    ids: HashMap<Uuid, (usize, usize, usize, RecordMeta), MixState>,
    /// (segment offset, recorded_at, stream, event id) of every record in the buffer.
    entries: Vec<(u32, i64, Uuid, Uuid)>,
}

fn request_bytes(r: &AppendRequest) -> usize {
    r.events
        .iter()
        .map(|e| format::encoded_len_estimate(&e.event_type, &r.recorded_by, &e.data))
        .sum()
}

impl Writer {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<(Vec<AppendRequest>, oneshot::Sender<Results>)> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut events = 0usize;
            let mut bytes = 0usize;
            let mut close = None;
            let mut yields = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append { requests, reply } => {
                        events += requests.iter().map(|r| r.events.len()).sum::<usize>();
                        bytes += requests.iter().map(request_bytes).sum::<usize>();
                        batch.push((requests, reply));
                    }
                    Msg::Close { reply } => {
                        close = Some(reply);
                        break;
                    }
                }
                if events >= MAX_BATCH_EVENTS || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
                if next.is_none() && yields < MAX_YIELDS {
                    // Appenders woken by the previous batch's answers are still preparing
                    // their next request: let them run, so they share this sync.
                    yields += 1;
                    tokio::task::yield_now().await;
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch)).await;
            }
            if let Some(reply) = close {
                let _ = reply.send(self.close().await);
            }
        }
        // Every handle is gone: flush what relaxed durability left unsynced.
        if self.unsynced && self.shared.poison_reason().is_none() {
            let _ = self.sync().await;
        }
    }

    fn unavailable(&self) -> Option<String> {
        if let Some(reason) = self.shared.poison_reason() {
            return Some(reason);
        }
        if self.closed || self.file.is_none() {
            return Some("the store is closed".into());
        }
        None
    }

    fn poison(&mut self, reason: String) {
        tracing::error!(%reason, "log write failed: refusing appends until the store is reopened");
        self.shared.set_poisoned(reason);
    }

    async fn commit(&mut self, batch: Vec<(Vec<AppendRequest>, oneshot::Sender<Results>)>) {
        let fail_all = |batch: Vec<(Vec<AppendRequest>, oneshot::Sender<Results>)>, why: &str| {
            for (reqs, reply) in batch {
                let _ = reply.send(
                    reqs.iter()
                        .map(|_| Err(StoreError::Unavailable(why.to_string())))
                        .collect(),
                );
            }
        };
        if let Some(why) = self.unavailable() {
            fail_all(batch, &why);
            return;
        }
        if self.seg_len >= self.segment_size && self.seg_len > HEADER_LEN as u64 {
            if let Err(e) = self.roll().await {
                let why = format!("starting a new segment failed: {e}");
                self.poison(why.clone());
                fail_all(batch, &why);
                return;
            }
        }
        let now = chrono::Utc::now()
            .timestamp_micros()
            .max(self.last_recorded_at);
        let mut ctx = BatchCtx::default();
        self.buf.clear();
        let mut results: Vec<Results> = Vec::with_capacity(batch.len());
        for (mi, (reqs, _)) in batch.iter().enumerate() {
            let mut rs = Vec::with_capacity(reqs.len());
            for (ri, req) in reqs.iter().enumerate() {
                rs.push(self.accept(&batch, mi, ri, req, &mut ctx, now));
            }
            results.push(rs);
        }
        if !ctx.entries.is_empty() {
            if let Err(why) = self.write_batch().await {
                self.poison(why.clone());
                fail_all(batch, &why);
                return;
            }
            self.last_recorded_at = now;
            let head = Head {
                position: self.next_position - 1,
                hash: self.last_hash,
            };
            {
                let mut index = self.shared.index_mut();
                for (offset, at, stream, id) in ctx.entries.drain(..) {
                    index.push(offset, at, stream, id);
                }
                if let Some(s) = index.segments.last_mut() {
                    s.len = self.seg_len;
                }
                index.head = head;
            }
            // Readers see the events through the index first, then learn of the new head.
            self.shared.head_tx.send_replace(head.position);
        }
        for ((_, reply), rs) in batch.into_iter().zip(results) {
            let _ = reply.send(rs);
        }
    }

    /// One write and (strict) one sync of the buffer. On failure the caller poisons the store.
    async fn write_batch(&mut self) -> Result<(), String> {
        let Some(mut file) = self.file.take() else {
            return Err("the store is closed".into());
        };
        let buf = std::mem::take(&mut self.buf);
        let strict = self.durability == Durability::Strict;
        let joined = tokio::task::spawn_blocking(move || {
            let r = file
                .write_all(&buf)
                .map_err(|e| format!("write failed: {e}"))
                .and_then(|()| {
                    if strict {
                        file.sync_data()
                            .map_err(|e| format!("fdatasync failed: {e}"))
                    } else {
                        Ok(())
                    }
                });
            (file, buf, r)
        })
        .await;
        match joined {
            Ok((file, buf, r)) => {
                self.file = Some(file);
                let written = buf.len() as u64;
                self.buf = buf;
                r?;
                self.seg_len += written;
                self.unsynced = !strict;
                Ok(())
            }
            Err(e) => Err(format!("writer I/O task failed: {e}")),
        }
    }

    async fn sync(&mut self) -> Result<(), String> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = file.sync_data();
            (file, r)
        })
        .await;
        match joined {
            Ok((file, r)) => {
                self.file = Some(file);
                r.map_err(|e| format!("fdatasync failed: {e}"))?;
                self.unsynced = false;
                Ok(())
            }
            Err(e) => Err(format!("writer I/O task failed: {e}")),
        }
    }

    async fn close(&mut self) -> Result<(), StoreError> {
        self.closed = true;
        self.shared.closed.store(true, Ordering::SeqCst);
        if self.shared.poison_reason().is_none() && self.unsynced {
            if let Err(why) = self.sync().await {
                self.poison(why.clone());
                return Err(StoreError::Unavailable(why));
            }
        }
        self.file = None;
        Ok(())
    }

    /// Seals the active segment and starts the next one at `next_position`.
    async fn roll(&mut self) -> Result<(), String> {
        if self.unsynced {
            self.sync().await?;
        }
        let first = self.next_position;
        let path = super::scan::segment_path(&self.log_dir, first);
        let io = self.io.clone();
        let dir = self.log_dir.clone();
        let p = path.clone();
        let joined = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut f = io.open_append(&p, true)?;
            f.write_all(&format::encode_header(first))?;
            f.sync_data()?;
            super::io::sync_dir(&dir)?;
            let reader = std::fs::File::open(&p)?;
            Ok((f, reader))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (f, reader) = joined.map_err(|e| e.to_string())?;
        self.file = Some(f);
        self.seg_len = HEADER_LEN as u64;
        self.shared.index_mut().segments.push(Segment {
            first_position: first,
            path,
            file: Arc::new(reader),
            len: HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Looks an event id up among the events of this batch, then in the durable log.
    fn existing(
        &self,
        batch: &[(Vec<AppendRequest>, oneshot::Sender<Results>)],
        ctx: &BatchCtx,
        id: &Uuid,
    ) -> Result<Option<Existing>, StoreError> {
        if let Some((mi, ri, ei, meta)) = ctx.ids.get(id) {
            let req = &batch[*mi].0[*ri];
            let e = &req.events[*ei];
            return Ok(Some(Existing {
                position: meta.position,
                stream_id: meta.stream_id,
                stream_version: meta.stream_version,
                event_type: e.event_type.clone(),
                data: e.data.get().to_string(),
                append_index: meta.append_index,
                append_len: meta.append_len,
            }));
        }
        let loc = {
            let index = self.shared.index();
            match index.lookup_id(id) {
                IdLookup::Absent => return Ok(None),
                IdLookup::Exact(p) | IdLookup::Candidate(p) => index.locate(p),
            }
        };
        let Some(loc) = loc else { return Ok(None) };
        let (meta, event) = read_record(&loc, None)?;
        if meta.event_id != *id {
            return Ok(None);
        }
        Ok(Some(Existing {
            position: meta.position,
            stream_id: meta.stream_id,
            stream_version: meta.stream_version,
            event_type: event.event_type,
            data: event.data.get().to_string(),
            append_index: meta.append_index,
            append_len: meta.append_len,
        }))
    }

    /// Validates one request against the log and the batch so far; encodes it when accepted.
    fn accept(
        &mut self,
        batch: &[(Vec<AppendRequest>, oneshot::Sender<Results>)],
        mi: usize,
        ri: usize,
        req: &AppendRequest,
        ctx: &mut BatchCtx,
        now: i64,
    ) -> Result<AppendOutcome, StoreError> {
        let n = req.events.len();
        if n == 0 {
            return Err(StoreError::InvalidInput(
                "an append needs at least one event".into(),
            ));
        }
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
            found.push(self.existing(batch, ctx, &e.event_id)?);
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
        let current = match ctx.streams.get(&req.stream_id) {
            Some(v) => *v,
            None => self.shared.index().stream_version(&req.stream_id),
        };
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
        let mark = (self.buf.len(), self.last_hash, ctx.entries.len());
        let mut metas = Vec::with_capacity(n);
        for (i, e) in req.events.iter().enumerate() {
            let offset = self.seg_len + self.buf.len() as u64;
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
                &mut self.buf,
                &meta,
                &e.event_type,
                &req.recorded_by,
                &e.data,
            ) {
                Ok(hash) => self.last_hash = hash,
                Err(reason) => {
                    self.buf.truncate(mark.0);
                    self.last_hash = mark.1;
                    ctx.entries.truncate(mark.2);
                    return Err(StoreError::InvalidInput(reason));
                }
            }
            let Ok(offset) = u32::try_from(offset) else {
                self.buf.truncate(mark.0);
                self.last_hash = mark.1;
                ctx.entries.truncate(mark.2);
                return Err(StoreError::Unavailable("segment offset overflow".into()));
            };
            ctx.entries.push((offset, now, req.stream_id, e.event_id));
            metas.push(meta);
        }
        for (ei, meta) in metas.into_iter().enumerate() {
            ctx.ids.insert(meta.event_id, (mi, ri, ei, meta));
        }
        ctx.streams.insert(req.stream_id, current + n as u64);
        self.next_position += n as u64;
        Ok(AppendOutcome {
            stream_id: req.stream_id,
            version: current + n as u64,
            first_position: first,
            last_position: first + n as u64 - 1,
            duplicate: false,
        })
    }
}
