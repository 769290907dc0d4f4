//! The decision step: one table, each case a history and a batch.
use crate::common::*;
use incidentlog_projections::*;
use serde_json::{json, Value};
use uuid::Uuid;

const C1: &str = "c1a1e000-0000-4000-8000-000000000001";
const C2: &str = "c1a1e000-0000-4000-8000-000000000002";

fn claim(c: &str) -> (&'static str, Value) {
    (
        "ClaimMade",
        json!({"claim_id": c, "claimant": "MoD", "statement": "They did it."}),
    )
}
fn deny(c: &str) -> (&'static str, Value) {
    ("ClaimDenied", json!({"claim_id": c, "by": "General Staff"}))
}
fn assess(c: &str, a: &str) -> (&'static str, Value) {
    (
        "ClaimAssessed",
        json!({"claim_id": c, "assessment": a, "by": "ACLED"}),
    )
}
fn correct(fields: Value) -> (&'static str, Value) {
    let mut d = fields;
    d["reason"] = json!("checked");
    ("IncidentCorrected", d)
}
fn retract() -> (&'static str, Value) {
    ("IncidentRetracted", json!({"reason": "duplicate"}))
}
fn source_added() -> (&'static str, Value) {
    ("SourceAdded", json!({"source": {"name": "BBC"}}))
}

/// (name, history appended first, batch, expected pointers with message fragments)
type Case = (
    &'static str,
    Vec<(&'static str, Value)>,
    Vec<(&'static str, Value)>,
    Vec<(&'static str, &'static str)>,
);

/// Typed events of `[(type, data)]` (event ids by index).
fn typed(events: &[(&'static str, Value)]) -> Vec<TypedEvent> {
    let body: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, (t, d))| json!({"event_id": Uuid::from_u128(0xd0000000_0000_4000_8000_000000000000 | i as u128), "type": t, "data": d}))
        .collect();
    parse_events(&Value::Array(body), "/events").expect("valid events")
}

#[test]
fn decide_table() {
    let rep = || report("shelling", "2026-01-02", "UA-63");
    let cases: Vec<Case> = vec![
        ("report creates", vec![], vec![rep()], vec![]),
        (
            "first must be report",
            vec![],
            vec![source_added()],
            vec![("/events/0/type", "must be IncidentReported")],
        ),
        (
            "report only once (batch)",
            vec![],
            vec![rep(), rep()],
            vec![("/events/1/type", "only once")],
        ),
        (
            "report only once (stream)",
            vec![rep()],
            vec![rep()],
            vec![("/events/0/type", "already exists")],
        ),
        (
            "claim then deny in one batch",
            vec![rep()],
            vec![claim(C1), deny(C1), assess(C1, "confirmed")],
            vec![],
        ),
        (
            "claim id new (batch)",
            vec![rep()],
            vec![claim(C1), claim(C1)],
            vec![("/events/1/data/claim_id", "already exists")],
        ),
        (
            "claim id new (stream)",
            vec![rep(), claim(C1)],
            vec![claim(C1)],
            vec![("/events/0/data/claim_id", "already exists")],
        ),
        (
            "deny needs claim",
            vec![rep(), claim(C1)],
            vec![deny(C2)],
            vec![("/events/0/data/claim_id", "does not exist")],
        ),
        (
            "assess needs claim",
            vec![rep()],
            vec![assess(C1, "refuted")],
            vec![("/events/0/data/claim_id", "does not exist")],
        ),
        (
            "future 24h is fine",
            vec![],
            vec![report("shelling", "2026-01-04T00:00:00Z", "UA-63")],
            vec![],
        ),
        (
            "future beyond 24h",
            vec![],
            vec![report("shelling", "2026-01-04T00:00:01Z", "UA-63")],
            vec![("/events/0/data/occurred_at", "24 hours")],
        ),
        (
            "future date",
            vec![],
            vec![report("shelling", "2026-01-05", "UA-63")],
            vec![("/events/0/data/occurred_at", "24 hours")],
        ),
        (
            "future correction",
            vec![rep()],
            vec![correct(json!({"occurred_at": "2027-01-01"}))],
            vec![("/events/0/data/occurred_at", "24 hours")],
        ),
        (
            "correction must change",
            vec![rep()],
            vec![correct(json!({"region": "UA-63", "kind": "shelling"}))],
            vec![("/events/0", "changes nothing")],
        ),
        (
            "correction changes one of two",
            vec![rep()],
            vec![correct(json!({"region": "UA-63", "kind": "drone_strike"}))],
            vec![],
        ),
        (
            "correction after correction in batch",
            vec![rep()],
            vec![
                correct(json!({"region": "UA-65"})),
                correct(json!({"region": "UA-65"})),
            ],
            vec![("/events/1", "changes nothing")],
        ),
        (
            "precision of a date",
            vec![rep()],
            vec![correct(json!({"time_precision": "hour"}))],
            vec![("/events/0/data/time_precision", "plain date")],
        ),
        ("retraction", vec![rep()], vec![retract()], vec![]),
        (
            "nothing after retraction",
            vec![rep(), retract()],
            vec![source_added()],
            vec![("/events/0", "retracted")],
        ),
        (
            "nothing after retraction (batch)",
            vec![rep()],
            vec![retract(), claim(C1), retract()],
            vec![("/events/1", "retracted"), ("/events/2", "retracted")],
        ),
        (
            "not a duplicate of itself",
            vec![rep()],
            vec![(
                "IncidentRetracted",
                json!({"reason": "dup", "duplicate_of": id(1).to_string()}),
            )],
            vec![("/events/0/data/duplicate_of", "itself")],
        ),
        (
            "duplicate of another",
            vec![rep()],
            vec![(
                "IncidentRetracted",
                json!({"reason": "dup", "duplicate_of": id(2).to_string()}),
            )],
            vec![],
        ),
        (
            "not a duplicate of itself, new incident",
            vec![],
            vec![
                rep(),
                (
                    "IncidentRetracted",
                    json!({"reason": "dup", "duplicate_of": id(1).to_string()}),
                ),
            ],
            vec![("/events/1/data/duplicate_of", "itself")],
        ),
        (
            "every problem reported",
            vec![rep()],
            vec![
                deny(C1),
                report("shelling", "2030-01-01", "UA-63"),
                claim(C2),
                assess(C2, "refuted"),
            ],
            vec![
                ("/events/0/data/claim_id", "does not exist"),
                ("/events/1/type", "already exists"),
                ("/events/1/data/occurred_at", "24 hours"),
            ],
        ),
    ];
    let probes = [
        vec![claim(C1)],
        vec![deny(C1)],
        vec![deny(C2)],
        vec![assess(C2, "confirmed")],
        vec![rep()],
        vec![correct(json!({"region": "UA-65"}))],
        vec![correct(json!({"time_precision": "hour"}))],
        vec![retract()],
        vec![source_added()],
    ];
    for (name, history, batch, expected) in cases {
        let mut log = Log::new();
        if !history.is_empty() {
            log.append(id(1), &history);
        }
        // decide_and_apply gives decide's verdict, leaves a rejected batch's state as it was,
        // and an accepted one's state decides like the fold of the recorded events.
        let mut applied = log.state(id(1));
        let state_before = applied.clone();
        let verdict = decide_and_apply(&mut applied, &typed(&batch), now(), "/events");
        match &verdict {
            Ok(()) => assert_eq!(
                applied.version(),
                state_before.version() + batch.len() as u64,
                "case {name:?}"
            ),
            Err(_) => assert_eq!(applied, state_before, "case {name:?}"),
        }
        let before = log.recs.len();
        let got = match log.try_append(id(1), &batch) {
            Ok(_) => vec![],
            Err(e) => e,
        };
        let ptrs: Vec<&str> = got.iter().map(|e| e.pointer.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
        assert_eq!(ptrs, want, "case {name:?}: {got:#?}");
        assert_eq!(verdict.err().unwrap_or_default(), got, "case {name:?}");
        let folded = log.state(id(1));
        for probe in &probes {
            let probe = typed(probe);
            assert_eq!(
                decide(&applied, &probe, now(), "/events"),
                decide(&folded, &probe, now(), "/events"),
                "case {name:?}: the applied state decides like the folded one"
            );
        }
        for (e, (_, frag)) in got.iter().zip(&expected) {
            assert!(
                e.message.contains(frag),
                "case {name:?}: {:?} should mention {frag:?}",
                e.message
            );
        }
        if !expected.is_empty() {
            assert_eq!(
                log.recs.len(),
                before,
                "case {name:?}: a rejected batch records nothing"
            );
        }
    }
}

#[test]
fn decision_state_of_projection_matches_stream_fold() {
    let mut log = Log::new();
    log.append(
        id(1),
        &[report("shelling", "2026-01-02", "UA-63"), claim(C1)],
    );
    log.append(id(2), &[report("shelling", "2026-01-02", "UA-65")]);
    let p = log.projection();
    assert_eq!(
        p.decision_state(id(1)),
        log.state(id(1)).into_decision_only()
    );
    assert_eq!(p.decision_state(id(1)).version(), 2);
    let fresh = p.decision_state(id(9));
    assert_eq!(fresh.version(), 0);
    assert_eq!(fresh.incident_id(), Some(id(9)));
    // The projection's state decides like the stream's.
    let batch = parse_events(
        &json!([{"event_id": "e0000000-0000-4000-8000-0000000000ff", "type": "ClaimMade",
        "data": {"claim_id": C1, "claimant": "x", "statement": "y"}}]),
        "/events",
    )
    .unwrap();
    let e = decide(&p.decision_state(id(1)), &batch, now(), "/events").unwrap_err();
    assert_eq!(e[0].pointer, "/events/0/data/claim_id");
    assert!(decide(&p.decision_state(id(2)), &batch, now(), "/events").is_ok());
}
