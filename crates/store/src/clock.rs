//! The clock behind the log. Appends are stamped `max(now, latest recorded_at)`, so that
//! `recorded_at` never goes back along the log; a clock stepped back (after running ahead)
//! would otherwise stamp every new append with a time in the future without a word.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far behind the log's latest `recorded_at` the clock may be before it is reported (the
/// ordinary jitter between two appends' clock readings is far below this).
const SLACK_MICROS: i64 = 1_000_000;
/// At most one warning this often while it lasts.
const EVERY: Duration = Duration::from_secs(60);

/// Whose clock stamps the appends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Clock {
    /// This machine's (the file store).
    Machine,
    /// The database server's (PostgreSQL: one clock for every server of the log).
    Database,
}

/// Logs, at most once a minute, that the stamping clock (`now`) is behind the log's latest
/// `recorded_at` (`latest`, both microseconds since the epoch): new appends are stamped with
/// that later time until the clock passes it.
pub(crate) fn warn_if_behind(clock: Clock, now: i64, latest: i64) {
    let Some(behind) = behind(now, latest) else {
        return;
    };
    static WARNED: Mutex<Option<Instant>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.is_some_and(|at| at.elapsed() < EVERY) {
        return;
    }
    *warned = Some(Instant::now());
    let latest = chrono::DateTime::from_timestamp_micros(latest)
        .map_or_else(|| latest.to_string(), |t| t.to_rfc3339());
    let whose = match clock {
        Clock::Machine => "this machine's clock",
        Clock::Database => "the database server's clock",
    };
    tracing::warn!(
        behind = ?behind,
        latest = %latest,
        "{whose} is behind the log's latest recorded_at: new appends are stamped with that \
         time until the clock passes it (was the clock ahead, or set back?)"
    );
}

/// How far the clock (`now`) is behind `latest`, when that is more than the slack.
fn behind(now: i64, latest: i64) -> Option<Duration> {
    let micros = latest.saturating_sub(now);
    (micros > SLACK_MICROS).then(|| Duration::from_micros(micros.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clock_well_behind_the_log_is_reported() {
        let now = 1_767_225_600_000_000; // 2026-01-01
        assert_eq!(
            behind(now, now - 5_000_000),
            None,
            "the clock ahead: normal"
        );
        assert_eq!(behind(now, now), None);
        assert_eq!(
            behind(now, now + SLACK_MICROS),
            None,
            "jitter between two readings"
        );
        assert_eq!(
            behind(now, now + 31_536_000_000_000),
            Some(Duration::from_secs(31_536_000)),
            "set back a year"
        );
        assert_eq!(
            behind(i64::MIN, i64::MAX),
            Some(Duration::from_micros(i64::MAX as u64))
        );
    }
}
