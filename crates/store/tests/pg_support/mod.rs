//! Helpers for the PostgreSQL tests of the store (shared by the `pg_*.rs` test binaries).
//!
//! Tests read `INCIDENTLOG_TEST_PG` (set by `scripts/with-postgres.sh`). When it is unset they
//! fail if `CI=true` and otherwise print a loud skip message and return. Every test works in a
//! database of its own, created with a random name, so tests never see each other's events.
#![allow(dead_code)]

use std::process::Command;

use incidentlog_store::pg::PgStore;
use incidentlog_store::{AppendRequest, Durability, ExpectedVersion, NewEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The base URL, or `None` (after a loud message) when PostgreSQL tests cannot run here.
pub fn base_url(test: &str) -> Option<String> {
    match std::env::var("INCIDENTLOG_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{test}: INCIDENTLOG_TEST_PG is not set and CI=true: PostgreSQL tests must \
                     run (use scripts/with-postgres.sh)"
                );
            }
            eprintln!(
                "\n########## SKIPPED {test}: INCIDENTLOG_TEST_PG is not set \
                 (run through scripts/with-postgres.sh or `make test`) ##########\n"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A plain client of `url` (its connection driven by a task of its own).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Creates a fresh, empty database and returns its URL.
pub async fn fresh_database(base: &str) -> String {
    let client = connect(base).await;
    let name = format!("il_test_{}", Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    with_database(base, &name)
}

/// A fresh database for `test`, or `None` when PostgreSQL tests are skipped here.
pub async fn test_database(test: &str) -> Option<String> {
    let base = base_url(test)?;
    Some(fresh_database(&base).await)
}

pub async fn open(url: &str) -> PgStore {
    PgStore::open(url, Durability::Strict)
        .await
        .expect("open PgStore")
}

pub fn data(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid JSON")
}

pub fn new_event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "test_event".to_owned(),
        data: data(&format!("{{\"n\":{n}}}")),
    }
}

pub fn request(stream: Uuid, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream,
        expected_version: expected,
        events,
        recorded_by: "tester".to_owned(),
    }
}

/// Re-runs this test binary as a child executing only the (ignored) test `name`, with `envs`.
pub fn child_test(name: &str, envs: &[(&str, &str)]) -> Command {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}
