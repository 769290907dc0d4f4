//! Model test: random appends, retries, reopens and reads against an in-memory model.

use incidentlog_store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, FileStore, NewEvent, StoreError,
};
use proptest::prelude::*;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::common::files::opts;

#[derive(Clone, Debug)]
enum Op {
    /// `expect`: 0 = any, 1 = the right version, 2 = a wrong one.
    Append {
        stream: usize,
        expect: u8,
        n: usize,
    },
    Retry {
        k: usize,
    },
    Reopen {
        close: bool,
    },
    ReadAll {
        after: u64,
        limit: usize,
    },
    ReadStream {
        stream: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..3u8, 1..4usize).prop_map(|(stream, expect, n)| Op::Append { stream, expect, n }),
        1 => (0..64usize).prop_map(|k| Op::Retry { k }),
        1 => any::<bool>().prop_map(|close| Op::Reopen { close }),
        2 => (0..40u64, 1..15usize).prop_map(|(after, limit)| Op::ReadAll { after, limit }),
        1 => (0..4usize).prop_map(|stream| Op::ReadStream { stream }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelEvent {
    stream: Uuid,
    version: u64,
    id: Uuid,
    data: String,
}

fn check_events(got: &[incidentlog_store::RecordedEvent], want: &[(u64, &ModelEvent)]) {
    assert_eq!(got.len(), want.len());
    for (g, (pos, w)) in got.iter().zip(want) {
        assert_eq!(g.global_position, *pos);
        assert_eq!(
            (g.stream_id, g.stream_version, g.event_id),
            (w.stream, w.version, w.id)
        );
        assert_eq!(g.data.get(), w.data);
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), 700);
    let mut store = FileStore::open(&o).await.unwrap();
    let streams: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut log: Vec<ModelEvent> = Vec::new();
    let mut done: Vec<(AppendRequest, AppendOutcome)> = Vec::new();
    let mut counter = 0u64;
    let version = |log: &[ModelEvent], s: Uuid| log.iter().filter(|e| e.stream == s).count() as u64;
    for op in ops {
        match op {
            Op::Append { stream, expect, n } => {
                let s = streams[stream];
                let current = version(&log, s);
                let expected = match expect {
                    0 => ExpectedVersion::Any,
                    1 => ExpectedVersion::Exact(current),
                    _ => ExpectedVersion::Exact(current + 1 + counter % 3),
                };
                let events: Vec<NewEvent> = (0..n)
                    .map(|_| {
                        counter += 1;
                        NewEvent {
                            event_id: Uuid::new_v4(),
                            event_type: "T".into(),
                            data: RawValue::from_string(format!("{{\"c\":{counter}}}")).unwrap(),
                        }
                    })
                    .collect();
                let req = AppendRequest {
                    stream_id: s,
                    expected_version: expected,
                    events,
                    recorded_by: "m".into(),
                };
                let result = store.append(req.clone()).await;
                if expect == 2 {
                    match result {
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert_eq!(actual, current)
                        }
                        other => panic!("expected a version conflict, got {other:?}"),
                    }
                } else {
                    let out = result.unwrap();
                    let first = log.len() as u64 + 1;
                    assert_eq!(
                        out,
                        AppendOutcome {
                            stream_id: s,
                            version: current + n as u64,
                            first_position: first,
                            last_position: first + n as u64 - 1,
                            duplicate: false,
                            recorded_at: out.recorded_at,
                        }
                    );
                    assert!(out.recorded_at.is_some());
                    for (i, e) in req.events.iter().enumerate() {
                        log.push(ModelEvent {
                            stream: s,
                            version: current + 1 + i as u64,
                            id: e.event_id,
                            data: e.data.get().into(),
                        });
                    }
                    done.push((req, out));
                }
            }
            Op::Retry { k } => {
                if done.is_empty() {
                    continue;
                }
                let (req, out) = done[k % done.len()].clone();
                let again = store.append(req).await.unwrap();
                assert_eq!(
                    again,
                    AppendOutcome {
                        duplicate: true,
                        recorded_at: None,
                        ..out
                    }
                );
            }
            Op::Reopen { close } => {
                if close {
                    store.close().await.unwrap();
                }
                drop(store);
                store = FileStore::open(&o).await.unwrap();
                assert_eq!(store.head().position, log.len() as u64);
                assert_eq!(store.verify().await.unwrap().events, log.len() as u64);
            }
            Op::ReadAll { after, limit } => {
                let got = store.read_all(after, limit).await.unwrap();
                let want: Vec<(u64, &ModelEvent)> = log
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (i as u64 + 1, e))
                    .skip(after as usize)
                    .take(limit)
                    .collect();
                check_events(&got, &want);
            }
            Op::ReadStream { stream } => {
                let s = streams[stream];
                let got = store.read_stream(s).await.unwrap();
                let want: Vec<(u64, &ModelEvent)> = log
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.stream == s)
                    .map(|(i, e)| (i as u64 + 1, e))
                    .collect();
                check_events(&got, &want);
                assert_eq!(store.stream_version(s).await.unwrap(), want.len() as u64);
            }
        }
    }
    let all = store.read_all(0, usize::MAX).await.unwrap();
    check_events(
        &all,
        &log.iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect::<Vec<_>>(),
    );
    for e in log.iter().step_by(7) {
        assert_eq!(
            store.event_by_id(e.id).await.unwrap().unwrap().event_id,
            e.id
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
