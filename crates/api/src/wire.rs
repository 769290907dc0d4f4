//! Wire shapes: what the API reads and writes, and their OpenAPI schemas.

use chrono::{DateTime, Utc};
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
    incidentlog_projections::fmt_micros(t)
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

/// A recorded event read back from its wire form (a line of the ndjson export, an item of
/// `GET /v1/events`), for `incidentlog restore`. The `data` keeps its exact bytes: the chain
/// hash covers them.
pub fn parse_wire_event(line: &str) -> Result<RecordedEvent, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        global_position: u64,
        incident_id: Uuid,
        stream_version: u64,
        event_id: Uuid,
        #[serde(rename = "type")]
        event_type: String,
        data: Box<serde_json::value::RawValue>,
        recorded_at: String,
        recorded_by: String,
        hash: String,
    }
    let w: Wire = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let recorded_at = DateTime::parse_from_rfc3339(&w.recorded_at)
        .map_err(|e| {
            format!(
                "recorded_at {:?} is not an RFC 3339 time ({e})",
                w.recorded_at
            )
        })?
        .with_timezone(&Utc);
    // The log keeps microseconds: finer digits were not written by an export.
    if recorded_at.timestamp_subsec_nanos() % 1000 != 0 {
        return Err(format!(
            "recorded_at {:?} has digits below the microsecond, which the log does not keep",
            w.recorded_at
        ));
    }
    let hash = incidentlog_store::from_hex_32(&w.hash)
        .ok_or_else(|| format!("hash {:?} is not 64 hex digits", w.hash))?;
    Ok(RecordedEvent {
        global_position: w.global_position,
        stream_id: w.incident_id,
        stream_version: w.stream_version,
        event_id: w.event_id,
        event_type: w.event_type,
        data: w.data,
        recorded_at,
        recorded_by: w.recorded_by,
        hash,
    })
}

/// A list of recorded events.
pub struct WireEvents<'a>(pub &'a [RecordedEvent]);

impl Serialize for WireEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(WireEvent))
    }
}

// ---- documentation-only schemas (the handlers serialize the real types) ----

/// `expected_version`: a non-negative integer or the string `"any"`.
pub fn expected_version_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{OneOfBuilder, Schema};
    Schema::OneOf(expected_version_kinds(OneOfBuilder::new()).build())
}

/// `expected_version` in a request: also `null`, which means "any" like leaving it out.
pub fn expected_version_input_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let kinds = expected_version_kinds(OneOfBuilder::new());
    Schema::OneOf(
        kinds
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

fn expected_version_kinds(
    one_of: utoipa::openapi::schema::OneOfBuilder,
) -> utoipa::openapi::schema::OneOfBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    one_of
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["any"])),
        )
}

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
    /// An integer (0: the incident must not exist yet) or `"any"`; left out or `null`: `"any"`.
    #[schema(schema_with = expected_version_input_schema, example = json!("any"))]
    pub expected_version: Option<serde_json::Value>,
    pub events: Vec<EventInputDoc>,
}

/// One line of `POST /v1/events` (NDJSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImportLineDoc {
    pub incident_id: Uuid,
    /// An integer (0: the incident must not exist yet) or `"any"`; left out or `null`: `"any"`.
    #[schema(schema_with = expected_version_input_schema)]
    pub expected_version: Option<serde_json::Value>,
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
    /// Only on a page (`after` or `limit` given): the last stream version returned (`after`
    /// when none), to pass as the next page's `after`.
    pub next_after: Option<u64>,
}

/// The incidents that have a location, as GeoJSON (RFC 7946) Point features; properties as
/// `proto-docs/export-formats.md` lists them.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FeatureCollectionDoc {
    /// Always "FeatureCollection".
    #[schema(rename = "type")]
    pub kind: String,
    pub features: Vec<serde_json::Value>,
}

/// A page of the global log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogPageDoc {
    pub events: Vec<RecordedEventDoc>,
    /// The last position returned (`after` when nothing was returned).
    pub next_after: u64,
}

/// The kind of an incident; the first four count as strikes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum KindDoc {
    MissileStrike,
    DroneStrike,
    AirStrike,
    Shelling,
    ArmedClash,
    Explosion,
    AttackOnCivilians,
    Interception,
    Other,
}

/// How precisely `occurred_at` is known.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TimePrecisionDoc {
    Exact,
    Hour,
    Day,
    Week,
    Month,
}

/// A point (WGS84) and how precisely it is known.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LocationDoc {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
    /// `exact`, `near`, `admin2` or `admin1`.
    #[schema(pattern = "^(exact|near|admin2|admin1)$")]
    pub precision: String,
}

/// A source as the event gave it; absent fields are left out.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SourceDoc {
    pub name: String,
    /// `official`, `media`, `ngo`, `social_media`, `witness` or `other`.
    #[schema(pattern = "^(official|media|ngo|social_media|witness|other)$")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub archive_url: Option<String>,
    /// RFC 3339 timestamp or `YYYY-MM-DD`.
    pub published_at: Option<String>,
    /// Lowercase hex SHA-256 of the captured evidence.
    pub sha256: Option<String>,
}

/// low / best / high of one count (SPEC section 4, "Casualty figures").
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FigureDoc {
    pub low: u64,
    pub best: u64,
    pub high: u64,
}

/// Casualty figures of an incident, or their sums over a region.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CasualtiesDoc {
    pub killed: FigureDoc,
    pub injured: FigureDoc,
    pub civilians_killed: u64,
    pub children_killed: u64,
}

/// A denial of a claim.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DenialDoc {
    pub by: String,
    #[schema(required)]
    pub statement: Option<String>,
    #[schema(required)]
    pub source: Option<SourceDoc>,
    pub recorded_at: String,
}

/// An assessment of a claim; the latest one decides the claim's status.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AssessmentDoc {
    /// `confirmed` or `refuted`.
    #[schema(pattern = "^(confirmed|refuted)$")]
    pub assessment: String,
    pub by: String,
    #[schema(required)]
    pub evidence: Option<String>,
    pub recorded_at: String,
}

/// A claim with its denials and assessments.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClaimDoc {
    pub claim_id: Uuid,
    pub claimant: String,
    pub statement: String,
    #[schema(required)]
    pub attributed_to: Option<String>,
    #[schema(required)]
    pub source: Option<SourceDoc>,
    /// `unverified`, `disputed`, `confirmed` or `refuted`.
    #[schema(pattern = "^(unverified|disputed|confirmed|refuted)$")]
    pub status: String,
    pub denials: Vec<DenialDoc>,
    pub assessments: Vec<AssessmentDoc>,
    pub recorded_at: String,
}

/// One `IncidentCorrected` event as the view keeps it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CorrectionDoc {
    pub reason: String,
    /// The fields this correction changed.
    pub fields: Vec<String>,
    pub recorded_at: String,
}

/// The `IncidentRetracted` event of a retracted incident.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RetractionDoc {
    pub reason: String,
    #[schema(required)]
    pub duplicate_of: Option<Uuid>,
    pub recorded_at: String,
}

/// The view of one incident (SPEC section 5). Every field is always present; fields the
/// events never gave are `null`. Timestamps are RFC 3339 UTC with microseconds.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IncidentViewDoc {
    pub incident_id: Uuid,
    pub kind: KindDoc,
    /// RFC 3339 timestamp or `YYYY-MM-DD`, as reported (or corrected).
    pub occurred_at: String,
    pub time_precision: TimePrecisionDoc,
    /// ISO 3166-2 code.
    pub region: String,
    pub region_name: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    #[schema(required)]
    pub locality: Option<String>,
    #[schema(required)]
    pub location: Option<LocationDoc>,
    #[schema(required)]
    pub perpetrator: Option<String>,
    #[schema(required)]
    pub target: Option<String>,
    #[schema(required)]
    pub summary: Option<String>,
    /// `active` or `retracted`.
    #[schema(pattern = "^(active|retracted)$")]
    pub status: String,
    #[schema(required)]
    pub retraction: Option<RetractionDoc>,
    pub casualties: CasualtiesDoc,
    pub claims: Vec<ClaimDoc>,
    /// Every distinct source cited by any event, in order of first appearance.
    pub sources: Vec<SourceDoc>,
    pub corrections: Vec<CorrectionDoc>,
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

/// Strike counts of a summary.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StrikesDoc {
    /// Incidents whose kind is a strike (missile, drone, air strike, shelling).
    pub total: u64,
    /// Per strike kind; kinds with no incident are left out.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub by_kind: serde_json::Value,
}

/// Claims of a summary's incidents, by status.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClaimCountsDoc {
    pub total: u64,
    pub unverified: u64,
    pub disputed: u64,
    pub confirmed: u64,
    pub refuted: u64,
}

/// A regional summary (SPEC section 5): sums over the region's non-retracted incidents in
/// the window.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegionSummaryDoc {
    /// ISO 3166-2 code.
    pub region: String,
    pub name: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    pub incidents: u64,
    pub strikes: StrikesDoc,
    pub casualties: CasualtiesDoc,
    pub claims: ClaimCountsDoc,
    /// RFC 3339 timestamp or `YYYY-MM-DD`; null without incidents.
    #[schema(required)]
    pub first_occurred_at: Option<String>,
    #[schema(required)]
    pub last_occurred_at: Option<String>,
    /// The global position the summary is computed at.
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
    /// `ok`, `starting`, `closing`, `unavailable` or `damaged` (`/healthz` always says `ok`).
    pub status: &'static str,
    pub position: u64,
    pub head: u64,
}
