//! The conformance suite: every check is written once, generic over [`EventStore`], and run
//! against every backend. A backend's test file instantiates all of them with
//! `common::conformance::conformance_suite!(factory);` where
//! `async fn factory() -> (Arc<S>, G)` returns a fresh, empty store and a guard kept alive for
//! the test (a temp dir, a database schema, ...).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use incidentlog_store::{
    subscribe, AppendOutcome, AppendRequest, EventRef, EventStore, ExpectedVersion, FileStore,
    NewEvent, OpenOptions, RecordedAppend, RecordedEvent, Regrouper, StoreError, TokenRecord,
};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Instantiates every check as a `#[tokio::test]` for one backend factory.
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::common::conformance::conformance_suite!(@each $factory;
            append_and_read_back,
            read_streams_reads_each_stream,
            read_stream_pages_slice_the_stream,
            expected_version_checks,
            one_winner_per_expected_version,
            idempotent_retries,
            idempotency_conflicts,
            never_version_only_answers_repeats,
            invalid_requests,
            append_many_is_per_request_atomic,
            append_many_requests_see_each_other,
            append_many_requests_after_a_failure_depend_on_it,
            concurrent_batches_stay_contiguous,
            read_all_paging,
            read_all_map_maps_what_read_all_reads,
            position_at_is_a_prefix,
            subscription_catch_up_then_live,
            subscription_from_the_middle,
            watch_head_follows_appends,
            verify_matches_head,
            tokens_roundtrip,
            close_refuses_appends_keeps_reads,
            restore_rebuilds_a_log_exactly,
            restores_in_flight_keep_order_time_and_atomicity,
        );
    };
    (@each $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (store, _guard) = $factory().await;
                $crate::common::conformance::$check(store).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// Generous bound for anything that waits (loaded CI machines).
const PATIENCE: Duration = Duration::from_secs(60);

pub fn event(event_type: &str, json: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_string(),
        data: RawValue::from_string(json.to_string()).expect("test json"),
    }
}

pub fn request(stream_id: Uuid, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id,
        expected_version: expected,
        events,
        recorded_by: "tester".to_string(),
    }
}

fn events(n: usize, tag: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("Thing", &format!("{{\"tag\":\"{tag}\",\"i\":{i}}}")))
        .collect()
}

async fn all<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store.read_all(0, usize::MAX).await.expect("read_all")
}

fn assert_gap_free(events: &[RecordedEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.global_position,
            i as u64 + 1,
            "positions must be 1..N, gap-free"
        );
    }
}

/// `read_stream_page` gives the slice of `read_stream` after a version, at most a limit.
pub async fn read_stream_pages_slice_the_stream<S: EventStore>(store: Arc<S>) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // Stream a: 7 events over three appends, interleaved with another stream.
    for (expected, n) in [(0, 3), (3, 1), (4, 3)] {
        store
            .append(request(a, ExpectedVersion::Exact(expected), events(n, "a")))
            .await
            .unwrap();
        store
            .append(request(b, ExpectedVersion::Any, events(1, "b")))
            .await
            .unwrap();
    }
    let key = |v: &[RecordedEvent]| -> Vec<(u64, u64, Uuid)> {
        v.iter()
            .map(|e| (e.global_position, e.stream_version, e.event_id))
            .collect()
    };
    let whole = key(&store.read_stream(a).await.unwrap());
    assert_eq!(whole.len(), 7);
    for after in [0u64, 1, 3, 6, 7, 8, u64::MAX] {
        for limit in [0usize, 1, 2, 5, 7, 100, usize::MAX] {
            let page = store.read_stream_page(a, after, limit).await.unwrap();
            let start = (after.min(7)) as usize;
            let want: Vec<_> = whole[start..].iter().take(limit).copied().collect();
            assert_eq!(key(&page), want, "after {after}, limit {limit}");
        }
    }
    // Paging through gives the whole stream, once.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_stream_page(a, after, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.stream_version;
        paged.extend(key(&page));
    }
    assert_eq!(paged, whole);
    assert!(store
        .read_stream_page(Uuid::new_v4(), 0, 10)
        .await
        .unwrap()
        .is_empty());
}

/// `read_streams` gives what `read_stream` gives for each stream, in the order asked, with
/// empty streams for unknown ids.
pub async fn read_streams_reads_each_stream<S: EventStore>(store: Arc<S>) {
    let (a, b, unknown) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store
        .append(request(a, ExpectedVersion::Exact(0), events(2, "a")))
        .await
        .unwrap();
    store
        .append(request(b, ExpectedVersion::Exact(0), events(1, "b")))
        .await
        .unwrap();
    store
        .append(request(a, ExpectedVersion::Exact(2), events(1, "a2")))
        .await
        .unwrap();
    let all = store.read_streams(vec![b, unknown, a]).await.unwrap();
    assert_eq!(all.len(), 3);
    for (got, id) in all.iter().zip([b, unknown, a]) {
        let one = store.read_stream(id).await.unwrap();
        let key = |v: &[RecordedEvent]| -> Vec<(u64, u64, Uuid)> {
            v.iter()
                .map(|e| (e.global_position, e.stream_version, e.event_id))
                .collect()
        };
        assert_eq!(key(got), key(&one));
    }
    assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0, 3]);
    // Only unknown streams (a bulk import's new incidents): one empty answer each.
    let none = store
        .read_streams(vec![unknown, Uuid::new_v4()])
        .await
        .unwrap();
    assert_eq!(none.iter().map(Vec::len).collect::<Vec<_>>(), [0, 0]);
}

pub async fn append_and_read_back<S: EventStore>(store: Arc<S>) {
    assert_eq!(store.head().position, 0);
    assert_eq!(store.head().hash, [0u8; 32]);
    let stream = Uuid::new_v4();
    let batch = vec![
        event("A", r#"{"x":1}"#),
        event("B", r#"{"nested":{"y":[1,2,3]},"s":"é\"q"}"#),
        event("C", "{}"),
    ];
    let out = store
        .append(request(stream, ExpectedVersion::Exact(0), batch.clone()))
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            stream_id: stream,
            version: 3,
            first_position: 1,
            last_position: 3,
            duplicate: false,
            recorded_at: out.recorded_at,
        }
    );
    assert!(out.recorded_at.is_some(), "a fresh append names its time");
    let read = store.read_stream(stream).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (r, e)) in read.iter().zip(&batch).enumerate() {
        assert_eq!(
            Some(r.recorded_at),
            out.recorded_at,
            "every event of an append carries the time the outcome names"
        );
        assert_eq!(r.global_position, i as u64 + 1);
        assert_eq!(r.stream_version, i as u64 + 1);
        assert_eq!(r.stream_id, stream);
        assert_eq!(r.event_id, e.event_id);
        assert_eq!(r.event_type, e.event_type);
        assert_eq!(r.data.get(), e.data.get(), "payload bytes are stored as is");
        assert_eq!(r.recorded_by, "tester");
    }
    assert!(read
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
    assert!(read.windows(2).all(|w| w[0].hash != w[1].hash));

    let other = Uuid::new_v4();
    store
        .append(request(other, ExpectedVersion::Any, events(2, "o")))
        .await
        .unwrap();
    let everything = all(&*store).await;
    assert_eq!(everything.len(), 5);
    assert_gap_free(&everything);
    assert_eq!(
        &everything[..3]
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>(),
        &read.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    for (a, b) in everything[..3].iter().zip(&read) {
        assert_eq!(a.hash, b.hash, "read_all and read_stream agree on hashes");
    }
    assert_eq!(store.head().position, 5);
    assert_eq!(store.head().hash, everything[4].hash);
    assert_eq!(store.stream_version(stream).await.unwrap(), 3);
    assert_eq!(store.stream_version(other).await.unwrap(), 2);
    assert_eq!(store.stream_version(Uuid::new_v4()).await.unwrap(), 0);
    assert!(store.read_stream(Uuid::new_v4()).await.unwrap().is_empty());

    let by_id = store.event_by_id(batch[1].event_id).await.unwrap().unwrap();
    assert_eq!(by_id.global_position, 2);
    assert_eq!(by_id.data.get(), batch[1].data.get());
    assert_eq!(by_id.hash, read[1].hash);
    assert!(store.event_by_id(Uuid::new_v4()).await.unwrap().is_none());
    assert!(store.read_all(5, 10).await.unwrap().is_empty());
    assert!(store.read_all(99, 10).await.unwrap().is_empty());
}

pub async fn expected_version_checks<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    // A stream that does not exist has version 0.
    let err = store
        .append(request(s, ExpectedVersion::Exact(1), events(1, "a")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 0, .. }),
        "{err:?}"
    );
    store
        .append(request(s, ExpectedVersion::Exact(0), events(2, "a")))
        .await
        .unwrap();
    for wrong in [0, 1, 3, 100] {
        let err = store
            .append(request(s, ExpectedVersion::Exact(wrong), events(1, "b")))
            .await
            .unwrap_err();
        match err {
            StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => {
                assert_eq!(stream_id, s);
                assert_eq!(expected, ExpectedVersion::Exact(wrong));
                assert_eq!(actual, 2);
            }
            other => panic!("expected WrongExpectedVersion, got {other:?}"),
        }
    }
    assert_eq!(store.head().position, 2, "a rejected append writes nothing");
    let out = store
        .append(request(s, ExpectedVersion::Exact(2), events(1, "c")))
        .await
        .unwrap();
    assert_eq!((out.version, out.first_position), (3, 3));
    let out = store
        .append(request(s, ExpectedVersion::Any, events(1, "d")))
        .await
        .unwrap();
    assert_eq!(out.version, 4);
    assert_eq!(all(&*store).await.len(), 4);
}

pub async fn one_winner_per_expected_version<S: EventStore>(store: Arc<S>) {
    const CONTENDERS: usize = 12;
    const ROUNDS: u64 = 6;
    let s = Uuid::new_v4();
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
        let mut tasks = Vec::new();
        for c in 0..CONTENDERS {
            let store = store.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(request(
                        s,
                        ExpectedVersion::Exact(round * 2),
                        events(2, &format!("{round}-{c}")),
                    ))
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(out) => {
                    winners += 1;
                    assert_eq!(out.version, (round + 1) * 2);
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {}
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
        assert_eq!(winners, 1, "exactly one winner in round {round}");
        assert_eq!(store.stream_version(s).await.unwrap(), (round + 1) * 2);
    }
    let read = store.read_stream(s).await.unwrap();
    assert_eq!(read.len() as u64, ROUNDS * 2);
    for (i, e) in read.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1);
    }
}

/// `ExpectedVersion::NEVER` never writes: an exact repeat is answered as one, a partial or
/// changed repeat is an id conflict, new events are `WrongExpectedVersion`. `maybe_recorded`
/// is never `false` for a recorded id.
pub async fn never_version_only_answers_repeats<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    let batch = events(2, "orig");
    let first = store
        .append(request(s, ExpectedVersion::Exact(0), batch.clone()))
        .await
        .unwrap();
    let head = store.head();
    for e in &batch {
        assert!(store.maybe_recorded(e.event_id).await.unwrap());
    }
    let repeat = store
        .append(request(s, ExpectedVersion::NEVER, batch.clone()))
        .await
        .unwrap();
    assert_eq!(
        repeat,
        AppendOutcome {
            duplicate: true,
            recorded_at: None,
            ..first
        }
    );
    let fresh = events(1, "new");
    assert!(!store.maybe_recorded(fresh[0].event_id).await.unwrap());
    match store
        .append(request(s, ExpectedVersion::NEVER, fresh.clone()))
        .await
    {
        Err(StoreError::WrongExpectedVersion { .. }) => {}
        other => panic!("new events under NEVER: {other:?}"),
    }
    let partial = vec![batch[0].clone(), fresh[0].clone()];
    match store
        .append(request(s, ExpectedVersion::NEVER, partial))
        .await
    {
        Err(StoreError::EventIdConflict { .. }) => {}
        other => panic!("a partial repeat under NEVER: {other:?}"),
    }
    // In one append_many too, next to a real append.
    let other = Uuid::new_v4();
    let results = store
        .append_many(vec![
            request(s, ExpectedVersion::NEVER, batch.clone()),
            request(s, ExpectedVersion::NEVER, fresh.clone()),
            request(other, ExpectedVersion::Exact(0), events(1, "other")),
        ])
        .await;
    assert!(matches!(&results[0], Ok(o) if o.duplicate), "{results:?}");
    assert!(
        matches!(&results[1], Err(StoreError::WrongExpectedVersion { .. })),
        "{results:?}"
    );
    assert!(matches!(&results[2], Ok(o) if !o.duplicate), "{results:?}");
    assert_eq!(
        store.head().position,
        head.position + 1,
        "only the real append is written"
    );
    assert_eq!(store.read_stream(s).await.unwrap().len(), 2);
}

pub async fn idempotent_retries<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    store
        .append(request(
            Uuid::new_v4(),
            ExpectedVersion::Any,
            events(1, "x"),
        ))
        .await
        .unwrap();
    let batch = events(3, "orig");
    let req = request(s, ExpectedVersion::Exact(0), batch.clone());
    let first = store.append(req.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(
        (first.first_position, first.last_position, first.version),
        (2, 4, 3)
    );
    let head = store.head();

    let again = store.append(req.clone()).await.unwrap();
    assert_eq!(
        again,
        AppendOutcome {
            duplicate: true,
            recorded_at: None,
            ..first
        }
    );
    assert_eq!(store.head(), head, "a duplicate writes nothing");

    // The stream moved on; a retry still answers with the original outcome, and the
    // expected version is not checked for a duplicate.
    store
        .append(request(s, ExpectedVersion::Exact(3), events(2, "later")))
        .await
        .unwrap();
    let late = store.append(req.clone()).await.unwrap();
    assert_eq!(
        late,
        AppendOutcome {
            duplicate: true,
            recorded_at: None,
            ..first
        }
    );
    let mut other_expectation = req.clone();
    other_expectation.expected_version = ExpectedVersion::Exact(42);
    assert_eq!(
        store.append(other_expectation).await.unwrap(),
        AppendOutcome {
            duplicate: true,
            recorded_at: None,
            ..first
        }
    );
    // recorded_by is not content.
    let mut other_author = req.clone();
    other_author.recorded_by = "someone else".into();
    assert!(store.append(other_author).await.unwrap().duplicate);

    // Concurrent retries of one new request: one write, the rest duplicates.
    let s2 = Uuid::new_v4();
    let req2 = request(s2, ExpectedVersion::Exact(0), events(2, "race"));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let req2 = req2.clone();
            tokio::spawn(async move { store.append(req2).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    assert!(outcomes
        .windows(2)
        .all(|w| w[0].first_position == w[1].first_position));
    assert_eq!(store.read_stream(s2).await.unwrap().len(), 2);
    let everything = all(&*store).await;
    assert_gap_free(&everything);
    let ids: BTreeSet<_> = everything.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), everything.len(), "no event id recorded twice");
}

pub async fn idempotency_conflicts<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    let batch = events(2, "orig");
    store
        .append(request(s, ExpectedVersion::Exact(0), batch.clone()))
        .await
        .unwrap();
    let head = store.head();
    let conflict = |r: Result<AppendOutcome, StoreError>| match r {
        Err(StoreError::EventIdConflict { event_id, position }) => (event_id, position),
        other => panic!("expected EventIdConflict, got {other:?}"),
    };

    // Same id, other data.
    let mut changed = batch.clone();
    changed[1].data = RawValue::from_string(r#"{"tag":"changed"}"#.into()).unwrap();
    let (id, pos) = conflict(
        store
            .append(request(s, ExpectedVersion::Any, changed))
            .await,
    );
    assert_eq!((id, pos), (batch[1].event_id, 2));
    // Same id, other type.
    let mut retyped = batch.clone();
    retyped[0].event_type = "Other".into();
    let (id, pos) = conflict(
        store
            .append(request(s, ExpectedVersion::Any, retyped))
            .await,
    );
    assert_eq!((id, pos), (batch[0].event_id, 1));
    // Same content, other stream.
    conflict(
        store
            .append(request(Uuid::new_v4(), ExpectedVersion::Any, batch.clone()))
            .await,
    );
    // Partly recorded: one old id, one new.
    let partial = vec![batch[0].clone(), event("New", "{}")];
    let (id, _) = conflict(
        store
            .append(request(s, ExpectedVersion::Any, partial))
            .await,
    );
    assert_eq!(id, batch[0].event_id);
    let partial = vec![event("New", "{}"), batch[1].clone()];
    let (id, pos) = conflict(
        store
            .append(request(s, ExpectedVersion::Any, partial))
            .await,
    );
    assert_eq!((id, pos), (batch[1].event_id, 2));
    // A subset or a reordering of the original append is not that append.
    conflict(
        store
            .append(request(s, ExpectedVersion::Any, vec![batch[0].clone()]))
            .await,
    );
    conflict(
        store
            .append(request(
                s,
                ExpectedVersion::Any,
                vec![batch[1].clone(), batch[0].clone()],
            ))
            .await,
    );
    // Two earlier appends glued together are not one append either.
    let more = events(1, "more");
    store
        .append(request(s, ExpectedVersion::Exact(2), more.clone()))
        .await
        .unwrap();
    let head2 = store.head();
    assert_eq!(head2.position, head.position + 1);
    let glued = vec![batch[0].clone(), batch[1].clone(), more[0].clone()];
    conflict(store.append(request(s, ExpectedVersion::Any, glued)).await);
    assert_eq!(store.head(), head2, "conflicts write nothing");
    assert_eq!(all(&*store).await.len(), 3);
}

pub async fn invalid_requests<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    let err = store
        .append(request(s, ExpectedVersion::Any, vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let e = event("A", "{}");
    let err = store
        .append(request(s, ExpectedVersion::Any, vec![e.clone(), e]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.head().position, 0);
    assert!(store.append_many(vec![]).await.is_empty());
}

pub async fn append_many_is_per_request_atomic<S: EventStore>(store: Arc<S>) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store
        .append(request(b, ExpectedVersion::Any, events(1, "b0")))
        .await
        .unwrap();
    let results = store
        .append_many(vec![
            request(a, ExpectedVersion::Exact(0), events(3, "a")),
            request(c, ExpectedVersion::Any, vec![]), // invalid (stops nothing)
            request(c, ExpectedVersion::Exact(0), events(2, "c")),
            // Wrong version (last: nothing after it would be written).
            request(b, ExpectedVersion::Exact(0), events(2, "b")),
        ])
        .await;
    assert_eq!(results.len(), 4);
    let ra = results[0].as_ref().unwrap();
    assert!(matches!(
        results[3],
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert!(matches!(results[1], Err(StoreError::InvalidInput(_))));
    let rc = results[2].as_ref().unwrap();
    assert_eq!((ra.first_position, ra.last_position, ra.version), (2, 4, 3));
    assert_eq!((rc.first_position, rc.last_position, rc.version), (5, 6, 2));
    assert_eq!(store.stream_version(b).await.unwrap(), 1);
    let everything = all(&*store).await;
    assert_eq!(everything.len(), 6);
    assert_gap_free(&everything);
}

pub async fn append_many_requests_see_each_other<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    let first = request(s, ExpectedVersion::Exact(0), events(1, "1"));
    let results = store
        .append_many(vec![
            first.clone(),
            request(s, ExpectedVersion::Exact(1), events(2, "2")),
            request(s, ExpectedVersion::Exact(3), events(1, "3")),
            first.clone(),
        ])
        .await;
    let r0 = results[0].as_ref().unwrap();
    assert_eq!((r0.version, r0.duplicate), (1, false));
    assert_eq!(results[1].as_ref().unwrap().version, 3);
    assert_eq!(results[2].as_ref().unwrap().version, 4);
    let dup = results[3].as_ref().unwrap();
    assert_eq!(
        *dup,
        AppendOutcome {
            duplicate: true,
            recorded_at: None,
            ..*r0
        }
    );
    let read = store.read_stream(s).await.unwrap();
    assert_eq!(read.len(), 4);
    assert!(read
        .iter()
        .enumerate()
        .all(|(i, e)| e.stream_version == i as u64 + 1));
}

/// Once a request that would write fails its version or event-id check, no later request of
/// the same call is written, even when its expected version happens to match (its caller may
/// have decided it on a state that included the failed request, and records it after that
/// one is settled: a bulk import keeps its line order), whatever its stream; repeats are still
/// answered as duplicates. A question under `ExpectedVersion::NEVER` stops nothing.
pub async fn append_many_requests_after_a_failure_depend_on_it<S: EventStore>(store: Arc<S>) {
    let (s, other, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let first = request(s, ExpectedVersion::Exact(0), events(1, "1"));
    store.append(first.clone()).await.unwrap();
    let results = store
        .append_many(vec![
            // A question: "is this recorded?" (no); it stops nothing.
            request(third, ExpectedVersion::NEVER, events(1, "q")),
            request(third, ExpectedVersion::Exact(0), events(1, "t")),
            // Stale: the caller believed the stream empty.
            request(s, ExpectedVersion::Exact(0), events(1, "a")),
            // Decided on "a" having been written: its version (1) matches by coincidence.
            request(s, ExpectedVersion::Exact(1), events(1, "b")),
            request(other, ExpectedVersion::Exact(0), events(1, "o")),
            first.clone(),
            request(s, ExpectedVersion::Any, events(1, "c")),
        ])
        .await;
    assert!(matches!(
        results[0],
        Err(StoreError::WrongExpectedVersion { .. })
    ));
    assert_eq!(results[1].as_ref().unwrap().version, 1);
    let results = &results[2..];
    assert!(matches!(
        results[0],
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert!(
        matches!(
            results[1],
            Err(StoreError::WrongExpectedVersion { actual: 1, .. })
        ),
        "{:?}",
        results[1]
    );
    // Another stream, after the failure: not written either.
    assert!(matches!(
        results[2],
        Err(StoreError::WrongExpectedVersion { actual: 0, .. })
    ));
    assert_eq!(store.stream_version(other).await.unwrap(), 0);
    assert!(results[3].as_ref().unwrap().duplicate);
    assert!(matches!(
        results[4],
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert_eq!(store.stream_version(s).await.unwrap(), 1);
    assert_eq!(store.read_stream(s).await.unwrap().len(), 1);
    // A later call starts afresh.
    let again = store
        .append_many(vec![request(s, ExpectedVersion::Exact(1), events(1, "b"))])
        .await;
    assert_eq!(again[0].as_ref().unwrap().version, 2);
}

pub async fn concurrent_batches_stay_contiguous<S: EventStore>(store: Arc<S>) {
    const TASKS: usize = 16;
    const APPENDS: usize = 8;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = Uuid::new_v4();
                let mut outs = Vec::new();
                for i in 0..APPENDS {
                    let n = 1 + (t + i) % 4;
                    let out = store
                        .append(request(
                            s,
                            ExpectedVersion::Exact(outs.iter().map(|(_, n)| *n as u64).sum()),
                            events(n, "c"),
                        ))
                        .await
                        .unwrap();
                    outs.push((out, n));
                }
                (s, outs)
            })
        })
        .collect();
    let mut by_position = HashMap::new();
    for t in tasks {
        let (s, outs) = t.await.unwrap();
        for (out, n) in outs {
            assert_eq!(
                out.last_position - out.first_position + 1,
                n as u64,
                "contiguous"
            );
            for (k, p) in (out.first_position..=out.last_position).enumerate() {
                by_position.insert(p, (s, out.version - n as u64 + k as u64 + 1));
            }
        }
    }
    let everything = all(&*store).await;
    assert_gap_free(&everything);
    assert_eq!(everything.len(), by_position.len());
    for e in &everything {
        assert_eq!(
            by_position[&e.global_position],
            (e.stream_id, e.stream_version)
        );
    }
    assert!(everything
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
}

pub async fn read_all_paging<S: EventStore>(store: Arc<S>) {
    for i in 0..21 {
        store
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Any,
                events(1 + i % 3, "p"),
            ))
            .await
            .unwrap();
    }
    let everything = all(&*store).await;
    assert_eq!(everything.len(), 42);
    assert_gap_free(&everything);
    for page in [1usize, 3, 7, 42, 1000] {
        let mut after = 0;
        let mut got = Vec::new();
        loop {
            let chunk = store.read_all(after, page).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= page);
            after = chunk.last().unwrap().global_position;
            got.extend(chunk);
        }
        assert_eq!(got.len(), everything.len());
        for (a, b) in got.iter().zip(&everything) {
            assert_eq!(
                (a.global_position, a.event_id, a.hash),
                (b.global_position, b.event_id, b.hash)
            );
        }
    }
    assert!(store.read_all(0, 0).await.unwrap().is_empty());
    let tail = store.read_all(40, 10).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![41, 42]
    );
}

/// `read_all_map` hands `map` exactly what `read_all` returns, borrowed, in order, for small
/// and large reads (a backend may read a large one on several threads), with escaped strings
/// in the type and `recorded_by` too.
pub async fn read_all_map_maps_what_read_all_reads<S: EventStore>(store: Arc<S>) {
    let n_requests = 90;
    for i in 0..n_requests {
        let mut req = request(
            Uuid::new_v4(),
            ExpectedVersion::Exact(0),
            (0..100)
                .map(|k| {
                    let t = if k % 7 == 0 {
                        "Quoted \"thing\"\t"
                    } else {
                        "Thing"
                    };
                    event(t, &format!("{{\"i\":{i},\"k\":{k},\"s\":\"\\u00e9\\n\"}}"))
                })
                .collect(),
        );
        if i % 3 == 0 {
            req.recorded_by = "r\u{e9}porter \"x\" \\ \u{1F600}".into();
        }
        store.append(req).await.unwrap();
    }
    let everything = all(&*store).await;
    assert_eq!(everything.len(), n_requests * 100);
    let own = event_key;
    let expected: Vec<EventKey> = event_keys(&everything);
    assert!(expected
        .iter()
        .any(|s| s.4.contains('"') && s.7.contains('"')));
    for (after, limit) in [
        (0, usize::MAX),
        (0, 50),
        (0, 1_000),
        (8_950, 100),
        (8_999, 10),
        (9_000, 10),
        (123, 8_500),
    ] {
        let got = store.read_all_map(after, limit, own).await.unwrap();
        let want: Vec<EventKey> = expected
            .iter()
            .skip(after as usize)
            .take(limit)
            .cloned()
            .collect();
        assert!(
            got == want,
            "read_all_map({after}, {limit}) differs from read_all"
        );
    }
}

pub async fn position_at_is_a_prefix<S: EventStore>(store: Arc<S>) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    assert_eq!(store.position_at(Utc::now()).await.unwrap(), 0);
    for _ in 0..4 {
        store
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Any,
                events(2, "t"),
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let everything = all(&*store).await;
    assert_eq!(store.position_at(before).await.unwrap(), 0);
    assert_eq!(
        store
            .position_at(Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap(),
        everything.len() as u64
    );
    for e in &everything {
        let p = store.position_at(e.recorded_at).await.unwrap();
        assert!(p >= e.global_position);
        let at_p = &everything[p as usize - 1];
        assert!(at_p.recorded_at <= e.recorded_at);
        if let Some(next) = everything.get(p as usize) {
            assert!(
                next.recorded_at > e.recorded_at,
                "position_at returns the last such position"
            );
        }
    }
}

/// Collects a subscription until it yields position `until`.
async fn collect_until<S: EventStore>(store: Arc<S>, after: u64, until: u64) -> Vec<u64> {
    let sub = subscribe(store, after);
    tokio::pin!(sub);
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(after) < until {
        let next = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("subscription error");
        seen.push(next.global_position);
    }
    seen
}

pub async fn subscription_catch_up_then_live<S: EventStore>(store: Arc<S>) {
    const BEFORE: u64 = 60;
    const WRITERS: u64 = 6;
    const PER_WRITER: u64 = 30;
    for _ in 0..BEFORE {
        store
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Any,
                events(1, "pre"),
            ))
            .await
            .unwrap();
    }
    let total = BEFORE + WRITERS * PER_WRITER;
    // Subscribers start at different moments while writers race with their catch-up.
    let mut subs = Vec::new();
    subs.push(tokio::spawn(collect_until(store.clone(), 0, total)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..PER_WRITER {
                    store
                        .append(request(
                            Uuid::new_v4(),
                            ExpectedVersion::Any,
                            events(1, "live"),
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::task::yield_now().await;
        subs.push(tokio::spawn(collect_until(store.clone(), 0, total)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    for s in subs {
        let seen = s.await.unwrap();
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "every position exactly once, in order"
        );
    }
}

pub async fn subscription_from_the_middle<S: EventStore>(store: Arc<S>) {
    for _ in 0..10 {
        store
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Any,
                events(1, "m"),
            ))
            .await
            .unwrap();
    }
    let seen = collect_until(store.clone(), 7, 10).await;
    assert_eq!(seen, vec![8, 9, 10]);
    let sub = tokio::spawn(collect_until(store.clone(), 10, 12));
    store
        .append(request(
            Uuid::new_v4(),
            ExpectedVersion::Any,
            events(2, "n"),
        ))
        .await
        .unwrap();
    assert_eq!(sub.await.unwrap(), vec![11, 12]);
}

pub async fn watch_head_follows_appends<S: EventStore>(store: Arc<S>) {
    let mut rx = store.watch_head();
    assert_eq!(*rx.borrow_and_update(), 0);
    let out = store
        .append(request(
            Uuid::new_v4(),
            ExpectedVersion::Any,
            events(3, "w"),
        ))
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), out.last_position);
    assert_eq!(store.head().position, 3);
    // Once the head says 3, the events are readable.
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 3);
}

pub async fn verify_matches_head<S: EventStore>(store: Arc<S>) {
    let empty = store.verify().await.unwrap();
    assert_eq!((empty.events, empty.head_hash), (0, [0u8; 32]));
    for i in 0..5 {
        store
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Any,
                events(1 + i, "v"),
            ))
            .await
            .unwrap();
    }
    let report = store.verify().await.unwrap();
    assert_eq!(report.events, 15);
    assert_eq!(report.head_hash, store.head().hash);
    assert_eq!(report.head_hash, all(&*store).await.last().unwrap().hash);
}

pub async fn tokens_roundtrip<S: EventStore>(store: Arc<S>) {
    assert!(store.tokens().await.unwrap().is_empty());
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let token = |name: &str| TokenRecord {
        name: name.into(),
        role: "admin".into(),
        secret_hash: [7u8; 32],
        created_at: now,
        revoked_at: None,
    };
    store.add_token(token("alice")).await.unwrap();
    store.add_token(token("bob")).await.unwrap();
    let err = store.add_token(token("alice")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let later = now + chrono::Duration::hours(1);
    assert!(store.revoke_token("bob", later).await.unwrap());
    assert!(!store.revoke_token("nobody", later).await.unwrap());
    let mut list = store.tokens().await.unwrap();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(list.len(), 2);
    assert_eq!(list[0], token("alice"));
    assert_eq!(list[1].revoked_at, Some(later));
    assert_eq!(list[1].secret_hash, [7u8; 32]);
    // A revoked name stays taken.
    assert!(store.add_token(token("bob")).await.is_err());
}

pub async fn close_refuses_appends_keeps_reads<S: EventStore>(store: Arc<S>) {
    let s = Uuid::new_v4();
    // Appends in flight when close is called complete (or fail cleanly), never half.
    let inflight: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(request(
                        Uuid::new_v4(),
                        ExpectedVersion::Any,
                        events(2, "f"),
                    ))
                    .await
            })
        })
        .collect();
    store
        .append(request(s, ExpectedVersion::Any, events(2, "c")))
        .await
        .unwrap();
    store.close().await.unwrap();
    let mut ok = 0;
    for t in inflight {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let err = store
        .append(request(s, ExpectedVersion::Any, events(1, "late")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let everything = all(&*store).await;
    assert_eq!(everything.len(), 2 + 2 * ok);
    assert_gap_free(&everything);
    assert_eq!(store.read_stream(s).await.unwrap().len(), 2);
    assert_eq!(store.head().position, everything.len() as u64);
    store.close().await.unwrap();
}

/// Everything a recorded event is, as comparable values.
type EventKey = (
    u64,
    Uuid,
    u64,
    Uuid,
    String,
    String,
    DateTime<Utc>,
    String,
    [u8; 32],
);

fn event_key(e: EventRef<'_>) -> EventKey {
    (
        e.global_position,
        e.stream_id,
        e.stream_version,
        e.event_id,
        e.event_type.to_owned(),
        e.data.get().to_owned(),
        e.recorded_at,
        e.recorded_by.to_owned(),
        e.hash,
    )
}

fn event_keys(events: &[RecordedEvent]) -> Vec<EventKey> {
    events.iter().map(|e| event_key(e.borrowed())).collect()
}

fn regroup(events: &[RecordedEvent]) -> Result<Vec<RecordedAppend>, StoreError> {
    let mut regrouper = Regrouper::new();
    let mut appends = Vec::new();
    for e in events {
        appends.extend(regrouper.push(e.clone())?);
    }
    regrouper.finish()?;
    Ok(appends)
}

/// `restore` rebuilds a log recorded by the file store (an export, a move between backends)
/// into this store with every position, time and hash unchanged, and refuses anything that
/// does not continue the log exactly.
pub async fn restore_rebuilds_a_log_exactly<S: EventStore>(store: Arc<S>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = FileStore::open(&OpenOptions::new(dir.path()))
        .await
        .expect("source store");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // Three appends to one stream in one batch share their recorded_at and follow each
    // other: only the hashes tell where each one ends.
    let batch = vec![
        request(a, ExpectedVersion::Exact(0), events(2, "a1")),
        request(a, ExpectedVersion::Exact(2), events(1, "a2")),
        request(a, ExpectedVersion::Exact(3), events(3, "a3")),
        request(b, ExpectedVersion::Any, events(1, "b1")),
    ];
    for r in source.append_many(batch).await {
        r.expect("source batch");
    }
    let mut by_someone_else = request(b, ExpectedVersion::Any, events(2, "b2"));
    by_someone_else.recorded_by = "other \"name\" ✓".to_string();
    source.append(by_someone_else).await.expect("source append");
    source
        .append(request(a, ExpectedVersion::Any, events(1, "a4")))
        .await
        .expect("source append");
    let recorded = all(&source).await;
    assert_eq!(recorded.len(), 10);

    let appends = regroup(&recorded).expect("regroup");
    let lens: Vec<usize> = appends.iter().map(|x| x.request.events.len()).collect();
    assert_eq!(
        lens,
        [2, 1, 3, 1, 2, 1],
        "the appends as they were recorded"
    );

    // Restored in two calls (a restore can resume where it stopped).
    let mut rest = appends.clone();
    let second = rest.split_off(3);
    let head = store.restore(rest).await.expect("restore part 1");
    assert_eq!(head.position, 6);
    let head = store.restore(second).await.expect("restore part 2");
    assert_eq!(head, source.head());
    assert_eq!(event_keys(&all(&*store).await), event_keys(&recorded));
    let report = store.verify().await.expect("verify");
    assert_eq!((report.events, report.head_hash), (10, source.head().hash));
    assert_eq!(store.stream_version(a).await.unwrap(), 7);

    // What does not continue the log exactly is refused and leaves nothing behind.
    let before = event_keys(&all(&*store).await);
    let again = store.restore(appends[..1].to_vec()).await;
    assert!(
        matches!(again, Err(StoreError::InvalidInput(_))),
        "a restore behind the head: {again:?}"
    );
    // A further append as if recorded next, but with a wrong hash, an old time, an event id
    // that is recorded, or a version the stream does not have.
    let c = Uuid::new_v4();
    let next = |events: Vec<NewEvent>, expected: u64| RecordedAppend {
        request: request(c, ExpectedVersion::Exact(expected), events),
        recorded_at: recorded[9].recorded_at + chrono::Duration::seconds(1),
        first_position: 11,
        last_hash: [7; 32],
    };
    let wrong_hash = store.restore(vec![next(events(1, "c"), 0)]).await;
    assert!(
        matches!(&wrong_hash, Err(StoreError::InvalidInput(m)) if m.contains("hash")),
        "{wrong_hash:?}"
    );
    let mut old = next(events(1, "c"), 0);
    old.recorded_at = recorded[0].recorded_at - chrono::Duration::seconds(1);
    let old = store.restore(vec![old]).await;
    assert!(matches!(old, Err(StoreError::InvalidInput(_))), "{old:?}");
    let reused = NewEvent {
        event_id: recorded[0].event_id,
        event_type: "Thing".into(),
        data: RawValue::from_string("{}".into()).unwrap(),
    };
    let reused = store.restore(vec![next(vec![reused], 0)]).await;
    assert!(
        matches!(reused, Err(StoreError::EventIdConflict { position: 1, .. })),
        "{reused:?}"
    );
    let version = store.restore(vec![next(events(1, "c"), 5)]).await;
    assert!(
        matches!(
            version,
            Err(StoreError::WrongExpectedVersion { actual: 0, .. })
        ),
        "{version:?}"
    );
    assert_eq!(event_keys(&all(&*store).await), before);
    assert_eq!(store.head(), source.head());

    // A changed event does not regroup.
    let mut changed = recorded.clone();
    changed[4].data = RawValue::from_string("{\"tag\":\"a3\",\"i\":9}".into()).unwrap();
    assert!(
        regroup(&changed).is_err(),
        "a changed event must be refused"
    );
    let mut cut = recorded.clone();
    cut.truncate(5);
    assert!(
        regroup(&cut).is_err(),
        "an append cut short must be refused"
    );
    let mut gap = recorded.clone();
    gap.remove(3);
    assert!(regroup(&gap).is_err(), "a gap must be refused");

    // Appends go on from the restored head, chained.
    let after = store
        .append(request(a, ExpectedVersion::Exact(7), events(1, "a5")))
        .await
        .expect("append after restore");
    assert_eq!(after.first_position, 11);
    let last = all(&*store).await;
    assert!(last[10].recorded_at >= last[9].recorded_at);
    assert_eq!(store.verify().await.expect("verify").events, 11);
    source.close().await.expect("close source");
}

/// Restores in flight together (the CLI keeps two), a restore beside ordinary appends, and a
/// restored time ahead of the clock: positions stay gap-free, `recorded_at` never decreases,
/// an append after a restored one is not recorded before it, and a failed restore lets no
/// later one through.
pub async fn restores_in_flight_keep_order_time_and_atomicity<S: EventStore>(store: Arc<S>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = FileStore::open(&OpenOptions::new(dir.path()))
        .await
        .expect("source store");
    for i in 0..6 {
        source
            .append(request(
                Uuid::new_v4(),
                ExpectedVersion::Exact(0),
                events(1 + i % 3, "s"),
            ))
            .await
            .expect("source append");
    }
    let recorded = all(&source).await;
    let appends = regroup(&recorded).expect("regroup");
    assert_eq!(appends.len(), 6);

    // The first restore fails in its second append (a changed hash): neither the rest of it
    // nor the restore in flight behind it may land; what landed is a prefix of the source.
    let mut broken = appends[..3].to_vec();
    broken[1].last_hash = [9; 32];
    let (first, second) = tokio::join!(store.restore(broken), store.restore(appends[3..].to_vec()));
    assert!(first.is_err(), "{first:?}");
    assert!(second.is_err(), "{second:?}");
    let landed = all(&*store).await;
    assert!(landed.len() <= appends[0].request.events.len());
    assert_eq!(event_keys(&landed), event_keys(&recorded[..landed.len()]));

    // Going on from what landed: two restores in flight together both land, in order.
    let done = appends
        .iter()
        .take_while(|a| a.last_position() <= landed.len() as u64)
        .count();
    let (a, b) = tokio::join!(
        store.restore(appends[done..4].to_vec()),
        store.restore(appends[4..].to_vec())
    );
    a.expect("first restore in flight");
    assert_eq!(b.expect("second restore in flight"), source.head());
    assert_eq!(event_keys(&all(&*store).await), event_keys(&recorded));

    // A restored time ahead of this clock (another machine's clock ran fast), beside an
    // ordinary append: neither goes back in time.
    let last = recorded.last().expect("events");
    let ahead = last.recorded_at + chrono::Duration::hours(1);
    let mut later = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Thing".into(),
        data: RawValue::from_string("{}".into()).unwrap(),
    };
    // Its hash as the store will compute it: found by a store of our own, restored first.
    let probe_dir = tempfile::tempdir().expect("temp dir");
    let probe = FileStore::open(&OpenOptions::new(probe_dir.path()))
        .await
        .expect("probe store");
    probe.restore(appends.clone()).await.expect("probe restore");
    let c = Uuid::new_v4();
    let mut future = RecordedAppend {
        request: request(c, ExpectedVersion::Exact(0), vec![later.clone()]),
        recorded_at: ahead,
        first_position: recorded.len() as u64 + 1,
        last_hash: [0; 32],
    };
    let refused = probe.restore(vec![future.clone()]).await;
    let Err(StoreError::InvalidInput(why)) = refused else {
        panic!("a wrong hash must be refused: {refused:?}");
    };
    // "... comes out with hash H, not ...": take H.
    let hex = why
        .split("hash ")
        .nth(1)
        .and_then(|h| h.split(',').next())
        .expect("the computed hash in the message");
    future.last_hash = incidentlog_store::from_hex_32(hex).expect("hex");
    later.event_id = Uuid::new_v4();
    let (restored, appended) = tokio::join!(
        store.restore(vec![future]),
        store.append(request(
            Uuid::new_v4(),
            ExpectedVersion::Exact(0),
            vec![later]
        ))
    );
    restored.expect("restore ahead of the clock");
    appended.expect("append beside it");
    let log = all(&*store).await;
    assert_eq!(log.len(), recorded.len() + 2);
    assert_gap_free(&log);
    for w in log.windows(2) {
        assert!(
            w[0].recorded_at <= w[1].recorded_at,
            "time went back at {}",
            w[1].global_position
        );
    }
    assert!(log.last().expect("events").recorded_at >= ahead);
    assert_eq!(
        store.verify().await.expect("verify").events,
        log.len() as u64
    );
    source.close().await.expect("close");
    probe.close().await.expect("close");
}
