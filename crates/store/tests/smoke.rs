use std::sync::Arc;

use incidentlog_store::*;
use serde_json::value::RawValue;
use uuid::Uuid;

fn ev(data: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "T".into(),
        data: RawValue::from_string(data.into()).unwrap(),
    }
}

#[tokio::test]
async fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions::new(dir.path());
    let s = Arc::new(Store::open(&opts).await.unwrap());
    let stream = Uuid::new_v4();
    let req = AppendRequest {
        stream_id: stream,
        expected_version: ExpectedVersion::Exact(0),
        events: vec![ev("{\"a\":1}"), ev("[1,2]")],
        recorded_by: "me".into(),
    };
    let out = s.append(req.clone()).await.unwrap();
    assert_eq!(
        (
            out.first_position,
            out.last_position,
            out.version,
            out.duplicate
        ),
        (1, 2, 2, false)
    );
    let dup = s.append(req.clone()).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.last_position, 2);
    let all = s.read_all(0, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].data.get(), "[1,2]");
    let rep = s.verify().await.unwrap();
    assert_eq!(rep.events, 2);
    assert_eq!(rep.head_hash, s.head().hash);
    assert_eq!(all[1].hash, s.head().hash);
    s.close().await.unwrap();
    drop(s);
    let s = Store::open(&opts).await.unwrap();
    assert_eq!(s.head().position, 2);
    assert_eq!(s.read_stream(stream).await.unwrap().len(), 2);
    assert_eq!(s.read_all(0, 10).await.unwrap()[0].hash, all[0].hash);
    assert_eq!(s.verify().await.unwrap().head_hash, rep.head_hash);
}
