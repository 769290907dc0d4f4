//! PostgreSQL store benchmark: `scripts/with-postgres.sh cargo bench -p incidentlog-store
//! --bench pg` (reads `INCIDENTLOG_TEST_PG`; `INCIDENTLOG_BENCH_QUICK=1` for a short run).
//!
//! On the same database server, in the same run:
//! - `pg_store_append_c64`: PgStore appends, 64 concurrent appenders, one event per append
//!   (the shape of one HTTP append), strict durability;
//! - `pgbench_insert_c64`: `pgbench -n -M prepared -c 64 -j 2 -T 10 -f scripts/pgbench-insert.sql`, the
//!   same row, one INSERT per transaction, into a table of the same schema;
//! - `pg_store_version_read_and_append_c64`: the same with a `stream_version` read before each
//!   append, the store calls one HTTP append makes;
//! - the ratio of the first to pgbench.
//!
//! Prints one `BENCH name=value unit` line per figure.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use incidentlog_store::pg::PgStore;
use incidentlog_store::{AppendRequest, Durability, EventStore, ExpectedVersion, NewEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

const APPENDERS: usize = 64;

fn report(name: &str, value: f64, unit: &str) {
    println!("BENCH {name}={value:.1} {unit}");
}

/// The same payload as the pgbench script.
fn request(stream: Uuid) -> AppendRequest {
    let data = r#"{"kind":"missile_strike","occurred_at":"2025-03-04T04:15:00Z","region":"UA-63","source":{"name":"Regional administration","kind":"official"},"locality":"Kharkiv","seq":1}"#;
    AppendRequest {
        stream_id: stream,
        expected_version: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "IncidentReported".into(),
            data: RawValue::from_string(data.to_owned()).unwrap(),
        }],
        recorded_by: "bench".into(),
    }
}

fn with_database(url: &str, db: &str) -> String {
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

async fn sql(url: &str, statements: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.batch_execute(statements).await.expect("SQL");
}

async fn fresh_database(base: &str, tag: &str) -> String {
    let name = format!("il_bench_{tag}_{}", Uuid::new_v4().simple());
    sql(base, &format!("CREATE DATABASE {name}")).await;
    with_database(base, &name)
}

/// `with_version_read`: each append preceded by `stream_version`, as the HTTP service does
/// (it checks its decision state against the store's version).
async fn store_append_rate(url: &str, run: Duration, with_version_read: bool) -> (f64, u64, i64) {
    let store = Arc::new(PgStore::open(url, Durability::Strict).await.unwrap());
    // Warm up: connections, prepared statements.
    store.append(request(Uuid::new_v4())).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let (store, stop, count) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&count));
            tokio::spawn(async move {
                let stream = Uuid::new_v4();
                while !stop.load(Ordering::Relaxed) {
                    if with_version_read {
                        store.stream_version(stream).await.unwrap();
                    }
                    store.append(request(stream)).await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    let commits = commits_in(url).await;
    let report = store.verify().await.unwrap();
    (n as f64 / elapsed, report.events, commits)
}

/// Transactions committed in the database of `url` so far (statistics are approximate).
async fn commits_in(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

fn pgbench_rate(url: &str, secs: u64) -> Option<f64> {
    let bin = std::env::var("INCIDENTLOG_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pgbench-insert.sql");
    let out = Command::new(Path::new(&bin).join("pgbench"))
        // Prepared statements, as an application would use them (not parsed per insert).
        .args(["-n", "-M", "prepared", "-c", "64", "-j", "2", "-f"])
        .arg(&script)
        .args(["-T", &secs.to_string()])
        .arg(url)
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "pgbench failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| t.parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; test runners (`cargo test --all-targets`, nextest's
    // `--list`) run bench binaries without it: there is no test here, do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(base) = std::env::var("INCIDENTLOG_TEST_PG") else {
        eprintln!(
            "pg bench skipped: INCIDENTLOG_TEST_PG is not set (run through scripts/with-postgres.sh)"
        );
        return;
    };
    let quick = std::env::var("INCIDENTLOG_BENCH_QUICK").as_deref() == Ok("1")
        || std::env::args().any(|a| a == "--quick");
    let secs = if quick { 3 } else { 10 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store_db = fresh_database(&base, "store").await;
        let peer_db = fresh_database(&base, "peer").await;
        // The peer gets the store's schema (same table, same indexes) and a position sequence.
        drop(PgStore::open(&peer_db, Durability::Strict).await.unwrap());
        sql(&peer_db, "CREATE SEQUENCE bench_pos").await;

        let pgbench = tokio::task::spawn_blocking({
            let peer_db = peer_db.clone();
            move || pgbench_rate(&peer_db, secs)
        })
        .await
        .unwrap();
        let (store_rate, events, commits) =
            store_append_rate(&store_db, Duration::from_secs(secs), false).await;
        report("pg_store_append_c64", store_rate, "events/s");
        if commits > 0 {
            report(
                "pg_store_events_per_txn_c64",
                events as f64 / commits as f64,
                "events/txn",
            );
        }
        eprintln!("(log verified: {events} events)");
        let decide_db = fresh_database(&base, "decide").await;
        let (decide_rate, _, _) =
            store_append_rate(&decide_db, Duration::from_secs(secs), true).await;
        report(
            "pg_store_version_read_and_append_c64",
            decide_rate,
            "appends/s",
        );
        if let Some(peer) = pgbench {
            report("pgbench_insert_c64", peer, "rows/s");
            report("pg_store_vs_pgbench_ratio", store_rate / peer, "x");
        }
        for db in [&store_db, &peer_db, &decide_db] {
            let name = db.rsplit('/').next().unwrap_or_default();
            sql(
                &base,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    });
}
