//! The database goes away under load and comes back: appends and reads fail fast with
//! `Unavailable` (never hang), the store reconnects by itself, and no acknowledged event is
//! lost.
//!
//! Stopping the cluster would break every other PostgreSQL test running at the same time, so
//! the parent test runs the scenario (`failure_child`) in a child process with a private
//! cluster of its own, started by `scripts/with-postgres.sh`, which also exports the
//! `INCIDENTLOG_TEST_PG_CTL stop|start` command the scenario uses.

mod pg_support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use incidentlog_store::{EventStore, ExpectedVersion, StoreError};
use pg_support::*;
use uuid::Uuid;

const CHILD_MARK: &str = "INCIDENTLOG_PG_FAILURE_CHILD";
/// Generous: only a hang trips it.
const HANG: Duration = Duration::from_secs(60);

const UP: u8 = 0;
const DOWN: u8 = 1;

#[test]
fn database_outage_under_load_fails_fast_and_recovers_without_loss() {
    if base_url("database_outage_under_load").is_none() {
        return;
    }
    let pg_bin = std::env::var("INCIDENTLOG_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    if !Path::new(&pg_bin).join("initdb").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the failure test needs the PostgreSQL binaries (INCIDENTLOG_TEST_PG_BIN)"
        );
        eprintln!("\n########## SKIPPED database_outage_under_load: no PostgreSQL binaries in {pg_bin} ##########\n");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/with-postgres.sh");
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(script)
        .arg(exe)
        .args([
            "failure_child",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env_remove("INCIDENTLOG_TEST_PG")
        .env("INCIDENTLOG_PG_BIN", &pg_bin)
        .env("CI", "true") // the private cluster must start: no silent skip inside
        .env(CHILD_MARK, "1")
        .output()
        .expect("run the scenario under a private cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("FAILURE SCENARIO OK"),
        "the scenario did not run:\n{stdout}\n{stderr}"
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("scenario:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn pg_ctl(action: &str) {
    let ctl = std::env::var("INCIDENTLOG_TEST_PG_CTL").expect("INCIDENTLOG_TEST_PG_CTL");
    let status = Command::new(&ctl)
        .arg(action)
        .status()
        .unwrap_or_else(|e| panic!("{ctl} {action}: {e}"));
    assert!(status.success(), "{ctl} {action} failed: {status}");
}

/// The scenario, run only by the parent test (it stops the cluster it is given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of database_outage_under_load_fails_fast_and_recovers_without_loss"]
async fn failure_child() {
    if std::env::var(CHILD_MARK).as_deref() != Ok("1") {
        eprintln!("failure_child only runs under its parent test");
        return;
    }
    let base = std::env::var("INCIDENTLOG_TEST_PG").expect("private cluster URL");
    let url = fresh_database(&base).await;
    let store = Arc::new(open(&url).await);

    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let failed_while_down = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (store, acked, failed_while_down, phase, stop) = (
            Arc::clone(&store),
            Arc::clone(&acked),
            Arc::clone(&failed_while_down),
            Arc::clone(&phase),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let stream = Uuid::new_v4();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let e = new_event(w * 1_000_000 + i);
                let id = e.event_id;
                let was = phase.load(Ordering::Acquire);
                let r = tokio::time::timeout(
                    HANG,
                    store.append(request(stream, ExpectedVersion::Any, vec![e])),
                )
                .await
                .expect("an append hung while the database was away");
                match r {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(StoreError::Unavailable(_)) => {
                        if was == DOWN {
                            failed_while_down.fetch_add(1, Ordering::AcqRel);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("unexpected error: {e:?}"),
                }
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().len();
    let wait_for = |target: usize, what: &'static str| {
        let acked = Arc::clone(&acked);
        async move {
            tokio::time::timeout(Duration::from_secs(120), async {
                while acked.lock().unwrap().len() < target {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{what}"));
        }
    };
    wait_for(300, "appends before the outage").await;

    tokio::task::spawn_blocking(|| pg_ctl("stop"))
        .await
        .unwrap();
    phase.store(DOWN, Ordering::Release);
    let before_restart = acked_count();

    // Direct calls while the database is away: Unavailable, promptly.
    let stream = Uuid::new_v4();
    let r = tokio::time::timeout(
        HANG,
        store.append(request(stream, ExpectedVersion::Any, vec![new_event(0)])),
    )
    .await
    .expect("append hung");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(HANG, store.read_all(0, 10))
        .await
        .expect("read hung");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(HANG, store.stream_version(stream))
        .await
        .expect("read hung");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    tokio::time::timeout(Duration::from_secs(120), async {
        while failed_while_down.load(Ordering::Acquire) < 16 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("writers keep getting answers while the database is away");
    // Nothing is acknowledged while the database is away.
    assert_eq!(acked_count(), before_restart);

    tokio::task::spawn_blocking(|| pg_ctl("start"))
        .await
        .unwrap();
    phase.store(UP, Ordering::Release);
    // The store reconnects by itself: the same writers make progress again.
    wait_for(before_restart + 300, "appends after the database returned").await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.expect("writer task");
    }

    // Every acknowledged event is there, and the log is whole.
    let acked = acked.lock().unwrap().clone();
    let mut all = Vec::new();
    loop {
        let page = store.read_all(all.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.global_position, i as u64 + 1);
    }
    let stored: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    let lost: Vec<&Uuid> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    let report = store.verify().await.unwrap();
    assert_eq!(report.events, all.len() as u64);
    // The head follower reconnected too.
    let mut head = store.watch_head();
    tokio::time::timeout(
        Duration::from_secs(60),
        head.wait_for(|p| *p == all.len() as u64),
    )
    .await
    .expect("head catches up")
    .unwrap();
    println!(
        "scenario: {} acknowledged ({} before the outage), {} stored, {} appends refused while down",
        acked.len(),
        before_restart,
        all.len(),
        failed_while_down.load(Ordering::Acquire)
    );
    println!("FAILURE SCENARIO OK");
}
