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
/// before anything waits for it (room for a bulk body, the body's bytes, the request timeout).
fn check_declared_length(req: &Request, state: &AppState, media: Media) -> Result<(), ApiError> {
    let limit = body_limit(state, media);
    match declared_length(req) {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The body's `Content-Length`, if it declares a readable one.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
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

/// An NDJSON request body, with the memory it holds counted until dropped (the import is
/// answered), and its client's share: one bulk body at a time per token (anonymous: per
/// address).
///
/// Memory is counted by the bytes that have arrived (`Shared::bulk_memory`, twice the bulk
/// limit), not by bodies: a client trickling an upload holds only what it sent, so slow
/// uploads cannot keep other clients' imports waiting (with a count of two bodies, two
/// trickled uploads from two tokens kept every other import waiting for the request timeout,
/// again and again). A body starts being read once some memory is free (waiting holds
/// nothing); a body that needs more than is free half-way is answered 503 with `Retry-After`
/// at once, letting go of what it held, so that bodies never wait on each other's memory.
pub struct NdjsonBody(pub Bytes, pub BulkSlot);

/// The memory and the client's slot a bulk body holds while it is read and imported.
pub struct BulkSlot {
    _memory: Option<tokio::sync::OwnedSemaphorePermit>,
    _client: super::quota::Held<super::quota::Client>,
}

/// Units in which bulk memory is counted (`Shared::bulk_memory` permits).
pub(crate) const BULK_MEMORY_UNIT: usize = 1024;

impl FromRequest<AppState> for NdjsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A wrong content type is answered at once, not after waiting for a slot.
        check_media(&req, Media::Ndjson)?;
        check_declared_length(&req, state, Media::Ndjson)?;
        // The gate puts the caller in every API request (bulk imports need a token).
        let client = match req.extensions().get::<crate::auth::Principal>() {
            Some(principal) => super::quota::Client::of_request(principal, req.extensions()),
            None => super::quota::Client::Anonymous,
        };
        let Some(client) = state.bulk_per_client.take(client) else {
            return Err(ApiError::RateLimited {
                retry_after_secs: 1,
                why: "one bulk import at a time per token (or client address): send the next when this one is answered",
            });
        };
        let read = read_counted(req, state);
        let (body, memory) = tokio::time::timeout(state.config.request_timeout, read)
            .await
            .map_err(|_| {
                ApiError::RequestTimeout("the request body did not arrive in time".into())
            })??;
        let slot = BulkSlot {
            _memory: memory,
            _client: client,
        };
        Ok(NdjsonBody(body, slot))
    }
}

/// Reads a bulk body, counting its bytes against `bulk_memory` as they arrive (see
/// [`NdjsonBody`]); 413 past the bulk limit.
async fn read_counted(
    req: Request,
    state: &AppState,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    use futures_util::StreamExt;
    let limit = body_limit(state, Media::Ndjson);
    // The declared length is at most the limit (checked): room for it is only address
    // space until written. Not past 64 MiB, though: an operator may raise the limit far
    // beyond what can be reserved, and a client's Content-Length must not make the
    // reservation fail (an abort); a larger body grows the buffer as it arrives.
    let declared = declared_length(&req).map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    let mut body = Vec::with_capacity(declared.min(limit).min(64 << 20));
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut units = 0usize;
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        let need = (body.len() + chunk.len()).div_ceil(BULK_MEMORY_UNIT) - units;
        if need > 0 {
            let more = u32::try_from(need).map_err(|_| too_large(limit))?;
            let permit = match held {
                // Holding nothing yet: wait for room (FIFO), as the bodies before it go.
                None => state
                    .bulk_memory
                    .clone()
                    .acquire_many_owned(more)
                    .await
                    .ok(),
                // Holding some: never wait while holding (two bodies waiting for each other's
                // memory would wait for the request timeout).
                Some(_) => state.bulk_memory.clone().try_acquire_many_owned(more).ok(),
            };
            let Some(permit) = permit else {
                return Err(ApiError::Busy {
                    retry_after_secs: 1,
                    why: "bulk bodies in memory are at their bound; send this one again shortly",
                });
            };
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            units += need;
        }
        body.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(body), held))
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

/// A number in a query string (a position, a count): ASCII digits only. Rust's integer parse
/// also takes a leading `+` (`after=%2B5`), which is no position a client was ever given;
/// the same rule as for `Last-Event-ID` ([`position_digits`]).
pub(crate) fn digits<'de, D, N>(d: D) -> Result<Option<N>, D::Error>
where
    D: serde::Deserializer<'de>,
    N: std::str::FromStr,
    N::Err: std::fmt::Display,
{
    let text = <Option<String> as serde::Deserialize>::deserialize(d)?;
    text.map(|t| position_digits(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// `text` as a number of ASCII digits (no sign, no space).
pub(crate) fn position_digits<N>(text: &str) -> Result<N, String>
where
    N: std::str::FromStr,
    N::Err: std::fmt::Display,
{
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid digit found in string".to_owned());
    }
    text.parse::<N>().map_err(|e| e.to_string())
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
