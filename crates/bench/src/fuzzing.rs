//! Fuzz target bodies, shared by `fuzz/` (cargo-fuzz, libFuzzer) and the stable fallback test
//! (`tests/fuzz_fallback.rs`), so that both exercise exactly the same code.
//!
//! Each function takes arbitrary bytes and panics only on a real bug: a panic inside the code
//! under test, or a broken property (listed per target).

use chrono::{DateTime, TimeZone, Utc};
use incidentlog_projections::{
    decide, parse_events, Envelope, IncidentEvent, IncidentState, Json, JsonMembers, JsonValue,
    Projection, EVENT_TYPES,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

/// The store's record decoder (file store segments): arbitrary bytes as a segment (header,
/// then records) must never panic, whatever lengths, checksums and bodies they claim.
pub fn record_decoder(data: &[u8]) {
    let _ = incidentlog_store::file::fuzz_decode(data);
}

fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Event decoding and validation, as an append request goes through it:
/// - `parse_events` never panics; a rejection carries at least one field error;
/// - it decodes the server's borrowed tree (`Json`) as it decodes a `serde_json::Value`;
/// - an accepted event's canonical data parses again to the same canonical bytes;
/// - events `decide` accepts on a new incident fold (state and projection) without error;
/// - stored-event decoding (`IncidentEvent::decode`, `Projection::apply`) of arbitrary data
///   never panics.
pub fn event_decoding(data: &[u8]) {
    // Stored-event path: the first byte picks a type, the rest is the stored data.
    if let Some((&pick, rest)) = data.split_first() {
        if let Ok(text) = std::str::from_utf8(rest) {
            let event_type = EVENT_TYPES[pick as usize % EVENT_TYPES.len()];
            let _ = IncidentEvent::decode(1, event_type, text);
            if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text) {
                let env = Envelope {
                    global_position: 1,
                    incident_id: Uuid::from_u128(1),
                    stream_version: 1,
                    event_id: Uuid::from_u128(2),
                    event_type,
                    data: &raw,
                    recorded_at: fixed_now(),
                    recorded_by: "fuzz",
                };
                let mut p = Projection::new();
                let _ = p.apply(&env);
                let mut s = IncidentState::new();
                let _ = s.apply(&env);
            }
        }
    }

    // Append path, on both trees: the server's borrowed `Json` (which refuses repeated keys)
    // and `serde_json::Value` (which keeps the last) decode alike.
    let tree = Json::from_slice(data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        assert!(tree.is_err(), "a borrowed tree of text serde_json refuses");
        return;
    };
    let events = value.get("events").unwrap_or(&value);
    let by_value = parse_events(events, "/events");
    if let Ok(tree) = &tree {
        let tree_events = tree
            .as_object()
            .and_then(|o| o.get("events"))
            .unwrap_or(tree);
        assert_eq!(
            parse_events(tree_events, "/events"),
            by_value,
            "the borrowed tree decodes differently"
        );
    }
    let typed = match by_value {
        Ok(t) => t,
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejection must say why");
            return;
        }
    };
    for e in &typed {
        let canon = e.canonical_data();
        let again = json!([{"event_id": e.event_id, "type": e.event_type(), "data": canon}]);
        match parse_events(&again, "/events") {
            Ok(t) => assert_eq!(
                t[0].canonical_data().get(),
                canon.get(),
                "canonical data is not stable"
            ),
            Err(errs) => panic!(
                "canonical data of an accepted {} does not parse again: {errs:?}: {}",
                e.event_type(),
                canon.get()
            ),
        }
    }
    let now = fixed_now();
    if decide(&IncidentState::new(), &typed, now, "/events").is_err() {
        return;
    }
    let incident = Uuid::from_u128(7);
    let mut state = IncidentState::new();
    let mut projection = Projection::new();
    for (i, e) in typed.iter().enumerate() {
        let data = e.canonical_data();
        let env = Envelope {
            global_position: i as u64 + 1,
            incident_id: incident,
            stream_version: i as u64 + 1,
            event_id: e.event_id,
            event_type: e.event_type(),
            data: &data,
            recorded_at: now,
            recorded_by: "fuzz",
        };
        if let Err(err) = state.apply(&env) {
            panic!(
                "an accepted {} does not fold into the state: {err}",
                e.event_type()
            );
        }
        if let Err(err) = projection.apply(&env) {
            panic!(
                "an accepted {} does not fold into the views: {err}",
                e.event_type()
            );
        }
    }
    assert_eq!(state.version(), typed.len() as u64);
    assert!(
        projection.incident(incident).is_some(),
        "an accepted incident has a view"
    );
    let _ = projection.digest();
}
