//! A tiny in-memory log for tests: appends go through `parse_events` and `decide` exactly as
//! the service does, and come out as `Envelope`s.
#![allow(dead_code)]
use chrono::{DateTime, Duration, TimeZone, Utc};
use incidentlog_projections::*;
use serde_json::{json, value::RawValue, Value};
use uuid::Uuid;

pub struct Rec {
    pub position: u64,
    pub incident: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Box<RawValue>,
    pub recorded_at: DateTime<Utc>,
    /// The validated event the record was written from.
    pub typed: TypedEvent,
}

impl Rec {
    /// The event as the appending process hands it to its views (no decoding).
    pub fn appended(&self) -> DecodedEvent {
        DecodedEvent::appended(
            self.typed.clone(),
            self.position,
            self.incident,
            self.version,
            self.recorded_at,
        )
    }

    pub fn env(&self) -> Envelope<'_> {
        Envelope {
            global_position: self.position,
            incident_id: self.incident,
            stream_version: self.version,
            event_id: self.event_id,
            event_type: &self.event_type,
            data: &self.data,
            recorded_at: self.recorded_at,
            recorded_by: "test",
        }
    }
}

/// Test clock: 2026-01-03T00:00:00Z.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap()
}

pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x5f0c7a52_0000_4000_8000_000000000000 | n)
}

#[derive(Default)]
pub struct Log {
    pub recs: Vec<Rec>,
    pub next_event: u128,
    /// Record every event at `now()` (so that interleavings give identical views).
    pub fixed_time: bool,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn version(&self, incident: Uuid) -> u64 {
        self.recs.iter().filter(|r| r.incident == incident).count() as u64
    }

    pub fn state(&self, incident: Uuid) -> IncidentState {
        let mut st = IncidentState::with_id(incident);
        for r in self.recs.iter().filter(|r| r.incident == incident) {
            st.apply(&r.env()).unwrap();
        }
        st
    }

    /// Appends `[(type, data)]` to `incident` after parse + decide; Err = the field errors.
    pub fn try_append(
        &mut self,
        incident: Uuid,
        events: &[(&str, Value)],
    ) -> Result<u64, Vec<FieldError>> {
        let body: Vec<Value> = events
            .iter()
            .map(|(t, d)| {
                self.next_event += 1;
                json!({"event_id": Uuid::from_u128(0xe0000000_0000_4000_8000_000000000000 | self.next_event), "type": t, "data": d})
            })
            .collect();
        let typed = parse_events(&Value::Array(body), "/events").map_err(Problems::into_kept)?;
        decide(&self.state(incident), &typed, now(), "/events")?;
        let base = self.version(incident);
        for (version, t) in (base + 1..).zip(typed) {
            let position = self.recs.len() as u64 + 1;
            self.recs.push(Rec {
                position,
                incident,
                version,
                event_id: t.event_id,
                event_type: t.event_type().to_owned(),
                data: t.canonical_data(),
                recorded_at: if self.fixed_time {
                    now()
                } else {
                    now() + Duration::seconds(position as i64)
                },
                typed: t,
            });
        }
        Ok(self.recs.len() as u64)
    }

    /// Appends and panics on rejection; returns the last position.
    pub fn append(&mut self, incident: Uuid, events: &[(&str, Value)]) -> u64 {
        match self.try_append(incident, events) {
            Ok(p) => p,
            Err(e) => panic!("append rejected: {e:?}"),
        }
    }

    pub fn projection(&self) -> Projection {
        self.projection_with(Projection::new())
    }

    pub fn projection_with(&self, mut p: Projection) -> Projection {
        for r in &self.recs {
            p.apply(&r.env()).unwrap();
        }
        p
    }

    pub fn projection_upto(&self, pos: u64) -> Projection {
        let mut p = Projection::new();
        for r in self.recs.iter().take_while(|r| r.position <= pos) {
            p.apply(&r.env()).unwrap();
        }
        p
    }

    /// Reads an ndjson append file (the seed format) into this log.
    pub fn import(&mut self, ndjson: &str) {
        for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let incident: Uuid = v["incident_id"].as_str().unwrap().parse().unwrap();
            let typed = parse_events(&v["events"], "/events").unwrap();
            decide(&self.state(incident), &typed, now(), "/events").unwrap();
            let base = self.version(incident);
            for (version, t) in (base + 1..).zip(typed) {
                let position = self.recs.len() as u64 + 1;
                self.recs.push(Rec {
                    position,
                    incident,
                    version,
                    event_id: t.event_id,
                    event_type: t.event_type().to_owned(),
                    data: t.canonical_data(),
                    recorded_at: now() + Duration::seconds(position as i64),
                    typed: t,
                });
            }
        }
    }
}

pub fn src(name: &str) -> Value {
    json!({"name": name, "kind": "media"})
}

pub fn report(kind: &str, occurred_at: &str, region: &str) -> (&'static str, Value) {
    (
        "IncidentReported",
        json!({"kind": kind, "occurred_at": occurred_at, "region": region, "source": src("Reporter")}),
    )
}

pub fn summary_json(p: &Projection, region: &str, w: &Window, at: Option<u64>) -> Value {
    let r = Region::parse(region).unwrap();
    serde_json::to_value(p.region_summary(&r, w, at)).unwrap()
}

/// The digest as it is defined, computed line by line from the owned views the API serves:
/// the tag, the position, every incident view sorted by id as one JSON line, every region's
/// summary (those with nothing counted left included) sorted by code. `regions`: every region
/// code the log used.
pub fn digest_by_definition(p: &Projection, regions: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"incidentlog views v2\n");
    h.update(format!("position {}\n", p.position()).as_bytes());
    let mut views: Vec<_> = p.views().collect();
    views.sort_by_key(|v| v.incident_id);
    for v in views {
        h.update(serde_json::to_string(&v).unwrap().as_bytes());
        h.update(b"\n");
    }
    let mut codes = regions.to_vec();
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let region = Region::parse(code).unwrap();
        let Some(r) = p.region_summary(&region, &Window::all(), None) else {
            continue;
        };
        h.update(serde_json::to_string(&r).unwrap().as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}
