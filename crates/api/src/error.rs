//! The one error type of the api crate, rendered as RFC 9457 `application/problem+json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use incidentlog_projections::{FieldError, Problems, ProjectionError};
use incidentlog_store::StoreError;
use serde::Serialize;
use uuid::Uuid;

/// Everything the service and the HTTP layer can answer with instead of a success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, query or path.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 401: no token, unknown token or revoked token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's role is too low.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown incident, region or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: known route, other method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: version conflict (`expected` is the client's expectation, `actual` the stream's
    /// version) or event id reuse with other content (`event_id`, `position` set too).
    #[error("{detail}")]
    Conflict {
        detail: String,
        expected: serde_json::Value,
        actual: u64,
        event_id: Option<Uuid>,
        position: Option<u64>,
    },
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 421: a request without a token named a host this server does not answer for (DNS
    /// rebinding).
    #[error("{0}")]
    MisdirectedHost(String),
    /// 422: an invalid event or parameter, one pointer per problem.
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        /// The first problems, and how many there were.
        errors: Problems,
    },
    /// 429 with `Retry-After` (whole seconds, at least 1); `why` is the detail.
    #[error("{why}")]
    RateLimited {
        retry_after_secs: u64,
        why: &'static str,
    },
    /// 503: the server cannot take the request now (shutting down, busy); the detail is for
    /// the client.
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After` (whole seconds): the server is at a bound that frees soon; `why`
    /// is the detail.
    #[error("{why}")]
    Busy {
        retry_after_secs: u64,
        why: &'static str,
    },
    /// 503: the store failed (a write, the database). The cause is logged with the request id,
    /// never shown (the CLI, whose user runs the store, prints it); `during` says what the
    /// client needs to know (a bulk import: the line, and how much landed before it).
    #[error("store unavailable{during}: {cause}")]
    StoreUnavailable { during: String, cause: String },
    /// 503 with `Retry-After`: a bulk import stopped between lines because the server is
    /// shutting down and its grace period is over; `during` says where, and how much landed.
    #[error(
        "the server is shutting down: the import stopped{during}; send the body again once the \
         server is back (the lines already recorded are recognized as repeats)"
    )]
    ShuttingDown { during: String },
    /// 500: logged with the request id, never shown.
    #[error("internal error: {0}")]
    Internal(String),
    /// 500 as [`ApiError::Internal`]: a stored record failed its checks (the log is damaged;
    /// the CLI exits 3 on it).
    #[error("{0}")]
    DamagedLog(String),
}

/// `Retry-After` of an import stopped by a shutdown: about a restart's time.
const SHUTDOWN_RETRY_SECS: u64 = 5;

/// One problem with one field of a request.
pub fn field_error(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        message: message.into(),
    }
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A 400 for one bad field: `detail` is "POINTER: MESSAGE".
    pub fn bad_request_at(e: FieldError) -> Self {
        ApiError::BadRequest {
            detail: format!("{}: {}", e.pointer, e.message),
            errors: vec![e],
        }
    }

    pub fn bad_field(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadRequest {
            detail: message.clone(),
            errors: vec![field_error(pointer, message)],
        }
    }

    /// A 422. The detail names the first few problems too, so that a bulk report (whose
    /// lines carry the same detail) reads on its own.
    pub fn invalid(errors: impl Into<Problems>) -> Self {
        const NAMED: usize = 3;
        let errors = errors.into();
        let named = |e: &FieldError| format!("{}: {}", e.pointer, e.message);
        let detail = match (errors.kept(), errors.len()) {
            ([one], 1) => named(one),
            (many, total) => {
                let first: Vec<String> = many.iter().take(NAMED).map(named).collect();
                let more = match total.saturating_sub(NAMED) {
                    0 => String::new(),
                    n => format!("; and {n} more"),
                };
                format!("{total} problems: {}{more}", first.join("; "))
            }
        };
        ApiError::Unprocessable { detail, errors }
    }

    /// Keeps only the first `n` field problems (their count stays): a bulk report lists a
    /// few per line, and thousands of rejected lines may wait to be reported.
    pub fn keep_first_field_errors(&mut self, n: usize) {
        match self {
            ApiError::BadRequest { errors, .. } => errors.truncate(n),
            ApiError::Unprocessable { errors, .. } => errors.keep_first(n),
            _ => {}
        }
    }

    /// How many field problems there were, listed or not.
    pub fn field_errors_total(&self) -> usize {
        match self {
            ApiError::Unprocessable { errors, .. } => errors.len(),
            other => other.field_errors().len(),
        }
    }

    /// The per-field problems (400 and 422), as the problem document lists them.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ApiError::BadRequest { errors, .. } => errors,
            ApiError::Unprocessable { errors, .. } => errors.kept(),
            _ => &[],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_)
            | ApiError::StoreUnavailable { .. }
            | ApiError::ShuttingDown { .. }
            | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::DamagedLog(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text shown to clients (internal details never are).
    pub fn public_detail(&self) -> String {
        match self {
            ApiError::Internal(_) | ApiError::DamagedLog(_) => {
                "internal error; see the server log for this request id".into()
            }
            ApiError::StoreUnavailable { during, .. } => format!(
                "store unavailable{during}; try again later (the server log has the cause under \
                 this request id)"
            ),
            other => other.to_string(),
        }
    }

    /// Renders the problem document (status, body) without the HTTP wrapping.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let (errors, expected, actual, event_id, position) = match self {
            ApiError::BadRequest { .. } | ApiError::Unprocessable { .. } => (
                self.field_errors()
                    .iter()
                    .take(MAX_LISTED_ERRORS)
                    .cloned()
                    .collect(),
                None,
                None,
                None,
                None,
            ),
            ApiError::Conflict {
                expected,
                actual,
                event_id,
                position,
                ..
            } => (
                Vec::new(),
                Some(expected.clone()),
                Some(*actual),
                *event_id,
                *position,
            ),
            _ => (Vec::new(), None, None, None, None),
        };
        let slug = match status.as_u16() {
            400 => "bad-request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not-found",
            405 => "method-not-allowed",
            408 => "request-timeout",
            409 => "conflict",
            413 => "payload-too-large",
            415 => "unsupported-media-type",
            421 => "misdirected-request",
            422 => "invalid",
            429 => "rate-limited",
            503 => "unavailable",
            _ => "internal",
        };
        let total = self.field_errors_total();
        Problem {
            problem_type: format!("https://incidentlog.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.public_detail(),
            errors_total: (total > errors.len()).then_some(total),
            errors,
            expected,
            actual,
            event_id,
            position,
        }
    }
}

/// Most field problems one answer lists (`errors_total` counts them all).
pub const MAX_LISTED_ERRORS: usize = 100;

/// RFC 9457 problem details, as every error response carries them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// One entry per bad field: a JSON pointer into the request and a message.
    #[schema(value_type = Vec<crate::wire::FieldErrorDoc>)]
    pub errors: Vec<FieldError>,
    /// How many problems there were, when `errors` lists only the first
    /// [`MAX_LISTED_ERRORS`] (a body of 200,000 bad fields must not get a 17 MB answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_total: Option<usize>,
    /// 409 only: the version the client expected (integer or "any").
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::wire::expected_version_schema)]
    pub expected: Option<serde_json::Value>,
    /// 409 only: the stream's actual version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// 409 for event id reuse: the reused id and where it is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// Carried in the response extensions of a 500 so the request-id middleware can log it.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Busy {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::ShuttingDown { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(SHUTDOWN_RETRY_SECS));
            }
            ApiError::Internal(detail) | ApiError::DamagedLog(detail) => {
                response
                    .extensions_mut()
                    .insert(InternalDetail(detail.clone()));
            }
            ApiError::StoreUnavailable { .. } => {
                response
                    .extensions_mut()
                    .insert(InternalDetail(self.to_string()));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => ApiError::Conflict {
                detail: format!(
                    "incident {stream_id} is at version {actual}, not the expected version"
                ),
                expected: crate::wire::expected_json(expected),
                actual,
                event_id: None,
                position: None,
            },
            StoreError::EventIdConflict { event_id, position } => ApiError::Conflict {
                detail: format!(
                    "event_id {event_id} is already recorded (position {position}) with other content"
                ),
                expected: serde_json::Value::Null,
                actual: 0,
                event_id: Some(event_id),
                position: Some(position),
            },
            StoreError::InvalidInput(msg) => ApiError::Unprocessable {
                detail: msg.clone(),
                errors: vec![field_error("/events", msg)].into(),
            },
            StoreError::Unavailable(cause) => ApiError::StoreUnavailable {
                during: String::new(),
                cause,
            },
            other @ StoreError::Corrupt { .. } => ApiError::DamagedLog(other.to_string()),
            other @ StoreError::Io(_) => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        ApiError::Internal(format!("stored event does not decode: {e}"))
    }
}
