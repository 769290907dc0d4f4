//! Connections: configuration, timeouts, a tiny fixed-size pool and error mapping.
//!
//! `tokio_postgres::Client` pipelines concurrent queries over one connection, so a handful of
//! connections shared round-robin serve many concurrent readers; a slot whose connection died
//! reconnects on its next use. That is all the pool this store needs.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use crate::StoreError;

/// How long a connection attempt may take before the store answers `Unavailable`.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one database operation (a read, or a whole append transaction) may take.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses a `postgres://` URL and sets the timeouts that keep a dead server from hanging us.
pub(crate) fn parse_config(url: &str) -> Result<Config, StoreError> {
    let mut config = Config::from_str(url)
        .map_err(|e| StoreError::InvalidInput(format!("bad PostgreSQL URL: {e}")))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    // Every query of this store is an index lookup or an index range. Prepared statements
    // get a generic plan after a few runs, and one made while `events` was tiny is a
    // sequential scan that stays cached while the table grows (every lookup a full scan);
    // with sequential scans off the generic plans are index scans, at no planning cost per
    // call. And if a client of ours dies inside a transaction (the writer holds the append
    // lock there), the server ends it instead of keeping the lock until TCP notices.
    const SESSION: &str = "-c enable_seqscan=off -c idle_in_transaction_session_timeout=10000";
    let options = match config.get_options() {
        Some(o) => format!("{o} {SESSION}"),
        None => SESSION.to_owned(),
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("incidentlog");
    }
    Ok(config)
}

/// A human-readable description of a driver error, with the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

pub(crate) fn unavailable(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {}", describe(e)))
}

/// Runs `fut` with a deadline; both a driver error and the deadline become `Unavailable`.
pub(crate) async fn timed<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(&e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "PostgreSQL: {what} timed out after {limit:?}"
        ))),
    }
}

/// Opens a connection and drives it on a task of its own.
pub(crate) async fn connect(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = timed("connect", CONNECT_TIMEOUT, config.connect(NoTls)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Opens a connection whose notifications (LISTEN) are forwarded, payload only, to the
/// returned channel. The channel closes when the connection ends.
pub(crate) async fn connect_listening(
    config: &Config,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), StoreError> {
    let (client, mut connection) = timed("connect", CONNECT_TIMEOUT, config.connect(NoTls)).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let message = futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %describe(&e), "PostgreSQL listener connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, rx))
}

const EVENT_COLUMNS: &str = "position, stream_id, stream_version, event_id, event_type, data, \
                             recorded_at, recorded_by, hash, append_first, append_last";

/// The statements readers use, prepared once per connection.
pub(crate) struct ReadStatements {
    pub read_all: Statement,
    pub read_stream: Statement,
    pub read_stream_page: Statement,
    pub event_by_id: Statement,
    pub stream_version: Statement,
    pub position_at: Statement,
}

impl ReadStatements {
    async fn prepare(client: &Client) -> Result<ReadStatements, tokio_postgres::Error> {
        let texts = [
            // `>= after` includes the record before the page: its hash starts the chain check.
            format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 AND position <= $2 \
                 ORDER BY position"
            ),
            format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version"
            ),
            format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 \
                 ORDER BY stream_version LIMIT $3"
            ),
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"),
            // Many streams at once: concurrent `stream_version` calls share one query.
            "SELECT s, (SELECT e.stream_version FROM events e WHERE e.stream_id = s \
             ORDER BY e.stream_version DESC LIMIT 1) FROM unnest($1::uuid[]) AS s"
                .to_owned(),
            "SELECT position FROM events WHERE recorded_at <= $1 \
             ORDER BY recorded_at DESC, position DESC LIMIT 1"
                .to_owned(),
        ];
        let mut s = try_join_all(texts.iter().map(|t| client.prepare(t))).await?;
        let position_at = pop(&mut s);
        let stream_version = pop(&mut s);
        let event_by_id = pop(&mut s);
        let read_stream_page = pop(&mut s);
        let read_stream = pop(&mut s);
        let read_all = pop(&mut s);
        Ok(ReadStatements {
            read_all,
            read_stream,
            read_stream_page,
            event_by_id,
            stream_version,
            position_at,
        })
    }
}

fn pop(v: &mut Vec<Statement>) -> Statement {
    // The vector holds exactly one statement per text above; `prepare` pops in reverse.
    match v.pop() {
        Some(s) => s,
        None => unreachable!("one prepared statement per query text"),
    }
}

/// A live connection with its prepared statements.
pub(crate) struct PooledConn {
    pub client: Client,
    pub stmts: ReadStatements,
}

/// A fixed number of lazily (re)connected connections, handed out round-robin.
pub(crate) struct Pool {
    config: Config,
    slots: Vec<Mutex<Option<Arc<PooledConn>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(config: Config, size: usize) -> Pool {
        Pool {
            config,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A usable connection; reconnects the slot when its connection died.
    pub async fn get(&self) -> Result<Arc<PooledConn>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // The slot is held while it reconnects (up to the connect and prepare deadlines): a
        // caller behind it waits at most one connect's deadline, not one per caller ahead.
        let Ok(mut slot) = tokio::time::timeout(CONNECT_TIMEOUT, self.slots[i].lock()).await else {
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL: no connection within {CONNECT_TIMEOUT:?} (reconnecting)"
            )));
        };
        if let Some(conn) = slot.as_ref() {
            if !conn.client.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        *slot = None;
        let client = connect(&self.config).await?;
        let stmts = timed("prepare", OP_TIMEOUT, ReadStatements::prepare(&client)).await?;
        let conn = Arc::new(PooledConn { client, stmts });
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }
}
