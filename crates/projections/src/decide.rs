//! The decision step: accept or reject a whole batch against an incident's current state.
use chrono::{DateTime, Duration, Utc};

use crate::events::*;
use crate::state::{IncidentState, Interner, Meta};
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
    if let [only] = events {
        // One event is checked against the state itself: no copy of it.
        return check_only(state, only, now, pointer_prefix);
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
    if let [only] = events {
        check_only(state, only, now, pointer_prefix)?;
        apply_accepted(state, only, now, &mut Interner::off());
        return Ok(());
    }
    let mut st = state.clone();
    decide_in(&mut st, events, now, pointer_prefix)?;
    *state = st;
    Ok(())
}

/// The problems of a one-event batch.
fn check_only(
    st: &IncidentState,
    te: &TypedEvent,
    now: DateTime<Utc>,
    pointer_prefix: &str,
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    check_event(st, 0, te, now, pointer_prefix, &mut errs);
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
