//! The check that a log handed to `incidentlog restore` is one this service could have
//! written. Its hashes prove nothing about that (anyone can recompute BLAKE3 for a forged
//! file), and the store takes whatever continues the chain; an event the API would have
//! refused (an unknown type, undecodable data, an event after a retraction, a time in the
//! future) would break its incident for every later append, or change the views.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use incidentlog_projections::{decide_and_apply, parse_events, FieldError, IncidentState};
use incidentlog_store::RecordedAppend;
use uuid::Uuid;

/// How far a restored `recorded_at` may be ahead of this machine's clock (clock skew between
/// the machine that recorded it and this one). Later times would stamp every new append.
const RESTORE_MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

/// How much later than its `recorded_at` an append may have been decided. The only rule that
/// reads the clock is "occurred_at at most 24 h ahead", so "now" must not be earlier than the
/// decision's: the writers stamp an append after it was decided, but the file store of
/// earlier releases stamped a whole batch when the batch started, up to a sync's length
/// before some of its appends were decided (an audit measured 13.5 ms), and wall clocks step.
const DECISION_LEEWAY: Duration = Duration::minutes(1);

/// Decides every append of a restored log, in order, as the API decided it when it was
/// recorded: on its incident's state before it, with its own `recorded_at` plus
/// [`DECISION_LEEWAY`] as "now", and with its events stored in the canonical form the API
/// writes. Keeps the decision state of every incident (as an offline import does).
pub struct RestoreCheck {
    states: HashMap<Uuid, IncidentState>,
    latest: DateTime<Utc>,
}

fn describe(first_position: u64, errs: &[FieldError]) -> String {
    let mut out = String::new();
    for (i, e) in errs.iter().take(5).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        // "/events/2/data/killed" names the append's third event.
        let rest = e.pointer.strip_prefix("/events/").unwrap_or(&e.pointer);
        let (index, field) = rest.split_once('/').unwrap_or((rest, ""));
        match index.parse::<u64>() {
            Ok(i) => out.push_str(&format!(
                "event at position {}: /{field}: {}",
                first_position + i,
                e.message
            )),
            Err(_) => out.push_str(&format!("{}: {}", e.pointer, e.message)),
        }
    }
    if errs.len() > 5 {
        out.push_str(&format!("; and {} more", errs.len() - 5));
    }
    out
}

impl RestoreCheck {
    /// `now`: the clock that will stamp the store's next appends (this machine's for the file
    /// store, the database's for PostgreSQL): no restored event may be recorded later than
    /// it, give or take [`RESTORE_MAX_CLOCK_SKEW`].
    pub fn new(now: DateTime<Utc>) -> RestoreCheck {
        RestoreCheck {
            states: HashMap::new(),
            latest: now + RESTORE_MAX_CLOCK_SKEW,
        }
    }

    /// Takes appends recorded later than this machine's clock too (`restore
    /// --allow-clock-ahead`: the clock that recorded the log ran ahead).
    pub fn allowing_clock_ahead(mut self) -> RestoreCheck {
        self.latest = DateTime::<Utc>::MAX_UTC;
        self
    }

    /// Checks the next append of the log; on success its incident's state includes it.
    pub fn check(&mut self, append: &RecordedAppend) -> Result<(), String> {
        let first = append.first_position;
        if append.recorded_at > self.latest {
            return Err(format!(
                "the append at position {first} was recorded at {}, later than this machine's clock allows (the database's, on PostgreSQL): every new append would be stamped with that time (is this clock right? if the clock that recorded the log ran ahead, --allow-clock-ahead restores it anyway)",
                crate::wire::format_time(&append.recorded_at)
            ));
        }
        if !crate::auth::is_token_name(&append.request.recorded_by) {
            return Err(format!(
                "the append at position {first}: recorded_by {:?} is not a token name (1 to 64 letters, digits and - _ . @)",
                append.request.recorded_by
            ));
        }
        if append.recorded_at.timestamp_micros() < 0 {
            return Err(format!(
                "the append at position {first} was recorded before 1970: not a log this service wrote"
            ));
        }
        let events: Vec<serde_json::Value> = append
            .request
            .events
            .iter()
            .map(|e| {
                let data: serde_json::Value = serde_json::from_str(e.data.get())
                    .map_err(|err| format!("data is not JSON ({err})"))?;
                Ok(serde_json::json!({
                    "event_id": e.event_id.hyphenated().to_string(),
                    "type": e.event_type,
                    "data": data,
                }))
            })
            .collect::<Result<_, String>>()
            .map_err(|why| format!("the append at position {first}: {why}"))?;
        let typed = parse_events(&serde_json::Value::Array(events), "/events")
            .map_err(|errs| describe(first, errs.kept()))?;
        for (i, (t, e)) in typed.iter().zip(&append.request.events).enumerate() {
            if t.canonical_data().get() != e.data.get() {
                return Err(format!(
                    "event at position {}: its data is not in the form the API stores (fields in order, defaults filled in, no whitespace): not written by this service",
                    first + i as u64
                ));
            }
        }
        let id = append.request.stream_id;
        let state = self
            .states
            .entry(id)
            .or_insert_with(|| IncidentState::with_id(id));
        decide_and_apply(
            state,
            &typed,
            append.recorded_at + DECISION_LEEWAY,
            "/events",
        )
        .map_err(|errs| describe(first, &errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use incidentlog_store::{AppendRequest, ExpectedVersion, NewEvent};
    use serde_json::json;
    use serde_json::value::RawValue;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    /// An append of `events` (type, data) with the data as the API stores it.
    fn append(
        stream: Uuid,
        before: u64,
        first: u64,
        when: &str,
        events: &[(&str, serde_json::Value)],
    ) -> RecordedAppend {
        let items: Vec<serde_json::Value> = events
            .iter()
            .map(|(t, d)| json!({"event_id": Uuid::new_v4().hyphenated().to_string(), "type": t, "data": d}))
            .collect();
        let typed = parse_events(&serde_json::Value::Array(items), "/events").unwrap();
        RecordedAppend {
            request: AppendRequest {
                stream_id: stream,
                expected_version: ExpectedVersion::Exact(before),
                events: typed
                    .iter()
                    .map(|t| NewEvent {
                        event_id: t.event_id,
                        event_type: t.event_type().to_string(),
                        data: t.canonical_data(),
                    })
                    .collect(),
                recorded_by: "desk".into(),
            },
            recorded_at: at(when),
            first_position: first,
            last_hash: [0; 32],
        }
    }

    fn reported() -> serde_json::Value {
        json!({"kind": "shelling", "occurred_at": "2026-01-02", "region": "UA-63",
               "source": {"name": "Regional authorities", "kind": "official"}})
    }

    const NOW: &str = "2026-01-10T00:00:00Z";

    #[test]
    fn what_the_api_would_have_taken_passes() {
        let mut check = RestoreCheck::new(at(NOW));
        let id = Uuid::new_v4();
        let casualties = json!({"killed": 2, "source": {"name": "Wire", "kind": "media"}});
        check
            .check(&append(
                id,
                0,
                1,
                "2026-01-03T10:00:00Z",
                &[
                    ("IncidentReported", reported()),
                    ("CasualtiesReported", casualties),
                ],
            ))
            .unwrap();
        check
            .check(&append(
                id,
                2,
                3,
                "2026-01-03T11:00:00Z",
                &[("IncidentRetracted", json!({"reason": "duplicate"}))],
            ))
            .unwrap();
        // After the retraction the incident takes nothing more.
        let late = append(
            id,
            3,
            4,
            "2026-01-03T12:00:00Z",
            &[(
                "CasualtiesReported",
                json!({"killed": 1, "source": {"name": "Wire"}}),
            )],
        );
        let err = check.check(&late).unwrap_err();
        assert!(err.contains("event at position 4"), "{err}");
    }

    #[test]
    fn what_the_api_would_have_refused_is_refused() {
        let id = Uuid::new_v4();
        // Recorded later than this machine's clock allows.
        let future = append(
            id,
            0,
            1,
            "2026-01-10T00:06:00Z",
            &[("IncidentReported", reported())],
        );
        let err = RestoreCheck::new(at(NOW)).check(&future).unwrap_err();
        assert!(err.contains("later than this machine's clock"), "{err}");
        assert!(err.contains("--allow-clock-ahead"), "{err}");
        RestoreCheck::new(at(NOW))
            .allowing_clock_ahead()
            .check(&future)
            .unwrap();
        assert!(RestoreCheck::new(at(NOW))
            .check(&append(
                id,
                0,
                1,
                "2026-01-10T00:04:00Z",
                &[("IncidentReported", reported())]
            ))
            .is_ok());
        // An occurred_at after the time it was recorded (the decision's "now").
        let mut early = reported();
        early["occurred_at"] = json!("2026-01-09");
        let err = RestoreCheck::new(at(NOW))
            .check(&append(
                id,
                0,
                1,
                "2026-01-03T00:00:00Z",
                &[("IncidentReported", early)],
            ))
            .unwrap_err();
        assert!(err.contains("occurred_at"), "{err}");
        // An unknown type; data the API would not store that way.
        let mut unknown = append(
            id,
            0,
            1,
            "2026-01-03T00:00:00Z",
            &[("IncidentReported", reported())],
        );
        unknown.request.events[0].event_type = "IncidentFromTheFuture".into();
        let err = RestoreCheck::new(at(NOW)).check(&unknown).unwrap_err();
        assert!(err.contains("event at position 1"), "{err}");
        let mut spaced = append(
            id,
            0,
            1,
            "2026-01-03T00:00:00Z",
            &[("IncidentReported", reported())],
        );
        let pretty = serde_json::to_string_pretty(&reported()).unwrap();
        spaced.request.events[0].data = RawValue::from_string(pretty).unwrap();
        let err = RestoreCheck::new(at(NOW)).check(&spaced).unwrap_err();
        assert!(err.contains("not in the form the API stores"), "{err}");
        // The API's 24 hours ahead, with the leeway for a decision taken after the batch's
        // time was stamped (as earlier file stores did).
        let mut ahead = reported();
        ahead["occurred_at"] = json!("2026-01-04T00:00:01Z");
        assert!(RestoreCheck::new(at(NOW))
            .check(&append(
                id,
                0,
                1,
                "2026-01-03T00:00:00Z",
                &[("IncidentReported", ahead.clone())]
            ))
            .is_ok());
        ahead["occurred_at"] = json!("2026-01-04T00:02:00Z");
        assert!(RestoreCheck::new(at(NOW))
            .check(&append(
                id,
                0,
                1,
                "2026-01-03T00:00:00Z",
                &[("IncidentReported", ahead)]
            ))
            .is_err());
        // A first event that does not report the incident.
        let orphan = append(
            id,
            0,
            1,
            "2026-01-03T00:00:00Z",
            &[(
                "CasualtiesReported",
                json!({"killed": 1, "source": {"name": "Wire"}}),
            )],
        );
        assert!(RestoreCheck::new(at(NOW)).check(&orphan).is_err());
    }
}
