//! Strict decoding of append requests, reporting every problem with a JSON pointer.
//!
//! This walks a JSON tree by hand ([`Json`](crate::Json) on the append path, or
//! `serde_json::Value`) (serde stops at the first error; a client fixing a
//! request wants all of them at once) and builds the typed events only when nothing is wrong.
use std::borrow::Cow;
use uuid::Uuid;

use crate::events::*;
use crate::json::{JsonMembers, JsonValue};
use crate::{FieldError, OccurredAt, Region};

/// Field problems an answer can list; more are counted, not kept.
pub const PROBLEMS_KEPT: usize = 100;

/// The problems found in a request: the first [`PROBLEMS_KEPT`] kept, every one counted. A
/// body of a million bad fields (`{"events": [{}, {}, ...]}`, three problems per three bytes)
/// kept them all once, ~150 bytes each: a 64 MiB bulk line took the server past 10 GB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    kept: Vec<FieldError>,
    total: usize,
}

impl Problems {
    pub fn push(&mut self, e: FieldError) {
        self.push_with(|| e);
    }

    /// [`Problems::push`] that builds the problem (its pointer's text) only when it is kept.
    pub fn push_with(&mut self, e: impl FnOnce() -> FieldError) {
        self.total += 1;
        if self.kept.len() < PROBLEMS_KEPT {
            self.kept.push(e());
        }
    }

    /// Every problem found, kept or not.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The first problems, in the order found.
    pub fn kept(&self) -> &[FieldError] {
        &self.kept
    }

    /// Keeps only the first `n` (their count stays).
    pub fn keep_first(&mut self, n: usize) {
        self.kept.truncate(n);
        self.kept.shrink_to_fit();
    }

    /// Adds `other`'s problems after these.
    pub fn append(&mut self, other: Problems) {
        let uncounted = other.total - other.kept.len();
        for e in other.kept {
            self.push(e);
        }
        self.total += uncounted;
    }

    pub fn into_kept(self) -> Vec<FieldError> {
        self.kept
    }
}

impl From<Vec<FieldError>> for Problems {
    fn from(all: Vec<FieldError>) -> Problems {
        let mut p = Problems::default();
        for e in all {
            p.push(e);
        }
        p
    }
}

/// Longest accepted name-like text (source names, actors, localities), in characters.
pub const MAX_NAME_CHARS: usize = 300;
/// Longest accepted free text (summary, statement, reason, evidence), in characters.
pub const MAX_TEXT_CHARS: usize = 5_000;
/// Longest accepted URL, in bytes.
pub const MAX_URL_BYTES: usize = 2_048;
/// Largest accepted casualty count (far above any single incident ever recorded).
pub const MAX_COUNT: u64 = 10_000_000;

/// Strict decoding of an append body's `events` array (`pointer_prefix` = "/events"): every
/// problem reported with a JSON pointer like "/events/1/data/killed".
pub fn parse_events<V: JsonValue>(
    events: &V,
    pointer_prefix: &str,
) -> Result<Vec<TypedEvent>, Problems> {
    let mut errs = Problems::default();
    let Some(items) = events.as_array() else {
        return Err(vec![FieldError::new(
            pointer_prefix,
            "must be an array of events",
        )]
        .into());
    };
    if items.is_empty() {
        return Err(vec![FieldError::new(
            pointer_prefix,
            "must contain at least one event",
        )]
        .into());
    }
    let mut out: Vec<TypedEvent> = Vec::with_capacity(items.len());
    // Event id -> index in `items`, for the duplicate check (not needed for one event).
    let mut seen: std::collections::HashMap<uuid::Uuid, usize> = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let root = Ptr::Root(pointer_prefix);
        let ptr = Ptr::Index(&root, i);
        if let Some(ev) = parse_one(item, &ptr, &mut errs) {
            // One event id, one event: a second use in the same batch points at itself.
            let first = if items.len() > 1 {
                seen.insert(ev.event_id, i)
            } else {
                None
            };
            if let Some(first) = first {
                push(
                    &mut errs,
                    &ptr,
                    "event_id",
                    format!("repeats the event_id of event {first} of this batch"),
                );
            }
            out.push(ev);
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn parse_one<V: JsonValue>(item: &V, ptr: &Ptr<'_>, errs: &mut Problems) -> Option<TypedEvent> {
    let m = object(item, ptr, &["event_id", "type", "data"], errs)?;
    let event_id = uuid_field(m, "event_id", ptr, true, errs);
    let ty = match m
        .get("type")
        .filter(|v| !v.is_null())
        .map(JsonValue::as_str)
    {
        None => {
            push(errs, ptr, "type", "is required");
            None
        }
        Some(Some(s)) if EVENT_TYPES.contains(&s) => Some(s),
        Some(Some(s)) => {
            push(
                errs,
                ptr,
                "type",
                format!(
                    "unknown event type {s:?}; expected one of {}",
                    EVENT_TYPES.join(", ")
                ),
            );
            None
        }
        Some(None) => {
            push(errs, ptr, "type", "must be a string");
            None
        }
    };
    let dptr = Ptr::Key(ptr, "data");
    let data = match m.get("data") {
        Some(d) if !d.is_null() => Some(d),
        _ => {
            push(errs, ptr, "data", "is required");
            None
        }
    };
    let (ty, data) = (ty?, data?);
    let event = match ty {
        "IncidentReported" => {
            incident_reported(data, &dptr, errs).map(IncidentEvent::IncidentReported)
        }
        "CasualtiesReported" => {
            casualties(data, &dptr, errs).map(IncidentEvent::CasualtiesReported)
        }
        "ClaimMade" => claim_made(data, &dptr, errs).map(IncidentEvent::ClaimMade),
        "ClaimDenied" => claim_denied(data, &dptr, errs).map(IncidentEvent::ClaimDenied),
        "ClaimAssessed" => claim_assessed(data, &dptr, errs).map(IncidentEvent::ClaimAssessed),
        "SourceAdded" => source_added(data, &dptr, errs).map(IncidentEvent::SourceAdded),
        "IncidentCorrected" => corrected(data, &dptr, errs).map(IncidentEvent::IncidentCorrected),
        _ => retracted(data, &dptr, errs).map(IncidentEvent::IncidentRetracted),
    }?;
    Some(TypedEvent {
        event_id: event_id?,
        event,
    })
}

// ---- helpers -------------------------------------------------------------------------------

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer, written out only when a problem is reported (most fields have none, and
/// building every field's pointer up front cost ~2.5% of a bulk import).
#[derive(Clone, Copy)]
enum Ptr<'a> {
    Root(&'a str),
    Key(&'a Ptr<'a>, &'a str),
    Index(&'a Ptr<'a>, usize),
}

impl std::fmt::Display for Ptr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ptr::Root(s) => f.write_str(s),
            Ptr::Key(p, k) => write!(f, "{p}/{}", escape(k)),
            Ptr::Index(p, i) => write!(f, "{p}/{i}"),
        }
    }
}

fn push(errs: &mut Problems, ptr: &Ptr<'_>, key: &str, msg: impl Into<String>) {
    errs.push_with(|| FieldError::new(Ptr::Key(ptr, key).to_string(), msg));
}

/// `v` must be an object with only `allowed` keys; every unknown key is reported.
fn object<'v, V: JsonValue>(
    v: &'v V,
    ptr: &Ptr<'_>,
    allowed: &[&str],
    errs: &mut Problems,
) -> Option<&'v V::Object> {
    let Some(m) = v.as_object() else {
        errs.push_with(|| FieldError::new(ptr.to_string(), "must be a JSON object"));
        return None;
    };
    // Reported in key order whatever order the body has them in (as a `Value`'s map keeps
    // them), so both trees give the same errors.
    let mut unknown: Vec<&str> = m.keys().filter(|k| !allowed.contains(k)).collect();
    unknown.sort_unstable();
    for k in unknown {
        push(
            errs,
            ptr,
            k,
            format!("unknown field {k:?}; allowed here: {}", allowed.join(", ")),
        );
    }
    Some(m)
}

/// A present, non-null value. A `null` optional field counts as absent.
fn present<'v, M: JsonMembers>(
    m: &'v M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<&'v M::Value> {
    match m.get(key) {
        Some(v) if !v.is_null() => Some(v),
        _ => {
            if required {
                push(errs, ptr, key, "is required");
            }
            None
        }
    }
}

fn string_field<'v, M: JsonMembers>(
    m: &'v M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<&'v str> {
    let v = present(m, key, ptr, required, errs)?;
    match v.as_str() {
        Some(s) => Some(s),
        None => {
            push(errs, ptr, key, "must be a string");
            None
        }
    }
}

/// Characters that show nothing on their own: zero-width spaces and joiners, direction
/// marks (the Arabic letter mark too), bidirectional embeddings, overrides and isolates, the
/// word joiner and invisible operators, deprecated format characters, the byte order mark,
/// the soft hyphen, the combining grapheme joiner, the Hangul fillers, Khmer's inherent
/// vowels, the blank Braille pattern, interlinear annotation marks, musical format controls,
/// variation selectors, tag characters, and noncharacters. A text made of
/// these and whitespace is blank to a reader.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
        | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}'
        | '\u{FDD0}'..='\u{FDEF}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
        || (c as u32) & 0xFFFE == 0xFFFE
}

/// Text: non-blank (whitespace and invisible characters alone are blank), at most `max`
/// characters, no control characters (`multiline` allows line breaks and tabs; one line
/// also refuses the Unicode line and paragraph separators).
fn text<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    max: usize,
    multiline: bool,
    errs: &mut Problems,
) -> Option<Cow<'static, str>> {
    let s = string_field(m, key, ptr, required, errs)?;
    if s.chars().all(|c| c.is_whitespace() || invisible(c)) {
        push(
            errs,
            ptr,
            key,
            "must not be empty (or only spaces and invisible characters)",
        );
        return None;
    }
    let n = s.chars().count();
    if n > max {
        push(
            errs,
            ptr,
            key,
            format!("is too long: {n} characters, at most {max} allowed"),
        );
        return None;
    }
    let bad = s.chars().any(|c| {
        let line_break = matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
        (c.is_control() || line_break) && !(multiline && (line_break || c == '\t'))
    });
    if bad {
        let what = if multiline {
            "must not contain control characters other than line breaks and tabs"
        } else {
            "must be a single line without control characters"
        };
        push(errs, ptr, key, what);
        return None;
    }
    Some(Cow::Owned(s.to_owned()))
}

fn name<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<Cow<'static, str>> {
    text(m, key, ptr, required, MAX_NAME_CHARS, false, errs)
}

fn long_text<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<Cow<'static, str>> {
    text(m, key, ptr, required, MAX_TEXT_CHARS, true, errs)
}

/// A string field turned into a typed value by `parse`, whose error message is reported at the
/// field's pointer.
fn parsed_field<T, M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let s = string_field(m, key, ptr, required, errs)?;
    match parse(s) {
        Ok(v) => Some(v),
        Err(msg) => {
            push(errs, ptr, key, msg);
            None
        }
    }
}

fn enum_field<T: std::str::FromStr<Err = String>, M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<T> {
    parsed_field(m, key, ptr, required, errs, str::parse)
}

/// A UUID in the hyphenated form only (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), as every id
/// in a request body is written: the other forms `uuid` accepts are easy to get wrong by
/// accident.
pub fn hyphenated_uuid(s: &str) -> Option<Uuid> {
    Uuid::try_parse(s).ok().filter(|_| s.len() == 36)
}

/// A whole, non-negative JSON number: `2`, or `2.0` as JSON Schema's "integer" has it (a
/// fraction part must be zero, and the value exactly representable, at most 2^53).
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| n.is_f64() && f.fract() == 0.0 && (0.0..=MAX_EXACT).contains(f))
            .map(|f| f as u64)
    })
}

fn uuid_field<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<Uuid> {
    let s = string_field(m, key, ptr, required, errs)?;
    match hyphenated_uuid(s) {
        Some(u) => Some(u),
        None => {
            push(
                errs,
                ptr,
                key,
                format!("{s:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
            );
            None
        }
    }
}

fn count<M: JsonMembers>(m: &M, key: &str, ptr: &Ptr<'_>, errs: &mut Problems) -> Option<u32> {
    let v = present(m, key, ptr, false, errs)?;
    match v.as_number() {
        Some(n) => {
            // `2.0` is the whole number 2; stored as `2`.
            let f = n.as_f64().unwrap_or(f64::NAN);
            if let Some(u) = whole_number(n) {
                if u > MAX_COUNT {
                    push(errs, ptr, key, format!("must be at most {MAX_COUNT}"));
                    None
                } else {
                    Some(u as u32)
                }
            } else if n.as_i64().is_some() || f < 0.0 {
                push(errs, ptr, key, "must be 0 or more");
                None
            } else if f > MAX_COUNT as f64 {
                push(errs, ptr, key, format!("must be at most {MAX_COUNT}"));
                None
            } else {
                push(errs, ptr, key, "must be a whole number");
                None
            }
        }
        None => {
            push(errs, ptr, key, "must be a number");
            None
        }
    }
}

fn url_field<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<Cow<'static, str>> {
    let s = string_field(m, key, ptr, false, errs)?;
    // Schemes are case-insensitive (RFC 3986, 3.1).
    let rest = ["https://", "http://"].iter().find_map(|scheme| {
        let head = s.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &s[scheme.len()..])
    });
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    let host_ok = authority.is_some_and(|a| authority_ok(a) == Ok(true));
    let port_problem = authority.and_then(|a| authority_ok(a).err());
    if s.len() > MAX_URL_BYTES {
        push(
            errs,
            ptr,
            key,
            format!("is too long: at most {MAX_URL_BYTES} bytes"),
        );
        None
    } else if let Some(problem) = port_problem {
        push(errs, ptr, key, problem);
        None
    } else if !host_ok || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        push(
            errs,
            ptr,
            key,
            "must be an absolute http(s) URL with a host and no spaces",
        );
        None
    } else {
        Some(Cow::Owned(s.to_owned()))
    }
}

/// `[userinfo@]host[:port]` with a host (no colon in it unless an IPv6 literal in brackets)
/// and a port (if any) of digits up to 65535. `Err` names a bad port; `Ok(false)` is any
/// other problem.
fn authority_ok(authority: &str) -> Result<bool, &'static str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[...]` then the port, if any.
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest))
                if !addr.is_empty()
                    && addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
            {
                match rest {
                    "" => (addr, None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => (addr, Some(port)),
                        None => return Ok(false),
                    },
                }
            }
            _ => return Ok(false),
        },
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Ok(false);
    }
    match port {
        Some(p) if !p.is_empty() => {
            let digits = p.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                return Err("must be an absolute http(s) URL: its port must be a number");
            }
            if p.len() > 5 || p.parse::<u32>().map_or(true, |n| n > 65_535) {
                return Err("must be an absolute http(s) URL: its port must be at most 65535");
            }
            Ok(true)
        }
        _ => Ok(true),
    }
}

fn coord<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    limit: f64,
    errs: &mut Problems,
) -> Option<f64> {
    let v = present(m, key, ptr, true, errs)?;
    match v.as_number().and_then(serde_json::Number::as_f64) {
        // `+ 0.0` turns -0.0 into 0: the same place, so the same content (a client that
        // re-serializes a retry, as JavaScript does, sends `0` where it first sent `-0.0`).
        Some(x) if x.is_finite() && (-limit..=limit).contains(&x) => Some(x + 0.0),
        Some(_) => {
            push(
                errs,
                ptr,
                key,
                format!("must be between -{limit} and {limit} (WGS84 degrees)"),
            );
            None
        }
        None => {
            push(errs, ptr, key, "must be a number (WGS84 degrees)");
            None
        }
    }
}

fn source<M: JsonMembers>(
    m: &M,
    key: &str,
    ptr: &Ptr<'_>,
    required: bool,
    errs: &mut Problems,
) -> Option<Source<'static>> {
    let v = present(m, key, ptr, required, errs)?;
    let sptr = Ptr::Key(ptr, key);
    let before = errs.len();
    let s = object(
        v,
        &sptr,
        &[
            "name",
            "kind",
            "url",
            "archive_url",
            "published_at",
            "sha256",
        ],
        errs,
    )?;
    let name = name(s, "name", &sptr, true, errs);
    let kind = enum_field::<SourceKind, _>(s, "kind", &sptr, false, errs);
    let url = url_field(s, "url", &sptr, errs);
    let archive_url = url_field(s, "archive_url", &sptr, errs);
    let published_at = parsed_field(s, "published_at", &sptr, false, errs, OccurredAt::parse);
    let sha256 = match string_field(s, "sha256", &sptr, false, errs) {
        Some(h) => match Sha256::parse(h) {
            Ok(d) => Some(d),
            Err(msg) => {
                push(errs, &sptr, "sha256", msg);
                None
            }
        },
        None => None,
    };
    if errs.len() > before {
        return None;
    }
    Some(Source {
        name: name?,
        kind,
        url,
        archive_url,
        published_at,
        sha256,
    })
}

fn location<M: JsonMembers>(m: &M, ptr: &Ptr<'_>, errs: &mut Problems) -> Option<Location> {
    let v = present(m, "location", ptr, false, errs)?;
    let lptr = Ptr::Key(ptr, "location");
    let l = object(v, &lptr, &["lat", "lon", "precision"], errs)?;
    let lat = coord(l, "lat", &lptr, 90.0, errs);
    let lon = coord(l, "lon", &lptr, 180.0, errs);
    let precision = enum_field::<LocationPrecision, _>(l, "precision", &lptr, false, errs);
    let precision = match (l.get("precision").and_then(JsonValue::as_str), precision) {
        (Some(_), None) => return None,
        (_, p) => p.unwrap_or(LocationPrecision::Exact),
    };
    Some(Location {
        lat: lat?,
        lon: lon?,
        precision,
    })
}

/// Runs `build` only when the fields parsed since `before` raised no error.
fn finish<T>(errs: &Problems, before: usize, build: impl FnOnce() -> Option<T>) -> Option<T> {
    if errs.len() > before {
        None
    } else {
        build()
    }
}

// ---- one function per event type -----------------------------------------------------------

fn incident_reported<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<IncidentReported<'static>> {
    let before = errs.len();
    let m = object(
        v,
        p,
        &[
            "kind",
            "occurred_at",
            "time_precision",
            "region",
            "locality",
            "location",
            "perpetrator",
            "target",
            "summary",
            "source",
        ],
        errs,
    )?;
    let kind = enum_field::<Kind, _>(m, "kind", p, true, errs);
    let occurred_at = parsed_field(m, "occurred_at", p, true, errs, OccurredAt::parse);
    let tp = enum_field::<TimePrecision, _>(m, "time_precision", p, false, errs);
    if let (Some(t), Some(tp)) = (occurred_at, tp) {
        if !tp.fits(&t) {
            push(errs, p, "time_precision", format!(
                "{tp:?} precision needs a timestamp; occurred_at is a plain date (use day, week or month)"
            ).to_lowercase());
        }
    }
    let region = parsed_field(m, "region", p, true, errs, Region::parse);
    let locality = name(m, "locality", p, false, errs);
    let location = location(m, p, errs);
    let perpetrator = name(m, "perpetrator", p, false, errs);
    let target = name(m, "target", p, false, errs);
    let summary = long_text(m, "summary", p, false, errs);
    let source = source(m, "source", p, true, errs);
    finish(errs, before, || {
        let occurred_at = occurred_at?;
        Some(IncidentReported {
            kind: kind?,
            occurred_at,
            time_precision: Some(tp.unwrap_or_else(|| TimePrecision::default_for(&occurred_at))),
            region: region?,
            locality,
            location,
            perpetrator,
            target,
            summary,
            source: source?,
        })
    })
}

fn casualties<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<CasualtiesReported<'static>> {
    let before = errs.len();
    let m = object(
        v,
        p,
        &[
            "source",
            "killed",
            "injured",
            "killed_low",
            "killed_high",
            "civilians_killed",
            "children_killed",
        ],
        errs,
    )?;
    let source = source(m, "source", p, true, errs);
    let killed = count(m, "killed", p, errs);
    let injured = count(m, "injured", p, errs);
    let killed_low = count(m, "killed_low", p, errs);
    let killed_high = count(m, "killed_high", p, errs);
    let civilians = count(m, "civilians_killed", p, errs);
    let children = count(m, "children_killed", p, errs);
    if errs.len() == before {
        let given = |k: &str| m.get(k).is_some_and(|v| !v.is_null());
        if [
            "killed",
            "injured",
            "killed_low",
            "killed_high",
            "civilians_killed",
            "children_killed",
        ]
        .iter()
        .all(|k| !given(k))
        {
            errs.push(FieldError::new(
                p.to_string(),
                "give at least one count (killed, injured, killed_low, killed_high, civilians_killed or children_killed)",
            ));
        }
        match killed {
            None => {
                for (k, v) in [("killed_low", killed_low), ("killed_high", killed_high)] {
                    if v.is_some() {
                        push(
                            errs,
                            p,
                            k,
                            format!("{k} qualifies killed: give killed (the best estimate) too"),
                        );
                    }
                }
            }
            Some(k) => {
                if let Some(lo) = killed_low.filter(|lo| *lo > k) {
                    push(
                        errs,
                        p,
                        "killed_low",
                        format!("killed_low ({lo}) must not exceed killed ({k})"),
                    );
                }
                if let Some(hi) = killed_high.filter(|hi| *hi < k) {
                    push(
                        errs,
                        p,
                        "killed_high",
                        format!("killed_high ({hi}) must not be below killed ({k})"),
                    );
                }
                if let Some(c) = civilians.filter(|c| *c > k) {
                    push(
                        errs,
                        p,
                        "civilians_killed",
                        format!("civilians_killed ({c}) must not exceed killed ({k})"),
                    );
                }
                if let Some(c) = children.filter(|c| *c > k) {
                    push(
                        errs,
                        p,
                        "children_killed",
                        format!("children_killed ({c}) must not exceed killed ({k})"),
                    );
                }
            }
        }
    }
    finish(errs, before, || {
        Some(CasualtiesReported {
            source: source?,
            killed,
            injured,
            killed_low,
            killed_high,
            civilians_killed: civilians,
            children_killed: children,
        })
    })
}

fn claim_made<V: JsonValue>(v: &V, p: &Ptr<'_>, errs: &mut Problems) -> Option<ClaimMade<'static>> {
    let before = errs.len();
    let m = object(
        v,
        p,
        &[
            "claim_id",
            "claimant",
            "statement",
            "attributed_to",
            "source",
        ],
        errs,
    )?;
    let claim_id = uuid_field(m, "claim_id", p, true, errs);
    let claimant = name(m, "claimant", p, true, errs);
    let statement = long_text(m, "statement", p, true, errs);
    let attributed_to = name(m, "attributed_to", p, false, errs);
    let source = source(m, "source", p, false, errs);
    finish(errs, before, || {
        Some(ClaimMade {
            claim_id: claim_id?,
            claimant: claimant?,
            statement: statement?,
            attributed_to,
            source,
        })
    })
}

fn claim_denied<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<ClaimDenied<'static>> {
    let before = errs.len();
    let m = object(v, p, &["claim_id", "by", "statement", "source"], errs)?;
    let claim_id = uuid_field(m, "claim_id", p, true, errs);
    let by = name(m, "by", p, true, errs);
    let statement = long_text(m, "statement", p, false, errs);
    let source = source(m, "source", p, false, errs);
    finish(errs, before, || {
        Some(ClaimDenied {
            claim_id: claim_id?,
            by: by?,
            statement,
            source,
        })
    })
}

fn claim_assessed<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<ClaimAssessed<'static>> {
    let before = errs.len();
    let m = object(v, p, &["claim_id", "assessment", "by", "evidence"], errs)?;
    let claim_id = uuid_field(m, "claim_id", p, true, errs);
    let assessment = enum_field::<Assessment, _>(m, "assessment", p, true, errs);
    let by = name(m, "by", p, true, errs);
    let evidence = long_text(m, "evidence", p, false, errs);
    finish(errs, before, || {
        Some(ClaimAssessed {
            claim_id: claim_id?,
            assessment: assessment?,
            by: by?,
            evidence,
        })
    })
}

fn source_added<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<SourceAdded<'static>> {
    let before = errs.len();
    let m = object(v, p, &["source"], errs)?;
    let source = source(m, "source", p, true, errs);
    finish(errs, before, || Some(SourceAdded { source: source? }))
}

fn corrected<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<IncidentCorrected<'static>> {
    let before = errs.len();
    const FIELDS: [&str; 9] = [
        "kind",
        "occurred_at",
        "time_precision",
        "region",
        "locality",
        "location",
        "perpetrator",
        "target",
        "summary",
    ];
    let mut allowed = vec!["reason"];
    allowed.extend_from_slice(&FIELDS);
    let m = object(v, p, &allowed, errs)?;
    let reason = long_text(m, "reason", p, true, errs);
    let kind = enum_field::<Kind, _>(m, "kind", p, false, errs);
    let occurred_at = parsed_field(m, "occurred_at", p, false, errs, OccurredAt::parse);
    let tp = enum_field::<TimePrecision, _>(m, "time_precision", p, false, errs);
    if let (Some(t), Some(tp)) = (occurred_at, tp) {
        if !tp.fits(&t) {
            push(errs, p, "time_precision", format!(
                "{tp:?} precision needs a timestamp; occurred_at is a plain date (use day, week or month)"
            ).to_lowercase());
        }
    }
    let region = parsed_field(m, "region", p, false, errs, Region::parse);
    let locality = name(m, "locality", p, false, errs);
    let location = location(m, p, errs);
    let perpetrator = name(m, "perpetrator", p, false, errs);
    let target = name(m, "target", p, false, errs);
    let summary = long_text(m, "summary", p, false, errs);
    if !FIELDS
        .iter()
        .any(|k| m.get(k).is_some_and(|v| !v.is_null()))
    {
        errs.push(FieldError::new(
            p.to_string(),
            format!(
                "a correction must give at least one field to change: {}",
                FIELDS.join(", ")
            ),
        ));
    }
    finish(errs, before, || {
        // A corrected occurred_at carries its own precision (the default for its form).
        let time_precision = tp.or_else(|| occurred_at.map(|t| TimePrecision::default_for(&t)));
        Some(IncidentCorrected {
            reason: reason?,
            kind,
            occurred_at,
            time_precision,
            region,
            locality,
            location,
            perpetrator,
            target,
            summary,
        })
    })
}

fn retracted<V: JsonValue>(
    v: &V,
    p: &Ptr<'_>,
    errs: &mut Problems,
) -> Option<IncidentRetracted<'static>> {
    let before = errs.len();
    let m = object(v, p, &["reason", "duplicate_of"], errs)?;
    let reason = long_text(m, "reason", p, true, errs);
    let duplicate_of = uuid_field(m, "duplicate_of", p, false, errs);
    finish(errs, before, || {
        Some(IncidentRetracted {
            reason: reason?,
            duplicate_of,
        })
    })
}
