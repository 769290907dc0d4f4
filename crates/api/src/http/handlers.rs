//! Route handlers. Each one parses its input into typed values, calls the service, and
//! serializes the answer; errors are `ApiError` (problem+json).

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use futures_util::StreamExt;
use incidentlog_projections::{Region, Window};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{ApiPath, ApiQuery, JsonBody, NdjsonBody};
use super::quota::Client;
use super::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::export::TableFormat;
use crate::service::{parse_command, AsOf, ImportReport, RejectedLine};
use crate::wire::{
    self, AppendResponse, DigestResponse, HealthResponse, ReplayResponse, VerifyResponse,
    WireEvent, WireEvents,
};

/// Serializes `value` as the JSON body of a response with `status`.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => ApiError::Internal(format!("serializing a response: {e}")).into_response(),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<axum::body::Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(axum::body::Bytes::from)
        .map_err(|e| ApiError::Internal(format!("serializing a response: {e}")))
}

/// A 200 with an already serialized JSON body.
fn json_bytes(body: axum::body::Bytes) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn recorded_by(p: &Principal) -> Result<&str, ApiError> {
    p.name
        .as_deref()
        .ok_or_else(|| ApiError::Unauthorized("appends need a token".into()))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "incidentlog",
        description = "Append-only, event-sourced log of conflict incidents. Errors are RFC 9457 application/problem+json.",
        license(name = "Apache-2.0")
    ),
    paths(
        append, bulk_import, incident, incident_events, incidents, log_page, stream, regions,
        region, admin_replay, admin_digest, admin_verify, healthz, readyz, metrics, openapi
    ),
    components(schemas(
        Problem, wire::FieldErrorDoc, wire::AppendBodyDoc, wire::EventInputDoc, wire::ImportLineDoc,
        AppendResponse, ImportReport, RejectedLine, wire::RecordedEventDoc, wire::StreamEventsDoc,
        wire::LogPageDoc, wire::IncidentViewDoc, wire::IncidentPageDoc, wire::RegionSummaryDoc,
        wire::RegionListDoc, ReplayResponse, DigestResponse, VerifyResponse, HealthResponse
    )),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
    tags(
        (name = "events", description = "Appending and reading the log"),
        (name = "views", description = "Incident views and regional summaries"),
        (name = "admin", description = "Admin role only"),
        (name = "ops", description = "Health, readiness, metrics")
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The answers every route of a kind can give, added where a route's own list leaves them
/// out: the gate's (400 for an unknown or repeated query parameter, 401, 429, 503 when busy or
/// a read takes too long), 403 where a role is checked, 408 for a body sent too slowly.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The ops endpoints are open and take any query.
            if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
                continue;
            }
            let admin = path.starts_with("/v1/admin/");
            for (is_post, op) in [(false, item.get.as_mut()), (true, item.post.as_mut())] {
                let Some(op) = op else { continue };
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(description).into());
                };
                if path != "/openapi.json" {
                    add(
                        "400",
                        "Malformed request: unknown or repeated query parameter, bad path or body",
                    );
                }
                add("401", "No or bad token");
                if admin || is_post {
                    add("403", "Role too low");
                }
                if is_post {
                    add("408", "The body arrived too slowly");
                }
                add("429", "Rate-limited, or this token (anonymous: client address) has too many requests in flight (Retry-After)");
                add(
                    "503",
                    "Store unavailable, server busy, or the request took too long",
                );
            }
        }
    }
}

// ---- appends ----

/// Append events to one incident (atomic; optimistic concurrency; idempotent by event_id).
#[utoipa::path(
    post, path = "/v1/incidents/{id}/events", tag = "events",
    params(("id" = Uuid, Path, description = "Incident id (client-chosen UUID)")),
    request_body(content = wire::AppendBodyDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = AppendResponse),
        (status = 200, description = "Idempotent repeat: nothing recorded, original positions", body = AppendResponse),
        (status = 400, description = "Malformed JSON or path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role too low", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict or event_id reuse (expected, actual)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid event (a JSON pointer per problem)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate-limited, or this token (anonymous: client address) has too many requests in flight (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn append(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(_): ApiQuery<NoParams>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let body = body.parse()?;
    let by = recorded_by(&principal)?;
    let cmd = parse_command(&body, Some(id))?;
    let appended = Box::pin(state.service.append(cmd, by)).await?;
    let status = if appended.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &appended.response))
}

/// Bulk import: NDJSON, one `{"incident_id", "expected_version"?, "events"}` per line, each
/// line its own atomic append with the same validation.
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body(content = wire::ImportLineDoc, content_type = "application/x-ndjson", description = "One append per line"),
    responses(
        (status = 200, description = "Counts of events appended and repeated; rejected lines (nothing of them recorded)", body = ImportReport),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role too low", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large (64 MiB)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/x-ndjson", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This token (anonymous: client address) already has a bulk import in flight, or too many requests (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Store unavailable; or the memory for bulk bodies ran out half-way through this one (Retry-After: send it again)", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn bulk_import(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(_): ApiQuery<NoParams>,
    NdjsonBody(body, _slot): NdjsonBody,
) -> Result<Response, ApiError> {
    let by = recorded_by(&principal)?;
    let report = Box::pin(state.service.import_ndjson(&body[..], by, &|_| {})).await?;
    Ok(json(StatusCode::OK, &report))
}

// ---- reads ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AsOfParams {
    as_of: Option<String>,
    #[serde(default, deserialize_with = "super::extract::digits")]
    at_position: Option<u64>,
}

/// What is wrong with an `as_of` that chrono refused, in words a caller can act on where
/// chrono's say little ("premature end of input" for a word, a date, a time without offset).
fn as_of_mistake(t: &str, chrono_says: String) -> String {
    let date_shaped = |b: &[u8]| {
        b.len() == 10
            && b.iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    let b = t.as_bytes();
    if date_shaped(b) {
        return if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
            format!(
                "a date alone is not an instant (the end of that day in UTC is \
                 {t}T23:59:59.999999Z)"
            )
        } else {
            format!("{t} is not a date of the calendar")
        };
    }
    // A valid date and time that only lacks its offset (not one whose hour is 25).
    let time_without_offset = b.len() > 10
        && date_shaped(&b[..10])
        && matches!(b[10], b'T' | b't' | b' ')
        && ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"].iter().any(|f| {
            chrono::NaiveDateTime::parse_from_str(&format!("{} {}", &t[..10], &t[11..]), f).is_ok()
        });
    if time_without_offset {
        return "the time has no offset: end it with Z (UTC) or an offset such as +02:00".into();
    }
    chrono_says
}

fn as_of(as_of: Option<&str>, at_position: Option<u64>) -> Result<AsOf, ApiError> {
    match (as_of, at_position) {
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            "/at_position",
            "give either as_of or at_position, not both",
        )),
        (Some(t), None) => incidentlog_projections::parse_instant(t)
            .map(AsOf::Time)
            .map_err(|e| {
                let hint = super::query::plus_hint(t);
                let what = if hint.is_empty() {
                    as_of_mistake(t, e)
                } else {
                    e
                };
                ApiError::bad_field(
                    "/as_of",
                    format!(
                        "expected an RFC 3339 timestamp such as 2026-01-05T14:30:00Z: {what}{hint}"
                    ),
                )
            }),
        (None, Some(p)) => Ok(AsOf::Position(p)),
        (None, None) => Ok(AsOf::Live),
    }
}

/// The current state of one incident (or as of a time or position).
#[utoipa::path(
    get, path = "/v1/incidents/{id}", tag = "views",
    params(
        ("id" = Uuid, Path, description = "Incident id"),
        ("as_of" = Option<String>, Query, description = "RFC 3339: the state from events recorded at or before it"),
        ("at_position" = Option<u64>, Query, description = "The state after this global position (clamped to the head)")
    ),
    responses(
        (status = 200, description = "The incident", body = wire::IncidentViewDoc),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown incident (at that point)", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn incident(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<AsOfParams>,
) -> Result<Response, ApiError> {
    let at = as_of(q.as_of.as_deref(), q.at_position)?;
    let view = state.service.incident(id, at).await?;
    Ok(json(StatusCode::OK, &view))
}

/// The events of one incident, in order: the whole stream, or with `after` or `limit` a page
/// of it (an extension: a stream can be long) with `next_after` to continue from.
#[utoipa::path(
    get, path = "/v1/incidents/{id}/events", tag = "events",
    params(
        ("id" = Uuid, Path, description = "Incident id"),
        ("after" = Option<u64>, Query, description = "Page: stream version to read after (default 0)"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Page: default 100 when `after` is given, at least 1, max 1000 (larger values are clamped)")
    ),
    responses(
        (status = 200, description = "The stream (without `after` and `limit`), or a page of it with `next_after`", body = wire::StreamEventsDoc),
        (status = 400, description = "Malformed path or query (unknown or repeated parameter, an id that is not a UUID, limit 0)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown incident", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn incident_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    if q.after.is_none() && q.limit.is_none() {
        let events = state.service.stream_events(id).await?;
        if events.is_empty() {
            return Err(ApiError::NotFound(format!("no incident {id}")));
        }
        #[derive(Serialize)]
        struct Body<'a> {
            events: WireEvents<'a>,
        }
        return Ok(json(
            StatusCode::OK,
            &Body {
                events: WireEvents(&events),
            },
        ));
    }
    let after = q.after.unwrap_or(0);
    let limit = page_limit(q.limit)?;
    let events = state
        .service
        .stream_page(id, after, limit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id}")))?;
    let next_after = events.last().map_or(after, |e| e.stream_version);
    #[derive(Serialize)]
    struct Body<'a> {
        events: WireEvents<'a>,
        next_after: u64,
    }
    Ok(json(
        StatusCode::OK,
        &Body {
            events: WireEvents(&events),
            next_after,
        },
    ))
}

/// `limit` of a page: default 100, at most [`MAX_PAGE`] (more is clamped), 0 refused ("at most
/// `limit`" cannot be met with at least one event per page).
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    if limit == Some(0) {
        return Err(ApiError::bad_request_at(crate::error::field_error(
            "/limit",
            format!("must be at least 1 (values above {MAX_PAGE} are clamped)"),
        )));
    }
    Ok(limit.unwrap_or(100).min(MAX_PAGE))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    region: Option<String>,
    kind: Option<String>,
    claim_status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "super::extract::digits")]
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Incident views, filtered, paged by cursor. With `Accept: text/csv` or
/// `application/geo+json`: every matching incident (no paging) as the ACLED-style table or the
/// FeatureCollection that `incidentlog export` writes.
#[utoipa::path(
    get, path = "/v1/incidents", tag = "views",
    params(
        ("region" = Option<String>, Query, description = "ISO 3166-2 code"),
        ("kind" = Option<String>, Query, description = "Incident kind"),
        ("claim_status" = Option<String>, Query, description = "unverified, disputed, confirmed or refuted: incidents with such a claim"),
        ("from" = Option<String>, Query, description = "occurred_at from (date or RFC 3339, inclusive)"),
        ("to" = Option<String>, Query, description = "occurred_at to (date or RFC 3339, inclusive)"),
        ("status" = Option<String>, Query, description = "active (default) or retracted"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Default 100, at least 1, max 1000 (larger values are clamped). Not with text/csv or application/geo+json"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page. Not with text/csv or application/geo+json")
    ),
    responses(
        (status = 200, description = "A page (JSON); or every matching incident as CSV (ACLED's columns, then ours) or as a GeoJSON FeatureCollection of those with a location",
         content((wire::IncidentPageDoc = "application/json"), (String = "text/csv"), (wire::FeatureCollectionDoc = "application/geo+json"))),
        (status = 400, description = "Malformed query, or limit/cursor with a table format", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "CSV/GeoJSON: too many live feeds and streams of this token or client address (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "CSV/GeoJSON: too many live feeds and streams (Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn incidents(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    const TABLES: [TableFormat; 2] = [TableFormat::Csv, TableFormat::Geojson];
    let table = preferred_alternative(&headers, &[&["text/csv"], &["application/geo+json"]])
        .map(|i| TABLES[i]);
    if table.is_some() {
        for (name, given) in [("limit", q.limit.is_some()), ("cursor", q.cursor.is_some())] {
            if given {
                return Err(ApiError::bad_field(
                    format!("/{name}"),
                    "pages the JSON listing; a CSV or GeoJSON answer lists every matching incident",
                ));
            }
        }
    }
    let query = super::query::incident_query(
        q.region.as_deref(),
        q.kind.as_deref(),
        q.claim_status.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        q.status.as_deref(),
        q.limit,
        q.cursor,
    )?;
    if let Some(format) = table {
        let long = match LongStream::open(&state, principal, &extensions) {
            Ok(long) => long,
            Err(refused) => return Ok(*refused),
        };
        let body = state.service.incidents_table(query, format);
        let mut r = (
            StatusCode::OK,
            axum::body::Body::from_stream(until_stopped(body, long)),
        )
            .into_response();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
        r.headers_mut()
            .insert(VARY, HeaderValue::from_static("accept"));
        return Ok(r);
    }
    let page = state
        .service
        .incidents(&caller(&principal, &extensions), &query)
        .await?;
    let mut r = json(StatusCode::OK, &page);
    r.headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    Ok(r)
}

/// Routes without query parameters: any given is a 400 naming it, as on every route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    #[serde(default, deserialize_with = "super::extract::digits")]
    after: Option<u64>,
    #[serde(default, deserialize_with = "super::extract::digits")]
    limit: Option<usize>,
}

const MAX_PAGE: usize = 1000;

/// The client prefers the log as ndjson: see [`preferred_alternative`].
fn wants_ndjson(headers: &HeaderMap) -> bool {
    preferred_alternative(headers, &[&["application/x-ndjson", "application/ndjson"]]).is_some()
}

/// Which of the `offered` alternatives to JSON (each a list of spellings of one media type)
/// the client's `Accept` prefers, if any: one whose quality is above zero, above
/// `application/json`'s, and not below a wildcard's (`*/*`, or its own `type/*`); the highest
/// such, the first offered on a tie. Ties with JSON go to JSON, the SPEC's shape.
fn preferred_alternative(headers: &HeaderMap, offered: &[&[&str]]) -> Option<usize> {
    let ranges: Vec<(String, f32)> = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            // A quality that does not parse counts as 0: the range is ignored.
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0))
                .clamp(0.0, 1.0);
            (media, q)
        })
        .collect();
    let quality = |names: &[&str]| -> f32 {
        ranges
            .iter()
            .filter(|(m, _)| names.contains(&m.as_str()))
            .map(|(_, q)| *q)
            .fold(0.0, f32::max)
    };
    let json = quality(&["application/json"]);
    let mut best: Option<(usize, f32)> = None;
    for (i, names) in offered.iter().enumerate() {
        let q = quality(names);
        let kind = names[0].split('/').next().unwrap_or("");
        let wildcard = quality(&["*/*", &format!("{kind}/*")]);
        if q > 0.0 && q > json && q >= wildcard && best.is_none_or(|(_, b)| q > b) {
            best = Some((i, q));
        }
    }
    best.map(|(i, _)| i)
}

/// The ndjson body until the server stops or the token is revoked; then an error, so the
/// transfer is cut (no last chunk) rather than ended as if the log ended there.
fn until_stopped<E: std::fmt::Display + Send + 'static>(
    lines: impl futures_util::Stream<Item = Result<Vec<u8>, E>> + Send + 'static,
    long: LongStream,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let LongStream {
        slots,
        stop,
        request_id,
    } = long;
    futures_util::stream::unfold(
        (Box::pin(lines), stop, (slots, request_id), false),
        |(mut lines, mut stop, held, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                () = &mut stop => Some((
                    Err(std::io::Error::other("the server is stopping, or the token was revoked")),
                    (lines, stop, held, true),
                )),
                item = lines.next() => match item {
                    None => None,
                    Some(Ok(bytes)) => Some((Ok(bytes), (lines, stop, held, false))),
                    Some(Err(e)) => {
                        tracing::error!(request_id = %held.1, error = %e, "streamed answer cut by an error");
                        Some((Err(std::io::Error::other(e.to_string())), (lines, stop, held, true)))
                    }
                },
            }
        },
    )
}

/// The global log: events with position > `after`. With `Accept: application/x-ndjson`: every
/// such event up to the head as of the request (at most `limit` when given, without the
/// clamp), one per line as `incidentlog export` writes them: an online backup that
/// `incidentlog restore` reads back.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(
        ("after" = Option<u64>, Query, description = "Position to read after (default 0)"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Default 100, at least 1, max 1000 (larger values are clamped). With Accept: application/x-ndjson: no default, no clamp")
    ),
    responses(
        (status = 200, description = "A page of the log (JSON), or the log up to the head as of the request (ndjson, one recorded event per line)",
         content((wire::LogPageDoc = "application/json"), (wire::RecordedEventDoc = "application/x-ndjson")),
         headers(("Incidentlog-Last-Event" = String, description = "ndjson only: POSITION:HASH of the last event the stream sends (absent when it sends none); `incidentlog restore --expect-hash` checks a saved copy against it"))),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn log_page(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = page_limit(q.limit)?;
    if wants_ndjson(&headers) {
        let long = match LongStream::open(&state, principal, &extensions) {
            Ok(long) => long,
            Err(refused) => return Ok(*refused),
        };
        let (last, lines) = state
            .service
            .log_ndjson(after, q.limit.map(|n| n as u64))
            .await?;
        let body = axum::body::Body::from_stream(until_stopped(lines, long));
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if let Some(last) = last {
            if let Ok(v) = HeaderValue::from_str(&format!("{}:{}", last.position, last.hash_hex()))
            {
                r.headers_mut().insert("incidentlog-last-event", v);
            }
        }
        r.headers_mut()
            .insert(VARY, HeaderValue::from_static("accept"));
        return Ok(r);
    }
    let events = state.service.log_page(after, limit).await?;
    let next_after = events.last().map_or(after, |e| e.global_position);
    #[derive(Serialize)]
    struct Body<'a> {
        events: WireEvents<'a>,
        next_after: u64,
    }
    let mut r = json(
        StatusCode::OK,
        &Body {
            events: WireEvents(&events),
            next_after,
        },
    );
    // The answer's form depends on `Accept`.
    r.headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    Ok(r)
}

/// A long-lived streamed answer (an SSE feed, an ndjson log stream): it holds a slot of
/// `--max-sse-clients` and of the client's share of them while it runs, and ends when the
/// server stops or its token is revoked (checked at every token reload, as every other
/// request is).
struct LongStream {
    slots: (
        tokio::sync::OwnedSemaphorePermit,
        super::quota::Held<Client>,
    ),
    stop: futures_util::future::BoxFuture<'static, ()>,
    /// For the log, should the stream fail once its answer has started.
    request_id: String,
}

impl LongStream {
    /// The slots, or the answer refusing them (429 past the client's share, 503 past the
    /// server's cap, both with `Retry-After: 5`).
    fn open(
        state: &AppState,
        principal: Principal,
        extensions: &axum::http::Extensions,
    ) -> Result<LongStream, Box<Response>> {
        if state.config.max_sse_clients == 0 {
            // Not busy, turned off: no `Retry-After`, and a message that says so.
            return Err(Box::new(
                ApiError::Unavailable(
                    "live feeds, ndjson log streams and CSV/GeoJSON listings are turned off \
                     on this server (--max-sse-clients 0)"
                        .into(),
                )
                .into_response(),
            ));
        }
        let client = Client::of_request(&principal, extensions);
        let Some(client_slot) = state.sse_per_client.take(client) else {
            return Err(Box::new(
                ApiError::RateLimited {
                    retry_after_secs: 5,
                    why: "too many live feeds and log streams for this token (or client address)",
                }
                .into_response(),
            ));
        };
        let Ok(permit) = state.sse_slots.clone().try_acquire_owned() else {
            let mut r = ApiError::Unavailable(
                "too many live feeds and log streams; try again later".into(),
            )
            .into_response();
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return Err(Box::new(r));
        };
        let mut stopping = state.stopping.clone();
        let service = state.service.clone();
        let stop = async move {
            let revoked = async {
                match &principal.name {
                    Some(name) => service.tokens().revoked(name).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => {}
                () = revoked => {}
            }
        };
        let request_id = extensions
            .get::<super::RequestId>()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        Ok(LongStream {
            slots: (permit, client_slot),
            stop: Box::pin(stop),
            request_id,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamParams {
    #[serde(default, deserialize_with = "super::extract::digits")]
    after: Option<u64>,
}

/// Server-Sent Events: catch-up from `after` (or `Last-Event-ID`, which wins when both are
/// given, as on a reconnect), then live. `id` = global position, `event` = type, `data` = the
/// recorded event. Heartbeat comments every 15 s.
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "events",
    params(
        ("after" = Option<u64>, Query, description = "Position to start after (default 0)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position")
    ),
    responses(
        (status = 200, description = "text/event-stream of recorded events", content_type = "text/event-stream"),
        (status = 429, description = "Too many live feeds of this token or client address (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many SSE clients", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamParams>,
) -> Result<Response, ApiError> {
    // Two headers are refused, as two `Authorization` headers are: which one a reconnect
    // meant is unknown, and it must not silently start elsewhere.
    let mut ids = headers.get_all("last-event-id").iter();
    let last_event_id = match (ids.next(), ids.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Last-Event-ID must be given once: which one to resume after is unknown",
            ))
        }
        (Some(v), None) => Some(
            v.to_str()
                .ok()
                .and_then(|s| super::extract::position_digits::<u64>(s.trim()).ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a global position"))?,
        ),
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    let long = match LongStream::open(&state, principal, &extensions) {
        Ok(long) => long,
        Err(refused) => return Ok(*refused),
    };
    let LongStream {
        slots,
        stop,
        request_id,
    } = long;
    let events = incidentlog_store::subscribe(state.service.store().clone(), after)
        // `ended`: the feed failed and said so; nothing follows.
        .scan(false, move |ended, item| {
            // The permits live as long as the stream: the slots free when the client goes.
            let _slots = &slots;
            let event = match item {
                _ if *ended => None,
                Ok(e) => {
                    let data = serde_json::to_string(&WireEvent(&e)).unwrap_or_default();
                    let event = Event::default().id(e.global_position.to_string());
                    // Types are checked when appended, but the store does not know them: a
                    // record edited on disk (or a row another program wrote) could hold a line
                    // break, on which axum's `event` panics. Such an event goes unnamed (its
                    // data still carries the type).
                    let event = if e.event_type.contains(['\r', '\n']) {
                        event
                    } else {
                        event.event(e.event_type.as_str())
                    };
                    Some(event.data(data))
                }
                // The feed cannot go on (a damaged record, a store gone): a last `problem`
                // event says so (the stream then ends), so that it does not look as if the
                // log ended there. (Cutting the transfer instead could lose the event with
                // the head, unflushed.) The cause is the server log's, under the request id.
                Err(e) => {
                    tracing::error!(request_id = %request_id, error = %e, "live feed ended by a store error");
                    *ended = true;
                    let problem = ApiError::Internal(String::new()).problem();
                    Some(
                        Event::default()
                            .event("problem")
                            .data(serde_json::to_string(&problem).unwrap_or_default()),
                    )
                }
            };
            futures_util::future::ready(event.map(Ok::<_, std::convert::Infallible>))
        })
        .take_until(stop);
    let sse = Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(state.config.sse_heartbeat)
            .text("heartbeat"),
    );
    Ok(sse.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SummaryParams {
    from: Option<String>,
    to: Option<String>,
    as_of: Option<String>,
    #[serde(default, deserialize_with = "super::extract::digits")]
    at_position: Option<u64>,
}

fn window(q: &SummaryParams) -> Result<Window, ApiError> {
    super::query::window(q.from.as_deref(), q.to.as_deref())
}

/// Whose long reads of the views take turns together (`AppService::off_workers`): the
/// token's, or an anonymous caller's address share's, as the other per-client shares.
fn caller(principal: &Principal, extensions: &axum::http::Extensions) -> String {
    Client::of_request(principal, extensions).to_string()
}

/// Summaries of every region with incidents.
#[utoipa::path(
    get, path = "/v1/regions", tag = "views",
    params(
        ("from" = Option<String>, Query, description = "occurred_at window start (date or RFC 3339, inclusive)"),
        ("to" = Option<String>, Query, description = "occurred_at window end (inclusive)"),
        ("as_of" = Option<String>, Query, description = "RFC 3339 knowledge time"),
        ("at_position" = Option<u64>, Query, description = "Global position (clamped to the head)")
    ),
    responses(
        (status = 200, description = "One summary per region with incidents", body = wire::RegionListDoc),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn regions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    extensions: axum::http::Extensions,
    ApiQuery(q): ApiQuery<SummaryParams>,
) -> Result<Response, ApiError> {
    let caller = caller(&principal, &extensions);
    cached_summary(
        &state,
        &caller,
        "*".to_string(),
        q,
        |service, window, at| {
            let (regions, position) = service.region_summaries_at(window, at);
            #[derive(Serialize)]
            struct Body<T> {
                regions: T,
            }
            Ok((to_json(&Body { regions })?, position))
        },
    )
    .await
}

/// Serves a summary body for `scope` from the per-position cache, or computes it with
/// `compute(service, window, at_position)` off the runtime's workers (all regions at a past
/// position take ~30 ms) and caches it: one path for one region and for all.
async fn cached_summary(
    state: &AppState,
    caller: &str,
    scope: String,
    q: SummaryParams,
    compute: impl FnOnce(
            &crate::service::AppService,
            &Window,
            Option<u64>,
        ) -> Result<(axum::body::Bytes, u64), ApiError>
        + Send
        + 'static,
) -> Result<Response, ApiError> {
    let window = window(&q)?;
    let at = state
        .service
        .resolve(as_of(q.as_of.as_deref(), q.at_position)?)
        .await?;
    let key = (scope, q.from, q.to, at);
    let generation = state.service.views_generation();
    if let Some(body) = state
        .summaries
        .get(&key, state.service.applied_position(), generation)
    {
        return Ok(json_bytes(body));
    }
    let (body, position) = state
        .service
        .off_workers(caller, move |service| compute(service, &window, at))
        .await??;
    state.summaries.put(key, position, generation, body.clone());
    Ok(json_bytes(body))
}

/// The summary of one region.
#[utoipa::path(
    get, path = "/v1/regions/{code}", tag = "views",
    params(
        ("code" = String, Path, description = "ISO 3166-2 subdivision code, e.g. UA-63"),
        ("from" = Option<String>, Query, description = "occurred_at window start (date or RFC 3339, inclusive)"),
        ("to" = Option<String>, Query, description = "occurred_at window end (inclusive)"),
        ("as_of" = Option<String>, Query, description = "RFC 3339 knowledge time"),
        ("at_position" = Option<u64>, Query, description = "Global position (clamped to the head)")
    ),
    responses(
        (status = 200, description = "The summary", body = wire::RegionSummaryDoc),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Valid code, nothing recorded", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an ISO 3166-2 code", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn region(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    extensions: axum::http::Extensions,
    ApiPath(code): ApiPath<String>,
    ApiQuery(q): ApiQuery<SummaryParams>,
) -> Result<Response, ApiError> {
    let region = Region::parse(&code).map_err(|m| ApiError::Unprocessable {
        detail: format!("/code: {m}"),
        errors: vec![crate::error::field_error("/code", m)].into(),
    })?;
    let caller = caller(&principal, &extensions);
    cached_summary(
        &state,
        &caller,
        region.code().to_string(),
        q,
        move |service, window, at| {
            let (summary, position) = service.region_summary_at(&region, window, at);
            let summary = summary.ok_or_else(|| {
                ApiError::NotFound(format!("nothing recorded for region {}", region.code()))
            })?;
            Ok((to_json(&summary)?, position))
        },
    )
    .await
}

// ---- admin ----

/// Rebuild every view from the log into a fresh projection and swap it in.
#[utoipa::path(
    post, path = "/v1/admin/replay", tag = "admin",
    responses(
        (status = 200, description = "Events folded, time taken, digest of the rebuilt views", body = ReplayResponse),
        (status = 403, description = "Not admin", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn admin_replay(
    State(state): State<AppState>,
    ApiQuery(_): ApiQuery<NoParams>,
) -> Result<Response, ApiError> {
    let r = state.service.replay_live().await?;
    Ok(json(
        StatusCode::OK,
        &ReplayResponse {
            events: r.events,
            duration_ms: r.duration_ms,
            digest: r.digest,
        },
    ))
}

/// The digest of the live views and the position they include: a replay of the log up to
/// that position (`POST /v1/admin/replay`, `incidentlog replay --at-position`) must give the
/// same digest.
#[utoipa::path(
    get, path = "/v1/admin/digest", tag = "admin",
    responses(
        (status = 200, description = "Digest of the live views", body = DigestResponse),
        (status = 403, description = "Not admin", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn admin_digest(
    State(state): State<AppState>,
    ApiQuery(_): ApiQuery<NoParams>,
) -> Result<Response, ApiError> {
    let (position, digest) = state.service.live_digest().await?;
    Ok(json(StatusCode::OK, &DigestResponse { position, digest }))
}

/// Check every record's checksum and the hash chain. A damaged log answers 200 with
/// `ok: false` and what is damaged where.
#[utoipa::path(
    get, path = "/v1/admin/verify", tag = "admin",
    responses(
        (status = 200, description = "The result of the check", body = VerifyResponse),
        (status = 403, description = "Not admin", body = Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn admin_verify(
    State(state): State<AppState>,
    ApiQuery(_): ApiQuery<NoParams>,
) -> Result<Response, ApiError> {
    let body = match state.service.verify().await {
        Ok(r) => VerifyResponse {
            ok: true,
            events: r.events,
            head_hash: Some(incidentlog_store::to_hex(&r.head_hash)),
            error: None,
        },
        Err(
            e @ (incidentlog_store::StoreError::Corrupt { .. }
            | incidentlog_store::StoreError::Io(_)),
        ) => VerifyResponse {
            ok: false,
            events: 0,
            head_hash: None,
            error: Some(e.to_string()),
        },
        Err(e) => return Err(e.into()),
    };
    Ok(json(StatusCode::OK, &body))
}

// ---- ops ----

/// `position` is read after the views include every acknowledged append, like any view read.
async fn health(state: &AppState) -> HealthResponse {
    // A probe answers promptly (an orchestrator's probe gives up after 1 s by default): at
    // most a short wait for the views to include what was acknowledged, so that `position`
    // counts it, and for the integrity check after start, which is done in a moment on a
    // small log (a probe right after the start sees `ok`) but may take seconds on a large
    // one (`starting` until it is done).
    let _ = tokio::time::timeout(HEALTH_WAIT, async {
        state.service.caught_up().await;
        state.service.integrity_checked().await;
    })
    .await;
    HealthResponse {
        status: state.service.readiness(),
        position: state.service.applied_position(),
        head: state.service.store_head(),
    }
}

/// Longest wait of `/healthz` and `/readyz` for the live views to reach the head.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "Alive", body = HealthResponse)))]
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let mut h = health(&state).await;
    h.status = "ok";
    json(StatusCode::OK, &h)
}

/// Readiness: the store takes appends and the views have caught up with the log seen at start.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = HealthResponse),
        (status = 503, description = "Not ready: `status` is `starting` (catching up), `closing` (shutting down) or `unavailable` (the file store refuses appends until restarted, or the database cannot be reached for now)", body = HealthResponse)
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let h = health(&state).await;
    let status = if h.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &h)
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    state.http_metrics.render(&mut out);
    state.service.metrics().render(&mut out);
    let sse_max = state
        .config
        .max_sse_clients
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    let sse = sse_max - state.sse_slots.available_permits().min(sse_max);
    let head = state.service.store_head();
    let applied = state.service.applied_position();
    for (name, help, kind, v) in [
        (
            "incidentlog_sse_subscribers",
            "Connected SSE clients.",
            "gauge",
            sse as u64,
        ),
        (
            "incidentlog_events_total",
            "Events in the log (durable head position; never goes down).",
            "counter",
            head,
        ),
        (
            "incidentlog_projection_position",
            "Last position applied to the live views.",
            "gauge",
            applied,
        ),
        (
            "incidentlog_projection_lag_events",
            "Events durable but not yet in the live views.",
            "gauge",
            head.saturating_sub(applied),
        ),
        (
            "incidentlog_requests_in_flight",
            "Requests being handled (SSE not counted).",
            "gauge",
            (state
                .config
                .max_concurrent_requests
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
                .saturating_sub(state.in_flight.available_permits())) as u64,
        ),
    ] {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    if let Some(file) = state.service.file_store() {
        use std::fmt::Write as _;
        // Events per batch is the group-commit factor (one write, and with strict
        // durability one fdatasync, per batch); repeats read from the disk are disk reads on
        // the append path (events whose pages left the cache).
        let (batches, events) = file.write_stats();
        let (cached, from_disk) = file.repeat_read_stats();
        let _ = writeln!(
            out,
            "# HELP incidentlog_store_batches_total Write batches of the file store since open (one write and, strict, one fdatasync each).\n\
             # TYPE incidentlog_store_batches_total counter\nincidentlog_store_batches_total {batches}\n\
             # HELP incidentlog_store_batched_events_total Events written in those batches.\n\
             # TYPE incidentlog_store_batched_events_total counter\nincidentlog_store_batched_events_total {events}\n\
             # HELP incidentlog_store_repeat_reads_total Recorded copies of repeated event ids the file store's writer read to compare, by where it found them.\n\
             # TYPE incidentlog_store_repeat_reads_total counter\n\
             incidentlog_store_repeat_reads_total{{from=\"page_cache\"}} {cached}\n\
             incidentlog_store_repeat_reads_total{{from=\"disk\"}} {from_disk}\n\
             # HELP incidentlog_store_write_seconds Time of one write batch of the file store: its write and, with strict durability, its fdatasync (the sync latency).\n\
             # TYPE incidentlog_store_write_seconds histogram"
        );
        state.service.metrics().store_write_seconds.render(
            &mut out,
            "incidentlog_store_write_seconds",
            "",
        );
    }
    let mut r = out.into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi() -> Response {
    let mut r = crate::openapi_json().into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
