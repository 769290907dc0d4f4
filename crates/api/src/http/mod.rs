//! The HTTP face of the service: routes, auth, limits, metrics, SSE, shutdown.

mod cache;
mod extract;
mod handlers;
mod metrics;
mod names;
mod query;
mod quota;
mod ratelimit;
mod stall;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Semaphore};

use crate::auth::{Lookup, Principal, Role};
use crate::error::{ApiError, InternalDetail};
use crate::service::AppService;

pub(crate) use handlers::ApiDoc;
pub use metrics::ROUTES;
use names::host_key;
pub use names::{AllowedHost, AllowedOrigin};

/// Server settings (flags and `INCIDENTLOG_*` variables of the binary map onto these).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Let anonymous GETs through (not `/v1/admin/*`).
    pub public_read: bool,
    /// Body limit of every request but the bulk import (bytes).
    pub body_limit: usize,
    /// Body limit of `POST /v1/events` (bytes).
    pub bulk_body_limit: usize,
    /// Time limit of reads (not SSE, not admin) and of receiving a request body. Appends are
    /// never cut off once handed to the store: an answer after the events are recorded must
    /// not be an error.
    pub request_timeout: Duration,
    /// Requests per second per token (anonymous: per client IP); 0 = no limit.
    pub rate_limit_per_sec: u32,
    /// Burst size of the rate limit; 0 = one second's worth.
    pub rate_limit_burst: u32,
    /// Concurrent SSE clients; more get 503.
    pub max_sse_clients: usize,
    /// Concurrent SSE streams of one token (anonymous readers: of one client address); more
    /// get 429, so that one client cannot take every slot of `max_sse_clients`.
    pub max_sse_per_client: usize,
    /// Requests handled at once (SSE not counted); more wait, up to `request_timeout`, then 503.
    pub max_concurrent_requests: usize,
    /// Requests one token (anonymous callers: one client address) may have in flight at once
    /// (SSE not counted); more get 429 at once, so that one client's slow uploads cannot hold
    /// every slot of `max_concurrent_requests`.
    pub max_concurrent_per_client: usize,
    /// Interval of SSE heartbeat comments.
    pub sse_heartbeat: Duration,
    /// Interval at which the token table is re-read from the store (revocations).
    pub token_refresh: Duration,
    /// Open connections at once; more are closed as soon as they are accepted (slow or idle
    /// clients cannot pile up without bound).
    pub max_connections: usize,
    /// Open connections from one client address at once; more are closed as soon as they are
    /// accepted, so that one address cannot fill `max_connections` (behind a reverse proxy,
    /// every client has the proxy's address: raise it there).
    pub max_connections_per_address: usize,
    /// Time a client has to send a complete request head (line and headers), counted from
    /// the first byte of the request on a kept-alive connection; then the connection is
    /// closed (slowloris).
    pub header_read_timeout: Duration,
    /// Time a client may keep its receive window shut (take nothing of its answer) or leave
    /// data unacknowledged before the kernel closes the connection (`TCP_USER_TIMEOUT`): a
    /// stalled live feed, ndjson log stream or large answer then gives back its slot and
    /// memory instead of holding them until shutdown.
    pub send_timeout: Duration,
    /// Origins of browser pages allowed to call the API (CORS), e.g.
    /// `https://dashboard.example.org`; `*` allows any. Empty: no CORS headers (browsers then
    /// let only same-origin pages read the answers).
    pub cors_origins: Vec<AllowedOrigin>,
    /// Host names (`Host` without its port) that requests without a token may use, besides
    /// IP addresses and `localhost` (and `*.localhost`), which are always allowed; `*`
    /// allows any. Empty: only those when `listen` is a loopback address, any name on other
    /// addresses. A page on another site whose name the attacker points at this address
    /// (DNS rebinding) sends its own name: without this check, under `--public-read` it
    /// could read the whole log of a server on a laptop. A request with a token passes
    /// whatever its `Host`: a page cannot hold one.
    pub allowed_hosts: Vec<AllowedHost>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_read: false,
            body_limit: 1024 * 1024,
            bulk_body_limit: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            max_sse_clients: 256,
            max_sse_per_client: 16,
            max_concurrent_requests: 1024,
            max_concurrent_per_client: 128,
            sse_heartbeat: Duration::from_secs(15),
            token_refresh: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            header_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl ServeConfig {
    /// The host names requests without a token may use besides IP addresses and
    /// `localhost` (lowercase, no trailing dot), or `None` for any name (see
    /// [`ServeConfig::allowed_hosts`]).
    pub fn anonymous_hosts(&self) -> Option<Vec<String>> {
        if self.allowed_hosts.is_empty() && !self.listen.ip().is_loopback() {
            return None;
        }
        self.allowed_hosts
            .iter()
            .map(|h| match h {
                AllowedHost::Any => None,
                AllowedHost::Name(name) => Some(name.clone()),
            })
            .collect()
    }
}

/// Whether `name` (a [`host_key`]) is one no DNS rebinding can send: an IP address (a page
/// is fetched from a name, or from its own server's address), or `localhost` and its
/// subdomains, which resolve to this machine alone (RFC 6761).
fn always_allowed_host(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// The host name a request names (HTTP/2's authority, else `Host`), without its port; `None`
/// when it names none (HTTP/1.0). A `Host` that is not text names no allowed host (`""`).
fn request_host(req: &Request) -> Option<String> {
    if let Some(host) = req.uri().host() {
        return Some(host_key(host));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        // None, or two: which one a proxy would act on is unknown (RFC 9112: a 400).
        return req.headers().contains_key(header::HOST).then(String::new);
    };
    let Ok(host) = host.to_str() else {
        return Some(String::new());
    };
    let name = match host.rsplit_once(':') {
        // `[::1]:8080`, `localhost:8080`; a bare IPv6 literal has no brackets to split on.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    Some(host_key(name))
}

/// Shared by every handler (one `Arc` clone per extractor, not one per field).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) struct Shared {
    pub service: AppService,
    pub config: Arc<ServeConfig>,
    pub http_metrics: Arc<metrics::HttpMetrics>,
    pub sse_slots: Arc<Semaphore>,
    /// Open SSE streams per client (`max_sse_per_client`).
    pub sse_per_client: quota::Quota<quota::Client>,
    /// Requests in flight per client (`max_concurrent_per_client`; SSE not counted).
    pub in_flight_per_client: quota::Quota<quota::Client>,
    pub in_flight: Arc<Semaphore>,
    /// Memory of the bulk bodies being read or imported (held whole until the import is
    /// answered), in `extract::BULK_MEMORY_UNIT`s: twice the bulk body limit.
    pub bulk_memory: Arc<Semaphore>,
    /// Bulk bodies per client: one (see `extract::NdjsonBody`).
    pub bulk_per_client: quota::Quota<quota::Client>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// [`ServeConfig::anonymous_hosts`], resolved once.
    pub anonymous_hosts: Option<Vec<String>>,
    /// Turns true when the server stops accepting: SSE streams end.
    pub stopping: watch::Receiver<bool>,
    pub summaries: cache::SummaryCache,
}

/// Bulk bodies' worth of memory held at once (bodies of the bulk limit): one being imported
/// (imports take turns anyway), one read ahead. Without a bound, the 1,024 concurrent requests
/// allowed could each hold a 64 MiB body: 64 GiB.
pub(crate) const BULK_BODIES_IN_MEMORY: usize = 2;

/// The router with every route and layer, for in-process use (tests); SSE streams end when
/// the service closes.
pub fn router(service: AppService, config: &ServeConfig) -> Router {
    let stopping = service.closing();
    Router::new().fallback_service(build_app(service, config, stopping))
}

/// The service a connection calls: the gate around the routes (and CORS around both).
type App = tower::util::BoxCloneSyncService<Request, Response, std::convert::Infallible>;

fn build_app(service: AppService, config: &ServeConfig, stopping: watch::Receiver<bool>) -> App {
    let state = AppState(Arc::new(Shared {
        service,
        config: Arc::new(config.clone()),
        http_metrics: Arc::new(metrics::HttpMetrics::default()),
        // Semaphores refuse more than MAX_PERMITS (a panic): larger limits mean "no limit".
        sse_slots: Arc::new(Semaphore::new(
            config.max_sse_clients.min(Semaphore::MAX_PERMITS),
        )),
        sse_per_client: quota::Quota::new(config.max_sse_per_client),
        in_flight_per_client: quota::Quota::new(config.max_concurrent_per_client),
        in_flight: Arc::new(Semaphore::new(
            config
                .max_concurrent_requests
                .clamp(1, Semaphore::MAX_PERMITS),
        )),
        bulk_memory: Arc::new(Semaphore::new(
            (BULK_BODIES_IN_MEMORY * config.bulk_body_limit.div_ceil(extract::BULK_MEMORY_UNIT))
                .clamp(1, Semaphore::MAX_PERMITS),
        )),
        bulk_per_client: quota::Quota::new(1),
        limiter: Arc::new(ratelimit::RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
        )),
        anonymous_hosts: config.anonymous_hosts(),
        stopping,
        summaries: cache::SummaryCache::default(),
    }));
    let routes = Router::new()
        .route(
            "/v1/incidents/{id}/events",
            post(handlers::append).get(handlers::incident_events),
        )
        .route("/v1/incidents/{id}", get(handlers::incident))
        .route("/v1/incidents", get(handlers::incidents))
        .route(
            "/v1/events",
            post(handlers::bulk_import)
                .layer(DefaultBodyLimit::max(config.bulk_body_limit))
                .get(handlers::log_page),
        )
        .route("/v1/events/stream", get(handlers::stream))
        .route("/v1/regions", get(handlers::regions))
        .route("/v1/regions/{code}", get(handlers::region))
        .route("/v1/admin/replay", post(handlers::admin_replay))
        .route("/v1/admin/verify", get(handlers::admin_verify))
        .route("/v1/admin/digest", get(handlers::admin_digest))
        .route("/openapi.json", get(handlers::openapi))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .with_state(state.clone());
    // The gate wraps the whole router, not each route (`Router::layer` would): routing adds
    // `Allow` to a route's responses after its layers ran, and a refused caller must not learn
    // which methods a path serves.
    // As a service of its own, not as a layer of an outer `Router` (one routing step and
    // one boxed future less per request).
    let app = tower::Layer::layer(&middleware::from_fn_with_state(state.clone(), gate), routes);
    match cors(&config.cors_origins) {
        Some(cors) => App::new(tower::Layer::layer(
            &middleware::from_fn_with_state(state, preflight),
            tower::Layer::layer(&cors, app),
        )),
        None => App::new(app),
    }
}

/// Around the CORS layer: a preflight it answers never reaches the gate, yet gets the gate's
/// headers (request id, nosniff, no-store) and is counted like any answer.
async fn preflight(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::OPTIONS {
        return next.run(req).await;
    }
    let started = Instant::now();
    let client_id = client_request_id(&req);
    let route = route_of(req.uri().path());
    let mut response = next.run(req).await;
    // The gate stamps every answer it gives: one without an id was the CORS layer's.
    if !response.headers().contains_key("x-request-id") {
        let request_id = client_id.unwrap_or_else(new_request_id);
        stamp(response.headers_mut(), request_id);
        state.http_metrics.observe(
            route,
            "OPTIONS",
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    response
}

/// The client's `x-request-id`, if it is one we can echo and log as it is (short, visible
/// ASCII without quotes or backslashes, which would break a log line's `key=value` form).
fn client_request_id(req: &Request) -> Option<HeaderValue> {
    req.headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 64 && !v.is_empty() && v.as_bytes().iter().copied().all(log_safe))
        .cloned()
}

/// A byte a log line can hold as it is: visible ASCII but for the quote and the backslash,
/// which would break its `key=value` form.
fn log_safe(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\\')
}

/// A request's target as its log lines show it: printable ASCII only (anything else, quotes,
/// backslashes and spaces percent-encoded, so that a path cannot forge or break a line), and
/// the values of query parameters that look like credentials (`?access_token=...`, a client
/// that put its token in the URL) replaced, so that no secret reaches the log.
fn loggable_target(uri: &axum::http::Uri) -> String {
    use std::fmt::Write as _;
    fn push_escaped(out: &mut String, s: &str) {
        for b in s.bytes() {
            if log_safe(b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    let mut out = String::with_capacity(uri.path().len() + 16);
    push_escaped(&mut out, uri.path());
    if let Some(query) = uri.query() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            push_escaped(&mut out, key);
            if pair.contains('=') {
                out.push('=');
                if looks_secret(key, value) {
                    out.push_str("REDACTED");
                } else {
                    push_escaped(&mut out, value);
                }
            }
        }
    }
    out
}

/// Whether a query parameter may hold a credential: by its name, or a value shaped like this
/// server's tokens.
fn looks_secret(key: &str, value: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "token", "secret", "password", "passwd", "auth", "key", "sig", "session", "bearer",
    ]
    .iter()
    .any(|word| key.contains(word))
        || value.starts_with("il_")
        || value.to_ascii_lowercase().starts_with("bearer")
}

/// The headers of every answer: its request id; JSON (or text) as labelled, never to be sniffed
/// into something else; and what a token may read is not for shared caches (the live feed
/// sets its own no-cache).
fn stamp(headers: &mut axum::http::HeaderMap, request_id: HeaderValue) {
    headers.insert("x-request-id", request_id);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// CORS for the browser pages of `cors_origins` (`*`: any page), outside the gate: a preflight
/// carries no token and is answered here, and every answer (a 401 or 429 too) says which pages
/// may read it. Tokens travel in `Authorization`, never in cookies, so no credentials mode.
fn cors(origins: &[AllowedOrigin]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.contains(&AllowedOrigin::Any) {
        AllowOrigin::any()
    } else {
        // Parsed to ASCII letters, digits and `:/.-[]`: each is a header value (were one
        // not, leaving it out would only narrow the list).
        AllowOrigin::list(origins.iter().filter_map(|o| match o {
            AllowedOrigin::Origin(o) => HeaderValue::from_str(o).ok(),
            AllowedOrigin::Any => None,
        }))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("incidentlog-last-event"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The role a request needs: admin for `/v1/admin/*` whatever the method, reporter for the
/// appends, reader for the rest. A method a route does not serve needs only a valid token: the
/// answer is the same 405 for every role (not a 403 that suggests a higher role would do).
fn required_role(method: &Method, path: &str, route: Option<&str>) -> Role {
    if path.starts_with("/v1/admin/") {
        Role::Admin
    } else if method == Method::POST
        && matches!(route, Some("/v1/incidents/{id}/events" | "/v1/events"))
    {
        Role::Reporter
    } else {
        Role::Reader
    }
}

/// Whether `--public-read` lets this request through without a token.
fn anonymous_ok(state: &AppState, method: &Method, path: &str) -> bool {
    state.config.public_read
        && (method == Method::GET || method == Method::HEAD)
        && !path.starts_with("/v1/admin/")
}

fn bearer(req: &Request) -> Option<Result<&str, ApiError>> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        // Which one would count? A proxy and this server might pick differently.
        return Some(Err(ApiError::Unauthorized(
            "more than one Authorization header".into(),
        )));
    }
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, secret) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()));
    Some(parsed)
}

/// What auth needs from a request, taken without holding the request (a `&Request` is not
/// `Send`, so it cannot live across an await).
struct Credentials {
    required: Role,
    anonymous_ok: bool,
    client_ip: Option<std::net::IpAddr>,
    /// `Ok` when the secret is in the loaded table, `Err(secret)` when it must be looked up.
    presented: Option<Result<Principal, String>>,
}

fn credentials(
    state: &AppState,
    req: &Request,
    route: Option<&str>,
) -> Result<Credentials, ApiError> {
    let required = required_role(req.method(), req.uri().path(), route);
    let anonymous_ok = anonymous_ok(state, req.method(), req.uri().path());
    let client_ip = quota::peer_address(req.extensions());
    let presented = match bearer(req) {
        None => None,
        Some(Err(e)) => return Err(e),
        Some(Ok(secret)) => Some(
            state
                .service
                .tokens()
                .find_secret(secret)
                .ok_or_else(|| secret.to_string()),
        ),
    };
    Ok(Credentials {
        required,
        anonymous_ok,
        client_ip,
        presented,
    })
}

/// Who is calling, and may they? `Err` is the response to send instead.
async fn authenticate(state: &AppState, creds: Credentials) -> Result<Principal, ApiError> {
    let Credentials {
        required,
        anonymous_ok,
        client_ip,
        presented,
    } = creds;
    let principal = match presented {
        None if anonymous_ok => Principal {
            name: None,
            role: Role::Reader,
        },
        None => return Err(ApiError::Unauthorized("a bearer token is required".into())),
        Some(Ok(p)) => p,
        // Not in the table as loaded: reload from the store (rate-limited; boxed, a large
        // future kept off the hot path).
        Some(Err(secret)) => {
            match Box::pin(state.service.tokens().check(state.service.store(), &secret)).await {
                Ok(Lookup::Valid(p)) => p,
                Ok(Lookup::Unknown) => {
                    return Err(ApiError::Unauthorized("unknown or revoked token".into()))
                }
                Err(e) => return Err(e),
            }
        }
    };
    if principal.role < required {
        return Err(ApiError::Forbidden(format!(
            "this needs the {required} role; the token has {}",
            principal.role
        )));
    }
    if state.limiter.enabled() {
        if let Err(retry_after_secs) = state
            .limiter
            .check(&quota::Client::of(&principal, client_ip))
        {
            return Err(ApiError::RateLimited {
                retry_after_secs,
                why: "rate limit exceeded",
            });
        }
    }
    Ok(principal)
}

/// [`authenticate`] of what [`credentials`] took from a request (taken before the first await:
/// see [`Credentials`]).
async fn authorized(
    state: &AppState,
    creds: Result<Credentials, ApiError>,
) -> Result<Principal, ApiError> {
    authenticate(state, creds?).await
}

/// A path no route serves: 404 for a caller with a valid token of any role (under
/// `/v1/admin/`: of the admin role), or for an anonymous GET under `--public-read`; otherwise
/// 401 like every API path (SPEC section 5:
/// without a token, 401 on everything but the ops endpoints), so the answer without a token
/// does not tell which paths exist.
async fn unknown_path(state: &AppState, req: Request, next: Next) -> Response {
    match authorized(state, credentials(state, &req, None)).await {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Auth, rate limit, concurrency limit (not SSE) and the read timeout (not SSE, not admin,
/// not appends) for the API routes.
async fn guarded(state: &AppState, route: &str, mut req: Request, next: Next) -> Response {
    let principal = match authorized(state, credentials(state, &req, Some(route))).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if route == "/v1/events/stream" {
        req.extensions_mut().insert(principal);
        return next.run(req).await;
    }
    // The client's own share first: one at its cap is told to slow down, and waits for no
    // server-wide slot that others need.
    let Some(client_share) = state
        .in_flight_per_client
        .take(quota::Client::of_request(&principal, req.extensions()))
    else {
        return ApiError::RateLimited {
            retry_after_secs: 1,
            why: "too many requests in flight for this token (or client address)",
        }
        .into_response();
    };
    req.extensions_mut().insert(principal);
    let timeout = state.config.request_timeout;
    let permit = match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            match tokio::time::timeout(timeout, state.in_flight.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => {
                    return ApiError::Unavailable("server busy; try again".into()).into_response()
                }
            }
        }
    };
    let is_read = (req.method() == Method::GET || req.method() == Method::HEAD)
        && !route.starts_with("/v1/admin/");
    let response = if is_read {
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::Unavailable("the request took too long".into()).into_response(),
        }
    } else {
        next.run(req).await
    };
    drop((permit, client_share));
    response
}

/// The route template of a path (metrics labels, which routes need a token), `None` for
/// unknown paths.
fn route_of(path: &str) -> Option<&'static str> {
    // The router serves no path that ends with a slash (`/healthz/`, `/v1/events//`): such a
    // path is unknown here too, or auth would judge it as the route it resembles (403 for a
    // reader's POST, 404 for a reporter's). (An empty segment inside, as in
    // `/v1/incidents//events`, is routed: an empty id, refused by the handler.)
    if path.len() > 1 && path.ends_with('/') {
        return None;
    }
    let mut it = path.split('/').skip(1);
    let parts = [it.next(), it.next(), it.next(), it.next(), it.next()];
    Some(match parts {
        [Some("v1"), Some("incidents"), Some(_), Some("events"), None] => {
            "/v1/incidents/{id}/events"
        }
        [Some("v1"), Some("incidents"), Some(_), None, _] => "/v1/incidents/{id}",
        [Some("v1"), Some("incidents"), None, ..] => "/v1/incidents",
        [Some("v1"), Some("events"), None, ..] => "/v1/events",
        [Some("v1"), Some("events"), Some("stream"), None, _] => "/v1/events/stream",
        [Some("v1"), Some("regions"), None, ..] => "/v1/regions",
        [Some("v1"), Some("regions"), Some(_), None, _] => "/v1/regions/{code}",
        [Some("v1"), Some("admin"), Some("replay"), None, _] => "/v1/admin/replay",
        [Some("v1"), Some("admin"), Some("verify"), None, _] => "/v1/admin/verify",
        [Some("v1"), Some("admin"), Some("digest"), None, _] => "/v1/admin/digest",
        [Some("healthz"), None, ..] => "/healthz",
        [Some("readyz"), None, ..] => "/readyz",
        [Some("metrics"), None, ..] => "/metrics",
        [Some("openapi.json"), None, ..] => "/openapi.json",
        _ => return None,
    })
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The request's id (`x-request-id`), in its extensions for the handlers.
#[derive(Clone)]
pub(crate) struct RequestId(pub HeaderValue);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}

/// A server-made request id: this process's random prefix and a counter (`3f9c01aa-17`), so
/// that ids do not repeat across restarts or between servers writing to one log store.
fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        if getrandom::fill(&mut bytes).is_err() {
            // No randomness: the start time tells processes apart well enough for logs.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
            bytes = nanos.to_le_bytes();
        }
        incidentlog_store::to_hex(&bytes)
    });
    let n = REQUEST_COUNTER.fetch_add(1, Relaxed);
    HeaderValue::from_str(&format!("{prefix}-{n}")).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Internal-error lines logged per second at most: a database that went away fails every
/// request alike (an audit counted 250,000 identical lines in 8 s of an outage). The rest are
/// counted, and the count goes with the next line logged.
const ERROR_LINES_PER_SEC: u32 = 10;

static ERROR_LINES: LineLimit = LineLimit::new(ERROR_LINES_PER_SEC);
/// The same for the other 5xx answers (a server busy or shutting down answers many alike).
static FAILED_LINES: LineLimit = LineLimit::new(ERROR_LINES_PER_SEC);

/// A budget of log lines per second.
struct LineLimit {
    per_sec: u32,
    /// (start of the current second, lines logged in it, lines suppressed since the last one
    /// logged).
    state: std::sync::Mutex<Option<(Instant, u32, u64)>>,
}

impl LineLimit {
    const fn new(per_sec: u32) -> LineLimit {
        LineLimit {
            per_sec,
            state: std::sync::Mutex::new(None),
        }
    }

    /// The lines suppressed since the last one logged, counted as reported.
    fn take_suppressed(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.as_mut().map_or(0, |(_, _, n)| std::mem::take(n))
    }

    /// Whether a line may be logged now: `Some(n)` with the lines suppressed before it.
    fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, suppressed) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *logged = 0;
        }
        if *logged >= self.per_sec {
            *suppressed += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(suppressed))
    }
}

/// The host a request names, when it may not go on with it (DNS rebinding): a request with a
/// token on a route that checks it goes on (a page cannot hold one: a made-up one gets 401
/// there); any other only with an allowed host, or none named (no browser sends that). The
/// ops endpoints check no token, so an `Authorization` header of any kind does not let a
/// request to them past.
fn foreign_host(state: &AppState, req: &Request, route: Option<&str>) -> Option<String> {
    let hosts = state.anonymous_hosts.as_ref()?;
    let checks_tokens = !matches!(route, Some("/healthz" | "/readyz" | "/metrics"));
    if checks_tokens && req.headers().contains_key(header::AUTHORIZATION) {
        return None;
    }
    request_host(req).filter(|name| !always_allowed_host(name) && !hosts.contains(name))
}

/// The one middleware (each `from_fn` layer clones the inner service per request, so there is
/// only one): request id, auth and limits for the API routes, metrics, logging of internal
/// errors with the request id.
async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let client_id = client_request_id(&req);
    let server_id = new_request_id();
    // Logged: the server's own id, which no client can make (a client's may repeat another
    // request's, or take the server's own form), then the client's, so that a search for
    // either finds the line. The answer echoes the client's id, or gives the server's.
    let logged_id = match &client_id {
        Some(client) => {
            HeaderValue::from_bytes(&[server_id.as_bytes(), b"/", client.as_bytes()].concat())
                .unwrap_or_else(|_| server_id.clone())
        }
        None => server_id.clone(),
    };
    let request_id = client_id.unwrap_or(server_id);
    // For what logs after the answer has started (a streamed answer's error).
    req.extensions_mut().insert(RequestId(logged_id.clone()));
    let route = route_of(req.uri().path());
    let method = req.method().clone();
    // Made loggable only when a line is written (the fields of a disabled level are never
    // evaluated).
    let uri = req.uri().clone();
    let foreign = foreign_host(&state, &req, route);
    let mut response = match route {
        _ if let Some(host) = foreign => ApiError::MisdirectedHost(format!(
            "this server answers requests without a token only for IP addresses, localhost \
             and the host names of --allowed-host, and {host:?} is not one: a page of another \
             site whose name points here must not read it (DNS rebinding)"
        ))
        .into_response(),
        // Ops endpoints are open.
        Some("/healthz" | "/readyz" | "/metrics") => next.run(req).await,
        None => unknown_path(&state, req, next).await,
        Some(route) => guarded(&state, route, req, next).await,
    };
    let status = response.status();
    if route == Some("/v1/incidents/{id}/events")
        && method == axum::http::Method::POST
        && matches!(status.as_u16(), 400 | 408 | 409 | 413 | 415 | 422)
    {
        state
            .service
            .metrics()
            .appends_rejected
            .fetch_add(1, Relaxed);
    }
    let rid = logged_id.to_str().unwrap_or("-");
    if let Some(InternalDetail(detail)) = response.extensions_mut().remove::<InternalDetail>() {
        match ERROR_LINES.allow() {
            Some(0) => {
                tracing::error!(request_id = %rid, %method, uri = %loggable_target(&uri), error = %detail, "internal error")
            }
            Some(suppressed) => tracing::error!(
                request_id = %rid, %method, uri = %loggable_target(&uri), error = %detail, suppressed,
                "internal error (and `suppressed` more since the last one logged)"
            ),
            None => {}
        }
    } else if status.is_server_error() && route != Some("/readyz") {
        // (A `/readyz` 503 is its answer, `starting` or `unavailable`, not a failure: a
        // probe polling through a long start or an outage must not fill the log.)
        match FAILED_LINES.allow() {
            Some(0) => tracing::warn!(
                request_id = %rid, %method, uri = %loggable_target(&uri), status = status.as_u16(), "request failed"
            ),
            Some(suppressed) => tracing::warn!(
                request_id = %rid, %method, uri = %loggable_target(&uri), status = status.as_u16(), suppressed,
                "request failed (and `suppressed` more since the last one logged)"
            ),
            None => {}
        }
    } else {
        tracing::debug!(
            request_id = %rid, %method, route = route.unwrap_or("-"), uri = %loggable_target(&uri),
            status = status.as_u16(), micros = started.elapsed().as_micros() as u64, "request"
        );
    }
    stamp(response.headers_mut(), request_id);
    state
        .http_metrics
        .observe(route, method.as_str(), status.as_u16(), started.elapsed());
    response
}

/// How long a shutdown waits, after its grace period, for the bulk imports it asked to stop
/// to answer (each stops at its next batch of lines, once its chunk in flight is durable).
const IMPORT_STOP_WAIT: Duration = Duration::from_secs(5);

/// What the accept loop leaves for the shutdown: the connection permits to wait for, and the
/// signal that ends the connections still open when the grace period is over.
struct Accepted {
    connections: Arc<tokio::sync::Semaphore>,
    limit: u32,
    closing: watch::Sender<Closing>,
}

/// The connections' view of the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    No,
    /// Finish the request in flight, then close.
    Gracefully,
    /// The grace period is over: close now.
    Now,
}

/// Accepts connections until `shutdown` resolves, each served by hyper's HTTP/1.1 with a
/// header-read timeout, at most `max_connections` at once. Then tells every connection to
/// finish its request in flight and close.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: App,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Accepted {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Service;

    let limit = u32::try_from(config.max_connections.clamp(1, 1 << 20)).unwrap_or(1 << 20);
    let connections = Arc::new(tokio::sync::Semaphore::new(limit as usize));
    let per_address = quota::Quota::new(config.max_connections_per_address);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let (closing_tx, closing_rx) = watch::channel(Closing::No);
    let mut refused = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match per_address.take(quota::share_address(peer.ip())) {
            None => Err((
                "too many open connections from this address",
                config.max_connections_per_address,
            )),
            Some(share) => match connections.clone().try_acquire_owned() {
                Ok(permit) => Ok((permit, share)),
                Err(_) => Err(("too many open connections", limit as usize)),
            },
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err((why, limit)) => {
                drop(stream);
                // One line per second at most: a flood must not become a log flood.
                refused += 1;
                if last_refusal_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(%peer, limit, refused, "connections refused: {why}");
                    last_refusal_log = Some(Instant::now());
                    refused = 0;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(req.map(axum::body::Body::new))
            });
        stall::set_send_timeout(&stream, config.send_timeout);
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    match r {
                        Err(e) if stall::is_send_timeout(&e) => {
                            tracing::info!(%peer, "connection closed: {}", stall::CUT);
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        Ok(()) => {}
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c != Closing::No) => {}
            }
            // Finish the request in flight (if any), then close; unless the shutdown's grace
            // runs out first (a client that stopped reading would hold it forever).
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing.wait_for(|c| *c == Closing::Now) => {}
            }
        });
    }
    drop(listener);
    closing_tx.send_replace(Closing::Gracefully);
    Accepted {
        connections,
        limit,
        closing: closing_tx,
    }
}

/// Binds `config.listen`: done before the first admin token is made and the views are built,
/// so that a taken port fails the start before either happens. Connections wait in the
/// backlog until [`serve`] accepts them.
pub async fn bind(config: &ServeConfig) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot listen on {}: {e}", config.listen)))
}

/// Serves on `listener` (from [`bind`]) until `shutdown` resolves; then stops accepting, ends
/// SSE streams, finishes the requests in flight, closes the store (sync) and returns. Prints
/// `listening on http://ADDR` on stdout once it accepts.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: AppService,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::Internal(format!("local address: {e}")))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = build_app(service.clone(), &config, stop_rx);

    // Revocations and tokens made elsewhere take effect without a restart.
    let refresher = {
        let service = service.clone();
        let every = config.token_refresh.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A failure is logged by the table, once until the tokens read again.
                let _ = service.tokens().reload(service.store()).await;
            }
        })
    };

    // Lines the per-second limit left out are counted in the next line logged; when none
    // comes, a summary says how many.
    let log_summaries = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let errors = ERROR_LINES.take_suppressed();
            if errors > 0 {
                tracing::error!(suppressed = errors, "internal errors not logged one by one");
            }
            let failed = FAILED_LINES.take_suppressed();
            if failed > 0 {
                tracing::warn!(suppressed = failed, "failed requests not logged one by one");
            }
        }
    });

    tracing::info!(%addr, "listening");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    let result = accept_loop(listener, app, &config, shutdown).await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    stop_tx.send_replace(true);
    // Every connection task holds one permit: all of them back means all connections ended.
    // Requests get the request timeout to finish; a connection still open after it (a client
    // that stopped reading its answer or its live feed) is closed. Appends already handed to
    // the store are answered by then or not at all, and the store's close below still waits
    // for each of them to be durable.
    let all_ended_within = |wait| {
        let connections = result.connections.clone().acquire_many_owned(result.limit);
        async move { tokio::time::timeout(wait, connections).await.ok() }
    };
    let mut ended = all_ended_within(config.request_timeout).await;
    // A bulk import longer than the grace period stops at its next batch of lines and answers
    // 503 with where it stopped: a moment more for that answer.
    if ended.is_none() && service.stop_imports() {
        tracing::info!("bulk imports still running; asking them to stop and answer");
        ended = all_ended_within(IMPORT_STOP_WAIT).await;
    }
    let _all = match ended {
        Some(all) => all,
        None => {
            let open = result.limit as usize - result.connections.available_permits();
            tracing::warn!(
                open,
                "connections still open after the shutdown's grace period; closing them"
            );
            result.closing.send_replace(Closing::Now);
            result
                .connections
                .clone()
                .acquire_many_owned(result.limit)
                .await
        }
    };
    refresher.abort();
    log_summaries.abort();
    close_telling_while_it_waits(&service).await?;
    tracing::info!("store closed; bye");
    Ok(())
}

/// Closes the store (its last appends made durable), saying every [`CLOSE_WAIT_LOG`] that it
/// still waits, and why when the store knows (a write or sync that has not returned): an
/// operator facing a silent shutdown cannot tell a hung disk from a hung server.
async fn close_telling_while_it_waits(service: &AppService) -> Result<(), ApiError> {
    let close = service.close();
    tokio::pin!(close);
    let started = Instant::now();
    loop {
        match tokio::time::timeout(CLOSE_WAIT_LOG, &mut close).await {
            Ok(result) => return result,
            Err(_) => tracing::warn!(
                waited_secs = started.elapsed().as_secs(),
                store = service.unavailable_reason().as_deref().unwrap_or("busy"),
                "still closing the store (its last appends are not yet durable); a second \
                 SIGTERM or SIGINT quits without waiting"
            ),
        }
    }
}

/// How often a store's close that takes long is reported.
const CLOSE_WAIT_LOG: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_target_is_printable_ascii_without_secrets() {
        let logged = |target: &str| loggable_target(&target.parse().unwrap());
        assert_eq!(
            logged("/v1/regions/UA-63?as_of=2026-01-05T00:00:00Z&limit=5"),
            "/v1/regions/UA-63?as_of=2026-01-05T00:00:00Z&limit=5"
        );
        // A client that put its token in the URL: the value never reaches the log.
        assert_eq!(
            logged("/v1/regions?access_token=il_feedface&x=1"),
            "/v1/regions?access_token=REDACTED&x=1"
        );
        assert_eq!(logged("/v1/events?t=il_cafe"), "/v1/events?t=REDACTED");
        assert_eq!(
            logged("/v1/events?Api-Key=abc"),
            "/v1/events?Api-Key=REDACTED"
        );
        // Bytes that could break or forge a line: percent-encoded.
        // (The parser takes raw UTF-8 in a path, as hyper hands it over.)
        let uri = axum::http::Uri::try_from("/v1/x\u{2028}\u{202e}y".as_bytes()).unwrap();
        assert_eq!(loggable_target(&uri), "/v1/x%E2%80%A8%E2%80%AEy");
        assert_eq!(logged("/v1/a%20b?q=%22"), "/v1/a%20b?q=%22");
    }

    #[test]
    fn internal_error_lines_are_limited_per_second_and_the_rest_counted() {
        let limit = LineLimit::new(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let first: Vec<_> = (0..5).map(|i| limit.allow_at(at(i))).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next second: the count of what was left out goes with its first line.
        assert_eq!(limit.allow_at(at(1000)), Some(2));
        assert_eq!(limit.allow_at(at(1001)), Some(0));
        // ... or, when no line comes, with the summary the server logs every second.
        for i in 2..6 {
            limit.allow_at(at(1000 + i));
        }
        assert_eq!(limit.take_suppressed(), 3);
        assert_eq!(limit.take_suppressed(), 0);
        assert_eq!(limit.allow_at(at(2000)), Some(0));
    }
}
