//! The shared seed incidents, with their summaries computed by hand.
use crate::common::*;

use incidentlog_projections::*;
use serde_json::json;

const SEED: &str = include_str!("../../../../tests/fixtures/seed-incidents.ndjson");

fn seed_log() -> Log {
    let mut log = Log::new();
    log.import(SEED);
    log
}

/// The server hands each append's validated events to its views instead of decoding their
/// records: both must give the same events and the same views.
#[test]
fn appended_events_equal_their_decoded_records() {
    let log = seed_log();
    let mut handed = Projection::new();
    for r in &log.recs {
        assert_eq!(r.appended(), DecodedEvent::decode(&r.env()).unwrap());
        handed.apply_decoded(r.appended()).unwrap();
    }
    assert_eq!(handed.digest(), log.projection().digest());
}

#[test]
fn seed_summaries_live() {
    let log = seed_log();
    assert_eq!(log.recs.len(), 10);
    let p = log.projection();
    let all = Window::all();
    assert_eq!(
        summary_json(&p, "UA-63", &all, None),
        json!({"region": "UA-63", "name": "Kharkivska oblast", "country": "UA",
               "incidents": 1, "strikes": {"total": 1, "by_kind": {"missile_strike": 1}},
               "casualties": {"killed": {"low": 2, "best": 2, "high": 2}, "injured": {"low": 0, "best": 0, "high": 0},
                              "civilians_killed": 2, "children_killed": 1},
               "claims": {"total": 0, "unverified": 0, "disputed": 0, "confirmed": 0, "refuted": 0},
               "first_occurred_at": "2026-01-02", "last_occurred_at": "2026-01-02", "as_of_position": 10})
    );
    assert_eq!(
        summary_json(&p, "UA-65", &all, None),
        json!({"region": "UA-65", "name": "Khersonska oblast", "country": "UA",
               "incidents": 2, "strikes": {"total": 2, "by_kind": {"drone_strike": 1, "shelling": 1}},
               "casualties": {"killed": {"low": 2, "best": 2, "high": 2}, "injured": {"low": 0, "best": 0, "high": 0},
                              "civilians_killed": 2, "children_killed": 0},
               "claims": {"total": 1, "unverified": 0, "disputed": 1, "confirmed": 0, "refuted": 0},
               "first_occurred_at": "2026-01-01", "last_occurred_at": "2026-01-02", "as_of_position": 10})
    );
    assert_eq!(
        summary_json(&p, "RU-MOS", &all, None),
        json!({"region": "RU-MOS", "name": "Moskovskaya oblast'", "country": "RU",
               "incidents": 1, "strikes": {"total": 1, "by_kind": {"drone_strike": 1}},
               "casualties": {"killed": {"low": 0, "best": 0, "high": 0}, "injured": {"low": 0, "best": 0, "high": 0},
                              "civilians_killed": 0, "children_killed": 0},
               "claims": {"total": 1, "unverified": 0, "disputed": 1, "confirmed": 0, "refuted": 0},
               "first_occurred_at": "2026-01-01", "last_occurred_at": "2026-01-01", "as_of_position": 10})
    );
    let codes: Vec<String> = p
        .region_summaries(&all, None)
        .into_iter()
        .map(|s| s.region)
        .collect();
    assert_eq!(codes, ["RU-MOS", "UA-63", "UA-65"]);
    // Summary key order is the SPEC's.
    let text =
        serde_json::to_string(&p.region_summary(&Region::parse("UA-63").unwrap(), &all, None))
            .unwrap();
    assert!(text.starts_with(r#"{"region":"UA-63","name":"Kharkivska oblast","country":"UA","incidents":1,"strikes":{"total":1,"by_kind":{"missile_strike":1}},"casualties":{"killed":{"low":2,"best":2,"high":2},"injured""#), "{text}");
    assert!(text.ends_with(r#""first_occurred_at":"2026-01-02","last_occurred_at":"2026-01-02","as_of_position":10}"#), "{text}");
}

#[test]
fn seed_summaries_as_of_and_windows() {
    let log = seed_log();
    let p = log.projection();
    let all = Window::all();
    // After line 2 (positions 1..=4): the Kherson shelling only.
    assert_eq!(
        summary_json(&p, "UA-65", &all, Some(4)),
        json!({"region": "UA-65", "name": "Khersonska oblast", "country": "UA",
               "incidents": 1, "strikes": {"total": 1, "by_kind": {"shelling": 1}},
               "casualties": {"killed": {"low": 2, "best": 2, "high": 2}, "injured": {"low": 0, "best": 0, "high": 0},
                              "civilians_killed": 2, "children_killed": 0},
               "claims": {"total": 0, "unverified": 0, "disputed": 0, "confirmed": 0, "refuted": 0},
               "first_occurred_at": "2026-01-02", "last_occurred_at": "2026-01-02", "as_of_position": 4})
    );
    assert_eq!(summary_json(&p, "RU-MOS", &all, Some(7)), json!(null));
    // Position 6: the claim is made but not yet denied.
    let s = p
        .region_summary(&Region::parse("UA-65").unwrap(), &all, Some(6))
        .unwrap();
    assert_eq!(
        (s.claims.total, s.claims.unverified, s.claims.disputed),
        (1, 1, 0)
    );
    // A date window on 2026-01-01 keeps the drone strike only.
    let w = Window::parse(Some("2026-01-01"), Some("2026-01-01")).unwrap();
    let s = p
        .region_summary(&Region::parse("UA-65").unwrap(), &w, None)
        .unwrap();
    assert_eq!(
        (s.incidents, s.casualties.killed.best, s.claims.disputed),
        (1, 0, 1)
    );
    // Beyond the head is clamped.
    assert_eq!(
        summary_json(&p, "UA-63", &all, Some(999))["as_of_position"],
        json!(10)
    );
}

#[test]
fn seed_incident_view() {
    let log = seed_log();
    let p = log.projection();
    let v = serde_json::to_value(
        p.incident("5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01".parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["kind"], "missile_strike");
    assert_eq!(v["occurred_at"], "2026-01-02");
    assert_eq!(v["time_precision"], "week");
    assert_eq!(v["region"], "UA-63");
    assert_eq!(v["region_name"], "Kharkivska oblast");
    assert_eq!(v["country"], "UA");
    assert_eq!(v["status"], "active");
    assert_eq!(v["version"], 2);
    assert_eq!(
        v["casualties"],
        json!({"killed": {"low": 2, "best": 2, "high": 2}, "injured": {"low": 0, "best": 0, "high": 0}, "civilians_killed": 2, "children_killed": 1})
    );
    assert_eq!(
        v["sources"],
        json!([{"name": "Kharkiv regional authorities", "kind": "official"}])
    );
    let v = serde_json::to_value(
        p.incident("5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a03".parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["claims"][0]["status"], "disputed");
    assert_eq!(v["claims"][0]["denials"][0]["by"], "Ukrainian government");
    assert_eq!(v["sources"].as_array().unwrap().len(), 3);
}
