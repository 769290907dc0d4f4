//! The embedded file store: segment files, one writer task with group commit.
//!
//! Layout of a data directory:
//! - `log/<first position, 20 digits>.seg`: segments (format in `format.rs` and
//!   `proto-docs/storage-format.md`);
//! - `log/SYNCED`: the last position known synced and its hash (`synced.rs`), so that a log
//!   cut short of what was acknowledged is refused rather than served;
//! - `tokens.json`: API tokens, replaced atomically; `tokens.lock`: held while they are edited;
//! - `LOCK`: held (flock), like the directory itself, while a process has the store open.

mod cohorts;
mod format;
mod index;
mod io;
mod scan;
mod synced;
pub mod tokens;
mod writer;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

#[doc(hidden)]
pub use format::fuzz_decode;
#[doc(hidden)]
pub use io::{LogFile, LogIo, RealIo, RESERVE_BYTES};

use format::{RecordMeta, RecordView};
use index::{IdLookup, Index, Location};
use writer::{IoStage, Msg, Writer};

use crate::{
    AppendOutcome, AppendRequest, EventRef, EventStore, Head, OpenOptions, RecordedAppend,
    RecordedEvent, StoreError, TokenRecord, VerifyReport,
};

/// Tries (50 ms apart) to take the data directory's lock before giving up.
const LOCK_ATTEMPTS: u32 = 40;

/// Queued append messages before appenders wait (backpressure).
const QUEUE: usize = 1024;

/// See [`FileStore::observe_writes`].
pub(crate) type WriteObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// The longest [`EventStore::settle_recorded_at`] waits: a batch's write and sync.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// State shared by the store handle, the writer task and readers.
pub(crate) struct Shared {
    index: RwLock<Index>,
    pub(crate) head_tx: watch::Sender<u64>,
    poisoned: Mutex<Option<String>>,
    pub(crate) closed: AtomicBool,
    /// Sequence number of the last batch the I/O thread has finished with.
    pub(crate) durable_seq: AtomicU64,
    /// Batches written and events in them (for the benchmark's events-per-sync figure).
    pub(crate) writes: AtomicU64,
    pub(crate) written_events: AtomicU64,
    /// Recorded copies of repeated event ids the writer read from the page cache, and those
    /// it had to read from the disk.
    pub(crate) repeat_reads_cached: AtomicU64,
    pub(crate) repeat_reads_from_disk: AtomicU64,
    /// Told how long each batch's write and sync took ([`FileStore::observe_writes`]).
    pub(crate) write_observer: std::sync::OnceLock<WriteObserver>,
    /// Nanoseconds the I/O thread has spent on batches (for the writer's
    /// [`cohorts::Cohorts`]).
    pub(crate) io_busy_ns: AtomicU64,
    /// Of those, in writing and syncing the log file.
    pub(crate) io_disk_ns: AtomicU64,
    /// The last position the writer has stamped (or is stamping: it may run ahead for the
    /// moment between raising it and deciding a request). Set before the writer reads the
    /// clock, so that an event stamped at or before a past time is at or below it
    /// ([`EventStore::settle_recorded_at`]).
    pub(crate) stamping_upto: AtomicU64,
    /// When the I/O thread took the batch it is on, in milliseconds after `epoch` (0: idle).
    /// A write or sync that does not return (a hung disk, a hard NFS mount) makes the store
    /// unavailable once it has taken `stalled_after`.
    pub(crate) io_busy_since_ms: AtomicU64,
    epoch: Instant,
    stalled_after: Duration,
    /// Emptied batch buffers the I/O thread hands back for the next batches: a bulk batch is
    /// megabytes, and fresh memory for every one cost page faults and zeroing.
    pub(crate) spare: Mutex<Vec<writer::Buffers>>,
}

impl Shared {
    pub(crate) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    /// `at` in milliseconds after the store opened, never 0 (`io_busy_since_ms`'s "idle").
    pub(crate) fn epoch_ms(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_millis() as u64 + 1
    }
    pub(crate) fn poison_reason(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The I/O thread's running totals, for the writer's [`cohorts::Cohorts`].
    pub(crate) fn io_times(&self) -> cohorts::IoTimes {
        let nanos = |n: &AtomicU64| std::time::Duration::from_nanos(n.load(Ordering::Relaxed));
        cohorts::IoTimes {
            busy: nanos(&self.io_busy_ns),
            disk: nanos(&self.io_disk_ns),
        }
    }
    pub(crate) fn set_poisoned(&self, reason: String) {
        let mut p = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(reason);
        }
    }
}

/// The file-backed event store.
pub struct FileStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    data_dir: PathBuf,
    /// A torn tail a read-only open left in place: `verify` reports it as damage.
    torn_tail: Option<scan::TornTail>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `opts.data_dir`, recovering the log.
    pub async fn open(opts: &OpenOptions) -> Result<FileStore, StoreError> {
        let io = RealIo {
            log_cache: opts.log_cache,
        };
        Self::open_with_io(opts, Arc::new(io)).await
    }

    /// [`FileStore::open`] with a custom file layer (fault injection in tests).
    #[doc(hidden)]
    pub async fn open_with_io(
        opts: &OpenOptions,
        io: Arc<dyn LogIo>,
    ) -> Result<FileStore, StoreError> {
        let data_dir = opts.data_dir.clone();
        let log_dir = data_dir.join("log");
        let dir = data_dir.clone();
        let ld = log_dir.clone();
        let read_only = opts.read_only;
        let (lock, recovered) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            if read_only {
                match std::fs::metadata(&ld) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(at_path(
                            &ld,
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                "not a directory",
                            ),
                        ))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::Io(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "no store in {} ({} does not exist)",
                                dir.display(),
                                ld.display()
                            ),
                        )));
                    }
                    // Permission denied, say: not "no store".
                    Err(e) => return Err(at_path(&ld, e)),
                }
            } else {
                io::create_private_dir_all(&dir).map_err(|e| at_path(&dir, e))?;
                io::create_dir_like_parent(&ld).map_err(|e| at_path(&ld, e))?;
            }
            let lock = lock_data_dir(&dir, read_only)?;
            Ok((lock, scan::recover(&ld, read_only)?))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;

        let file = if read_only {
            None
        } else {
            let io = io.clone();
            let path = recovered.active_path.clone();
            let len = recovered.active_len;
            Some(
                tokio::task::spawn_blocking(move || io.open_append(&path, false, len))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??,
            )
        };
        let marker = if read_only {
            None
        } else {
            // A writing recovery synced what it kept: the mark may name its head.
            let marker = synced::Marker::start(log_dir.clone(), recovered.mark)?;
            marker.synced(recovered.index.head);
            Some(marker)
        };
        let torn_tail = recovered.torn_tail;
        let index = recovered.index;
        let head = index.head;
        let last_recorded_at = index.last_recorded_at.max(0);
        let (head_tx, _) = watch::channel(head.position);
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            head_tx,
            poisoned: Mutex::new(
                read_only
                    .then(|| "the store was opened read-only: appends are refused".to_string()),
            ),
            closed: AtomicBool::new(false),
            durable_seq: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            written_events: AtomicU64::new(0),
            repeat_reads_cached: AtomicU64::new(0),
            repeat_reads_from_disk: AtomicU64::new(0),
            write_observer: std::sync::OnceLock::new(),
            io_busy_ns: AtomicU64::new(0),
            io_disk_ns: AtomicU64::new(0),
            io_busy_since_ms: AtomicU64::new(0),
            stamping_upto: AtomicU64::new(head.position),
            epoch: Instant::now(),
            stalled_after: opts.stalled_after,
            spare: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (jobs_tx, jobs_rx) = mpsc::channel(1);
        let idle = Arc::new(tokio::sync::Notify::new());
        let stage = IoStage {
            shared: shared.clone(),
            idle: idle.clone(),
            io,
            log_dir,
            file,
            durability: opts.durability,
            unsynced: false,
            written: head,
            marker,
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("incidentlog-log-io".into())
            .spawn(move || stage.run(jobs_rx))?;
        let writer = Writer {
            shared: shared.clone(),
            jobs: jobs_tx,
            idle,
            seg_len: recovered.active_len,
            next_position: head.position + 1,
            last_hash: head.hash,
            last_recorded_at,
            segment_size: opts.segment_size.clamp(512, 1 << 30),
            closed: false,
            inflight: std::collections::VecDeque::new(),
            seq: 0,
            cohorts: cohorts::Cohorts::default(),
        };
        tokio::spawn(writer.run(rx));
        Ok(FileStore {
            shared,
            tx,
            data_dir,
            torn_tail,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bytes held by the in-memory indexes (computed from their capacities).
    pub fn index_memory_bytes(&self) -> usize {
        self.shared.index().memory_bytes()
    }

    /// (batches written, events written) since open: events per write (and per sync, with
    /// strict durability) is the group-commit factor.
    #[doc(hidden)]
    pub fn write_stats(&self) -> (u64, u64) {
        (
            self.shared.writes.load(Ordering::Relaxed),
            self.shared.written_events.load(Ordering::Relaxed),
        )
    }

    /// Calls `observe` (on the log's I/O thread: it must be quick) with the time each batch's
    /// write and, with strict durability, its `fdatasync` took; for a latency histogram. One
    /// observer per open store: a second call changes nothing.
    pub fn observe_writes(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.shared.write_observer.set(Box::new(observe));
    }

    /// (from the page cache, from the disk): how the writer read the recorded copies of
    /// repeated event ids since open.
    #[doc(hidden)]
    pub fn repeat_read_stats(&self) -> (u64, u64) {
        (
            self.shared.repeat_reads_cached.load(Ordering::Relaxed),
            self.shared.repeat_reads_from_disk.load(Ordering::Relaxed),
        )
    }

    async fn send(&self, requests: Vec<AppendRequest>) -> Result<writer::Results, StoreError> {
        self.send_msg(|reply| Msg::Append { requests, reply }).await
    }

    async fn send_msg(
        &self,
        msg: impl FnOnce(oneshot::Sender<writer::Results>) -> Msg,
    ) -> Result<writer::Results, StoreError> {
        if let Some(r) = self.unavailable_reason() {
            return Err(StoreError::Unavailable(r));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// The events of one stream, read from the segments (on a blocking thread).
fn stream_of(shared: &Shared, stream_id: Uuid) -> Result<Vec<RecordedEvent>, StoreError> {
    stream_page_of(shared, stream_id, 0, usize::MAX)
}

/// The records of `stream_id` after version `after`, at most `limit` (only those are read).
fn stream_page_of(
    shared: &Shared,
    stream_id: Uuid,
    after: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let (locs, head) = {
        let index = shared.index();
        (locate_stream(&index, &stream_id, after, limit), index.head)
    };
    read_located(&locs, head)
}

/// Where the records of `stream_id` after version `after` are, at most `limit`.
fn locate_stream(index: &Index, stream_id: &Uuid, after: u64, limit: usize) -> Vec<Location> {
    index
        .stream_positions_after(stream_id, after, limit)
        .into_iter()
        .filter_map(|p| index.locate(p))
        .collect()
}

/// Reads the records at `locs` (located while the head was `head`).
fn read_located(locs: &[Location], head: Head) -> Result<Vec<RecordedEvent>, StoreError> {
    locs.iter()
        .map(|loc| read_record(loc, Some(head)).map(|(_, e)| e))
        .collect()
}

/// Whether a process (a server) holds the data directory's lock right now: one try, no
/// waiting, nothing created. The token commands ask first, so that they edit the token file of
/// a served store at once instead of retrying the lock for [`LOCK_ATTEMPTS`].
pub fn held_by_a_process(dir: &Path) -> bool {
    if let Ok(d) = File::open(dir) {
        if matches!(d.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
            return true;
        }
    }
    let Ok(lock) = io::open_by_name(io::new_file_options(dir).read(true), &dir.join("LOCK")) else {
        return false;
    };
    lock.try_lock().is_err()
}

/// The data directory's lock, held while the store is open: the directory itself, flock-ed
/// (deleting or replacing `LOCK` cannot undo that, which once let a second server write the
/// same log), and `LOCK` as well (what earlier versions lock).
pub(crate) struct DataDirLock {
    _dir: File,
    _file: Option<File>,
}

/// Takes the data directory's lock (one process per directory). A read-only open neither
/// creates nor writes `LOCK`, and goes without it when there is none (no process ever wrote
/// there).
fn lock_data_dir(dir: &Path, read_only: bool) -> Result<DataDirLock, StoreError> {
    let in_use = || {
        StoreError::Unavailable(format!(
            "data directory {} is in use by another process",
            dir.display()
        ))
    };
    let dir_fd = File::open(dir).map_err(|e| at_path(dir, e))?;
    take(&dir_fd, in_use)?;
    let path = dir.join("LOCK");
    let file = match io::open_by_name(
        io::new_file_options(dir)
            .create(!read_only)
            .truncate(false)
            .write(!read_only)
            .read(read_only),
        &path,
    ) {
        Ok(f) => Some(f),
        Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(at_path(&path, e)),
    };
    if let Some(f) = &file {
        take(f, in_use)?;
    }
    Ok(DataDirLock {
        _dir: dir_fd,
        _file: file,
    })
}

/// An I/O error that names the file or directory it happened on (`Permission denied` alone
/// does not say which of a data directory's files to fix).
fn at_path(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// Takes an exclusive flock on `f`. A forked child briefly shares our descriptors (until its
/// exec closes them), so a lock released a moment ago may still look taken: retry for a little
/// while.
fn take(f: &File, in_use: impl Fn() -> StoreError) -> Result<(), StoreError> {
    let mut attempts = 0;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        attempts += 1;
        if attempts >= LOCK_ATTEMPTS {
            return Err(in_use());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Reads and decodes one durable record; `head` supplies the hash of the head record.
pub(crate) fn read_record(
    loc: &Location,
    head: Option<Head>,
) -> Result<(RecordMeta, RecordedEvent), StoreError> {
    let mut buf = vec![0u8; (loc.end - loc.start) as usize];
    loc.file.read_exact_at(&mut buf, loc.start)?;
    let v = format::parse_record(&buf)
        .map_err(|e| scan::corrupt(&loc.path, loc.start, format!("{e:?}")))?;
    let hash = match head {
        Some(h) if h.position == v.meta.position => h.hash,
        _ => v.hash(),
    };
    let event = v
        .to_event(hash)
        .map_err(|r| scan::corrupt(&loc.path, loc.start, r))?;
    Ok((v.meta, event))
}

/// Reads the durable record at `loc` for the writer task, which runs on one of the runtime's
/// workers (a repeat's recorded copy, to compare with it), and hands its fields and event to
/// `f`. The chain hash is not computed (a comparison needs none; the `hash` `f` sees is
/// zeros). A record in the page cache (the retry of a recent append, the usual case) is read
/// at once; one that would wait for the disk (a repeat of an old event whose pages were
/// dropped) is read with the worker's other tasks handed to another thread meanwhile, so that
/// requests do not wait on that read.
pub(crate) fn read_on_worker<T>(
    loc: &Location,
    stats: &Shared,
    f: impl FnOnce(&RecordMeta, EventRef<'_>) -> T,
) -> Result<T, StoreError> {
    let mut buf = vec![0u8; (loc.end - loc.start) as usize];
    let cached = {
        let mut slice = [std::io::IoSliceMut::new(&mut buf)];
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        // Short, or EAGAIN (not all cached), or not supported here: read the usual way.
        rustix::io::preadv2(&*loc.file, &mut slice, loc.start, flags).ok()
            == Some((loc.end - loc.start) as usize)
    };
    if cached {
        stats.repeat_reads_cached.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.repeat_reads_from_disk.fetch_add(1, Ordering::Relaxed);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| loc.file.read_exact_at(&mut buf, loc.start))?;
        } else {
            loc.file.read_exact_at(&mut buf, loc.start)?;
        }
    }
    let v = format::parse_record(&buf)
        .map_err(|e| scan::corrupt(&loc.path, loc.start, format!("{e:?}")))?;
    v.with_event([0; 32], |e| f(&v.meta, e))
        .map_err(|r| scan::corrupt(&loc.path, loc.start, r))
}

/// `recorded_at` of the durable record at `loc`, from its checked fixed fields.
fn read_recorded_at(loc: &Location) -> Result<i64, StoreError> {
    Ok(read_record(loc, None)?.0.recorded_at)
}

/// Decodes the records of `buf` (positions `from..=to`, read from `loc`), each event
/// through `map` into `out`.
fn decode_chunk<T>(
    buf: &[u8],
    loc: &Location,
    from: u64,
    to: u64,
    head: Head,
    map: &impl Fn(EventRef<'_>) -> T,
    out: &mut Vec<T>,
) -> Result<(), StoreError> {
    let mut at = 0usize;
    let mut pending: Option<(RecordView<'_>, u64)> = None;
    let mut expected = from;
    while at < buf.len() {
        let offset = loc.start + at as u64;
        let v = format::parse_record(&buf[at..])
            .map_err(|e| scan::corrupt(&loc.path, offset, format!("{e:?}")))?;
        if v.meta.position != expected {
            return Err(scan::corrupt(
                &loc.path,
                offset,
                format!(
                    "record has position {}, expected {expected}",
                    v.meta.position
                ),
            ));
        }
        at += v.total_len;
        expected += 1;
        // The previous record's chain hash is this record's prev_hash.
        if let Some((p, off)) = pending.take() {
            out.push(
                p.with_event(v.meta.prev_hash, map)
                    .map_err(|r| scan::corrupt(&loc.path, off, r))?,
            );
        }
        pending = Some((v, offset));
    }
    if let Some((p, off)) = pending {
        let hash = if p.meta.position == head.position {
            head.hash
        } else {
            p.hash()
        };
        out.push(
            p.with_event(hash, map)
                .map_err(|r| scan::corrupt(&loc.path, off, r))?,
        );
    }
    if expected != to + 1 {
        return Err(scan::corrupt(
            &loc.path,
            loc.end,
            "records missing from the segment",
        ));
    }
    Ok(())
}

/// Positions `from..=to` a `read_all(after, limit)` covers, and the durable head.
fn read_all_plan(shared: &Shared, after: u64, limit: usize) -> Option<(u64, u64, u64)> {
    let len = shared.index().len();
    if after >= len || limit == 0 {
        return None;
    }
    Some((after + 1, len.min(after.saturating_add(limit as u64)), len))
}

/// Reads positions `from..=to` (all durable), each event handed to `map`.
fn read_positions_with<T>(
    shared: &Shared,
    from: u64,
    to: u64,
    map: &impl Fn(EventRef<'_>) -> T,
) -> Result<Vec<T>, StoreError> {
    let (ranges, head) = {
        let index = shared.index();
        (index.ranges(from, to), index.head)
    };
    let mut out = Vec::with_capacity((to - from + 1) as usize);
    // The thread's read buffer from its last read: megabytes freshly allocated per read would
    // be zeroed page by page again by the kernel.
    let mut buf = READ_BUFFER.take();
    for (loc, from, to) in ranges {
        buf.clear();
        buf.resize((loc.end - loc.start) as usize, 0);
        loc.file.read_exact_at(&mut buf, loc.start)?;
        decode_chunk(&buf, &loc, from, to, head, map, &mut out)?;
    }
    if buf.capacity() <= READ_BUFFER_KEPT {
        READ_BUFFER.set(buf);
    }
    Ok(out)
}

thread_local! {
    static READ_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest read buffer a thread keeps between reads.
const READ_BUFFER_KEPT: usize = 16 << 20;

/// Large reads are split into this many events per decoding thread at least.
const PARALLEL_MIN: u64 = 4096;

/// Reads of at most this many events, all among the last `INLINE_RECENT` positions, run on
/// the calling task.
const INLINE_MAX: u64 = 128;
const INLINE_RECENT: u64 = 16 * 1024;

impl EventStore for FileStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let mut results = self.send(vec![request]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("no answer from the writer".into())))
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        let n = requests.len();
        if n == 0 {
            return Vec::new();
        }
        match self.send(requests).await {
            Ok(results) => results,
            Err(e) => {
                let reason = e.to_string();
                (0..n)
                    .map(|_| Err(StoreError::Unavailable(reason.clone())))
                    .collect()
            }
        }
    }

    async fn restore(&self, appends: Vec<RecordedAppend>) -> Result<Head, StoreError> {
        let Some(last) = appends.last() else {
            return Ok(self.head());
        };
        let head = Head {
            position: last.last_position(),
            hash: last.last_hash,
        };
        let appends = appends
            .into_iter()
            .map(|a| {
                let pin = writer::Pin {
                    recorded_at: a.recorded_at.timestamp_micros(),
                    first_position: a.first_position,
                    last_hash: a.last_hash,
                };
                (a.request, pin)
            })
            .collect();
        let results = self
            .send_msg(|reply| Msg::Restore { appends, reply })
            .await?;
        for r in results {
            r?;
        }
        Ok(head)
    }

    async fn read_stream(&self, stream_id: Uuid) -> Result<Vec<RecordedEvent>, StoreError> {
        self.blocking(move |shared| stream_of(shared, stream_id))
            .await
    }

    async fn read_stream_page(
        &self,
        stream_id: Uuid,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.blocking(move |shared| stream_page_of(shared, stream_id, after_version, limit))
            .await
    }

    /// All on one blocking thread: one hop instead of one per stream.
    async fn read_streams(
        &self,
        stream_ids: Vec<Uuid>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        // Where every stream's records are, under one read lock. Streams that do not exist
        // yet (a bulk import asks for its new incidents by the thousand) need no read at all:
        // when none has records the answer needs no blocking thread, whose wait for a busy
        // core was ~18% of an offline import's time.
        let (locations, head) = {
            let index = self.shared.index();
            let locations: Vec<Vec<Location>> = stream_ids
                .iter()
                .map(|id| locate_stream(&index, id, 0, usize::MAX))
                .collect();
            (locations, index.head)
        };
        if locations.iter().all(Vec::is_empty) {
            return Ok(locations.into_iter().map(|_| Vec::new()).collect());
        }
        self.blocking(move |_| {
            locations
                .iter()
                .map(|locs| read_located(locs, head))
                .collect()
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all_map(after, limit, |e| e.to_recorded()).await
    }

    async fn read_all_map<T, F>(
        &self,
        after: u64,
        limit: usize,
        map: F,
    ) -> Result<Vec<T>, StoreError>
    where
        T: Send + 'static,
        F: Fn(EventRef<'_>) -> T + Clone + Send + Sync + 'static,
    {
        let Some((from, to, head)) = read_all_plan(&self.shared, after, limit) else {
            return Ok(Vec::new());
        };
        let n = to - from + 1;
        // A few records just written are in the page cache: reading them costs a few
        // microseconds, less than handing the read to a blocking thread and waking this task
        // again (the live views and feeds read this way after every commit). Older records
        // may need the disk, which must not stall this runtime thread.
        if n <= INLINE_MAX && head - to < INLINE_RECENT {
            return read_positions_with(&self.shared, from, to, &map);
        }
        // Decoding (checksums, JSON) is the cost: spread a large read over the cores.
        let parts = std::thread::available_parallelism()
            .map_or(1, |p| p.get() as u64)
            .min(n / PARALLEL_MIN)
            .max(1);
        if parts == 1 {
            return self
                .blocking(move |shared| read_positions_with(shared, from, to, &map))
                .await;
        }
        let step = n.div_ceil(parts);
        let tasks: Vec<_> = (0..parts)
            .map(|k| {
                let a = from + k * step;
                let b = to.min(a + step - 1);
                let map = map.clone();
                self.blocking(move |shared| read_positions_with(shared, a, b, &map))
            })
            .collect();
        let mut out = Vec::with_capacity(n as usize);
        for part in futures_util::future::join_all(tasks).await {
            out.extend(part?);
        }
        Ok(out)
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.blocking(move |shared| {
            let (loc, head) = {
                let index = shared.index();
                let loc = match index.lookup_id(&event_id) {
                    IdLookup::Absent => None,
                    IdLookup::Exact(p) | IdLookup::Candidate(p) => index.locate(p),
                };
                (loc, index.head)
            };
            let Some(loc) = loc else { return Ok(None) };
            let (meta, event) = read_record(&loc, Some(head))?;
            Ok((meta.event_id == event_id).then_some(event))
        })
        .await
    }

    async fn stream_version(&self, stream_id: Uuid) -> Result<u64, StoreError> {
        Ok(self.shared.index().stream_version(&stream_id))
    }

    /// From the index alone (no read, no thread hop): absent is certain; a 64-bit key match
    /// is only probable.
    async fn maybe_recorded(&self, event_id: Uuid) -> Result<bool, StoreError> {
        Ok(!matches!(
            self.shared.index().lookup_id(&event_id),
            IdLookup::Absent
        ))
    }

    async fn settle_recorded_at(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        // Read the clock before the writer's mark: whatever it stamps after the mark was read
        // is stamped later than now, so after `at`.
        if at >= chrono::Utc::now() {
            return Ok(());
        }
        // What the writer has stamped now, not what it stamps while this waits (that is after
        // `at`): read once, and only lowered (a request it refused gives its positions back).
        let mut stamped = self.shared.stamping_upto.load(Ordering::SeqCst);
        // Stamps never go back: once the durable head was stamped after `at`, nothing still on
        // its way can have been stamped at or before it.
        if self.shared.index().last_recorded_at > at.timestamp_micros() {
            return Ok(());
        }
        let mut head = self.shared.head_tx.subscribe();
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            stamped = stamped.min(self.shared.stamping_upto.load(Ordering::SeqCst));
            if *head.borrow_and_update() >= stamped {
                return Ok(());
            }
            if let Some(why) = self.unavailable_reason() {
                return Err(StoreError::Unavailable(why));
            }
            // The mark may have run ahead of a request the writer then refused: look again
            // after a moment even if the head does not move.
            let step = tokio::time::Instant::now() + Duration::from_millis(1);
            if step > deadline {
                return Err(StoreError::Unavailable(format!(
                    "events stamped before {at} were not durable within {SETTLE_WAIT:?}"
                )));
            }
            let _ = tokio::time::timeout_at(step, head.changed()).await;
        }
    }

    async fn position_at(&self, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let micros = at.timestamp_micros();
        let Some((lo, hi)) = self.shared.index().position_at_range(micros) else {
            return Ok(0);
        };
        if lo == hi {
            return Ok(lo);
        }
        // Binary search the few candidates on disk (fixed fields only, no JSON).
        self.blocking(move |shared| {
            let (mut lo, mut hi) = (lo, hi);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                let loc = shared.index().locate(mid);
                let Some(loc) = loc else { break };
                if read_recorded_at(&loc)? <= micros {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            Ok(lo)
        })
        .await
    }

    fn head(&self) -> Head {
        self.shared.index().head
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head_tx.subscribe()
    }

    fn unavailable_reason(&self) -> Option<String> {
        if let Some(r) = self.shared.poison_reason() {
            return Some(r);
        }
        let since = self.shared.io_busy_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            let now = self.shared.epoch_ms(Instant::now());
            let busy = Duration::from_millis(now.saturating_sub(since));
            if busy >= self.shared.stalled_after {
                return Some(format!(
                    "a write or sync of the log has not returned for {} s (a hung disk?)",
                    busy.as_secs()
                ));
            }
        }
        self.shared
            .closed
            .load(Ordering::SeqCst)
            .then(|| "the store is closed".to_string())
    }

    fn failed_reason(&self) -> Option<String> {
        self.shared.poison_reason()
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        if let Some(torn) = &self.torn_tail {
            return Err(torn.to_error());
        }
        self.blocking(|shared| {
            let (segments, head) = {
                let index = shared.index();
                let segs: Vec<_> = index
                    .segments
                    .iter()
                    .map(|s| (s.path.clone(), s.file.clone(), s.first_position, s.len))
                    .collect();
                (segs, index.head)
            };
            scan::verify(&segments, head)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { reply }).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    // Token edits are serialized by the token file's own lock (`tokens::add`/`revoke`), which
    // also covers other processes; reads need none (the file is replaced whole).
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let dir = self.data_dir.clone();
        self.blocking(move |_| tokens::load(&dir)).await
    }

    async fn add_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let dir = self.data_dir.clone();
        self.blocking(move |_| tokens::add(&dir, token)).await
    }

    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let dir = self.data_dir.clone();
        let name = name.to_string();
        self.blocking(move |_| tokens::revoke(&dir, &name, at))
            .await
    }
}
