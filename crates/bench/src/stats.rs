//! Latency samples and percentiles.

use std::time::Duration;

/// Latency samples in microseconds. Bounded: beyond `cap` samples, new ones replace old ones
/// at a stride (a benchmark loop is bounded anyway; this only caps memory).
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<u32>,
    seen: u64,
    cap: usize,
}

impl Latencies {
    pub fn with_cap(cap: usize) -> Self {
        Latencies {
            samples: Vec::new(),
            seen: 0,
            cap: cap.max(1),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.seen += 1;
        if self.samples.len() < self.cap {
            self.samples.push(us);
        } else {
            let i = (self.seen % self.cap as u64) as usize;
            self.samples[i] = us;
        }
    }

    pub fn merge(&mut self, other: Latencies) {
        for us in other.samples {
            self.record(Duration::from_micros(us as u64));
        }
    }

    pub fn count(&self) -> u64 {
        self.seen
    }

    /// The `p`-th percentile (0..=100) in milliseconds, nearest-rank; 0 without samples.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, sorted.len()) - 1;
        sorted[idx] as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.samples.iter().copied().max().unwrap_or(0) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies::with_cap(1000);
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us * 1000));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.percentile_ms(100.0), 100.0);
        assert_eq!(l.max_ms(), 100.0);
        assert_eq!(l.count(), 100);
        assert_eq!(Latencies::default().percentile_ms(99.0), 0.0);
    }
}
