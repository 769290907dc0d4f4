//! `occurred_at` values (RFC 3339 timestamp or plain date) and inclusive windows over them.
use chrono::{DateTime, NaiveDate, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

use crate::FieldError;

pub(crate) const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// When something happened: a UTC instant (nanosecond resolution) or a whole day.
///
/// Ordered by instant; a date counts as midnight UTC of that day (and sorts before a timestamp
/// at exactly midnight). Timestamps are kept in UTC: the offset a client gave is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OccurredAt {
    nanos: i64,
    /// `false` for a date, `true` for a timestamp (so a date sorts first at the same instant).
    timestamp: bool,
}

/// 1678-01-01T00:00:00Z and 2262-01-01T00:00:00Z in ns: whole years inside the span of i64
/// nanoseconds, so that every day of an accepted instant, and the day after it, can be
/// computed without overflow.
const MIN_NANOS: i64 = -9_214_560_000_000_000_000;
const END_NANOS: i64 = 9_214_646_400_000_000_000;

/// A window bound: the instant it names (ns since the epoch, also outside the years events
/// may have, so that two such bounds can still be ordered) and whether it is a date (a date
/// `to` covers its whole day).
#[derive(Clone, Copy)]
struct Bound {
    nanos: i128,
    date: bool,
}

impl Bound {
    /// The instant the bound stands for as a `from` (`end` false) or a `to` (`end` true).
    fn instant(self, end: bool) -> i128 {
        if end && self.date {
            self.nanos + i128::from(NANOS_PER_DAY - 1)
        } else {
            self.nanos
        }
    }

    /// [`Bound::instant`] in the window's ns: before every instant events may have is
    /// `i64::MIN`, after them all `i64::MAX`.
    fn nanos(self, end: bool) -> i64 {
        let n = self.instant(end);
        if n < i128::from(MIN_NANOS) {
            i64::MIN
        } else if n >= i128::from(END_NANOS) {
            i64::MAX
        } else {
            // Between the two i64 bounds just checked.
            n as i64
        }
    }
}

impl OccurredAt {
    /// Parses `YYYY-MM-DD` or an RFC 3339 timestamp (years 1678..=2261).
    pub fn parse(s: &str) -> Result<OccurredAt, String> {
        let t = match parse_canonical(s.as_bytes()) {
            Some(t) => t,
            None => Self::parse_general(s)?,
        };
        if !(MIN_NANOS..END_NANOS).contains(&t.nanos) {
            return Err(format!(
                "{s:?} is out of the supported range (years 1678 to 2261)"
            ));
        }
        Ok(t)
    }

    /// A window bound: as [`OccurredAt::parse`], but a well-formed date or timestamp outside
    /// the years events may have is before or after every event, not an error (`from=1600-01-01`
    /// is an open start).
    fn parse_bound(s: &str) -> Result<Bound, String> {
        let err = match Self::parse(s) {
            Ok(t) => {
                return Ok(Bound {
                    nanos: i128::from(t.nanos),
                    date: !t.timestamp,
                })
            }
            Err(e) => e,
        };
        const NS: i128 = 1_000_000_000;
        let date = NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| (i128::from(t.and_utc().timestamp()) * NS, true));
        let instant = date.or_else(|| {
            DateTime::parse_from_rfc3339(s).ok().map(|t| {
                let n = i128::from(t.timestamp()) * NS + i128::from(t.timestamp_subsec_nanos());
                (n, false)
            })
        });
        // Only outside the years events may have: inside them, `parse` said what is wrong.
        let inside = i128::from(MIN_NANOS)..i128::from(END_NANOS);
        match instant {
            Some((nanos, date)) if !inside.contains(&nanos) => Ok(Bound { nanos, date }),
            _ => Err(err),
        }
    }

    fn parse_general(s: &str) -> Result<OccurredAt, String> {
        if s.len() == 10 && !s.contains(['T', 't', ' ']) {
            let b = s.as_bytes();
            let shape = b.iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
            if !shape {
                return Err(format!("{s:?} is not a date YYYY-MM-DD"));
            }
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| format!("{s:?} is not a valid calendar date"))?;
            return Self::from_date(d)
                .ok_or_else(|| format!("{s:?} is out of the supported range"));
        }
        let t = DateTime::parse_from_rfc3339(s).map_err(|_| {
            format!("{s:?} is neither an RFC 3339 timestamp (2026-01-02T10:30:00Z) nor a date (2026-01-02)")
        })?;
        check_rfc3339_reading(s, &t)?;
        let nanos = t
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("{s:?} is out of the supported range (years 1678 to 2261)"))?;
        // A leap second (23:59:60) belongs to the day it ends: it is held at the last
        // nanosecond before midnight instead of spilling into the next day.
        let leap_excess = i64::from(t.nanosecond().saturating_sub(999_999_999));
        let nanos = nanos - leap_excess;
        Ok(OccurredAt {
            nanos,
            timestamp: true,
        })
    }

    pub fn from_date(d: NaiveDate) -> Option<OccurredAt> {
        let nanos = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()?;
        Some(OccurredAt {
            nanos,
            timestamp: false,
        })
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Option<OccurredAt> {
        Some(OccurredAt {
            nanos: t.timestamp_nanos_opt()?,
            timestamp: true,
        })
    }

    pub(crate) fn from_parts(nanos: i64, timestamp: bool) -> OccurredAt {
        OccurredAt { nanos, timestamp }
    }

    /// Nanoseconds since the Unix epoch (a date: its midnight UTC).
    pub fn nanos(&self) -> i64 {
        self.nanos
    }

    /// True for a plain date.
    pub fn is_date(&self) -> bool {
        !self.timestamp
    }

    /// Days since 1970-01-01 (UTC) of this instant: the key of the per-day buckets.
    pub(crate) fn day(&self) -> i32 {
        day_of(self.nanos)
    }

    pub fn to_datetime(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.nanos)
    }
}

/// An RFC 3339 timestamp as an instant (`as_of`), read as strictly as `occurred_at`: at most 9
/// fraction digits, a leap second only where one can be.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| e.to_string())?;
    check_rfc3339_reading(s, &t)?;
    Ok(t.with_timezone(&Utc))
}

/// What chrono's RFC 3339 reading lets through and this service does not.
fn check_rfc3339_reading(s: &str, t: &DateTime<chrono::FixedOffset>) -> Result<(), String> {
    // chrono reads any number of fraction digits and drops those past the nanosecond: two
    // times that differ there would be stored alike (and a retry with the other taken for a
    // repeat). Refused instead.
    let fraction_digits = s
        .split_once('.')
        .map_or(0, |(_, f)| f.bytes().take_while(u8::is_ascii_digit).count());
    if fraction_digits > 9 {
        return Err(format!(
            "{s:?} has {fraction_digits} fraction digits: at most 9 (nanoseconds)"
        ));
    }
    // chrono takes second 60 at the end of any minute; a leap second only ever ends a UTC day
    // (23:59:60Z, or the same instant in another offset).
    if t.nanosecond() >= 1_000_000_000 {
        let utc = t.with_timezone(&Utc);
        if (utc.hour(), utc.minute()) != (23, 59) {
            return Err(format!(
                "{s:?} has a leap second (:60) where none can be: only at 23:59:60 UTC"
            ));
        }
    }
    Ok(())
}

/// Fast path for the forms the log stores (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`);
/// anything else (offsets, leap seconds, out-of-range values) goes to chrono. Both give the
/// same value for the same instant (tested).
fn parse_canonical(b: &[u8]) -> Option<OccurredAt> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    }
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > dim {
        return None;
    }
    // days from civil (H. Hinnant)
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if b.len() == 10 {
        let nanos = days.checked_mul(NANOS_PER_DAY)?;
        return Some(OccurredAt {
            nanos,
            timestamp: false,
        });
    }
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let frac = &b[19..b.len() - 1];
    let sub = match frac {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(digits)? * 10i64.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    let nanos = secs.checked_mul(1_000_000_000)?.checked_add(sub)?;
    Some(OccurredAt {
        nanos,
        timestamp: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_format_like_chrono() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut cases = vec![
            0i64,
            -1,
            1,
            999_999,
            -86_400_000_000,
            253_402_300_799_999_999,
        ];
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Years 0000 to 9999, and some far outside (chrono's own form then).
            let span: u64 = 315_569_520_000_000_000;
            cases.push((x % span) as i64 - 62_167_219_200_000_000);
            if x >> 60 == 0 {
                cases.push((x >> 1) as i64 - (1 << 62));
            }
        }
        for micros in cases {
            let Some(t) = DateTime::<Utc>::from_timestamp_micros(micros) else {
                continue;
            };
            assert_eq!(
                fmt_micros(&t),
                t.to_rfc3339_opts(SecondsFormat::Micros, true),
                "{micros} us"
            );
        }
        // A leap second stays second 60.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|t| t.and_utc())
            .expect("a leap second");
        assert_eq!(fmt_micros(&leap), "2016-12-31T23:59:60.500000Z");
        // Nanoseconds below a microsecond are cut, as chrono cuts them.
        let t = DateTime::<Utc>::from_timestamp_nanos(1_767_225_600_123_456_789);
        assert_eq!(
            fmt_micros(&t),
            t.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
    }

    #[test]
    fn formats_like_chrono() {
        let mut cases = vec![MIN_NANOS, END_NANOS - 1, 0, -1, 1, NANOS_PER_DAY - 1];
        // Days around leap years and centuries, at times with every fraction width.
        for day in [
            -25_567i64, -1, 0, 59, 60, 365, 11_016, 11_017, 20_454, 47_541, 47_542,
        ] {
            for extra in [0, 1, 999, 1_000, 1_000_000, 123_456_789, 86_399_999_999_999] {
                cases.push(day * NANOS_PER_DAY + extra);
            }
        }
        // And a spread over the whole accepted span (a fixed LCG: no randomness in tests).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let span = (i128::from(END_NANOS) - i128::from(MIN_NANOS)) as u64;
            let mut nanos = (i128::from(MIN_NANOS) + i128::from(x % span)) as i64;
            // Round some to whole seconds, milliseconds and microseconds.
            match x >> 62 {
                0 => nanos -= nanos.rem_euclid(1_000_000_000),
                1 => nanos -= nanos.rem_euclid(1_000_000),
                2 => nanos -= nanos.rem_euclid(1_000),
                _ => {}
            }
            cases.push(nanos);
        }
        for nanos in cases {
            for timestamp in [false, true] {
                let t = OccurredAt { nanos, timestamp };
                assert_eq!(
                    t.to_string(),
                    t.chrono_form(),
                    "{nanos} ns, timestamp {timestamp}"
                );
            }
        }
    }

    #[test]
    fn window_bounds_outside_the_event_years_are_open_ends() {
        let w = Window::parse(Some("1600-01-01"), Some("2300-01-01T00:00:00Z")).unwrap();
        assert_eq!((w.lo, w.hi), (i64::MIN, i64::MAX));
        let w = Window::parse(Some("0900-01-01"), Some("2026-01-02")).unwrap();
        assert_eq!(w.lo, i64::MIN);
        assert!(Window::parse(Some("2300-01-01"), None).is_ok());
        assert!(Window::parse(Some("1600-13-01"), None).is_err());
        // Ends before every event: a window nothing falls in.
        assert_eq!(
            Window::parse(None, Some("1600-01-01")).unwrap().hi,
            i64::MIN
        );
        // Two such bounds keep their order: reversed is an error at `/from`, as in range.
        for (from, to) in [
            ("1600-01-01", "1500-01-01"),
            ("2400-01-01", "2300-01-01"),
            ("1677-12-31T23:59:59Z", "1600-01-01"),
            (
                "2300-01-01T00:00:00.000000002Z",
                "2300-01-01T00:00:00.000000001Z",
            ),
            ("2300-01-02", "2300-01-01T23:59:59Z"),
            ("2400-01-01", "2026-01-01"),
            ("2026-01-01", "1600-01-01"),
        ] {
            let err = Window::parse(Some(from), Some(to)).unwrap_err();
            assert_eq!(err.pointer, "/from", "{from} {to}");
        }
        for (from, to) in [
            ("1500-01-01", "1600-01-01"),
            ("1600-01-01", "1600-01-01"),
            ("2300-01-01T12:00:00Z", "2300-01-01"),
            ("2300-01-01", "2300-01-01T00:00:00Z"),
            ("1600-01-01", "2400-01-01"),
        ] {
            assert!(Window::parse(Some(from), Some(to)).is_ok(), "{from} {to}");
        }
    }

    #[test]
    fn only_years_1678_to_2261_are_accepted() {
        for ok in [
            "1678-01-01",
            "1678-01-01T00:00:00Z",
            "2261-12-31",
            "2261-12-31T23:59:59.999999999Z",
        ] {
            assert!(OccurredAt::parse(ok).is_ok(), "{ok}");
        }
        for out in [
            "1677-12-31",
            "1677-09-21T12:00:00Z",
            "2262-01-01",
            "2262-01-01T00:00:00Z",
        ] {
            let err = OccurredAt::parse(out).unwrap_err();
            assert!(err.contains("years 1678 to 2261"), "{out}: {err}");
        }
    }

    #[test]
    fn a_leap_second_stays_on_its_day() {
        let last = OccurredAt::parse("2026-06-30T23:59:59.999999999Z").unwrap();
        for s in [
            "2026-06-30T23:59:60Z",
            "2026-06-30T23:59:60.5Z",
            "2026-07-01T02:59:60+03:00",
        ] {
            assert_eq!(OccurredAt::parse(s), Ok(last), "{s}");
        }
        // Only a UTC day ends with a leap second.
        for s in ["2026-06-30T23:59:60+02:00", "2026-06-30T10:30:60Z"] {
            let e = OccurredAt::parse(s).unwrap_err();
            assert!(e.contains("leap second"), "{s}: {e}");
        }
    }

    /// Digits past the nanosecond are refused, not dropped: two times that differ only there
    /// would be stored alike.
    #[test]
    fn at_most_nine_fraction_digits() {
        assert!(OccurredAt::parse("2026-01-02T10:00:00.123456789Z").is_ok());
        assert!(OccurredAt::parse("2026-01-02T10:00:00.123456789+01:00").is_ok());
        for s in [
            "2026-01-02T10:00:00.1234567891Z",
            "2026-01-02T10:00:00.5000000001+02:00",
        ] {
            let e = OccurredAt::parse(s).unwrap_err();
            assert!(e.contains("fraction digits"), "{s}: {e}");
        }
    }

    #[test]
    fn fast_path_agrees_with_chrono() {
        for s in [
            "2026-01-02",
            "1970-01-01",
            "1969-12-31",
            "2000-02-29",
            "2024-02-29",
            "1700-03-01",
            "2261-12-31",
            "2026-01-02T10:30:00Z",
            "2026-01-02T23:59:59.5Z",
            "2026-01-02T00:00:00.000000001Z",
            "2026-01-02T10:30:00.123456789Z",
            "1999-12-31T23:59:59Z",
            "1677-09-22T00:00:00Z",
        ] {
            let fast = parse_canonical(s.as_bytes());
            let general = OccurredAt::parse_general(s).ok();
            assert_eq!(fast, general, "{s}");
            assert!(fast.is_some(), "{s}");
        }
        for s in [
            "2026-02-29",
            "2100-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-01-32",
            "2026-01-02T24:00:00Z",
            "2026-01-02T10:30:00+02:00",
            "2026-01-02T10:30:60Z",
            "2026-01-02T10:30:00.Z",
            "2026-01-02T10:30:00.1234567891Z",
            "2026-01-02t10:30:00Z",
            "+2026-01-02",
            "1500-01-01",
        ] {
            assert_eq!(parse_canonical(s.as_bytes()), None, "{s}");
        }
        // out of the i64 range: rejected by both paths
        assert!(OccurredAt::parse("1500-01-01").is_err());
        assert!(OccurredAt::parse("2300-01-01T00:00:00Z").is_err());
        assert!(OccurredAt::parse("2026-01-02T10:30:00+02:00").is_ok());
    }
}

pub(crate) fn day_of(nanos: i64) -> i32 {
    // |nanos| / NANOS_PER_DAY < 2^17, fits in i32.
    nanos.div_euclid(NANOS_PER_DAY) as i32
}

impl std::fmt::Display for OccurredAt {
    /// The canonical form: `YYYY-MM-DD` for a date, else RFC 3339 in UTC with `Z` and as many
    /// fraction digits as needed (none, 3, 6 or 9: chrono's `AutoSi`). Written by hand (every
    /// event and view serializes it; chrono's formatter is general and slow): accepted values
    /// lie in years 1678-2261, so the year always has four digits (`formats_like_chrono`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 30];
        let n = self.write_canonical(&mut buf);
        f.write_str(ascii(&buf[..n]))
    }
}

impl OccurredAt {
    /// Writes the canonical form into `buf`, returning its length.
    fn write_canonical(&self, buf: &mut [u8; 30]) -> usize {
        let days = self.nanos.div_euclid(NANOS_PER_DAY);
        let in_day = self.nanos.rem_euclid(NANOS_PER_DAY);
        if !self.timestamp {
            return write_date(buf, days);
        }
        let sub = in_day % 1_000_000_000;
        let fraction = if sub == 0 {
            (0, 0)
        } else if sub % 1_000_000 == 0 {
            (sub / 1_000_000, 3)
        } else if sub % 1_000 == 0 {
            (sub / 1_000, 6)
        } else {
            (sub, 9)
        };
        write_timestamp(buf, days, in_day / 1_000_000_000, fraction)
    }

    /// chrono's rendering of the canonical form, which `write_canonical` reproduces.
    #[cfg(test)]
    fn chrono_form(&self) -> String {
        let t = self.to_datetime();
        if self.timestamp {
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        } else {
            t.format("%Y-%m-%d").to_string()
        }
    }
}

impl Serialize for OccurredAt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OccurredAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        OccurredAt::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Writes `value` as `digits` decimal digits at `buf[at..]` (zero-padded).
fn put_digits(buf: &mut [u8], at: usize, value: i64, digits: usize) {
    let mut v = value;
    for i in (0..digits).rev() {
        buf[at + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes the date `days` after 1970-01-01 as `YYYY-MM-DD` (years 0-9999); returns 10.
fn write_date(buf: &mut [u8; 30], days: i64) -> usize {
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    put_digits(buf, 0, y, 4);
    buf[4] = b'-';
    put_digits(buf, 5, m, 2);
    buf[7] = b'-';
    put_digits(buf, 8, d, 2);
    10
}

/// Writes `YYYY-MM-DDTHH:MM:SS[.fraction]Z` for second `secs` of day `days`, the fraction as
/// `(value, digits)` (no fraction for 0 digits); returns the length.
fn write_timestamp(buf: &mut [u8; 30], days: i64, secs: i64, fraction: (i64, usize)) -> usize {
    write_date(buf, days);
    buf[10] = b'T';
    put_digits(buf, 11, secs / 3600, 2);
    buf[13] = b':';
    put_digits(buf, 14, secs / 60 % 60, 2);
    buf[16] = b':';
    put_digits(buf, 17, secs % 60, 2);
    let mut n = 19;
    let (value, digits) = fraction;
    if digits > 0 {
        buf[n] = b'.';
        put_digits(buf, n + 1, value, digits);
        n += 1 + digits;
    }
    buf[n] = b'Z';
    n + 1
}

/// RFC 3339 in UTC with exactly six fraction digits and `Z`, as the log writes recorded times
/// (chrono's `SecondsFormat::Micros`, written by hand for years 0-9999; chrono for the rest).
pub fn fmt_micros(t: &DateTime<Utc>) -> String {
    let micros = t.timestamp_micros();
    let days = micros.div_euclid(86_400_000_000);
    // 0000-01-01 and 9999-12-31; and a leap second (second 60), which chrono keeps as such
    // while the microsecond count would carry it into the next minute.
    if !(-719_528..=2_932_896).contains(&days) || t.nanosecond() >= 1_000_000_000 {
        return t.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    let in_day = micros.rem_euclid(86_400_000_000);
    let mut buf = [0u8; 30];
    let n = write_timestamp(&mut buf, days, in_day / 1_000_000, (in_day % 1_000_000, 6));
    ascii(&buf[..n]).to_owned()
}

/// What `write_date`/`write_timestamp` wrote: ASCII digits and separators only.
fn ascii(written: &[u8]) -> &str {
    std::str::from_utf8(written).unwrap_or_default()
}

/// An inclusive window on `occurred_at`. `from`/`to` may be dates (a date `to` covers its whole
/// day) or RFC 3339 timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Inclusive bounds in ns since the epoch.
    pub(crate) lo: i64,
    pub(crate) hi: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window::all()
    }
}

impl Window {
    /// The whole time line.
    pub fn all() -> Window {
        Window {
            lo: i64::MIN,
            hi: i64::MAX,
        }
    }

    /// Parses the `from` and `to` query parameters (pointers `/from`, `/to`).
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Window, FieldError> {
        let mut w = Window::all();
        let from = from
            .map(|f| OccurredAt::parse_bound(f).map_err(|m| FieldError::new("/from", m)))
            .transpose()?;
        let to = to
            .map(|t| OccurredAt::parse_bound(t).map_err(|m| FieldError::new("/to", m)))
            .transpose()?;
        if let Some(f) = from {
            w.lo = f.nanos(false);
        }
        if let Some(t) = to {
            w.hi = t.nanos(true);
        }
        // Ordered by the instants they name: two bounds before (or after) every event are
        // still in an order (`from=1600-01-01&to=1500-01-01` is as empty as any other).
        let reversed = match (from, to) {
            (Some(f), Some(t)) => f.instant(false) > t.instant(true),
            _ => false,
        };
        if reversed {
            return Err(FieldError::new(
                "/from",
                "`from` is after `to`: the window is empty",
            ));
        }
        Ok(w)
    }

    pub fn is_all(&self) -> bool {
        self.lo == i64::MIN && self.hi == i64::MAX
    }

    pub fn contains(&self, t: OccurredAt) -> bool {
        self.lo <= t.nanos && t.nanos <= self.hi
    }

    pub(crate) fn lo_day(&self) -> i32 {
        day_of(self.lo)
    }

    pub(crate) fn hi_day(&self) -> i32 {
        day_of(self.hi)
    }

    /// Does the window cover the whole of `day`?
    pub(crate) fn covers_day(&self, day: i32) -> bool {
        let start = i64::from(day).saturating_mul(NANOS_PER_DAY);
        self.lo <= start && start.saturating_add(NANOS_PER_DAY - 1) <= self.hi
    }
}

pub(crate) fn fmt_recorded(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
