//! The decision step: accept or reject a whole batch against an incident's current state.
use chrono::{DateTime, Duration, Utc};

use crate::events::*;
use crate::state::{leaves_decisions_alone, IncidentState, Interner, Meta};
use crate::FieldError;

/// How far in the future `occurred_at` may be (clock skew, time zones).
pub const MAX_FUTURE: Duration = Duration::hours(24);

/// Accept or reject a whole batch against the current state (pure; `now` passed in).
///
/// Events are checked in order against the state as the earlier events of the batch leave it
/// (a claim made at index 0 can be denied at index 1). Every problem is reported, with the
/// pointer `{pointer_prefix}/{index}/...`.
pub fn decide(
    state: &IncidentState,
    events: &[TypedEvent],
    now: DateTime<Utc>,
    pointer_prefix: &str,
) -> Result<(), Vec<FieldError>> {
    if checks_stand_alone(events) {
        // Checked against the state itself: no copy of it.
        return check_each(state, events, now, pointer_prefix);
    }
    let mut st = state.clone();
    decide_in(&mut st, events, now, pointer_prefix)
}

/// [`decide`], and on acceptance `state` becomes the decision state after the batch: what
/// folding the recorded events gives, except that positions and `recorded_at` are stand-ins
/// (the last position; `now`). On rejection `state` is unchanged. A bulk import decides the
/// next line of an incident on it without reading or decoding the events it just accepted.
pub fn decide_and_apply(
    state: &mut IncidentState,
    events: &[TypedEvent],
    now: DateTime<Utc>,
    pointer_prefix: &str,
) -> Result<(), Vec<FieldError>> {
    if checks_stand_alone(events) {
        // Checked on the state as it is, then applied in place: no copy to throw away.
        check_each(state, events, now, pointer_prefix)?;
        let mut names = Interner::off();
        for te in events {
            apply_accepted(state, te, now, &mut names);
        }
        return Ok(());
    }
    let mut st = state.clone();
    decide_in(&mut st, events, now, pointer_prefix)?;
    *state = st;
    Ok(())
}

/// Whether every event of the batch gets the same check on the state before the batch as on
/// the state the events before it leave: true when none of those earlier events changes
/// anything a check reads ([`leaves_decisions_alone`]). One event always does.
fn checks_stand_alone(events: &[TypedEvent]) -> bool {
    match events.split_last() {
        Some((_, earlier)) => earlier.iter().all(|te| leaves_decisions_alone(&te.event)),
        None => true,
    }
}

/// Every event of the batch checked on `st` itself (for a batch whose checks stand alone).
fn check_each(
    st: &IncidentState,
    events: &[TypedEvent],
    now: DateTime<Utc>,
    pointer_prefix: &str,
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    for (i, te) in events.iter().enumerate() {
        check_event(st, i, te, now, pointer_prefix, &mut errs);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Checks the events in order on `st`, applying each one that passes (so later events see
/// it); every problem is collected.
fn decide_in(
    st: &mut IncidentState,
    events: &[TypedEvent],
    now: DateTime<Utc>,
    pointer_prefix: &str,
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut names = Interner::off();
    for (i, te) in events.iter().enumerate() {
        let before = errs.len();
        check_event(st, i, te, now, pointer_prefix, &mut errs);
        if errs.len() == before {
            apply_accepted(st, te, now, &mut names);
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn apply_accepted(
    st: &mut IncidentState,
    te: &TypedEvent,
    now: DateTime<Utc>,
    names: &mut Interner,
) {
    let position = st.last_position;
    // Borrowed: the state copies what it keeps, and nothing else of the event is copied.
    st.apply_event(
        te.event.borrowed(),
        Meta {
            position,
            recorded_at: now,
        },
        names,
    );
}

/// The problems of event `i` of a batch against `st` (the state the earlier events left).
fn check_event(
    st: &IncidentState,
    i: usize,
    te: &TypedEvent,
    now: DateTime<Utc>,
    pointer_prefix: &str,
    errs: &mut Vec<FieldError>,
) {
    let limit = now + MAX_FUTURE;
    // Pointers are built only for a problem (most events have none).
    let mut err = |field: Option<&str>, msg: String| {
        let p = match field {
            Some("../type") => format!("{pointer_prefix}/{i}/type"),
            Some(f) => format!("{pointer_prefix}/{i}/data/{f}"),
            None => format!("{pointer_prefix}/{i}"),
        };
        errs.push(FieldError::new(p, msg));
    };
    if let Some(r) = st.retraction.as_deref() {
        err(
            None,
            format!(
                "the incident was retracted ({}); a retracted incident accepts no further events \
                 (report a new incident instead)",
                r.reason
            ),
        );
        return;
    }
    if let Err((field, msg)) = st.check(&te.event) {
        // A rule about the event as a whole is about its type (first event, only once).
        err(Some(field.unwrap_or("../type")), msg);
    }
    let future = |t: &crate::OccurredAt| t.to_datetime() > limit;
    match &te.event {
        IncidentEvent::IncidentReported(r) if future(&r.occurred_at) => {
            err(Some("occurred_at"), future_msg(&r.occurred_at, now));
        }
        IncidentEvent::IncidentCorrected(c) => {
            if let Some(t) = c.occurred_at.as_ref().filter(|t| future(t)) {
                err(Some("occurred_at"), future_msg(t, now));
            }
            if let (Some(core), None, Some(tp)) =
                (st.core.as_deref(), c.occurred_at, c.time_precision)
            {
                if !tp.fits(&core.occurred_at) {
                    err(
                        Some("time_precision"),
                        format!(
                            "{} precision needs a timestamp; the incident's occurred_at is the plain date {}",
                            tp.as_str(),
                            core.occurred_at
                        ),
                    );
                }
            }
            if st.core.is_some() && !st.correction_changes(c) {
                err(
                    None,
                    "the correction changes nothing: every given field already has that value"
                        .into(),
                );
            }
        }
        IncidentEvent::IncidentRetracted(r) => {
            if let (Some(d), Some(id)) = (r.duplicate_of, st.id) {
                if d == id {
                    err(
                        Some("duplicate_of"),
                        "an incident cannot be a duplicate of itself".into(),
                    );
                }
            }
        }
        _ => {}
    }
}

fn future_msg(t: &crate::OccurredAt, now: DateTime<Utc>) -> String {
    format!(
        "{t} is more than 24 hours in the future (server time {})",
        crate::time::fmt_recorded(&now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use uuid::Uuid;

    const INCIDENT: Uuid = Uuid::from_u128(0x1d00_0000_0000_4000_8000_0000_0000_0001);
    const C1: &str = "c1a1e000-0000-4000-8000-000000000001";
    const C2: &str = "c1a1e000-0000-4000-8000-000000000002";

    /// Events of every type, with variations that pass or fail each check depending on the
    /// state (and on the events before them).
    fn pool() -> Vec<TypedEvent> {
        let src = |n: &str| json!({"name": n});
        let events: Vec<(&str, Value)> = vec![
            (
                "IncidentReported",
                json!({"kind": "shelling", "occurred_at": "2026-01-02", "region": "UA-63", "source": src("R")}),
            ),
            (
                "IncidentReported",
                json!({"kind": "drone_strike", "occurred_at": "2030-01-02T10:00:00Z", "region": "UA-65", "source": src("R")}),
            ),
            (
                "CasualtiesReported",
                json!({"killed": 3, "source": src("A")}),
            ),
            (
                "CasualtiesReported",
                json!({"injured": 2, "source": src("B")}),
            ),
            (
                "ClaimMade",
                json!({"claim_id": C1, "claimant": "MoD", "statement": "s"}),
            ),
            (
                "ClaimMade",
                json!({"claim_id": C2, "claimant": "GS", "statement": "t", "source": src("C")}),
            ),
            ("ClaimDenied", json!({"claim_id": C1, "by": "GS"})),
            (
                "ClaimDenied",
                json!({"claim_id": C2, "by": "MoD", "source": src("D")}),
            ),
            (
                "ClaimAssessed",
                json!({"claim_id": C1, "assessment": "confirmed", "by": "ACLED"}),
            ),
            ("SourceAdded", json!({"source": src("BBC")})),
            (
                "IncidentCorrected",
                json!({"region": "UA-65", "reason": "r"}),
            ),
            (
                "IncidentCorrected",
                json!({"time_precision": "hour", "reason": "r"}),
            ),
            (
                "IncidentCorrected",
                json!({"occurred_at": "2030-01-01", "reason": "r"}),
            ),
            ("IncidentRetracted", json!({"reason": "r"})),
            (
                "IncidentRetracted",
                json!({"reason": "dup", "duplicate_of": INCIDENT.to_string()}),
            ),
        ];
        events
            .into_iter()
            .enumerate()
            .map(|(i, (t, d))| {
                let body = json!([{"event_id": Uuid::from_u128(0xe000 + i as u128), "type": t, "data": d}]);
                let mut parsed = crate::parse_events(&body, "/events").expect("valid event");
                parsed.remove(0)
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-01-10T12:00:00Z".parse().expect("a time")
    }

    /// The decision by definition: the batch decided on a copy of the state, event by event.
    fn by_copy(
        state: &IncidentState,
        batch: &[TypedEvent],
    ) -> (Result<(), Vec<FieldError>>, IncidentState) {
        let mut st = state.clone();
        let verdict = decide_in(&mut st, batch, now(), "/events");
        let after = if verdict.is_ok() { st } else { state.clone() };
        (verdict, after)
    }

    /// The histories of exactly 0, 1, ..., `depth` events of the pool (each decided on its own),
    /// as (full state, decision-only state) pairs. Both states take every event alike, and the
    /// decision-only one always equals the full one reduced.
    fn histories(pool: &[TypedEvent], depth: usize) -> Vec<Vec<(IncidentState, IncidentState)>> {
        let root = IncidentState::with_id(INCIDENT);
        let mut levels = vec![vec![(root.clone(), root.into_decision_only())]];
        for _ in 0..depth {
            let mut next = Vec::new();
            for (f, l) in levels.last().into_iter().flatten() {
                for ev in pool.iter().map(std::slice::from_ref) {
                    let (mut f, mut l) = (f.clone(), l.clone());
                    let verdict = decide_and_apply(&mut f, ev, now(), "/events");
                    assert_eq!(decide_and_apply(&mut l, ev, now(), "/events"), verdict);
                    if verdict.is_ok() {
                        assert_eq!(l, f.clone().into_decision_only(), "{ev:?} on {f:?}");
                        assert_eq!(l, f.decision_only_copy(), "{ev:?} on {f:?}");
                        next.push((f, l));
                    }
                }
            }
            levels.push(next);
        }
        levels
    }

    fn check(state: &IncidentState, batch: &[TypedEvent], stood_alone: &mut usize) {
        let (want, want_state) = by_copy(state, batch);
        assert_eq!(
            decide(state, batch, now(), "/events"),
            want,
            "{batch:?} on {state:?}"
        );
        let mut applied = state.clone();
        let got = decide_and_apply(&mut applied, batch, now(), "/events");
        assert_eq!(got, want, "{batch:?} on {state:?}");
        assert_eq!(applied, want_state, "{batch:?} on {state:?}");
        // A decision-only state takes the batch the same way and keeps the same facts.
        let mut lean = state.clone().into_decision_only();
        let got = decide_and_apply(&mut lean, batch, now(), "/events");
        assert_eq!(got, want, "{batch:?} on decision-only {state:?}");
        assert_eq!(
            lean,
            want_state.into_decision_only(),
            "{batch:?} on {state:?}"
        );
        *stood_alone += usize::from(checks_stand_alone(batch));
    }

    /// A decision-only state folded from the start equals the full state reduced, and both
    /// decide every event of the pool alike.
    #[test]
    fn a_decision_only_state_decides_like_the_full_state() {
        let pool = pool();
        // Histories of up to six events.
        let levels = histories(&pool, 6);
        for (f, l) in levels.iter().skip(1).flatten() {
            for probe in pool.iter().map(std::slice::from_ref) {
                assert_eq!(
                    decide(l, probe, now(), "/events"),
                    decide(f, probe, now(), "/events"),
                    "{probe:?} on {f:?}"
                );
            }
            // No view comes from a decision-only state.
            assert!(crate::view::IncidentView::<&str>::build(l).is_none());
        }
        let last = levels.last().map_or(0, Vec::len);
        assert!(last > 1000, "{last}");
    }

    #[test]
    fn batches_checked_on_the_state_before_them_decide_like_a_copy() {
        let pool = pool();
        let mut stood_alone = 0;
        // Every pair of events on every state of up to four events; every triple on every
        // state of up to three.
        for (depth, len) in [(4, 2), (3, 3)] {
            for (st, _) in histories(&pool, depth).into_iter().flatten() {
                let mut idx = vec![0; len];
                loop {
                    let batch: Vec<TypedEvent> = idx.iter().map(|&i| pool[i].clone()).collect();
                    check(&st, &batch, &mut stood_alone);
                    // The next combination, like an odometer.
                    let mut k = len;
                    loop {
                        if k == 0 {
                            break;
                        }
                        k -= 1;
                        idx[k] += 1;
                        if idx[k] < pool.len() {
                            break;
                        }
                        idx[k] = 0;
                    }
                    if idx.iter().all(|&i| i == 0) {
                        break;
                    }
                }
            }
        }
        // Both paths were taken many times.
        assert!(stood_alone > 10_000, "{stood_alone}");
    }
}
