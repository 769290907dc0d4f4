//! PostgreSQL-specific behaviour of `PgStore`: migrations with several servers starting at
//! once, several stores on one database (shared order, head followed through NOTIFY), the
//! hash chain stored in the database, tokens. The generic semantics are in `pg_conformance`.

mod pg_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use incidentlog_store::pg::PgStore;
use incidentlog_store::{
    subscribe, Durability, EventStore, ExpectedVersion, StoreError, TokenRecord,
};
use pg_support::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_open_an_empty_database_at_once() {
    let Some(url) = test_database("several_servers_open_an_empty_database_at_once").await else {
        return;
    };
    let opens = (0..6).map(|_| PgStore::open(&url, Durability::Strict));
    let stores: Vec<PgStore> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.expect("every concurrent open succeeds"))
        .collect();
    let client = connect(&url).await;
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i32> = (1..=incidentlog_store::pg::SCHEMA_VERSION).collect();
    assert_eq!(versions, expected, "each migration recorded exactly once");
    // Reopening is a no-op.
    drop(stores);
    let store = open(&url).await;
    assert_eq!(store.head().position, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_share_one_order_and_follow_each_other() {
    let Some(url) = test_database("two_stores_share_one_order").await else {
        return;
    };
    let a = Arc::new(open(&url).await);
    let b = Arc::new(open(&url).await);
    let mut feed_a = Box::pin(subscribe(Arc::clone(&a), 0));
    let mut feed_b = Box::pin(subscribe(Arc::clone(&b), 0));

    let stream = Uuid::new_v4();
    let mut expected_ids = Vec::new();
    for i in 0..20u64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let e = new_event(i);
        expected_ids.push(e.event_id);
        let out = store
            .append(request(stream, ExpectedVersion::Exact(i), vec![e]))
            .await
            .unwrap();
        assert_eq!(out.first_position, i + 1);
        assert_eq!(out.version, i + 1);
    }
    // A store that did not write learns the head from the other one (NOTIFY or polling).
    for (name, feed) in [("a", &mut feed_a), ("b", &mut feed_b)] {
        let mut ids = Vec::new();
        while ids.len() < expected_ids.len() {
            let e = tokio::time::timeout(Duration::from_secs(60), feed.next())
                .await
                .unwrap_or_else(|_| panic!("store {name}'s subscription stalled"))
                .unwrap()
                .unwrap();
            assert_eq!(e.global_position, ids.len() as u64 + 1);
            ids.push(e.event_id);
        }
        assert_eq!(ids, expected_ids, "store {name} sees the same order");
    }
    let mut wa = a.watch_head();
    tokio::time::timeout(Duration::from_secs(60), wa.wait_for(|p| *p == 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.head(), b.head());
    let report = a.verify().await.unwrap();
    assert_eq!(report.events, 20);
    assert_eq!(report.head_hash, b.head().hash);

    // Optimistic concurrency holds across stores.
    let err = a
        .append(request(
            stream,
            ExpectedVersion::Exact(5),
            vec![new_event(99)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 20, .. }),
        "{err:?}"
    );
}

/// `verify` walks a log that grows while it walks (other servers keep appending): what was
/// appended after its last page is the next position, not a hole, and never reported as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_during_appends_never_reports_a_hole() {
    let Some(url) = test_database("verify_during_appends_never_reports_a_hole").await else {
        return;
    };
    let store = Arc::new(open(&url).await);
    let writer = open(&url).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .append(request(
                        Uuid::new_v4(),
                        ExpectedVersion::Any,
                        vec![new_event(i)],
                    ))
                    .await
                    .unwrap();
                i += 1;
            }
            i
        })
    };
    for round in 0..200 {
        if let Err(e) = store.verify().await {
            panic!("verify round {round} on a growing, intact log: {e:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appending.await.unwrap();
    assert!(appended > 0);
    assert_eq!(store.verify().await.unwrap().events, appended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_tampered_row() {
    let Some(url) = test_database("verify_detects_a_tampered_row").await else {
        return;
    };
    let store = open(&url).await;
    let stream = Uuid::new_v4();
    for i in 0..5 {
        store
            .append(request(stream, ExpectedVersion::Any, vec![new_event(i)]))
            .await
            .unwrap();
    }
    let ok = store.verify().await.unwrap();
    assert_eq!(ok.events, 5);
    assert_eq!(ok.head_hash, store.head().hash);

    let client = connect(&url).await;
    client
        .execute(
            "UPDATE events SET data = '{\"n\":1000}' WHERE position = 3",
            &[],
        )
        .await
        .unwrap();
    match store.verify().await {
        Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, 3),
        other => panic!("expected Corrupt at position 3, got {other:?}"),
    }
    // Reads that cover the damaged record report it too.
    assert!(matches!(
        store.read_all(0, 100).await,
        Err(StoreError::Corrupt { offset: 3, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_live_in_the_database() {
    let Some(url) = test_database("tokens_live_in_the_database").await else {
        return;
    };
    let a = open(&url).await;
    let b = open(&url).await;
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
    let token = TokenRecord {
        name: "ops".to_owned(),
        role: "admin".to_owned(),
        secret_hash: [7; 32],
        created_at: now,
        revoked_at: None,
    };
    a.add_token(token.clone()).await.unwrap();
    assert!(matches!(
        b.add_token(token.clone()).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(b.tokens().await.unwrap(), vec![token.clone()]);
    assert!(b.revoke_token("ops", now).await.unwrap());
    assert!(!b.revoke_token("nobody", now).await.unwrap());
    let listed = a.tokens().await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_stream_never_double_assign_a_version() {
    let Some(url) = test_database("concurrent_appends_one_stream").await else {
        return;
    };
    let a = Arc::new(open(&url).await);
    let b = Arc::new(open(&url).await);
    let stream = Uuid::new_v4();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = if w % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            let mut won = 0u64;
            for i in 0..20 {
                let v = store.stream_version(stream).await.unwrap();
                match store
                    .append(request(
                        stream,
                        ExpectedVersion::Exact(v),
                        vec![new_event(w * 100 + i)],
                    ))
                    .await
                {
                    Ok(out) => {
                        assert_eq!(out.version, v + 1);
                        won += 1;
                    }
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            won
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let events = a.read_stream(stream).await.unwrap();
    assert_eq!(events.len() as u64, total);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1);
    }
}

/// Anyone who can connect to the database can NOTIFY on a log's channel: a forged head (a
/// position far ahead) must not become the store's head, or every read would wait for events
/// that never come. Notifications only wake the follower, which reads the head from the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_notification_does_not_move_the_head() {
    let Some(url) = test_database("a_forged_notification_does_not_move_the_head").await else {
        return;
    };
    let store = open(&url).await;
    let stream = Uuid::new_v4();
    store
        .append(request(
            stream,
            ExpectedVersion::Exact(0),
            vec![new_event(1)],
        ))
        .await
        .unwrap();
    let client = connect(&url).await;
    // The channel of the log in schema `public` (fixed: `LogKey`'s unit test).
    client
        .batch_execute(&format!(
            "SELECT pg_notify('incidentlog_head_89078c180b4dd722', '9999999:{}')",
            "0".repeat(64)
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.head().position, 1, "a forged head was taken");
    // A real append by another process is still seen through its notification.
    let other = open(&url).await;
    other
        .append(request(
            stream,
            ExpectedVersion::Exact(1),
            vec![new_event(2)],
        ))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while store.head().position != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other's append was not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events are stamped under the log's append lock: a question about a time just past waits
/// for the append transaction in flight (here: a session holding that lock) before the head
/// it answers from is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_just_past_waits_for_the_append_in_flight() {
    let Some(url) = test_database("a_time_just_past_waits_for_the_append_in_flight").await else {
        return;
    };
    let store = Arc::new(open(&url).await);
    let client = connect(&url).await;
    // The lock of the log in schema `public` (`LogKey`'s unit test: 0x89078c180b4dd722).
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(-1995994088, 189650722)")
        .await
        .unwrap();
    let t = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let settle = tokio::spawn({
        let store = store.clone();
        async move { store.settle_recorded_at(t).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !settle.is_finished(),
        "did not wait for the transaction in flight"
    );
    client.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), settle)
        .await
        .expect("settled once the transaction ended")
        .unwrap()
        .unwrap();
}

/// A restore opens as the log's sole writer: not while another process writes the log, and
/// no writer opens while it runs (it writes events recorded in the past: a server running
/// meanwhile would change what it answered about those moments). Readers open alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_writer_excludes_every_other_writer_both_ways() {
    let Some(url) = test_database("a_sole_writer_excludes_every_other_writer_both_ways").await
    else {
        return;
    };
    let writer = PgStore::open(&url, Durability::Strict)
        .await
        .expect("a writer");
    // Its follower takes the shared lock a moment after the open.
    let mut refused = None;
    for _ in 0..100 {
        match PgStore::open_sole_writer(&url, Durability::Strict).await {
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
            Ok(sole) => drop(sole),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a sole writer opened beside a writer");
    assert!(
        refused.contains("another process writes this log"),
        "{refused}"
    );
    writer.close().await.expect("close");
    drop(writer);

    let mut sole = None;
    for _ in 0..100 {
        if let Ok(s) = PgStore::open_sole_writer(&url, Durability::Strict).await {
            sole = Some(s);
            break;
        }
        // The closed writer's sessions end a moment later.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sole = sole.expect("the sole writer opens once the writer is gone");
    let err = PgStore::open(&url, Durability::Strict)
        .await
        .expect_err("a writer opened beside the sole writer")
        .to_string();
    assert!(err.contains("a restore is writing this log"), "{err}");
    PgStore::open_read_only(&url).await.expect("a reader opens");
    drop(sole);
}

/// A writer that lost its shared hold on the writers' lock (its follower's connection was
/// cut, and a restore took the lock meanwhile) cannot append: every append transaction asks
/// for the lock itself. Before, such a server went on acknowledging appends into the middle of
/// the restore, which then failed for good ("the store holds a different log").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_append_while_a_restore_holds_the_log() {
    let Some(url) = test_database("a_writer_cannot_append_while_a_restore_holds_the_log").await
    else {
        return;
    };
    let writer = PgStore::open(&url, Durability::Strict)
        .await
        .expect("a writer");
    writer
        .append(request(
            Uuid::new_v4(),
            ExpectedVersion::Exact(0),
            vec![new_event(1)],
        ))
        .await
        .expect("an append");
    let admin = connect(&url).await;
    let holders = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' \
                   AND granted AND database = (SELECT oid FROM pg_database \
                   WHERE datname = current_database())";
    // Cut the connection that holds the writer's share, then restore as the sole writer in
    // the moment before it is taken again.
    let mut sole = None;
    for _ in 0..100 {
        for row in admin.query(holders, &[]).await.expect("pg_locks") {
            let pid: i32 = row.get(0);
            let _ = admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
        }
        if let Ok(s) = PgStore::open_sole_writer(&url, Durability::Strict).await {
            sole = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sole = sole.expect("a sole writer once the writer's share was cut");
    let err = writer
        .append(request(
            Uuid::new_v4(),
            ExpectedVersion::Exact(0),
            vec![new_event(2)],
        ))
        .await
        .expect_err("an append while a restore holds the log")
        .to_string();
    assert!(err.contains("a restore is writing this log"), "{err}");
    assert_eq!(sole.head().position, 1, "nothing was written");
    drop(sole);
    // The restore gone, the writer appends again.
    let mut appended = false;
    for _ in 0..100 {
        if writer
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Exact(0),
                vec![new_event(3)],
            ))
            .await
            .is_ok()
        {
            appended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(appended, "the writer never appended again");
}
