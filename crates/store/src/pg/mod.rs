//! The PostgreSQL backend: the same guarantees as the file store, several processes on one
//! database.
//!
//! - One writer task per process batches concurrent appends into one transaction (group
//!   commit) and assigns positions under a transaction-level advisory lock, so positions are
//!   gap-free and equal to commit order across every process ([`writer`]).
//! - Readers use a few pipelined connections ([`conn::Pool`]); everything committed is
//!   durable (`synchronous_commit = on` unless relaxed durability was chosen).
//! - The durable head follows `LISTEN/NOTIFY` on a dedicated connection, with polling every
//!   500 ms as the fallback and after every reconnect, so each process sees every append.
//! - A database that goes away makes operations fail fast with `Unavailable` (timeouts on
//!   every call); connections come back by themselves when it returns.
//!
//! Design and schema: `proto-docs/postgres.md`.

mod conn;
mod record;
mod schema;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::{MAX_APPEND_BYTES, MAX_EVENT_BYTES};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Config;
use uuid::Uuid;

use self::conn::{parse_config, timed, Pool, OP_TIMEOUT};
use self::record::{corrupt, from_row, stored_from_row, to_u64};
use self::writer::Msg;
use crate::{
    AppendOutcome, AppendRequest, Durability, EventStore, Head, RecordedAppend, RecordedEvent,
    StoreError, StreamId, TokenRecord, VerifyReport,
};

/// The newest database schema version this build knows.
pub const SCHEMA_VERSION: i32 = schema::SCHEMA_VERSION;

/// A head poll unanswered this long makes the store unavailable for readiness while it waits
/// (the poll itself waits up to `OP_TIMEOUT`: /readyz said ok through the first 15 s of a
/// hung database).
const HEAD_POLL_SLOW: Duration = Duration::from_secs(2);
/// How often the head is polled when notifications are quiet (and the fallback when LISTEN
/// is not delivering).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The least time between two reads of the head that notifications ask for.
const NOTIFIED_POLL_GAP: Duration = Duration::from_millis(5);
/// Read connections per process (each pipelines any number of concurrent queries).
const READ_CONNECTIONS: usize = 4;
/// Rows per query when `verify` walks the log.
const VERIFY_PAGE: i64 = 10_000;

/// State shared by the store handle and its background tasks.
pub(crate) struct Shared {
    head: Mutex<Head>,
    head_tx: watch::Sender<u64>,
    /// Why the head follower cannot reach the database, while it cannot (readiness).
    unreachable: Mutex<Option<String>>,
    /// The database's clock as last read, and when (this machine's monotonic clock, which
    /// no step of the wall clock moves): the database's clock stamps `recorded_at`
    /// ([`EventStore::now`]).
    db_clock: Mutex<(DateTime<Utc>, std::time::Instant)>,
}

impl Shared {
    /// Notes a reading of the database's clock (`db`) just received. (Off by the time the
    /// answer took to come back, a millisecond or less: the decisions it serves allow a
    /// minute or a day.)
    pub(crate) fn observe_db_clock(&self, db: DateTime<Utc>) {
        *self.db_clock.lock().unwrap_or_else(|p| p.into_inner()) = (db, std::time::Instant::now());
    }

    /// The database's clock now, as estimated from its last reading.
    fn db_now(&self) -> DateTime<Utc> {
        let (db, at) = *self.db_clock.lock().unwrap_or_else(|p| p.into_inner());
        db + chrono::TimeDelta::from_std(at.elapsed()).unwrap_or_default()
    }

    /// Moves the known durable head forward (never back).
    pub(crate) fn advance(&self, head: Head) {
        let mut current = match self.head.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if head.position > current.position {
            *current = head;
            self.head_tx.send_replace(head.position);
        }
    }

    fn head(&self) -> Head {
        match self.head.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The follower reached the database (`None`) or failed to (why).
    fn set_unreachable(&self, why: Option<String>) {
        let mut current = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() && why.is_some() {
            tracing::warn!(
                reason = why.as_deref().unwrap_or_default(),
                "PostgreSQL unreachable"
            );
        } else if current.is_some() && why.is_none() {
            tracing::info!("PostgreSQL reachable again");
        }
        *current = why;
    }

    fn unreachable(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An [`EventStore`] on a PostgreSQL database.
pub struct PgStore {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    /// `as_of` settles take turns on a connection of their own (each waits on the log's
    /// append lock: on the read connections, a few would hold up every other read), and
    /// the database time of the last one's lock (a later settle for a time before it has
    /// nothing to wait for).
    settles: tokio::sync::Mutex<Option<DateTime<Utc>>>,
    settle_conn: Pool,
    writer: mpsc::Sender<Msg>,
    versions: mpsc::Sender<VersionAsk>,
    closed: AtomicBool,
    durability: Durability,
    /// Opened by `open_read_only`: no writer runs, appends are refused.
    read_only: bool,
    key: writer::LogKey,
}

/// How a store is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    Writer,
    SoleWriter,
}

/// Why a sole writer (`restore`) cannot open.
pub(crate) const OTHER_WRITERS: &str =
    "another process writes this log (a server, an import, a token command or a restore)";
/// Why a writer cannot open, or a server is not ready, while a restore runs.
pub(crate) const RESTORING: &str = "a restore is writing this log: wait for it to end";

/// What appends to a store opened read-only get.
const READ_ONLY: &str = "the store was opened read-only: appends are refused";

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("head", &self.shared.head())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, applies missing migrations, reads the head and starts the writer and the head
    /// follower. `url` is a `postgres://` or `postgresql://` URL (libpq key=value works too).
    pub async fn open(url: &str, durability: Durability) -> Result<PgStore, StoreError> {
        PgStore::open_as(url, durability, Mode::Writer).await
    }

    /// [`PgStore::open`] for the log's only writer (`restore`, see
    /// `OpenOptions::sole_writer`).
    pub async fn open_sole_writer(
        url: &str,
        durability: Durability,
    ) -> Result<PgStore, StoreError> {
        PgStore::open_as(url, durability, Mode::SoleWriter).await
    }

    /// Opens for reading only (the offline `verify`, `replay`, `export`, `token list`): creates
    /// and migrates nothing, so a role with only SELECT, or a read-only database (a hot
    /// standby, `default_transaction_read_only`), will do; the schema must be there and
    /// current. Nothing follows the head after it is read: such a command reads the log up to
    /// where it stood when it began.
    pub async fn open_read_only(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_as(url, Durability::Strict, Mode::ReadOnly).await
    }

    async fn open_as(url: &str, durability: Durability, mode: Mode) -> Result<PgStore, StoreError> {
        let read_only = mode == Mode::ReadOnly;
        let config = parse_config(url)?;
        let client = conn::connect(&config).await?;
        // Event data is UTF-8 text: another server encoding would refuse some of it at insert
        // time, failing whole batches again and again. Refused before anything is created.
        let encoding: String = timed(
            "open",
            OP_TIMEOUT,
            client.query_one("SHOW server_encoding", &[]),
        )
        .await?
        .get(0);
        if encoding != "UTF8" {
            return Err(StoreError::Unavailable(format!(
                "the database's encoding is {encoding}; incidentlog needs UTF8 \
                 (CREATE DATABASE ... ENCODING 'UTF8')"
            )));
        }
        if read_only {
            schema::check(&client).await?;
        } else {
            schema::migrate(&client).await?;
        }
        let key = log_key(&client).await?;
        // The writers' lock: a restore (the sole writer) holds it alone, every other writing
        // process shared (its follower's connection, for as long as that lives). A restore
        // writes events recorded in the past: a server running meanwhile would change what
        // it answered about those moments.
        let sole_writer = match mode {
            Mode::ReadOnly => None,
            Mode::SoleWriter => {
                Some(writer::WriterConn::open(&config, durability, key, true).await?)
            }
            Mode::Writer => {
                let row = timed(
                    "open",
                    OP_TIMEOUT,
                    client.query_one(
                        &format!(
                            "SELECT pg_try_advisory_lock_shared({0}) \
                             AND pg_advisory_unlock_shared({0})",
                            key.writers_lock()
                        ),
                        &[],
                    ),
                )
                .await?;
                if !row.get::<_, bool>(0) {
                    return Err(StoreError::Unavailable(RESTORING.to_owned()));
                }
                None
            }
        };
        let head = read_head(&client).await?;
        let db_clock: DateTime<Utc> = timed(
            "open",
            OP_TIMEOUT,
            client.query_one("SELECT clock_timestamp()", &[]),
        )
        .await?
        .get(0);
        drop(client);

        let (head_tx, _) = watch::channel(head.position);
        let shared = Arc::new(Shared {
            head: Mutex::new(head),
            head_tx,
            unreachable: Mutex::new(None),
            db_clock: Mutex::new((db_clock, std::time::Instant::now())),
        });
        let (tx, rx) = mpsc::channel(1024);
        let shares_writers_lock = sole_writer.is_none();
        if !read_only {
            tokio::spawn(writer::run(
                Arc::downgrade(&shared),
                config.clone(),
                durability,
                key,
                rx,
                sole_writer,
            ));
        }
        if !read_only {
            tokio::spawn(follow_head(
                Arc::downgrade(&shared),
                config.clone(),
                key,
                shares_writers_lock,
            ));
        }
        let settle_conn = Pool::new(config.clone(), 1);
        let pool = Arc::new(Pool::new(config, READ_CONNECTIONS));
        let (versions, asks) = mpsc::channel(4096);
        tokio::spawn(read_versions(Arc::clone(&pool), asks));
        Ok(PgStore {
            shared,
            pool,
            settles: tokio::sync::Mutex::new(None),
            settle_conn,
            writer: tx,
            versions,
            closed: AtomicBool::new(false),
            durability,
            read_only,
            key,
        })
    }

    async fn submit(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendOutcome, StoreError>> {
        let n = requests.len();
        let closed = || {
            (0..n)
                .map(|_| Err(StoreError::Unavailable("store is closed".to_owned())))
                .collect()
        };
        if self.read_only {
            return (0..n)
                .map(|_| Err(StoreError::Unavailable(READ_ONLY.to_owned())))
                .collect();
        }
        if self.closed.load(Ordering::Acquire) {
            return closed();
        }
        let (reply, answer) = oneshot::channel();
        if self
            .writer
            .send(Msg::Append(requests, reply))
            .await
            .is_err()
        {
            return closed();
        }
        answer.await.unwrap_or_else(|_| closed())
    }

    async fn read_events(
        &self,
        what: &str,
        query: impl FnOnce(&conn::PooledConn) -> tokio_postgres::Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.pool.get().await?;
        let stmt = query(&c);
        timed(what, OP_TIMEOUT, c.client.query(&stmt, params)).await
    }
}

/// Rejects what no backend may store, before it reaches the writer.
fn validate(request: &AppendRequest) -> Result<(), StoreError> {
    if request.events.is_empty() {
        return Err(StoreError::InvalidInput(
            "an append needs at least one event".to_owned(),
        ));
    }
    let mut ids = HashSet::with_capacity(request.events.len());
    let mut total = 0usize;
    for e in &request.events {
        if !ids.insert(e.event_id) {
            return Err(StoreError::InvalidInput(format!(
                "event id {} appears twice in one append",
                e.event_id
            )));
        }
        let size = e.data.get().len() + e.event_type.len() + request.recorded_by.len();
        if size > MAX_EVENT_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "event too large ({size} bytes, at most {MAX_EVENT_BYTES})"
            )));
        }
        // Counted as the file store counts it, so both refuse the same appends and every
        // stored log restores into either.
        total += size + crate::RECORD_OVERHEAD;
    }
    if total > MAX_APPEND_BYTES {
        return Err(StoreError::InvalidInput(format!(
            "append too large (at most {MAX_APPEND_BYTES} bytes)"
        )));
    }
    Ok(())
}

async fn read_head(client: &tokio_postgres::Client) -> Result<Head, StoreError> {
    let row = timed(
        "read head",
        OP_TIMEOUT,
        client.query_opt(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1",
            &[],
        ),
    )
    .await?;
    head_from_row(row.as_ref())
}

fn head_from_row(row: Option<&tokio_postgres::Row>) -> Result<Head, StoreError> {
    let Some(row) = row else {
        return Ok(Head::default());
    };
    let position: i64 = row
        .try_get(0)
        .map_err(|e| corrupt(0, format!("head position: {e}")))?;
    let hash: &[u8] = row
        .try_get(1)
        .map_err(|e| corrupt(position, format!("hash: {e}")))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt(position, "hash is not 32 bytes"))?;
    Ok(Head {
        position: to_u64(position, position, "position")?,
        hash,
    })
}

type VersionAsk = (StreamId, oneshot::Sender<Result<u64, StoreError>>);

/// Answers `stream_version` calls: the service asks once per append, so under load many asks
/// are queued at once and share one query (fewer round trips and statements for the server).
async fn read_versions(pool: Arc<Pool>, mut asks: mpsc::Receiver<VersionAsk>) {
    const MAX_GROUP: usize = 1024;
    while let Some(first) = asks.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match asks.try_recv() {
                Ok(ask) => group.push(ask),
                Err(_) => break,
            }
        }
        let mut ids: Vec<StreamId> = group.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = async {
            let c = pool.get().await?;
            timed(
                "stream_version",
                OP_TIMEOUT,
                c.client.query(&c.stmts.stream_version, &[&ids]),
            )
            .await
        }
        .await;
        match rows {
            Ok(rows) => {
                let versions: HashMap<StreamId, u64> = rows
                    .iter()
                    .map(|r| {
                        let v: Option<i64> = r.get(1);
                        (r.get(0), v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
                    })
                    .collect();
                for (id, reply) in group {
                    let _ = reply.send(Ok(versions.get(&id).copied().unwrap_or(0)));
                }
            }
            Err(e) => {
                let message = match e {
                    StoreError::Unavailable(m) => m,
                    other => other.to_string(),
                };
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// This log's key: the schema its `events` table lives in, as the search path resolves it
/// (see [`writer::LogKey`]).
async fn log_key(client: &tokio_postgres::Client) -> Result<writer::LogKey, StoreError> {
    let row = timed(
        "open",
        OP_TIMEOUT,
        client.query_one(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = 'events'::regclass",
            &[],
        ),
    )
    .await?;
    let schema: String = row.get(0);
    Ok(writer::LogKey::of_schema(&schema))
}

/// Follows appends of every process: LISTEN on a dedicated connection, poll as the fallback.
async fn follow_head(
    shared: Weak<Shared>,
    config: Config,
    key: writer::LogKey,
    shares_writers_lock: bool,
) {
    loop {
        if shared.strong_count() == 0 {
            return;
        }
        match conn::connect_listening(&config).await {
            Ok((client, mut notifications)) => {
                let listen = timed(
                    "LISTEN",
                    OP_TIMEOUT,
                    client.batch_execute(&format!("LISTEN {}", key.head_channel())),
                )
                .await;
                // With the LISTEN, the writers' lock, shared, for as long as this connection
                // lives: a restore asks for it alone. Not to be had: a restore runs (it began
                // while this connection was down); not ready until it ends.
                let shared_lock = match &listen {
                    Ok(()) if shares_writers_lock => timed(
                        "writers' lock",
                        OP_TIMEOUT,
                        client.query_one(
                            &format!("SELECT pg_try_advisory_lock_shared({})", key.writers_lock()),
                            &[],
                        ),
                    )
                    .await
                    .map(|row| row.get::<_, bool>(0)),
                    _ => Ok(true),
                };
                if let Ok(false) = shared_lock {
                    if let Some(s) = shared.upgrade() {
                        s.set_unreachable(Some(RESTORING.to_owned()));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                if let Err(e) = listen.and(shared_lock.map(drop)) {
                    tracing::debug!(error = %e, "LISTEN failed");
                    if let Some(s) = shared.upgrade() {
                        s.set_unreachable(Some(format!("LISTEN failed: {e}")));
                    }
                } else {
                    // Catch up on whatever committed while we were not listening.
                    loop {
                        let Some(s) = shared.upgrade() else {
                            return;
                        };
                        let poll = read_head(&client);
                        tokio::pin!(poll);
                        let answer = tokio::select! {
                            r = &mut poll => r,
                            _ = tokio::time::sleep(HEAD_POLL_SLOW) => {
                                // A hung database: not ready from now on, not only once the
                                // query times out.
                                s.set_unreachable(Some(format!(
                                    "the database has not answered for {HEAD_POLL_SLOW:?}"
                                )));
                                poll.await
                            }
                        };
                        match answer {
                            Ok(head) => {
                                s.advance(head);
                                s.set_unreachable(None);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "polling the head failed");
                                s.set_unreachable(Some(format!("reading the head failed: {e}")));
                                break;
                            }
                        }
                        drop(s);
                        // Wait for a notification or the poll interval, whichever first.
                        // A notification only wakes the follower, which then reads the head
                        // from the table: anyone who can connect to the database can NOTIFY
                        // on the channel, and a forged head (a position far ahead) would
                        // make every read wait for events that never come. Notifications
                        // that arrive together share one read, and reads are at least
                        // `NOTIFIED_POLL_GAP` apart (this server's own appends move its head
                        // at once; other servers' are seen within that).
                        let polled = tokio::time::Instant::now();
                        let woken = tokio::select! {
                            n = notifications.recv() => n.is_some(),
                            _ = tokio::time::sleep(POLL_INTERVAL) => true,
                        };
                        if !woken {
                            break;
                        }
                        tokio::time::sleep_until(polled + NOTIFIED_POLL_GAP).await;
                        while notifications.try_recv().is_ok() {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "head follower cannot connect");
                if let Some(s) = shared.upgrade() {
                    s.set_unreachable(Some(format!("cannot connect: {e}")));
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

impl EventStore for PgStore {
    async fn settle_recorded_at(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        // Events are stamped under the log's append lock with the database's clock: once the
        // lock has been had (after the transaction in flight, of any server, committed), a
        // head read in a new statement includes everything stamped before that moment, and
        // whatever commits later is stamped after it. Whether `at` has passed is the
        // database's clock's to say (estimated), not this server's.
        let arrived = self.shared.db_now();
        // A time the database's clock has not reached (a second's margin for the estimate):
        // later appends may still be stamped before it, so there is nothing to settle; the
        // answer is the state so far.
        if at > arrived + chrono::TimeDelta::seconds(1) {
            return Ok(());
        }
        let unreachable = || {
            self.shared
                .unreachable()
                .map(|why| StoreError::Unavailable(format!("PostgreSQL: {why}")))
        };
        if let Some(e) = unreachable() {
            return Err(e);
        }
        let mut settled = tokio::time::timeout(OP_TIMEOUT, self.settles.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "PostgreSQL: settle waited {OP_TIMEOUT:?} for the ones before it"
                ))
            })?;
        // A settle that had the lock after `at`, or after this one arrived (for a time just
        // now, whose answer is the state so far anyway), while this one waited its turn,
        // covers it.
        if settled.is_some_and(|locked_at| locked_at > at.min(arrived)) {
            return Ok(());
        }
        // The one before failed on a database that hung: this one would wait as long.
        if let Some(e) = unreachable() {
            return Err(e);
        }
        let c = self.settle_conn.get().await?;
        // The clock is read while the lock is held (the subquery, volatile, runs first). A
        // database that stops answering meanwhile (the head follower notices in 2 s) ends
        // the wait, not the full deadline.
        let sql = self.key.settle_sql();
        let query = timed("settle", OP_TIMEOUT, c.client.query_one(&sql, &[]));
        tokio::pin!(query);
        let row = loop {
            tokio::select! {
                row = &mut query => break row?,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(e) = unreachable() {
                        return Err(e);
                    }
                }
            }
        };
        let locked_at: DateTime<Utc> = row.get(0);
        self.shared.observe_db_clock(locked_at);
        let head = read_head(&c.client).await?;
        self.shared.advance(head);
        *settled = Some(locked_at);
        Ok(())
    }

    async fn restore(&self, appends: Vec<RecordedAppend>) -> Result<Head, StoreError> {
        if appends.is_empty() {
            return Ok(self.head());
        }
        if self.read_only {
            return Err(StoreError::Unavailable(READ_ONLY.to_owned()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is closed".to_owned()));
        }
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Msg::Restore(appends, reply))
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".to_owned()))?
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        validate(&request)?;
        self.submit(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("no answer from writer".to_owned())))
    }

    async fn append_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        let mut results: Vec<Option<Result<AppendOutcome, StoreError>>> =
            Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for request in requests {
            match validate(&request) {
                Ok(()) => {
                    results.push(None);
                    valid.push(request);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut answers = if valid.is_empty() {
            Vec::new()
        } else {
            self.submit(valid).await
        }
        .into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => answers.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable("no answer from writer".to_owned()))
                }),
            })
            .collect()
    }

    async fn read_stream(&self, stream_id: StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self
            .read_events(
                "read_stream",
                |c| c.stmts.read_stream.clone(),
                &[&stream_id],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn read_stream_page(
        &self,
        stream_id: StreamId,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Versions and limits beyond i64 mean "everything after" / "no limit".
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read_events(
                "read_stream_page",
                |c| c.stmts.read_stream_page.clone(),
                &[&stream_id, &after, &limit],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after_i = i64::try_from(after)
            .map_err(|_| StoreError::InvalidInput(format!("position {after} out of range")))?;
        let upto = after_i.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .read_events("read_all", |c| c.stmts.read_all.clone(), &[&after_i, &upto])
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut prev: Option<[u8; 32]> = if after == 0 { Some([0; 32]) } else { None };
        let mut expected = after + 1;
        for row in &rows {
            let stored = stored_from_row(row)?;
            let e = &stored.event;
            if e.global_position == after {
                prev = Some(e.hash);
                continue;
            }
            // Positions are gap-free: a hole here is damage, not a race.
            if e.global_position != expected {
                return Err(corrupt(
                    e.global_position as i64,
                    format!("expected position {expected}"),
                ));
            }
            if let Some(p) = prev {
                if stored.expected_hash(&p) != e.hash {
                    return Err(corrupt(e.global_position as i64, "hash chain mismatch"));
                }
            }
            prev = Some(e.hash);
            expected += 1;
            events.push(stored.event);
        }
        Ok(events)
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let rows = self
            .read_events("event_by_id", |c| c.stmts.event_by_id.clone(), &[&event_id])
            .await?;
        rows.first().map(from_row).transpose()
    }

    async fn stream_version(&self, stream_id: StreamId) -> Result<u64, StoreError> {
        let gone = || StoreError::Unavailable("stream version reader stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.versions
            .send((stream_id, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn position_at(&self, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = self
            .read_events("position_at", |c| c.stmts.position_at.clone(), &[&at])
            .await?;
        Ok(rows
            .first()
            .map(|r| r.get::<_, i64>(0))
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0))
    }

    fn head(&self) -> Head {
        self.shared.head()
    }

    fn now(&self) -> DateTime<Utc> {
        self.shared.db_now()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head_tx.subscribe()
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let c = self.pool.get().await?;
        let mut prev = [0u8; 32];
        let mut after: i64 = 0;
        loop {
            let upto = after + VERIFY_PAGE;
            let rows = timed(
                "verify",
                OP_TIMEOUT,
                c.client.query(&c.stmts.read_all, &[&(after + 1), &upto]),
            )
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let stored = stored_from_row(row)?;
                let e = &stored.event;
                let expected = after + 1;
                if e.global_position as i64 != expected {
                    return Err(corrupt(expected, format!("position {expected} is missing")));
                }
                let computed = stored.expected_hash(&prev);
                if computed != e.hash {
                    return Err(corrupt(
                        expected,
                        format!(
                            "hash chain broken: stored {}, computed {}",
                            e.hash_hex(),
                            crate::to_hex(&computed)
                        ),
                    ));
                }
                prev = e.hash;
                after = expected;
            }
        }
        // A position beyond the walked prefix means a hole in the middle, unless it is the next
        // one (appended while we walked): commits land in position order, so every snapshot
        // is a prefix of the log and what follows the walked part is a hole only when it does
        // not start right after it.
        let next: Option<i64> = timed(
            "verify",
            OP_TIMEOUT,
            c.client.query_one(
                "SELECT min(position) FROM events WHERE position > $1",
                &[&after],
            ),
        )
        .await?
        .get(0);
        if let Some(next) = next {
            if next != after + 1 {
                return Err(corrupt(
                    after + 1,
                    format!("position {} is missing", after + 1),
                ));
            }
        }
        Ok(VerifyReport {
            events: u64::try_from(after).unwrap_or(0),
            head_hash: prev,
        })
    }

    /// Closed, or the database unreachable for now (what the head follower last saw; it
    /// clears by itself once the database answers again).
    fn unavailable_reason(&self) -> Option<String> {
        if self.closed.load(Ordering::Acquire) {
            return Some("the store is closed".to_owned());
        }
        self.shared
            .unreachable()
            .map(|why| format!("PostgreSQL unreachable: {why}"))
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        if self.writer.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let c = self.pool.get().await?;
        let rows = timed(
            "tokens",
            OP_TIMEOUT,
            c.client.query(
                "SELECT name, role, secret_hash, created_at, revoked_at FROM tokens ORDER BY name",
                &[],
            ),
        )
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.get(0);
                let hash: &[u8] = row.get(2);
                let secret_hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
                    file: "PostgreSQL table tokens".to_owned(),
                    offset: 0,
                    reason: format!("secret hash of token {name} is not 32 bytes"),
                })?;
                // A time chrono cannot hold ('infinity', set by hand) is an error here, not a
                // panic in the task that reloads the tokens.
                let bad_time = |e: tokio_postgres::Error| StoreError::Corrupt {
                    file: "PostgreSQL table tokens".to_owned(),
                    offset: 0,
                    reason: format!("a time of token {name} cannot be read: {e}"),
                };
                Ok(TokenRecord {
                    role: row.get(1),
                    secret_hash,
                    created_at: row.try_get(3).map_err(bad_time)?,
                    revoked_at: row.try_get(4).map_err(bad_time)?,
                    name,
                })
            })
            .collect()
    }

    async fn add_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        let inserted = timed(
            "add_token",
            OP_TIMEOUT,
            c.client.execute(
                "INSERT INTO tokens (name, role, secret_hash, created_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                &[
                    &token.name,
                    &token.role,
                    &token.secret_hash.as_slice(),
                    &token.created_at,
                    &token.revoked_at,
                ],
            ),
        )
        .await?;
        if inserted == 0 {
            return Err(StoreError::InvalidInput(format!(
                "a token named {:?} already exists",
                token.name
            )));
        }
        Ok(())
    }

    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        // Revoking twice keeps the first revocation time.
        let updated = timed(
            "revoke_token",
            OP_TIMEOUT,
            c.client.execute(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, $2) WHERE name = $1",
                &[&name, &at],
            ),
        )
        .await?;
        Ok(updated > 0)
    }
}
