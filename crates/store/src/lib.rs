//! Append-only, hash-chained event store.
//!
//! The store keeps *streams of opaque JSON events*. It knows nothing of incidents: a stream is
//! a UUID, an event is an id, a type name and a JSON payload. What the events mean is the
//! business of `incidentlog-projections`.
//!
//! Guarantees every backend gives (SPEC section 3 and 7):
//! - `global_position` is 1..N, gap-free, equal to commit order; a reader that saw position `p`
//!   never later finds a new event at a position `<= p`.
//! - An append is atomic: all its events land, in order, or none do.
//! - Optimistic concurrency through [`ExpectedVersion`].
//! - Idempotency by `event_id` (see [`EventStore::append`]).
//! - An `Ok` answer to an append means the events are durable (unless the operator chose
//!   relaxed durability).
//! - `recorded_at` never decreases along the global order, so "recorded at or before T" is a
//!   prefix of the log.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use uuid::Uuid;

mod chain;
mod clock;
pub mod file;
pub mod pg;
pub mod restore;
mod subscription;
pub use file::FileStore;
pub use restore::{ends_an_append, RecordedAppend, Regrouper};
pub use subscription::{subscribe, subscribe_map};

/// Identifies a stream (for incidentlog: an incident).
pub type StreamId = Uuid;

/// The version a stream must have for an append to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have exactly this many events (0: the stream must not exist yet).
    Exact(u64),
}

impl ExpectedVersion {
    /// A version no stream reaches. An append with it is never written: it is answered as an
    /// exact repeat (`duplicate`), an event-id conflict, or else `WrongExpectedVersion`, which
    /// then means "not recorded". Bulk import asks this of a line that failed validation but
    /// may repeat recorded events.
    pub const NEVER: ExpectedVersion = ExpectedVersion::Exact(u64::MAX);
}

/// An event as the caller hands it in.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    /// The payload, as the exact bytes to store. Idempotency compares these bytes, so callers
    /// should hand in a canonical serialization.
    pub data: Box<RawValue>,
}

/// One atomic append to one stream.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream_id: StreamId,
    pub expected_version: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Who appends (for incidentlog: the token's name). Stored on every event.
    pub recorded_by: String,
}

/// The answer to a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub stream_id: StreamId,
    /// The stream's version after the append (for a duplicate: the version after the original
    /// append's last event).
    pub version: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// True when every event was already recorded with identical type and data: nothing was
    /// written and the positions are the original ones.
    pub duplicate: bool,
    /// The `recorded_at` the store gave every event of this append (one time per append);
    /// `None` for a duplicate. Lets a caller that keeps its own copy of the events stamp
    /// them exactly as a reader of the log will see them.
    pub recorded_at: Option<DateTime<Utc>>,
}

/// An event as the store recorded it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: u64,
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Box<RawValue>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
    /// The record's chain hash: `hash(prev_hash || record)`, see `proto-docs/storage-format.md`.
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
}

impl RecordedEvent {
    /// Lowercase hex of [`RecordedEvent::hash`].
    pub fn hash_hex(&self) -> String {
        to_hex(&self.hash)
    }
}

/// A recorded event borrowed from a backend's read buffer (see [`EventStore::read_all_map`]).
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub global_position: u64,
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub data: &'a RawValue,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: &'a str,
    pub hash: [u8; 32],
}

impl EventRef<'_> {
    /// An owned copy.
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            global_position: self.global_position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            data: self.data.to_owned(),
            recorded_at: self.recorded_at,
            recorded_by: self.recorded_by.to_owned(),
            hash: self.hash,
        }
    }
}

impl RecordedEvent {
    /// This event as an [`EventRef`].
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            global_position: self.global_position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: &self.event_type,
            data: &self.data,
            recorded_at: self.recorded_at,
            recorded_by: &self.recorded_by,
            hash: self.hash,
        }
    }
}

/// The durable head of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last durable global position (0 for an empty log).
    pub position: u64,
    /// Chain hash of the record at `position` (all zeroes for an empty log).
    pub hash: [u8; 32],
}

impl Head {
    /// Lowercase hex of [`Head::hash`].
    pub fn hash_hex(&self) -> String {
        to_hex(&self.hash)
    }
}

/// Result of a full integrity check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head_hash: [u8; 32],
}

/// How hard an append works before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync (or a committed transaction) before every acknowledgement.
    #[default]
    Strict,
    /// Acknowledge after the write; the OS flushes later. A crash may lose the latest appends.
    Relaxed,
}

/// An API token as stored with the log. The store does not interpret `role`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: String,
    /// Hash of the secret; the secret itself is never stored.
    #[serde(with = "hex_hash")]
    pub secret_hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "wrong expected version for stream {stream_id}: expected {expected:?}, actual {actual}"
    )]
    WrongExpectedVersion {
        stream_id: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event id was already recorded with other content (or only some events of the batch
    /// were recorded before).
    #[error(
        "event id {event_id} already recorded with different content (at position {position})"
    )]
    EventIdConflict { event_id: Uuid, position: u64 },
    /// The request itself is unusable (empty batch, event too large, duplicate ids in one batch,
    /// a token name taken).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The store cannot take writes (a write or sync failed and the store must be reopened, or
    /// the database is unreachable). Nothing of the failed request is visible.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data is damaged.
    #[error("corrupt log in {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// An I/O error (transparent: its message once, not again as its own source).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// The request failed its event-id or version check: within one `append_many`, later
    /// requests depend on it and are not written.
    pub fn is_check_failure(&self) -> bool {
        matches!(
            self,
            StoreError::EventIdConflict { .. } | StoreError::WrongExpectedVersion { .. }
        )
    }
}

/// The operations every backend offers. Written once, tested once
/// (`tests/common/conformance.rs`).
pub trait EventStore: Send + Sync + 'static {
    /// Appends one batch atomically.
    ///
    /// Order of checks: if every event id is already recorded with identical stream, type and
    /// data (and the batch is exactly one earlier append's events, in order), the original
    /// outcome is returned with `duplicate: true` and nothing is written. If any id is recorded
    /// with other content, or only some ids are recorded: [`StoreError::EventIdConflict`].
    /// Then the expected version is checked: [`StoreError::WrongExpectedVersion`].
    fn append(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Several appends sharing one write and one sync. Each request is atomic on its own; the
    /// results are in request order. The requests depend on each other: once one that would
    /// write fails its event-id or version check, every later request of the call that would
    /// write fails with [`StoreError::WrongExpectedVersion`], whatever its stream (its caller
    /// may have decided it on a state that included the failed one, and must be able to
    /// record it after the failed one is settled: a bulk import keeps its line order). Exact
    /// repeats are still answered as duplicates, and a request under
    /// [`ExpectedVersion::NEVER`] (a question, never written) is answered as on its own and
    /// stops nothing.
    fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> impl Future<Output = Vec<Result<AppendOutcome, StoreError>>> + Send;

    /// Writes appends exactly as another store recorded them (a restore from an export, a move
    /// between backends; see [`Regrouper`]): their events keep their positions, `recorded_at`
    /// and hashes. Each append must continue the log: its first position is the head's next,
    /// it is not recorded before the last event, its expected version is the stream's, none
    /// of its event ids is recorded (no idempotency here), and the chain must come out with
    /// its `last_hash`. Otherwise an `InvalidInput`, `WrongExpectedVersion` or
    /// `EventIdConflict` error. On any error the appends before the failing one may be written
    /// (the file store; PostgreSQL writes all or none), never the failing one or a later one.
    /// Durable as [`EventStore::append`]; returns the new head.
    fn restore(
        &self,
        appends: Vec<RecordedAppend>,
    ) -> impl Future<Output = Result<Head, StoreError>> + Send;

    /// All events of one stream in order (empty when the stream does not exist).
    fn read_stream(
        &self,
        stream_id: StreamId,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The events of one stream with `stream_version > after_version`, at most `limit`, in
    /// order (a page of [`EventStore::read_stream`]; empty past the end or for no stream).
    fn read_stream_page(
        &self,
        stream_id: StreamId,
        after_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        async move {
            let mut all = self.read_stream(stream_id).await?;
            let start = usize::try_from(after_version)
                .unwrap_or(usize::MAX)
                .min(all.len());
            all.drain(..start);
            all.truncate(limit);
            Ok(all)
        }
    }

    /// [`EventStore::read_stream`] of several streams, in the order given: one round trip
    /// where the backend can (a bulk import reads the incidents of a batch of lines at once).
    fn read_streams(
        &self,
        stream_ids: Vec<StreamId>,
    ) -> impl Future<Output = Result<Vec<Vec<RecordedEvent>>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(stream_ids.len());
            for id in stream_ids {
                out.push(self.read_stream(id).await?);
            }
            Ok(out)
        }
    }

    /// Events with `global_position > after`, at most `limit`, in order, checksums verified.
    fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// [`EventStore::read_all`], each event handed to `map` borrowed, where it is decoded: a
    /// caller that turns events into its own form (the rebuild of the views) skips the owned
    /// copies, and its mapping runs on the backend's reading threads.
    fn read_all_map<T, F>(
        &self,
        after: u64,
        limit: usize,
        map: F,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send
    where
        T: Send + 'static,
        F: Fn(EventRef<'_>) -> T + Clone + Send + Sync + 'static,
    {
        async move {
            let events = self.read_all(after, limit).await?;
            Ok(events.iter().map(|e| map(e.borrowed())).collect())
        }
    }

    /// Whether an event with this id may be recorded: `false` is certain (as of the call),
    /// `true` may be wrong (a backend can answer from an in-memory index without reading
    /// anything). Cheap enough to ask for every event of a bulk import that failed validation.
    fn maybe_recorded(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move { Ok(self.event_by_id(event_id).await?.is_some()) }
    }

    /// The recorded event with this id, if any.
    fn event_by_id(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// The current version of a stream (0 when it does not exist).
    fn stream_version(
        &self,
        stream_id: StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Waits until every event recorded at or before `at` is durable (and readable), so that
    /// [`EventStore::position_at`] gives the same answer for `at` from then on. An event is
    /// stamped with its `recorded_at` when the writer takes it, and becomes readable after its
    /// batch's write and sync: without the wait, a question about the last few milliseconds
    /// missed events that appeared a moment later. A time not yet past by the clock that
    /// stamps ([`EventStore::now`]) cannot be settled (later appends may still be stamped at
    /// or before it): returns at once (PostgreSQL: more than a second ahead of its estimate
    /// of the database's clock).
    fn settle_recorded_at(
        &self,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = at;
        async { Ok(()) }
    }

    /// The last global position whose `recorded_at <= at` (0 if none).
    fn position_at(
        &self,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The durable head as this process knows it now.
    fn head(&self) -> Head;

    /// Follows the durable head position; changes after every durable append (from any
    /// process sharing the backend).
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// The time by the clock that stamps this log's `recorded_at`: this machine's for the
    /// file store; for PostgreSQL the database's, estimated from its last reading (the
    /// writer reads it with every batch, and `as_of` settles read it too). What decisions
    /// about "the future" (an `occurred_at` more than a day ahead, a restored log recorded
    /// ahead) must use, so that servers whose own clocks differ decide alike, and a log one
    /// of them accepted restores.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// Why the store cannot take appends now, if it knows: closed, a write or sync failed and
    /// it refuses appends until reopened (the file store), or the database is unreachable for
    /// now (PostgreSQL: cleared by itself once it answers again). Readiness reports it.
    fn unavailable_reason(&self) -> Option<String> {
        None
    }

    /// Why the store refuses appends until it is reopened, if it does: a write or sync failed,
    /// or its files changed under it (the file store). Not a closed store, nor a database away
    /// for now: a process stopping with this set did not stop cleanly.
    fn failed_reason(&self) -> Option<String> {
        None
    }

    /// Recomputes every checksum and the whole hash chain.
    fn verify(&self) -> impl Future<Output = Result<VerifyReport, StoreError>> + Send;

    /// Stops taking appends, waits for the ones in flight, syncs. Later appends fail with
    /// `Unavailable`; reads keep working.
    fn close(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Tokens kept with the log.
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// Adds a token; fails with `InvalidInput` when a token of that name exists (revoked or not).
    fn add_token(&self, token: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks a token revoked; returns false when no token has that name.
    fn revoke_token(
        &self,
        name: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Parses 64 lowercase or uppercase hex digits.
pub fn from_hex_32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        super::from_hex_32(s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Which backend a [`Store`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded file log in `data_dir`.
    File,
    /// PostgreSQL at this URL.
    Postgres(String),
}

impl FromStr for Backend {
    type Err = String;

    /// `file`, or a `postgres://` / `postgresql://` URL.
    fn from_str(s: &str) -> Result<Backend, String> {
        if s == "file" {
            Ok(Backend::File)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Checked now, so that a mistyped URL is refused before anything starts. The
            // message names what is wrong, never the URL (it may hold a password).
            tokio_postgres::Config::from_str(s).map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            Ok(Backend::Postgres(s.to_string()))
        } else {
            Err(format!(
                "unknown store {s:?}: expected \"file\" or a postgres:// URL"
            ))
        }
    }
}

/// Largest event (type + data + recorded_by bytes) every backend takes (a file store record,
/// its fixed fields included, is at most 32 MiB).
pub const MAX_EVENT_BYTES: usize = (32 << 20) - 256;
/// Largest single append, each event counted with [`RECORD_OVERHEAD`].
pub const MAX_APPEND_BYTES: usize = 256 << 20;
/// What a file store record adds to its event's bytes (framing, fixed fields, JSON keys).
pub const RECORD_OVERHEAD: usize = 148;

/// Default segment size of the file store.
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 << 20;
/// Default of [`OpenOptions::log_cache`]: the newest 64 MiB of the log (~120,000 single-event
/// appends) stay in the page cache for readers that follow the head.
pub const DEFAULT_LOG_CACHE: u64 = 64 << 20;

/// See [`OpenOptions::stalled_after`]: a healthy disk takes milliseconds.
pub const DEFAULT_STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How to open a [`Store`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub data_dir: PathBuf,
    pub backend: Backend,
    pub durability: Durability,
    /// File store: a new segment starts once the active one reaches this many bytes
    /// (clamped to 512 B..=1 GiB).
    pub segment_size: u64,
    /// File store: open for reading only (`verify`, `replay`, `export`). The data directory
    /// must exist and nothing on disk changes: a torn tail is left in place and ignored
    /// (reads end before it; `verify` reports it as damage), no segment is created, and
    /// appends are refused.
    pub read_only: bool,
    /// File store: how much of the newest log the writer leaves in the OS page cache. Older
    /// records, once synced, are dropped from it (`posix_fadvise(DONTNEED)`, as PostgreSQL
    /// does with WAL it has finished), and a sealed segment is dropped whole: the log is
    /// written once and mostly read near its head, and the memory it would hold goes back to
    /// the heap at once. Reads of older records come from the disk. `None` leaves the page
    /// cache to the kernel.
    pub log_cache: Option<u64>,
    /// File store: a write and sync of the log that has not returned after this long (a hung
    /// disk, a hard NFS mount) makes the store unavailable: `/readyz` says so.
    pub stalled_after: std::time::Duration,
    /// This process will be the log's only writer (`restore`). PostgreSQL: the open takes the
    /// log's writers' lock alone and holds it until the store is dropped, and fails while
    /// any other process writes the log; other writing opens fail while it is held. (The
    /// file store's directory lock already admits one process.)
    pub sole_writer: bool,
}

impl OpenOptions {
    /// File backend in `data_dir`, strict durability, default segment size.
    pub fn new(data_dir: impl Into<PathBuf>) -> OpenOptions {
        OpenOptions {
            data_dir: data_dir.into(),
            backend: Backend::File,
            durability: Durability::Strict,
            segment_size: DEFAULT_SEGMENT_SIZE,
            read_only: false,
            log_cache: Some(DEFAULT_LOG_CACHE),
            stalled_after: DEFAULT_STALLED_AFTER,
            sole_writer: false,
        }
    }
}

/// The backend chosen at run time.
// One Store lives per process (behind an Arc): the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    File(file::FileStore),
    Postgres(pg::PgStore),
}

/// Runs `$body` with `$s` bound to the backend inside `$store`. Add one arm per backend.
macro_rules! with_backend {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::File($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

impl Store {
    /// Opens the backend `opts.backend` names.
    pub async fn open(opts: &OpenOptions) -> Result<Store, StoreError> {
        match &opts.backend {
            Backend::File => Ok(Store::File(file::FileStore::open(opts).await?)),
            Backend::Postgres(url) if opts.read_only => {
                Ok(Store::Postgres(pg::PgStore::open_read_only(url).await?))
            }
            Backend::Postgres(url) if opts.sole_writer => Ok(Store::Postgres(
                pg::PgStore::open_sole_writer(url, opts.durability).await?,
            )),
            Backend::Postgres(url) => Ok(Store::Postgres(
                pg::PgStore::open(url, opts.durability).await?,
            )),
        }
    }
}

impl EventStore for Store {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        with_backend!(self, s => s.append(request).await)
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        with_backend!(self, s => s.append_many(requests).await)
    }

    async fn restore(&self, appends: Vec<RecordedAppend>) -> Result<Head, StoreError> {
        with_backend!(self, s => s.restore(appends).await)
    }

    async fn read_stream(&self, stream_id: StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        with_backend!(self, s => s.read_stream(stream_id).await)
    }

    async fn read_stream_page(
        &self,
        stream_id: StreamId,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        with_backend!(self, s => s.read_stream_page(stream_id, after_version, limit).await)
    }

    async fn read_streams(
        &self,
        stream_ids: Vec<StreamId>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        with_backend!(self, s => s.read_streams(stream_ids).await)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        with_backend!(self, s => s.read_all(after, limit).await)
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
        with_backend!(self, s => s.read_all_map(after, limit, map).await)
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        with_backend!(self, s => s.event_by_id(event_id).await)
    }

    async fn maybe_recorded(&self, event_id: Uuid) -> Result<bool, StoreError> {
        with_backend!(self, s => s.maybe_recorded(event_id).await)
    }

    async fn stream_version(&self, stream_id: StreamId) -> Result<u64, StoreError> {
        with_backend!(self, s => s.stream_version(stream_id).await)
    }

    async fn settle_recorded_at(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        with_backend!(self, s => s.settle_recorded_at(at).await)
    }

    async fn position_at(&self, at: DateTime<Utc>) -> Result<u64, StoreError> {
        with_backend!(self, s => s.position_at(at).await)
    }

    fn head(&self) -> Head {
        with_backend!(self, s => s.head())
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        with_backend!(self, s => s.watch_head())
    }

    fn now(&self) -> DateTime<Utc> {
        with_backend!(self, s => s.now())
    }

    fn unavailable_reason(&self) -> Option<String> {
        with_backend!(self, s => s.unavailable_reason())
    }

    fn failed_reason(&self) -> Option<String> {
        with_backend!(self, s => s.failed_reason())
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        with_backend!(self, s => s.verify().await)
    }

    async fn close(&self) -> Result<(), StoreError> {
        with_backend!(self, s => s.close().await)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        with_backend!(self, s => s.tokens().await)
    }

    async fn add_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        with_backend!(self, s => s.add_token(token).await)
    }

    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        with_backend!(self, s => s.revoke_token(name, at).await)
    }
}
