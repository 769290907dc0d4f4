//! The incident domain of incidentlog, pure: no I/O, no clock (callers pass `now`), no
//! randomness.
//!
//! - [`parse_events`]: strict decoding of append requests, every problem with a JSON pointer;
//! - [`decide`]: accept or reject a batch against an incident's [`IncidentState`];
//! - [`Projection`]: the live views (incident views, regional summaries with per-day buckets,
//!   as-of by position, a digest of the whole view state);
//! - [`fold_incident`]: the view of one incident from its own events.
//!
//! Input is [`Envelope`], a recorded event borrowed from whatever store produced it.
#![forbid(unsafe_code)]

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

mod chunked;
mod decide;
mod error;
mod events;
mod json;
mod projection;
mod region;
mod state;
mod summary;
mod time;
mod validate;
mod view;

pub use decide::{decide, decide_and_apply, MAX_FUTURE};
pub use error::{FieldError, ProjectionError};
pub use events::{
    Assessment, CasualtiesReported, ClaimAssessed, ClaimDenied, ClaimMade, ClaimStatus,
    IncidentCorrected, IncidentEvent, IncidentReported, IncidentRetracted, IncidentStatus, Kind,
    Location, LocationPrecision, Sha256, Source, SourceAdded, SourceKind, TimePrecision,
    TypedEvent, EVENT_TYPES,
};
pub use json::{Json, JsonMembers, JsonObject, JsonValue, MAX_JSON_VALUES};
pub use projection::{
    fold_incident, DecodedEvent, IncidentPage, IncidentPager, IncidentQuery, MemoryUsage,
    Projection, DEFAULT_LIMIT, MAX_LIMIT,
};
pub use region::Region;
pub use state::IncidentState;
pub use time::{fmt_micros, parse_instant, OccurredAt, Window};
pub use validate::{
    hyphenated_uuid, parse_events, whole_number, Problems, MAX_COUNT, MAX_NAME_CHARS,
    MAX_TEXT_CHARS, MAX_URL_BYTES, PROBLEMS_KEPT,
};
pub use view::{
    AssessmentView, ByKind, CasualtiesView, ClaimCounts, ClaimView, CorrectionView, DenialView,
    Figure, IncidentView, RegionSummary, RetractionView, SourceView, StrikeCounts,
};

/// A recorded event, borrowed from any store.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub global_position: u64,
    pub incident_id: Uuid,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub data: &'a RawValue,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: &'a str,
}
