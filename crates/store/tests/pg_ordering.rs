//! The ordering trap (DESIGN.md, "PostgreSQL store"): with concurrent writers in several
//! processes, a reader that follows `global_position > last` must see every position exactly
//! once, in order, while they write; nothing may ever appear behind it.
//!
//! The parent creates a database and runs 2 child processes (this test binary again, running
//! only `ordering_child`), each with 4 concurrent writer tasks (8 writers), plus 2 writer
//! tasks of its own (a third process). A reader in the parent polls `read_all` as fast as it
//! can and checks that each event it gets is exactly `last + 1`. At the end, the whole log read
//! afresh must be exactly what the live reader saw, and its length the number of acknowledged
//! events.

mod pg_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use incidentlog_store::{EventStore, ExpectedVersion, RecordedEvent};
use pg_support::*;
use uuid::Uuid;

const CHILD_ENV: &str = "INCIDENTLOG_PG_ORDERING_URL";
const CHILD_WRITERS: u64 = 4;
const APPENDS_PER_WRITER: u64 = 150;

/// Appends from `writers` tasks; returns the number of acknowledged events.
async fn write_load(url: &str, writers: u64, tag: u64) -> u64 {
    let store = Arc::new(open(url).await);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            // A few streams per writer, shared with nobody, so `Exact` versions always hold
            // and every append must succeed.
            let streams: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
            let mut versions = [0u64; 3];
            for i in 0..APPENDS_PER_WRITER {
                let s = (i % 3) as usize;
                let n = 1 + (i % 3); // 1 to 3 events per append
                let events = (0..n).map(|k| new_event(tag * 1_000_000 + w * 10_000 + i * 4 + k));
                let out = store
                    .append(request(
                        streams[s],
                        ExpectedVersion::Exact(versions[s]),
                        events.collect(),
                    ))
                    .await
                    .expect("append");
                assert_eq!(out.last_position - out.first_position + 1, n);
                versions[s] += n;
                acked += n;
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("writer task");
    }
    acked
}

/// Child process entry point (run by the parent test only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of concurrent_writers_in_several_processes_never_let_a_reader_skip"]
async fn ordering_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        eprintln!("ordering_child only runs under its parent test");
        return;
    };
    let tag: u64 = std::env::var("INCIDENTLOG_PG_ORDERING_TAG")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let acked = write_load(&url, CHILD_WRITERS, tag).await;
    println!("\nACKED {acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_several_processes_never_let_a_reader_skip() {
    let Some(url) = test_database("concurrent_writers_in_several_processes").await else {
        return;
    };
    let reader_store = Arc::new(open(&url).await);
    let done = Arc::new(AtomicBool::new(false));

    // The reader: polls as fast as it can, each event must be exactly the next position.
    let reader = {
        let store = Arc::clone(&reader_store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut stream_versions: HashMap<Uuid, u64> = HashMap::new();
            let mut polls = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let last = seen.last().map_or(0, |e| e.global_position);
                let page = store.read_all(last, 500).await.expect("read_all");
                polls += 1;
                for e in page {
                    let last = seen.last().map_or(0, |e| e.global_position);
                    assert_eq!(
                        e.global_position,
                        last + 1,
                        "reader saw position {} right after {last}",
                        e.global_position
                    );
                    let v = stream_versions.entry(e.stream_id).or_insert(0);
                    assert_eq!(e.stream_version, *v + 1, "stream versions in order");
                    *v += 1;
                    seen.push(e);
                }
                if finished {
                    // One more full pass after the writers are done.
                    let last = seen.last().map_or(0, |e| e.global_position);
                    if store.read_all(last, 1).await.expect("read_all").is_empty() {
                        return (seen, polls);
                    }
                } else {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    // Writers: 2 child processes x 4 tasks, and 2 tasks here.
    let mut children = Vec::new();
    for tag in 1..=2u64 {
        let mut cmd = child_test(
            "ordering_child",
            &[
                (CHILD_ENV, url.as_str()),
                ("INCIDENTLOG_PG_ORDERING_TAG", &tag.to_string()),
            ],
        );
        children.push(std::thread::spawn(move || {
            cmd.output().expect("run child test process")
        }));
    }
    let local = write_load(&url, 2, 3).await;
    let mut acked = local;
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.join().expect("child thread"))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let n: u64 = stdout
            .lines()
            .find_map(|l| l.split_once("ACKED ").map(|(_, n)| n))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("child printed no ACKED line:\n{stdout}"));
        acked += n;
    }
    done.store(true, Ordering::Release);
    let (seen, polls) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("reader finishes")
        .expect("reader task");

    // Every writer's events in (3 processes, 10 writers).
    let expected_total = (2 * CHILD_WRITERS + 2) * (APPENDS_PER_WRITER / 3) * 6;
    assert_eq!(acked, expected_total);
    assert_eq!(
        seen.len() as u64,
        acked,
        "live reader saw every acknowledged event"
    );

    // Nothing appeared behind the live reader: a fresh read of the whole log is what it saw.
    let mut all = Vec::new();
    loop {
        let page = reader_store.read_all(all.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let seen_ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    let all_ids: Vec<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids, all_ids);
    let report = reader_store.verify().await.unwrap();
    assert_eq!(report.events, acked);
    eprintln!("reader polled {polls} times while {acked} events were appended");
}
