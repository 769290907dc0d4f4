//! Prometheus metrics, hand-rolled with atomics (no registry crate): a fixed set of series
//! so that recording is lock-free on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds of the batch-size buckets (events per append request).
pub const SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0];

/// A cumulative histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in micro-units (microseconds for latencies, events for sizes) to stay integral.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        // Only the first matching bucket is counted; rendering makes them cumulative.
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micro.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines; `labels` is `k="v",...` or "".
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Relaxed) as f64 / 1e6;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {count}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

/// Metrics of the application layer (appends and the live projection).
pub struct ServiceMetrics {
    /// Events per append written (single appends and each bulk line; not repeats).
    pub append_batch_size: Histogram,
    /// The file store's batches: one write and (strict) one fdatasync each (rendered with
    /// the file store's other figures).
    pub store_write_seconds: Arc<Histogram>,
    /// Time the store took to make an append (or a bulk chunk) durable: write + sync,
    /// including the wait for the group commit.
    pub store_append_seconds: Histogram,
    /// Events recorded through this server.
    pub events_appended: AtomicU64,
    /// Idempotent repeats answered without recording.
    pub events_duplicate: AtomicU64,
    /// Appends rejected (validation, conflicts).
    pub appends_rejected: AtomicU64,
    /// Retries after a version race on `expected_version: "any"`.
    pub append_retries: AtomicU64,
    /// Events applied to the live projection.
    pub events_applied: AtomicU64,
    /// Of those, events the appending requests handed over (not read back from the log).
    pub events_handed_over: AtomicU64,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        ServiceMetrics {
            append_batch_size: Histogram::new(&SIZE_BUCKETS),
            store_write_seconds: Arc::new(Histogram::new(&LATENCY_BUCKETS)),
            store_append_seconds: Histogram::new(&LATENCY_BUCKETS),
            events_appended: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            appends_rejected: AtomicU64::new(0),
            append_retries: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            events_handed_over: AtomicU64::new(0),
        }
    }
}

impl ServiceMetrics {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP incidentlog_append_batch_size Events per append written (a request or a bulk line; repeats and refused ones not counted).\n# TYPE incidentlog_append_batch_size histogram"
        );
        self.append_batch_size
            .render(out, "incidentlog_append_batch_size", "");
        let _ = writeln!(
            out,
            "# HELP incidentlog_store_append_seconds Time until the store acknowledged an append as durable (write, group commit, sync).\n# TYPE incidentlog_store_append_seconds histogram"
        );
        self.store_append_seconds
            .render(out, "incidentlog_store_append_seconds", "");
        for (name, help, v) in [
            (
                "incidentlog_events_appended_total",
                "Events recorded through this server.",
                &self.events_appended,
            ),
            (
                "incidentlog_events_duplicate_total",
                "Events of idempotent repeats (nothing recorded).",
                &self.events_duplicate,
            ),
            (
                "incidentlog_appends_rejected_total",
                "Append requests and bulk lines refused for what they said (400, 408, 409, 413, 415, 422 to a single append; a bulk report's rejected lines); not auth, rate limits or store failures.",
                &self.appends_rejected,
            ),
            (
                "incidentlog_append_retries_total",
                "Re-validations after a version race on expected_version \"any\".",
                &self.append_retries,
            ),
            (
                "incidentlog_projection_events_applied_total",
                "Events applied to the live views.",
                &self.events_applied,
            ),
            (
                "incidentlog_projection_events_handed_over_total",
                "Events applied to the live views as the appending requests handed them over, without reading them back from the log.",
                &self.events_handed_over,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}
