//! Extractors whose rejections are problem+json like every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use futures_util::FutureExt;
use incidentlog_projections::Json;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::ApiError;

/// Which media types a body may have.
#[derive(Clone, Copy)]
pub enum Media {
    Json,
    Ndjson,
}

fn media_ok(req: &Request, media: Media) -> bool {
    let Some(ct) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    // JSON is UTF-8 (RFC 8259); a body declared in another charset would be misread.
    let other_charset = parts.any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            let v = v.trim().trim_matches('"');
            k.trim().eq_ignore_ascii_case("charset")
                && !v.eq_ignore_ascii_case("utf-8")
                && !v.eq_ignore_ascii_case("utf8")
        })
    });
    if other_charset {
        return false;
    }
    match media {
        Media::Json => {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        }
        Media::Ndjson => matches!(
            essence.as_str(),
            "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/x-jsonlines"
        ),
    }
}

/// 415 unless the request's content type is one `media` accepts.
fn check_media(req: &Request, media: Media) -> Result<(), ApiError> {
    if media_ok(req, media) {
        return Ok(());
    }
    let want = match media {
        Media::Json => "application/json",
        Media::Ndjson => "application/x-ndjson",
    };
    Err(ApiError::UnsupportedMediaType(format!(
        "expected Content-Type: {want} (UTF-8)"
    )))
}

/// 413 at once for a body whose declared `Content-Length` is over the limit: it is refused
/// before anything waits for it (a bulk slot, the body's bytes, the request timeout).
fn check_declared_length(req: &Request, state: &AppState, media: Media) -> Result<(), ApiError> {
    let limit = body_limit(state, media);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

fn body_limit(state: &AppState, media: Media) -> usize {
    match media {
        Media::Json => state.config.body_limit,
        Media::Ndjson => state.config.bulk_body_limit,
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("request body too large (limit {limit} bytes)"))
}

/// Reads the whole body within the request timeout; axum's body-limit rejection becomes 413.
/// The caller has checked the content type (`check_media`).
async fn read_body(req: Request, state: &AppState, media: Media) -> Result<Bytes, ApiError> {
    let mut read = std::pin::pin!(Bytes::from_request(req, state));
    // A small body usually arrives with the head: taken at once, it needs no timer (arming
    // and disarming one per request was ~1% of an append's CPU).
    let read = match read.as_mut().now_or_never() {
        Some(read) => read,
        None => tokio::time::timeout(state.config.request_timeout, read)
            .await
            .map_err(|_| {
                ApiError::RequestTimeout("the request body did not arrive in time".into())
            })?,
    };
    match read {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(too_large(body_limit(state, media)))
        }
        Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
    }
}

/// A JSON request body with `Content-Type: application/json` (415), within the body limit
/// (413); [`JsonBody::parse`] checks its syntax (400). The bytes are kept so that the parsed
/// tree can borrow its strings from them.
pub struct JsonBody(pub Bytes);

impl JsonBody {
    pub fn parse(&self) -> Result<Json<'_>, ApiError> {
        Json::from_slice(&self.0).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_media(&req, Media::Json)?;
        check_declared_length(&req, state, Media::Json)?;
        read_body(req, state, Media::Json).await.map(JsonBody)
    }
}

/// An NDJSON request body, with the bulk slot it holds until dropped (so a bulk body is read
/// only when one of `BULK_BODIES_IN_MEMORY` slots is free, and kept counted until answered),
/// and its client's share of them: one at a time per token (anonymous: per address), so that
/// one client trickling uploads cannot keep every other client's import waiting.
pub struct NdjsonBody(pub Bytes, pub BulkSlot);

/// The slots a bulk body holds while it is read and imported.
pub struct BulkSlot {
    _server: tokio::sync::OwnedSemaphorePermit,
    _client: super::quota::Held<super::quota::Client>,
}

impl FromRequest<AppState> for NdjsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A wrong content type is answered at once, not after waiting for a slot.
        check_media(&req, Media::Ndjson)?;
        check_declared_length(&req, state, Media::Ndjson)?;
        let address = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|axum::extract::ConnectInfo(addr)| addr.ip());
        // The gate puts the caller in every API request (bulk imports need a token).
        let client = match req.extensions().get::<crate::auth::Principal>() {
            Some(principal) => super::quota::Client::of(principal, address),
            None => super::quota::Client::Anonymous,
        };
        let Some(client) = state.bulk_per_client.take(client) else {
            return Err(ApiError::RateLimited {
                retry_after_secs: 1,
                why: "one bulk import at a time per token (or client address): send the next when this one is answered",
            });
        };
        let server = state
            .bulk_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        let slot = BulkSlot {
            _server: server,
            _client: client,
        };
        read_body(req, state, Media::Ndjson)
            .await
            .map(|body| NdjsonBody(body, slot))
    }
}

/// Query parameters; a malformed or unknown parameter is a 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r| query_error(&r.body_text()))
    }
}

/// A 400 for a query string that does not deserialize, with a pointer to the parameter when
/// axum's message names it (`Failed to deserialize query string: NAME: MESSAGE`, or serde's
/// "duplicate field `NAME`" / "unknown field `NAME`, expected ..."). Any name a client sent
/// (`after[]`, an empty one) gets its pointer, escaped as RFC 6901 says.
fn query_error(text: &str) -> ApiError {
    let plain = |name: &str| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let rest = text.strip_prefix("Failed to deserialize query string: ");
    let quoted = rest.and_then(|r| {
        ["duplicate field `", "unknown field `"]
            .iter()
            .find_map(|p| {
                let (name, _) = r.strip_prefix(p)?.split_once('`')?;
                Some((name, r))
            })
    });
    // "NAME: MESSAGE": a plain name, or one the message quotes back (so that a colon inside a
    // message is never taken for the end of a name).
    let named = quoted.or_else(|| {
        rest.and_then(|r| r.split_once(": "))
            .filter(|(name, message)| plain(name) || message.contains(&format!("`{name}`")))
    });
    match named {
        Some((name, message)) => {
            let pointer = format!("/{}", name.replace('~', "~0").replace('/', "~1"));
            ApiError::BadRequest {
                detail: format!("malformed query: {pointer}: {message}"),
                errors: vec![crate::error::field_error(pointer, message)],
            }
        }
        None => ApiError::bad_request(format!("malformed query: {text}")),
    }
}

/// Path parameters; a malformed one is a 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let rejection = match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => return Ok(ApiPath(p.0)),
            Err(r) => r.body_text(),
        };
        // Every route has one path parameter: point at it by name (`/id`, `/code`).
        let name = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|raw| {
                let mut keys = raw.iter().map(|(k, _)| k.to_string());
                match (keys.next(), keys.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            });
        Err(match name {
            Some(name) => ApiError::BadRequest {
                detail: format!("malformed path: /{name}: {rejection}"),
                errors: vec![crate::error::field_error(format!("/{name}"), rejection)],
            },
            None => ApiError::bad_request(format!("malformed path: {rejection}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(text: &str) -> Option<String> {
        match query_error(text) {
            ApiError::BadRequest { errors, .. } => errors.first().map(|e| e.pointer.clone()),
            _ => None,
        }
    }

    #[test]
    fn query_errors_point_at_the_parameter_whatever_its_name() {
        let p = "Failed to deserialize query string: ";
        assert_eq!(
            pointer(&format!("{p}limit: invalid digit found in string")),
            Some("/limit".into())
        );
        assert_eq!(
            pointer(&format!(
                "{p}unknown field `foo`, expected `after` or `limit`"
            )),
            Some("/foo".into())
        );
        assert_eq!(
            pointer(&format!(
                "{p}after[]: unknown field `after[]`, expected `after` or `limit`"
            )),
            Some("/after[]".into())
        );
        assert_eq!(
            pointer(&format!("{p}unknown field ``, expected `after` or `limit`")),
            Some("/".into())
        );
        assert_eq!(
            pointer(&format!("{p}unknown field `a/b~c`, expected `after`")),
            Some("/a~1b~0c".into())
        );
        // A colon inside a message is not the end of a name.
        assert_eq!(pointer(&format!("{p}expected a: b thing")), None);
    }
}
