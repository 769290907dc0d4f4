//! Versioned migrations, applied on open.
//!
//! All of them run in one transaction under a transaction-level advisory lock, so several
//! servers starting at once on an empty database apply each migration exactly once (the
//! others wait, then find it recorded in `schema_migrations`). A database migrated by a newer
//! binary is refused rather than misread.

use tokio_postgres::Client;

use super::conn::{describe, timed, OP_TIMEOUT};
use crate::StoreError;

/// Advisory lock key for migrations (distinct from the append lock).
const MIGRATION_LOCK: i64 = 0x696e_6369_6d69_6731; // "incimig1"

/// `(version, name, sql)`, in order. Never edit a released migration: add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "events and tokens",
    r#"
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    stream_id       uuid        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    -- The exact canonical bytes the caller handed in (text, not jsonb: jsonb would reorder
    -- keys and drop whitespace, breaking idempotency by bytes and the hash chain).
    data            text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    recorded_by     text        NOT NULL,
    -- First and last position of the append this event came in (idempotent repeats must be
    -- exactly one earlier append).
    append_first    bigint      NOT NULL,
    append_last     bigint      NOT NULL,
    hash            bytea       NOT NULL,
    UNIQUE (stream_id, stream_version),
    CHECK (position > 0 AND stream_version > 0 AND octet_length(hash) = 32)
);
CREATE INDEX events_recorded_at ON events (recorded_at, position);
CREATE TABLE tokens (
    name        text        PRIMARY KEY,
    role        text        NOT NULL,
    secret_hash bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
"#,
)];

/// The newest schema version this binary knows.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// For a read-only open: the schema must be there and current, since nothing may be created
/// or migrated (a role with only SELECT, a hot standby).
pub(crate) async fn check(client: &Client) -> Result<(), StoreError> {
    let run = async {
        // In the schema a writer with this URL would create it in (the first existing one on
        // the search path), not anywhere on the path: a log further down the path is another
        // tenant's, which a read with this URL must not pass off as this one.
        let present: bool = client
            .query_one(
                "SELECT CASE WHEN current_schema() IS NULL THEN false ELSE \
                 to_regclass(format('%I.schema_migrations', current_schema())) IS NOT NULL \
                 AND to_regclass(format('%I.events', current_schema())) IS NOT NULL END",
                &[],
            )
            .await?
            .get(0);
        if !present {
            return Ok(None);
        }
        Ok(Some(applied_version(client).await?))
    };
    match timed("check the schema", OP_TIMEOUT, run).await? {
        None => Err(StoreError::Unavailable(
            "this database holds no incidentlog log yet (no schema_migrations and events \
             tables in the first schema of the search path); a read-only command creates \
             nothing: `serve`, `import` or `restore` make it"
                .to_owned(),
        )),
        Some(v) if v > SCHEMA_VERSION => Err(newer_schema(v)),
        Some(v) if v < SCHEMA_VERSION => Err(StoreError::Unavailable(format!(
            "database schema version {v} is older than this binary's ({SCHEMA_VERSION}); a \
             read-only command migrates nothing: run `incidentlog serve` (or `import`) once \
             with a role that may"
        ))),
        Some(_) => Ok(()),
    }
}

/// The newest migration `schema_migrations` records (0: none).
async fn applied_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0))
}

/// A database migrated by a newer binary: refused rather than misread.
fn newer_schema(version: i32) -> StoreError {
    StoreError::Unavailable(format!(
        "database schema version {version} is newer than this binary supports \
         ({SCHEMA_VERSION}); upgrade incidentlog"
    ))
}

/// Applies every missing migration; returns the schema version afterwards.
pub(crate) async fn migrate(client: &Client) -> Result<i32, StoreError> {
    let run = async {
        client
            .batch_execute(&format!(
                // READ COMMITTED whatever the database's default: the version is read after
                // the lock is granted, not from a snapshot taken while waiting for it.
                "BEGIN ISOLATION LEVEL READ COMMITTED; \
                 SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
                 CREATE TABLE IF NOT EXISTS schema_migrations (\
                    version int PRIMARY KEY, name text NOT NULL, \
                    applied_at timestamptz NOT NULL DEFAULT now());"
            ))
            .await?;
        applied_version(client).await
    };
    let current = match timed("migrate", OP_TIMEOUT, run).await {
        Ok(v) => v,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    if current > SCHEMA_VERSION {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(newer_schema(current));
    }
    let apply = async {
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tracing::info!(version, name, "applying PostgreSQL migration");
            client.batch_execute(sql).await?;
            client
                .execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
        }
        client.batch_execute("COMMIT").await
    };
    match tokio::time::timeout(OP_TIMEOUT, apply).await {
        Ok(Ok(())) => Ok(SCHEMA_VERSION),
        Ok(Err(e)) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StoreError::Unavailable(format!(
                "PostgreSQL migration failed: {}",
                describe(&e)
            )))
        }
        Err(_) => Err(StoreError::Unavailable(
            "PostgreSQL migration timed out".to_owned(),
        )),
    }
}
