//! The single writer task of one process: group commit under a cross-process lock.
//!
//! Appenders queue `(requests, reply)`; the writer drains whatever is queued and runs it as ONE
//! transaction:
//!
//! ```text
//! BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(hi32(LogKey), lo32(LogKey));
//! read head (position, hash, recorded_at), known event ids, stream versions   -- pipelined
//! decide every request in memory; assign positions head+1.. ; chain the hashes
//! INSERT ... SELECT * FROM unnest(arrays); SELECT pg_notify(head); COMMIT     -- pipelined
//! ```
//!
//! The advisory lock is held from before the head is read until after the commit is visible
//! (PostgreSQL releases locks after it marks the transaction committed), so transactions of
//! every process assign positions one after another, in the order they commit: positions are
//! gap-free and a reader can never see position p+1 before p. See `proto-docs/postgres.md`.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;

use chrono::{DateTime, Utc};
use futures_util::future::try_join3;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Config, Statement};
use uuid::Uuid;

use super::conn::{connect, describe, timed, OP_TIMEOUT};
use super::record::truncate_to_micros;
use super::Shared;
use crate::chain::{chain_hash, RecordFields};
use crate::{
    AppendOutcome, AppendRequest, Durability, ExpectedVersion, Head, RecordedAppend, StoreError,
    StreamId,
};

/// Which log of the database this is: a hash of the schema its `events` table lives in (each
/// schema on a search path can hold a log). The advisory lock that serializes appends of
/// every process, and the NOTIFY channel that carries the new head (`position:hexhash`)
/// after each commit, are the log's own: two logs in one database (a schema each) neither
/// wait for each other's appends nor move each other's head (a shared channel once made one
/// server believe in a head its log did not have, and every read wait 30 s). The schema's
/// name, not the table's OID: a table dropped and made again (a restore into an emptied
/// schema) keeps its key, so servers started before and after still exclude each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogKey(pub(crate) u64);

impl LogKey {
    /// The key of the log in `schema`: FNV-1a of the name (stable across builds and
    /// machines, as every server of one database must agree on it).
    pub(crate) fn of_schema(schema: &str) -> LogKey {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"incidentlog:".iter().chain(schema.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        LogKey(h)
    }

    pub(crate) fn head_channel(self) -> String {
        format!("incidentlog_head_{:016x}", self.0)
    }

    /// The one-key advisory lock of this log's writers: every ordinary writing process holds
    /// it shared (and each append transaction asks for it), a restore alone (see
    /// `OpenOptions::sole_writer`); apart from the two-key append lock and the migrations' own
    /// key.
    pub(crate) fn writers_lock(self) -> i64 {
        (self.0 ^ 0x7772_6974_6572_7321) as i64 // "writers!"
    }

    /// Waits for the append in flight (takes the log's append lock, released at the end of
    /// the statement) and answers the database's clock read while the lock was held.
    pub(crate) fn settle_sql(self) -> String {
        format!(
            "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock({}, {})) AS locked",
            (self.0 >> 32) as u32 as i32,
            self.0 as u32 as i32
        )
    }

    fn lock_sql(self) -> String {
        // The two-key form (its key space never meets the one-key locks of `schema`), the
        // hash's halves as the int4 keys it takes.
        format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({}, {})",
            (self.0 >> 32) as u32 as i32,
            self.0 as u32 as i32
        )
    }
}

#[cfg(test)]
mod tests {
    use super::LogKey;

    #[test]
    fn each_schema_has_its_own_lock_and_channel() {
        let (a, b) = (LogKey::of_schema("public"), LogKey::of_schema("tenant_b"));
        assert_ne!(a, b);
        assert_ne!(a.head_channel(), b.head_channel());
        assert_ne!(a.lock_sql(), b.lock_sql());
        // Fixed: every server of one database, whatever its build, must agree.
        assert_eq!(a, LogKey::of_schema("public"));
        assert_eq!(a.head_channel(), "incidentlog_head_89078c180b4dd722");
        // A channel name is an identifier of at most 63 bytes.
        assert!(a.head_channel().len() <= 63);
    }
}

/// Limits of one transaction (the queue itself is bounded by the channel).
const MAX_BATCH_EVENTS: usize = 8192;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Yields without a new request before a batch is closed.
const GATHER_YIELDS: u32 = 3;

pub(crate) type Reply = oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>;

pub(crate) enum Msg {
    Append(Vec<AppendRequest>, Reply),
    /// Appends as another store recorded them: one transaction of their own.
    Restore(
        Vec<RecordedAppend>,
        oneshot::Sender<Result<Head, StoreError>>,
    ),
    /// Finish what is queued before it, then stop.
    Close(oneshot::Sender<()>),
}

pub(crate) struct WriterConn {
    client: Client,
    head: Statement,
    ids: Statement,
    versions: Statement,
    insert: Statement,
    /// `insert` with a `recorded_at` per row (restored appends keep theirs).
    insert_restored: Statement,
    notify: Statement,
    /// Takes this log's append lock (`LogKey`).
    lock_sql: String,
    /// An ordinary writer's: asks, in each append transaction, for the log's writers' lock
    /// shared (`None` for the sole writer, whose session holds it alone).
    writers_sql: Option<String>,
}

impl WriterConn {
    /// Connects and prepares. The sole writer (`restore`) first takes the writers' lock alone
    /// for this session: its transactions run where the lock is held, so that if the session
    /// is lost, so is the right to write (a new one must take the lock again).
    pub(crate) async fn open(
        config: &Config,
        durability: Durability,
        key: LogKey,
        sole_writer: bool,
    ) -> Result<WriterConn, StoreError> {
        let client = connect(config).await?;
        if sole_writer {
            let alone: bool = timed(
                "writers' lock",
                OP_TIMEOUT,
                client.query_one(
                    &format!("SELECT pg_try_advisory_lock({})", key.writers_lock()),
                    &[],
                ),
            )
            .await?
            .get(0);
            if !alone {
                return Err(StoreError::Unavailable(format!(
                    "{}: stop them first (a restore writes events recorded in the past, and a \
                     running server would change what it answered about those moments)",
                    super::OTHER_WRITERS
                )));
            }
        }
        let prepare = async {
            if durability == Durability::Relaxed {
                // The operator accepted losing the latest appends on a crash.
                client
                    .batch_execute("SET synchronous_commit TO off")
                    .await?;
            } else {
                // A 2xx means durable whatever the server's or role's default says (a stronger
                // setting such as remote_apply is kept).
                let row = client.query_one("SHOW synchronous_commit", &[]).await?;
                let setting: String = row.get(0);
                if setting == "off" {
                    client.batch_execute("SET synchronous_commit TO on").await?;
                }
            }
            // The database's clock with the head (one row even for an empty log): every
            // server of the log stamps appends from this one clock, so a time the log has
            // passed stays passed whichever server appends next.
            let head = client.prepare(
                "SELECT clock_timestamp(), h.position, h.hash, h.recorded_at FROM (SELECT 1) AS one \
                 LEFT JOIN (SELECT position, hash, recorded_at FROM events \
                 ORDER BY position DESC LIMIT 1) AS h ON true",
            );
            let ids = client.prepare(
                "SELECT event_id, position, stream_id, stream_version, event_type, data, \
                 append_first, append_last FROM events WHERE event_id = ANY($1)",
            );
            let versions = client.prepare(
                "SELECT s, (SELECT e.stream_version FROM events e WHERE e.stream_id = s \
                 ORDER BY e.stream_version DESC LIMIT 1) FROM unnest($1::uuid[]) AS s",
            );
            let insert = client.prepare(
                "INSERT INTO events (position, stream_id, stream_version, event_id, event_type, \
                 data, recorded_at, recorded_by, append_first, append_last, hash) \
                 SELECT p, s, v, i, t, d, $7, b, af, al, h FROM unnest($1::bigint[], \
                 $2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $8::text[], \
                 $9::bigint[], $10::bigint[], $11::bytea[]) AS x(p, s, v, i, t, d, b, af, al, h)",
            );
            let insert_restored = client.prepare(
                "INSERT INTO events (position, stream_id, stream_version, event_id, event_type, \
                 data, recorded_at, recorded_by, append_first, append_last, hash) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::uuid[], \
                 $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::bigint[], \
                 $10::bigint[], $11::bytea[])",
            );
            let notify_sql = format!("SELECT pg_notify('{}', $1)", key.head_channel());
            let notify = client.prepare(&notify_sql);
            let (head, ids, versions) = try_join3(head, ids, versions).await?;
            let (insert, insert_restored, notify) =
                try_join3(insert, insert_restored, notify).await?;
            Ok((head, ids, versions, insert, insert_restored, notify))
        };
        let (head, ids, versions, insert, insert_restored, notify) =
            timed("prepare", OP_TIMEOUT, prepare).await?;
        Ok(WriterConn {
            client,
            head,
            ids,
            versions,
            insert,
            insert_restored,
            notify,
            lock_sql: key.lock_sql(),
            writers_sql: (!sole_writer).then(|| {
                format!(
                    "SELECT pg_try_advisory_xact_lock_shared({})",
                    key.writers_lock()
                )
            }),
        })
    }
}

/// The writer loop; ends on `Close`, when every sender is gone, or when the store is dropped.
pub(crate) async fn run(
    shared: Weak<Shared>,
    config: Config,
    durability: Durability,
    key: LogKey,
    mut rx: mpsc::Receiver<Msg>,
    first_conn: Option<WriterConn>,
) {
    // The sole writer's first session was opened (and the lock taken) by the open.
    let sole_writer = first_conn.is_some();
    let mut conn: Option<WriterConn> = first_conn;
    let mut pending: Option<Msg> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => return,
            },
        };
        let mut jobs = match first {
            Msg::Close(done) => {
                rx.close();
                let _ = done.send(());
                return;
            }
            Msg::Append(requests, reply) => vec![(requests, reply)],
            Msg::Restore(appends, reply) => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let result = match conn.as_ref().filter(|c| !c.client.is_closed()) {
                    Some(c) => restore_batch(c, &appends).await,
                    None => match WriterConn::open(&config, durability, key, sole_writer).await {
                        Ok(c) => {
                            let r = restore_batch(&c, &appends).await;
                            conn = Some(c);
                            r
                        }
                        Err(e) => Err(e),
                    },
                };
                match &result {
                    Ok(head) => shared.advance(*head),
                    // The transaction is gone or its fate unknown: start afresh.
                    Err(StoreError::Unavailable(_)) => conn = None,
                    Err(_) => {}
                }
                let _ = reply.send(result);
                continue;
            }
        };
        // Group commit: take whatever else is queued, within the batch limits. Appenders
        // answered by the previous batch are often about to send again: yielding a few times
        // lets them (no timer, so a lone appender is not delayed).
        let mut events: usize = jobs[0].0.iter().map(|r| r.events.len()).sum();
        let mut bytes: usize = jobs[0].0.iter().map(request_bytes).sum();
        let mut quiet_yields = 0;
        while events < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES && pending.is_none() {
            match rx.try_recv() {
                Ok(Msg::Append(requests, reply)) => {
                    events += requests.iter().map(|r| r.events.len()).sum::<usize>();
                    bytes += requests.iter().map(request_bytes).sum::<usize>();
                    jobs.push((requests, reply));
                    quiet_yields = 0;
                }
                // Handled on its own, after this batch.
                Ok(other @ (Msg::Close(_) | Msg::Restore(..))) => pending = Some(other),
                Err(_) if quiet_yields < GATHER_YIELDS => {
                    quiet_yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };

        let result = match conn.as_ref().filter(|c| !c.client.is_closed()) {
            Some(c) => commit_batch(c, &jobs, &shared).await,
            None => match WriterConn::open(&config, durability, key, sole_writer).await {
                Ok(c) => {
                    let r = commit_batch(&c, &jobs, &shared).await;
                    conn = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((outcomes, head)) => {
                if let Some(head) = head {
                    shared.advance(head);
                }
                let mut outcomes = outcomes.into_iter();
                for (requests, reply) in jobs {
                    let mine: Vec<_> = outcomes.by_ref().take(requests.len()).collect();
                    let _ = reply.send(mine);
                }
            }
            Err(e) => {
                // The transaction's fate may be unknown (e.g. the connection died during
                // COMMIT): answer Unavailable, never success. A client retry with the same
                // event ids is then either a duplicate or a fresh append: nothing is lost or
                // doubled. Drop the connection; the next batch reconnects.
                tracing::warn!(error = %e, "PostgreSQL append batch failed");
                conn = None;
                let message = match e {
                    StoreError::Unavailable(m) => m,
                    other => other.to_string(),
                };
                for (requests, reply) in jobs {
                    let failed = requests
                        .iter()
                        .map(|_| Err(StoreError::Unavailable(message.clone())))
                        .collect();
                    let _ = reply.send(failed);
                }
            }
        }
    }
}

fn request_bytes(r: &AppendRequest) -> usize {
    r.events
        .iter()
        .map(|e| e.data.get().len() + e.event_type.len() + 64)
        .sum::<usize>()
        + r.recorded_by.len()
}

/// An event already in the log (or earlier in this batch), as idempotency needs it.
struct Known<'a> {
    position: u64,
    stream_id: Uuid,
    stream_version: u64,
    event_type: KnownStr<'a>,
    data: KnownStr<'a>,
    append_first: u64,
    append_last: u64,
}

enum KnownStr<'a> {
    Owned(String),
    Borrowed(&'a str),
}

impl KnownStr<'_> {
    fn as_str(&self) -> &str {
        match self {
            KnownStr::Owned(s) => s,
            KnownStr::Borrowed(s) => s,
        }
    }
}

/// Columns of the rows to insert, one entry per event.
#[derive(Default)]
struct Rows<'a> {
    position: Vec<i64>,
    stream_id: Vec<Uuid>,
    stream_version: Vec<i64>,
    event_id: Vec<Uuid>,
    event_type: Vec<&'a str>,
    data: Vec<&'a str>,
    recorded_by: Vec<&'a str>,
    append_first: Vec<i64>,
    append_last: Vec<i64>,
    hash: Vec<[u8; 32]>,
}

impl<'a> Rows<'a> {
    /// Adds the events of `request` as one append at positions `first..`, after stream version
    /// `version`, recorded at `at`, chained after `prev`; returns the last event's hash.
    fn push_append(
        &mut self,
        request: &'a AppendRequest,
        first: u64,
        version: u64,
        at: &DateTime<Utc>,
        mut prev: [u8; 32],
    ) -> [u8; 32] {
        let n = request.events.len() as u64;
        let last = first + n - 1;
        for (i, e) in request.events.iter().enumerate() {
            let i = i as u64;
            let (p, v) = (first + i, version + 1 + i);
            prev = chain_hash(
                &prev,
                &RecordFields {
                    global_position: p,
                    stream_id: request.stream_id,
                    stream_version: v,
                    event_id: e.event_id,
                    event_type: &e.event_type,
                    data: &e.data,
                    recorded_at: at,
                    recorded_by: &request.recorded_by,
                    append_index: i as u32,
                    append_len: n as u32,
                },
            );
            self.position.push(p as i64);
            self.stream_id.push(request.stream_id);
            self.stream_version.push(v as i64);
            self.event_id.push(e.event_id);
            self.event_type.push(&e.event_type);
            self.data.push(e.data.get());
            self.recorded_by.push(&request.recorded_by);
            self.append_first.push(first as i64);
            self.append_last.push(last as i64);
            self.hash.push(prev);
        }
        prev
    }
}

/// When the rows were recorded: one time for a batch of appends, or each restored row's own.
enum RecordedAt<'a> {
    Batch(&'a DateTime<Utc>),
    Each(&'a [DateTime<Utc>]),
}

/// What a batch is decided against, read under the append lock.
struct Locked {
    head: Head,
    last_recorded_at: Option<DateTime<Utc>>,
    /// The database's clock, read under the lock: what appends are stamped with.
    db_now: DateTime<Utc>,
    /// Rows of the `ids` statement for the batch's event ids.
    id_rows: Vec<tokio_postgres::Row>,
    /// Each stream's current version (0: none).
    versions: HashMap<StreamId, u64>,
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {}", describe(&e)))
}

/// Runs `body` as one transaction under the deadline every database call has; on an error it
/// is rolled back, and nothing of it is visible.
async fn transaction<T>(
    c: &WriterConn,
    what: &str,
    body: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let fut = async {
        let r = body.await;
        if r.is_err() && !c.client.is_closed() {
            let _ = c.client.batch_execute("ROLLBACK").await;
        }
        r
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "PostgreSQL: {what} transaction timed out after {OP_TIMEOUT:?}"
        ))),
    }
}

/// Begins the transaction, takes the append lock and reads the head, the batch's event ids and
/// its streams' versions, in one round trip: the server runs pipelined statements one after
/// the other, and each SELECT takes its snapshot when it starts, i.e. after the lock is
/// granted, so it sees every batch committed before ours. READ COMMITTED explicitly: under
/// REPEATABLE READ the snapshot would be taken by the lock statement itself, before the lock
/// is granted.
async fn lock_and_read<'r>(
    c: &WriterConn,
    requests: impl Iterator<Item = &'r AppendRequest> + Clone,
) -> Result<Locked, StoreError> {
    let all_ids: Vec<Uuid> = requests
        .clone()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    let mut streams: Vec<StreamId> = requests.map(|r| r.stream_id).collect();
    streams.sort_unstable();
    streams.dedup();
    // An ordinary writer's transaction also asks for the writers' lock, shared: refused while
    // a restore holds it, whatever this process's other connections hold or lost.
    let writers = async {
        match &c.writers_sql {
            Some(sql) => c
                .client
                .query_one(sql.as_str(), &[])
                .await
                .map(|row| row.get::<_, bool>(0)),
            None => Ok(true),
        }
    };
    let (_, writers_ok, head_row, id_rows, version_rows) = futures_util::future::try_join5(
        c.client.batch_execute(&c.lock_sql),
        writers,
        c.client.query_one(&c.head, &[]),
        c.client.query(&c.ids, &[&all_ids]),
        c.client.query(&c.versions, &[&streams]),
    )
    .await
    .map_err(db_error)?;
    if !writers_ok {
        return Err(StoreError::Unavailable(super::RESTORING.to_owned()));
    }
    let db_now: DateTime<Utc> = head_row
        .try_get(0)
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: the database's clock: {e}")))?;
    let (head, last_recorded_at) = match head_row.get::<_, Option<i64>>(1) {
        Some(p) => {
            let h: &[u8] = head_row
                .try_get(2)
                .map_err(|e| super::record::corrupt(p, format!("hash: {e}")))?;
            let hash: [u8; 32] = h
                .try_into()
                .map_err(|_| super::record::corrupt(p, "hash is not 32 bytes"))?;
            // A time chrono cannot hold (written by hand: 'infinity') is damage, not a panic
            // of the writer task.
            let at: DateTime<Utc> = head_row
                .try_get(3)
                .map_err(|e| super::record::corrupt(p, format!("recorded_at: {e}")))?;
            let position = super::record::to_u64(p, p, "position")?;
            (Head { position, hash }, Some(at))
        }
        None => (Head::default(), None),
    };
    let mut versions: HashMap<StreamId, u64> = HashMap::with_capacity(version_rows.len());
    for row in &version_rows {
        let v: Option<i64> = row.get(1);
        // No row: a new stream (version 0). A negative version is damage, not a new stream.
        let v = match v {
            Some(v) => super::record::to_u64(0, v, "stream_version")?,
            None => 0,
        };
        versions.insert(row.get(0), v);
    }
    Ok(Locked {
        head,
        last_recorded_at,
        db_now,
        id_rows,
        versions,
    })
}

/// Inserts the rows, announces the new head and commits (pipelined; the INSERT's own result
/// tells whether COMMIT really committed: COMMIT of an aborted transaction answers ROLLBACK
/// without an error). No rows: rolls back.
async fn insert_and_commit(
    c: &WriterConn,
    rows: &Rows<'_>,
    recorded_at: RecordedAt<'_>,
    head: Head,
) -> Result<(), StoreError> {
    if rows.position.is_empty() {
        return c.client.batch_execute("ROLLBACK").await.map_err(db_error);
    }
    let hashes: Vec<&[u8]> = rows.hash.iter().map(|h| h.as_slice()).collect();
    let payload = format!("{}:{}", head.position, crate::to_hex(&head.hash));
    let (statement, at): (&Statement, &(dyn tokio_postgres::types::ToSql + Sync)) =
        match &recorded_at {
            RecordedAt::Batch(t) => (&c.insert, *t),
            RecordedAt::Each(ts) => (&c.insert_restored, ts),
        };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &rows.position,
        &rows.stream_id,
        &rows.stream_version,
        &rows.event_id,
        &rows.event_type,
        &rows.data,
        at,
        &rows.recorded_by,
        &rows.append_first,
        &rows.append_last,
        &hashes,
    ];
    let insert = c.client.execute(statement, &params);
    let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&payload];
    let notify = c.client.execute(&c.notify, &notify_params);
    let commit = c.client.batch_execute("COMMIT");
    let (inserted, notified, committed) = futures_util::future::join3(insert, notify, commit).await;
    let inserted = inserted.map_err(db_error)?;
    notified.map_err(db_error)?;
    committed.map_err(db_error)?;
    if inserted != rows.position.len() as u64 {
        return Err(StoreError::Unavailable(format!(
            "PostgreSQL: inserted {inserted} of {} rows",
            rows.position.len()
        )));
    }
    Ok(())
}

type BatchResult = (Vec<Result<AppendOutcome, StoreError>>, Option<Head>);

/// Runs one group-commit transaction. Decision errors (version, id conflict) are per request;
/// an `Err` means the whole transaction failed and nothing of it is visible.
async fn commit_batch(
    c: &WriterConn,
    jobs: &[(Vec<AppendRequest>, Reply)],
    shared: &Shared,
) -> Result<BatchResult, StoreError> {
    transaction(c, "append", commit_batch_inner(c, jobs, shared)).await
}

async fn commit_batch_inner(
    c: &WriterConn,
    jobs: &[(Vec<AppendRequest>, Reply)],
    shared: &Shared,
) -> Result<BatchResult, StoreError> {
    let requests: Vec<&AppendRequest> = jobs.iter().flat_map(|(r, _)| r.iter()).collect();
    // Which call (job) each request came from: requests of one call depend on each other
    // (see `EventStore::append_many`).
    let job_of: Vec<usize> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, (r, _))| std::iter::repeat_n(j, r.len()))
        .collect();
    let Locked {
        head,
        last_recorded_at,
        db_now,
        id_rows,
        mut versions,
    } = lock_and_read(c, requests.iter().copied()).await?;
    shared.observe_db_clock(db_now);
    let (mut position, mut prev_hash) = (head.position, head.hash);
    // Stamped from the database's clock, not this server's: with servers whose clocks differ,
    // a server behind would otherwise stamp "before" a time another server has already
    // answered an `as_of` for, and that answer would change.
    let now = truncate_to_micros(db_now);
    let recorded_at = match last_recorded_at {
        Some(last) if last > now => {
            crate::clock::warn_if_behind(
                crate::clock::Clock::Database,
                now.timestamp_micros(),
                last.timestamp_micros(),
            );
            last
        }
        _ => now,
    };

    let mut known: HashMap<Uuid, Known<'_>> = HashMap::with_capacity(id_rows.len());
    for row in &id_rows {
        let g = |i: usize| -> u64 { u64::try_from(row.get::<_, i64>(i)).unwrap_or(0) };
        known.insert(
            row.get(0),
            Known {
                position: g(1),
                stream_id: row.get(2),
                stream_version: g(3),
                event_type: KnownStr::Owned(row.get(4)),
                data: KnownStr::Owned(row.get(5)),
                append_first: g(6),
                append_last: g(7),
            },
        );
    }

    let mut outcomes = Vec::with_capacity(requests.len());
    let mut rows = Rows::default();
    // Calls (jobs) in which a request that would have written failed its check: no later
    // request of the call writes.
    let mut stopped: HashSet<usize> = HashSet::new();
    for (request, job) in requests.iter().zip(&job_of) {
        let after_failure = stopped.contains(job);
        let outcome = decide(request, &known, &versions, after_failure);
        if request.expected_version != ExpectedVersion::NEVER
            && matches!(&outcome, Decision::Done(Err(e)) if e.is_check_failure())
        {
            stopped.insert(*job);
        }
        let outcome = match outcome {
            Decision::Done(result) => result,
            Decision::Append { version } => {
                let n = request.events.len() as u64;
                let first = position + 1;
                let last = position + n;
                prev_hash = rows.push_append(request, first, version, &recorded_at, prev_hash);
                for (i, e) in request.events.iter().enumerate() {
                    known.insert(
                        e.event_id,
                        Known {
                            position: first + i as u64,
                            stream_id: request.stream_id,
                            stream_version: version + 1 + i as u64,
                            event_type: KnownStr::Borrowed(&e.event_type),
                            data: KnownStr::Borrowed(e.data.get()),
                            append_first: first,
                            append_last: last,
                        },
                    );
                }
                position = last;
                versions.insert(request.stream_id, version + n);
                Ok(AppendOutcome {
                    stream_id: request.stream_id,
                    version: version + n,
                    first_position: first,
                    last_position: last,
                    duplicate: false,
                    recorded_at: Some(recorded_at),
                })
            }
        };
        outcomes.push(outcome);
    }

    let head = Head {
        position,
        hash: prev_hash,
    };
    let written = !rows.position.is_empty();
    insert_and_commit(c, &rows, RecordedAt::Batch(&recorded_at), head).await?;
    Ok((outcomes, written.then_some(head)))
}

/// Writes restored appends in one transaction (see `EventStore::restore`).
async fn restore_batch(c: &WriterConn, appends: &[RecordedAppend]) -> Result<Head, StoreError> {
    transaction(c, "restore", restore_batch_inner(c, appends)).await
}

async fn restore_batch_inner(
    c: &WriterConn,
    appends: &[RecordedAppend],
) -> Result<Head, StoreError> {
    let Locked {
        head,
        last_recorded_at: mut last_at,
        db_now: _,
        id_rows,
        mut versions,
    } = lock_and_read(c, appends.iter().map(|a| &a.request)).await?;
    let (mut position, mut prev_hash) = (head.position, head.hash);
    // A restored event id must be new (its recorded copy sits at another position).
    let mut seen: HashMap<Uuid, u64> = HashMap::with_capacity(id_rows.len());
    for row in &id_rows {
        let p: i64 = row.get(1);
        seen.insert(row.get(0), u64::try_from(p).unwrap_or(0));
    }
    let mut rows = Rows::default();
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    for a in appends {
        let request = &a.request;
        super::validate(request)?;
        if a.first_position != position + 1 {
            return Err(StoreError::InvalidInput(format!(
                "the restored append starts at position {} but the log's next position is {}",
                a.first_position,
                position + 1
            )));
        }
        let at = truncate_to_micros(a.recorded_at);
        if last_at.is_some_and(|last| at < last) {
            return Err(StoreError::InvalidInput(format!(
                "the restored append at position {} was recorded before the log's last event",
                a.first_position
            )));
        }
        let current = versions.get(&request.stream_id).copied().unwrap_or(0);
        match request.expected_version {
            ExpectedVersion::Exact(v) if v == current => {}
            ExpectedVersion::Exact(_) => {
                return Err(StoreError::WrongExpectedVersion {
                    stream_id: request.stream_id,
                    expected: request.expected_version,
                    actual: current,
                })
            }
            ExpectedVersion::Any => {
                return Err(StoreError::InvalidInput(
                    "a restored append needs an exact expected version".into(),
                ))
            }
        }
        let n = request.events.len() as u64;
        let first = position + 1;
        for (i, e) in request.events.iter().enumerate() {
            if let Some(&earlier) = seen.get(&e.event_id) {
                return Err(StoreError::EventIdConflict {
                    event_id: e.event_id,
                    position: earlier,
                });
            }
            seen.insert(e.event_id, first + i as u64);
        }
        prev_hash = rows.push_append(request, first, current, &at, prev_hash);
        times.extend(std::iter::repeat_n(at, request.events.len()));
        position += n;
        if prev_hash != a.last_hash {
            return Err(StoreError::InvalidInput(format!(
                "the restored append ending at position {position} comes out with hash {}, not {}: it was changed",
                crate::to_hex(&prev_hash),
                crate::to_hex(&a.last_hash)
            )));
        }
        last_at = Some(at);
        versions.insert(request.stream_id, current + n);
    }
    let head = Head {
        position,
        hash: prev_hash,
    };
    insert_and_commit(c, &rows, RecordedAt::Each(&times), head).await?;
    Ok(head)
}

enum Decision {
    Done(Result<AppendOutcome, StoreError>),
    Append { version: u64 },
}

/// Idempotency first, then the expected version (the order the trait documents).
fn decide(
    request: &AppendRequest,
    known: &HashMap<Uuid, Known<'_>>,
    versions: &HashMap<StreamId, u64>,
    after_failure: bool,
) -> Decision {
    let found: Vec<Option<&Known<'_>>> = request
        .events
        .iter()
        .map(|e| known.get(&e.event_id))
        .collect();
    if let Some(first_known) = found.iter().position(Option::is_some) {
        let conflict = |i: usize| -> Decision {
            let position = found[i].map_or(0, |k| k.position);
            Decision::Done(Err(StoreError::EventIdConflict {
                event_id: request.events[i].event_id,
                position,
            }))
        };
        // Every event must match, in order, at consecutive positions of one earlier append.
        let Some(Some(k0)) = found.first() else {
            return conflict(first_known);
        };
        for (i, (e, k)) in request.events.iter().zip(&found).enumerate() {
            let Some(k) = k else {
                return conflict(first_known);
            };
            if k.stream_id != request.stream_id
                || k.event_type.as_str() != e.event_type
                || k.data.as_str() != e.data.get()
                || k.position != k0.position + i as u64
            {
                return conflict(i);
            }
        }
        // ... and those positions must be one whole earlier append, not a part of one or
        // several glued together.
        let last = k0.position + found.len() as u64 - 1;
        let whole_append = found
            .iter()
            .flatten()
            .all(|k| k.append_first == k0.position && k.append_last == last);
        if !whole_append {
            return conflict(0);
        }
        let version = found[found.len() - 1].map_or(0, |k| k.stream_version);
        return Decision::Done(Ok(AppendOutcome {
            stream_id: request.stream_id,
            version,
            first_position: k0.position,
            last_position: last,
            duplicate: true,
            recorded_at: None,
        }));
    }
    let actual = versions.get(&request.stream_id).copied().unwrap_or(0);
    // An earlier request of the same call failed: this one may have been decided on a state
    // that included it, and must not be recorded before the failed one is settled.
    if after_failure {
        return Decision::Done(Err(StoreError::WrongExpectedVersion {
            stream_id: request.stream_id,
            expected: request.expected_version,
            actual,
        }));
    }
    match request.expected_version {
        ExpectedVersion::Exact(v) if v != actual => {
            Decision::Done(Err(StoreError::WrongExpectedVersion {
                stream_id: request.stream_id,
                expected: request.expected_version,
                actual,
            }))
        }
        _ => Decision::Append { version: actual },
    }
}
