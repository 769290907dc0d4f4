//! Request counts and latency histograms by route and status, lock-free.

use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::{Histogram, LATENCY_BUCKETS};

/// Every route template the router knows (as `MatchedPath` reports it), plus "other".
pub const ROUTES: &[&str] = &[
    "/v1/incidents/{id}/events",
    "/v1/incidents/{id}",
    "/v1/incidents",
    "/v1/events",
    "/v1/events/stream",
    "/v1/regions",
    "/v1/regions/{code}",
    "/v1/admin/replay",
    "/v1/admin/verify",
    "/v1/admin/digest",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "other",
];

const METHODS: &[&str] = &["GET", "POST", "HEAD", "other"];

/// Statuses the API answers with; anything else is counted under "other".
const STATUSES: &[u16] = &[
    200, 201, 400, 401, 403, 404, 405, 408, 409, 413, 415, 421, 422, 429, 500, 503, 0,
];

pub struct HttpMetrics {
    series: Vec<Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            series: (0..ROUTES.len() * METHODS.len() * STATUSES.len())
                .map(|_| Histogram::new(&LATENCY_BUCKETS))
                .collect(),
        }
    }
}

fn index_of<T: PartialEq + Copy>(list: &[T], v: T, fallback: usize) -> usize {
    list.iter().position(|x| *x == v).unwrap_or(fallback)
}

impl HttpMetrics {
    pub fn observe(&self, route: Option<&str>, method: &str, status: u16, latency: Duration) {
        let r = route.map_or(ROUTES.len() - 1, |r| index_of(ROUTES, r, ROUTES.len() - 1));
        let m = index_of(METHODS, method, METHODS.len() - 1);
        let s = index_of(STATUSES, status, STATUSES.len() - 1);
        let i = (r * METHODS.len() + m) * STATUSES.len() + s;
        if let Some(h) = self.series.get(i) {
            h.observe_duration(latency);
        }
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP incidentlog_http_request_duration_seconds HTTP requests by route, method and status (count and latency).\n# TYPE incidentlog_http_request_duration_seconds histogram"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for (s, status) in STATUSES.iter().enumerate() {
                    let h = &self.series[(r * METHODS.len() + m) * STATUSES.len() + s];
                    if h.count() == 0 {
                        continue;
                    }
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let labels =
                        format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
                    h.render(out, "incidentlog_http_request_duration_seconds", &labels);
                }
            }
        }
    }
}
