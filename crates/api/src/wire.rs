//! Wire shapes: what the API reads and writes, and their OpenAPI schemas.

use chrono::{DateTime, SecondsFormat, Utc};
use incidentlog_store::{ExpectedVersion, RecordedEvent};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

/// `expected_version` as the client wrote it, for 409 bodies.
pub fn expected_json(expected: ExpectedVersion) -> serde_json::Value {
    match expected {
        ExpectedVersion::Any => serde_json::Value::String("any".into()),
        ExpectedVersion::Exact(n) => serde_json::Value::from(n),
    }
}

/// RFC 3339 UTC with microseconds and `Z`, the one timestamp format of the API.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A recorded event as every read returns it (`stream_id` is called `incident_id` here).
pub struct WireEvent<'a>(pub &'a RecordedEvent);

impl Serialize for WireEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("RecordedEvent", 9)?;
        st.serialize_field("global_position", &e.global_position)?;
        st.serialize_field("incident_id", &e.stream_id)?;
        st.serialize_field("stream_version", &e.stream_version)?;
        st.serialize_field("event_id", &e.event_id)?;
        st.serialize_field("type", &e.event_type)?;
        st.serialize_field("data", &e.data)?;
        st.serialize_field("recorded_at", &format_time(&e.recorded_at))?;
        st.serialize_field("recorded_by", &e.recorded_by)?;
        st.serialize_field("hash", &e.hash_hex())?;
        st.end()
    }
}

/// A list of recorded events.
pub struct WireEvents<'a>(pub &'a [RecordedEvent]);

impl Serialize for WireEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(WireEvent))
    }
}

// ---- documentation-only schemas (the handlers serialize the real types) ----

/// A recorded event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RecordedEventDoc {
    pub global_position: u64,
    pub incident_id: Uuid,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub r#type: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// RFC 3339 UTC with microseconds.
    pub recorded_at: String,
    /// Name of the token that appended it.
    pub recorded_by: String,
    /// Lowercase hex of the record's chain hash.
    pub hash: String,
}

/// One problem with one field.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldErrorDoc {
    /// JSON pointer into the request (query parameters as `/name`).
    pub pointer: String,
    pub message: String,
}

/// One event in an append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventInputDoc {
    pub event_id: Uuid,
    /// One of the eight event types of schema version 1.
    pub r#type: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Body of `POST /v1/incidents/{id}/events`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AppendBodyDoc {
    /// An integer (0: the incident must not exist yet) or `"any"` (default).
    #[schema(value_type = Option<Object>, example = json!("any"))]
    pub expected_version: serde_json::Value,
    pub events: Vec<EventInputDoc>,
}

/// One line of `POST /v1/events` (NDJSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImportLineDoc {
    pub incident_id: Uuid,
    #[schema(value_type = Option<Object>)]
    pub expected_version: serde_json::Value,
    pub events: Vec<EventInputDoc>,
}

/// Answer to a successful append (201 new, 200 idempotent repeat).
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    pub incident_id: Uuid,
    pub version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// `{"events": [...]}` of one incident.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StreamEventsDoc {
    pub events: Vec<RecordedEventDoc>,
}

/// A page of the global log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogPageDoc {
    pub events: Vec<RecordedEventDoc>,
    /// The last position returned (`after` when nothing was returned).
    pub next_after: u64,
}

/// The view of one incident (see SPEC section 5).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IncidentViewDoc {
    pub incident_id: Uuid,
    pub status: String,
    #[schema(value_type = Object)]
    pub casualties: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub claims: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub sources: serde_json::Value,
    pub version: u64,
    pub first_recorded_at: String,
    pub last_recorded_at: String,
}

/// A page of incidents.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IncidentPageDoc {
    pub incidents: Vec<IncidentViewDoc>,
    pub next_cursor: Option<String>,
}

/// A regional summary (see SPEC section 5).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegionSummaryDoc {
    pub region: String,
    pub name: String,
    pub country: String,
    pub incidents: u64,
    #[schema(value_type = Object)]
    pub strikes: serde_json::Value,
    #[schema(value_type = Object)]
    pub casualties: serde_json::Value,
    #[schema(value_type = Object)]
    pub claims: serde_json::Value,
    pub first_occurred_at: Option<String>,
    pub last_occurred_at: Option<String>,
    pub as_of_position: u64,
}

/// Every region with incidents.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegionListDoc {
    pub regions: Vec<RegionSummaryDoc>,
}

/// Answer of `POST /v1/admin/replay`.
#[derive(Serialize, ToSchema, Debug)]
pub struct ReplayResponse {
    pub events: u64,
    pub duration_ms: u64,
    pub digest: String,
}

/// Answer of `GET /v1/admin/digest`: the digest of the live views, to compare with a replay.
#[derive(Serialize, ToSchema, Debug)]
pub struct DigestResponse {
    /// The last global position the live views include.
    pub position: u64,
    pub digest: String,
}

/// Answer of `GET /v1/admin/verify`.
#[derive(Serialize, ToSchema, Debug)]
pub struct VerifyResponse {
    pub ok: bool,
    pub events: u64,
    /// Lowercase hex of the head hash (null when the check failed).
    pub head_hash: Option<String>,
    /// What is damaged and where (only when `ok` is false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema, Debug)]
pub struct HealthResponse {
    /// `ok`, `starting`, `closing` or `unavailable` (`/healthz` always says `ok`).
    pub status: &'static str,
    pub position: u64,
    pub head: u64,
}
