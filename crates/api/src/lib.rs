//! The HTTP API of incidentlog: the application service (`service`), tokens (`auth`), and
//! the axum server (`serve`). The only crate that knows HTTP.
#![forbid(unsafe_code)]

pub mod auth;
mod error;
pub mod export;
mod http;
pub mod metrics;
pub mod service;
pub mod wire;

pub use error::{field_error, ApiError, Problem};
pub use http::{bind, router, serve, AllowedHost, AllowedOrigin, ServeConfig, ROUTES};

use utoipa::OpenApi as _;

/// The OpenAPI 3.1 document of the API, pretty-printed (as checked in at
/// `proto-docs/openapi.json`).
pub fn openapi_json() -> String {
    let doc = http::ApiDoc::openapi();
    let mut s = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
