//! Store benchmark: `cargo bench -p incidentlog-store --bench store [-- --quick]`
//! (or `INCIDENTLOG_BENCH_QUICK=1`). Prints a human table and one `BENCH name=value unit`
//! line per figure.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use incidentlog_store::{
    AppendRequest, Durability, EventStore, ExpectedVersion, FileStore, NewEvent, OpenOptions,
};
use serde_json::value::RawValue;
use uuid::Uuid;

fn report(name: &str, value: f64, unit: &str, human: &str) {
    println!("{human:<58} {value:>14.1} {unit}");
    println!("BENCH {name}={value:.1} {unit}");
}

/// Payloads of ~190 bytes of JSON (a ~300-byte record once framed), prepared once so the
/// figures measure the store, not the making of requests.
fn payloads() -> &'static [Box<RawValue>] {
    static P: std::sync::OnceLock<Vec<Box<RawValue>>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        (0..9)
            .map(|d| {
                RawValue::from_string(format!(
                    r#"{{"kind":"missile_strike","occurred_at":"2025-03-0{}T04:15:00Z","region":"UA-63","source":{{"name":"Regional administration","kind":"official"}},"locality":"Kharkiv","seq":{d}}}"#,
                    1 + d
                ))
                .unwrap()
            })
            .collect()
    })
}

/// Unique event ids without a getrandom call each: a random prefix and a counter.
fn next_id() -> Uuid {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let hi = *PREFIX.get_or_init(|| Uuid::new_v4().as_u64_pair().0);
    Uuid::from_u64_pair(hi, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        event_id: next_id(),
        event_type: "IncidentReported".into(),
        data: payloads()[(i % 9) as usize].clone(),
    }
}

fn request(stream: Uuid, i: u64) -> AppendRequest {
    AppendRequest {
        stream_id: stream,
        expected_version: ExpectedVersion::Any,
        events: vec![event(i)],
        recorded_by: "bench".into(),
    }
}

/// Events/s, and events per write (= per sync when strict).
async fn append_throughput(appenders: usize, run: Duration, durability: Durability) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::new(dir.path());
    opts.durability = durability;
    let store = Arc::new(FileStore::open(&opts).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (store, stop, count) = (store.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let stream = Uuid::new_v4();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.append(request(stream, i)).await.unwrap();
                    i += 1;
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
    let n = count.load(Ordering::Relaxed) as f64;
    let rate = n / start.elapsed().as_secs_f64();
    let (writes, events) = store.write_stats();
    (rate, events as f64 / writes.max(1) as f64)
}

/// The disk's own limit: one ~300-byte write + fdatasync at a time.
fn sync_per_event(run: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let buf = [0x5au8; 300];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("INCIDENTLOG_BENCH_QUICK").is_some();
    let run = if quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(3)
    };
    let log_events: u64 = if quick { 200_000 } else { 1_000_000 };

    // `INCIDENTLOG_BENCH_ONLY=log` skips the append figures (for profiling the read side).
    let only_log = std::env::var("INCIDENTLOG_BENCH_ONLY").is_ok_and(|v| v == "log");
    let mut by_64 = 0.0;
    for appenders in [1, 16, 64].into_iter().filter(|_| !only_log) {
        let (rate, per_sync) = append_throughput(appenders, run, Durability::Strict).await;
        if appenders == 64 {
            by_64 = rate;
        }
        report(
            &format!("append_strict_{appenders}"),
            rate,
            "events/s",
            &format!("durable appends, {appenders} concurrent appenders"),
        );
        report(
            &format!("events_per_sync_{appenders}"),
            per_sync,
            "events",
            &format!("  events per write+fdatasync, {appenders} appenders"),
        );
    }
    if !only_log {
        let (rate, _) = append_throughput(64, run, Durability::Relaxed).await;
        report(
            "append_relaxed_64",
            rate,
            "events/s",
            "relaxed appends (no fdatasync: the CPU ceiling), 64 appenders",
        );
        let disk = sync_per_event(run);
        report(
            "fsync_per_event",
            disk,
            "events/s",
            "one fdatasync per 300-byte write",
        );
        report(
            "append_64_vs_fsync",
            by_64 / disk,
            "x",
            "64 appenders / one-sync-per-event",
        );
    }

    // Build a log of `log_events` events (relaxed, in large batches), then reopen it.
    // `INCIDENTLOG_BENCH_LOG_DIR` keeps (and reuses) the log between runs.
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("INCIDENTLOG_BENCH_LOG_DIR")
        .map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let mut opts = OpenOptions::new(&dir);
    opts.durability = Durability::Relaxed;
    if !dir.join("log").exists() {
        let store = FileStore::open(&opts).await.unwrap();
        let streams: Vec<Uuid> = (0..log_events / 5).map(|_| Uuid::new_v4()).collect();
        let mut i = 0u64;
        while i < log_events {
            let batch: Vec<_> = (i..(i + 2000).min(log_events))
                .map(|k| request(streams[(k % streams.len() as u64) as usize], k))
                .collect();
            i += batch.len() as u64;
            for r in store.append_many(batch).await {
                r.unwrap();
            }
        }
        store.close().await.unwrap();
    }
    let opens = std::env::var("INCIDENTLOG_BENCH_OPENS").map_or(1, |v| v.parse().unwrap_or(1));
    for _ in 1..opens {
        drop(FileStore::open(&opts).await.unwrap());
    }
    let start = Instant::now();
    let store = FileStore::open(&opts).await.unwrap();
    let open = start.elapsed();
    assert_eq!(store.head().position, log_events);
    report(
        &format!("open_{}k_ms", log_events / 1000),
        open.as_secs_f64() * 1000.0,
        "ms",
        &format!("open (recover + index) a {log_events}-event log"),
    );
    report(
        "index_bytes_per_event",
        store.index_memory_bytes() as f64 / log_events as f64,
        "B/event",
        "index memory per event",
    );

    let start = Instant::now();
    let mut after = 0;
    let mut n = 0u64;
    let reads = std::env::var("INCIDENTLOG_BENCH_READS").map_or(1, |v| v.parse().unwrap_or(1));
    for _ in 1..reads {
        let mut after = 0;
        loop {
            let page = store.read_all(after, 10_000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.global_position;
        }
    }
    let start = if reads > 1 { Instant::now() } else { start };
    loop {
        let page = store.read_all(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.global_position;
        n += page.len() as u64;
    }
    assert_eq!(n, log_events);
    report(
        "read_all",
        n as f64 / start.elapsed().as_secs_f64(),
        "events/s",
        "read_all, checksums verified, pages of 10,000",
    );
    let start = Instant::now();
    let v = store.verify().await.unwrap();
    assert_eq!(v.events, log_events);
    report(
        "verify",
        log_events as f64 / start.elapsed().as_secs_f64(),
        "events/s",
        "verify (checksums + hash chain)",
    );
}
