//! Synthetic, realistic incident logs: many incidents across ~30 real ISO 3166-2 regions,
//! casualty updates from several sources, claims, denials, assessments, corrections and
//! retractions, as NDJSON import lines (SPEC section 5, `POST /v1/events`) or as single
//! append bodies. Deterministic for a seed. Every line is meant to pass validation: the
//! generator keeps each incident's state (version, claims, counts) like a careful client.

use serde_json::{json, Value};

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ua,
    Ru,
    Sy,
    Sd,
    Ps,
    Lb,
}

struct RegionInfo {
    code: &'static str,
    locality: &'static str,
    lat: f64,
    lon: f64,
    side: Side,
}

const fn r(
    code: &'static str,
    locality: &'static str,
    lat: f64,
    lon: f64,
    side: Side,
) -> RegionInfo {
    RegionInfo {
        code,
        locality,
        lat,
        lon,
        side,
    }
}

/// Real ISO 3166-2 subdivisions (checked against the table `rust_iso3166` ships).
const REGIONS: &[RegionInfo] = &[
    r("UA-63", "Kharkiv", 49.99, 36.23, Side::Ua),
    r("UA-65", "Kherson", 46.64, 32.61, Side::Ua),
    r("UA-14", "Kramatorsk", 48.72, 37.56, Side::Ua),
    r("UA-09", "Sievierodonetsk", 48.95, 38.49, Side::Ua),
    r("UA-23", "Zaporizhzhia", 47.84, 35.14, Side::Ua),
    r("UA-12", "Dnipro", 48.46, 35.05, Side::Ua),
    r("UA-59", "Sumy", 50.91, 34.80, Side::Ua),
    r("UA-74", "Chernihiv", 51.50, 31.29, Side::Ua),
    r("UA-30", "Kyiv", 50.45, 30.52, Side::Ua),
    r("UA-32", "Bila Tserkva", 49.80, 30.11, Side::Ua),
    r("UA-48", "Mykolaiv", 46.97, 31.99, Side::Ua),
    r("UA-51", "Odesa", 46.48, 30.72, Side::Ua),
    r("UA-46", "Lviv", 49.84, 24.03, Side::Ua),
    r("UA-18", "Zhytomyr", 50.25, 28.66, Side::Ua),
    r("UA-53", "Poltava", 49.59, 34.55, Side::Ua),
    r("UA-71", "Cherkasy", 49.44, 32.06, Side::Ua),
    r("UA-05", "Vinnytsia", 49.23, 28.47, Side::Ua),
    r("UA-35", "Kropyvnytskyi", 48.51, 32.26, Side::Ua),
    r("UA-43", "Sevastopol area", 44.95, 34.10, Side::Ua),
    r("RU-BEL", "Belgorod", 50.60, 36.59, Side::Ru),
    r("RU-KRS", "Kursk", 51.73, 36.19, Side::Ru),
    r("RU-BRY", "Bryansk", 53.24, 34.36, Side::Ru),
    r("RU-MOS", "Odintsovo", 55.68, 37.28, Side::Ru),
    r("RU-ROS", "Rostov-on-Don", 47.23, 39.72, Side::Ru),
    r("RU-KDA", "Novorossiysk", 44.72, 37.77, Side::Ru),
    r("RU-VOR", "Voronezh", 51.66, 39.20, Side::Ru),
    r("SY-HL", "Aleppo", 36.20, 37.13, Side::Sy),
    r("SY-ID", "Idlib", 35.93, 36.63, Side::Sy),
    r("SD-KH", "Khartoum", 15.50, 32.56, Side::Sd),
    r("SD-DN", "El Fasher", 13.63, 25.35, Side::Sd),
    r("PS-GZA", "Gaza City", 31.50, 34.47, Side::Ps),
    r("LB-NA", "Nabatieh", 33.38, 35.48, Side::Lb),
];

/// The region codes the generator uses (for query benchmarks).
pub fn region_codes() -> Vec<&'static str> {
    REGIONS.iter().map(|r| r.code).collect()
}

const KINDS: &[&str] = &[
    "missile_strike",
    "drone_strike",
    "air_strike",
    "shelling",
    "armed_clash",
    "explosion",
    "attack_on_civilians",
    "interception",
    "other",
];

fn perpetrators(side: Side) -> &'static [&'static str] {
    match side {
        Side::Ua => &["Russian armed forces", "Russian air force", "unknown"],
        Side::Ru => &["Ukrainian armed forces", "unknown"],
        Side::Sy => &[
            "Syrian government forces",
            "Russian air force",
            "armed opposition",
            "unknown",
        ],
        Side::Sd => &["Rapid Support Forces", "Sudanese Armed Forces", "unknown"],
        Side::Ps => &["Israel Defense Forces", "Hamas", "unknown"],
        Side::Lb => &["Israel Defense Forces", "Hezbollah", "unknown"],
    }
}

/// (name, kind) of sources that would report in a region.
fn sources(side: Side) -> &'static [(&'static str, &'static str)] {
    match side {
        Side::Ua => &[
            ("Regional Military Administration", "official"),
            ("State Emergency Service of Ukraine", "official"),
            ("Ukrainian Air Force", "official"),
            ("Suspilne", "media"),
            ("Ukrainska Pravda", "media"),
            ("Reuters", "media"),
            ("UN HRMMU", "ngo"),
            ("local Telegram channel", "social_media"),
            ("resident", "witness"),
        ],
        Side::Ru => &[
            ("Regional governor", "official"),
            ("Russian Ministry of Defence", "official"),
            ("TASS", "media"),
            ("Meduza", "media"),
            ("Astra", "social_media"),
            ("Reuters", "media"),
        ],
        Side::Sy => &[
            ("Syrian Observatory for Human Rights", "ngo"),
            ("SANA", "official"),
            ("White Helmets", "ngo"),
            ("Enab Baladi", "media"),
        ],
        Side::Sd => &[
            ("Sudan Doctors Network", "ngo"),
            ("Sudanese Armed Forces", "official"),
            ("Rapid Support Forces", "official"),
            ("Radio Dabanga", "media"),
        ],
        Side::Ps => &[
            ("Gaza Health Ministry", "official"),
            ("Israel Defense Forces", "official"),
            ("OCHA", "ngo"),
            ("Al Jazeera", "media"),
        ],
        Side::Lb => &[
            ("Lebanese Health Ministry", "official"),
            ("Israel Defense Forces", "official"),
            ("National News Agency", "media"),
            ("UNIFIL", "ngo"),
        ],
    }
}

const TARGETS: &[&str] = &[
    "residential building",
    "energy infrastructure",
    "port facilities",
    "market",
    "military position",
    "railway station",
    "hospital",
    "school",
    "fuel depot",
    "bridge",
];

/// One event as generated.
#[derive(Clone, Debug)]
pub struct GenEvent {
    pub event_id: String,
    pub event_type: &'static str,
    pub data: Value,
}

impl GenEvent {
    pub fn to_value(&self) -> Value {
        json!({"event_id": self.event_id, "type": self.event_type, "data": self.data})
    }
}

/// One atomic append to one incident.
#[derive(Clone, Debug)]
pub struct Line {
    pub incident_id: String,
    /// The incident's version before this append.
    pub expected_version: u64,
    pub events: Vec<GenEvent>,
}

impl Line {
    /// One NDJSON line of `POST /v1/events` (no trailing newline).
    pub fn to_ndjson(&self) -> String {
        let events: Vec<Value> = self.events.iter().map(GenEvent::to_value).collect();
        json!({"incident_id": self.incident_id, "expected_version": self.expected_version, "events": events})
            .to_string()
    }

    /// The body of `POST /v1/incidents/{id}/events`.
    pub fn append_body(&self) -> String {
        let events: Vec<Value> = self.events.iter().map(GenEvent::to_value).collect();
        json!({"expected_version": self.expected_version, "events": events}).to_string()
    }

    /// The same events as PostgreSQL COPY text rows:
    /// `incident_id, stream_version, event_id, event_type, data, recorded_by`.
    pub fn copy_rows(&self, out: &mut String) {
        for (i, e) in self.events.iter().enumerate() {
            out.push_str(&self.incident_id);
            out.push('\t');
            out.push_str(&(self.expected_version + 1 + i as u64).to_string());
            out.push('\t');
            out.push_str(&e.event_id);
            out.push('\t');
            out.push_str(e.event_type);
            out.push('\t');
            copy_escape(&e.data.to_string(), out);
            out.push_str("\tbench\n");
        }
    }
}

/// A request body whose ids are renewed in place for every request, so that a load generator
/// spends its CPU on the connection, not on building JSON (the server does the same work for
/// any body of the same shape).
#[derive(Clone, Debug)]
pub struct BodyTemplate {
    pub body: Vec<u8>,
    /// Byte offsets of the event ids (36-byte UUIDs) in `body`.
    event_id_slots: Vec<usize>,
}

impl BodyTemplate {
    /// The template of `line`'s `POST /v1/incidents/{id}/events` body.
    pub fn new(line: &Line) -> Self {
        let body = line.append_body().into_bytes();
        let event_id_slots = line
            .events
            .iter()
            .filter_map(|e| find(&body, e.event_id.as_bytes()))
            .collect();
        BodyTemplate {
            body,
            event_id_slots,
        }
    }

    /// Gives every event a fresh id and returns a fresh incident id.
    pub fn renew(&mut self, rng: &mut Rng) -> [u8; 36] {
        let mut id = [0u8; 36];
        for &at in &self.event_id_slots {
            rng.uuid_into(&mut id);
            self.body[at..at + 36].copy_from_slice(&id);
        }
        rng.uuid_into(&mut id);
        id
    }

    /// The event ids as they are in the body now.
    pub fn event_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.event_id_slots
            .iter()
            .filter_map(|&at| std::str::from_utf8(&self.body[at..at + 36]).ok())
    }

    pub fn events(&self) -> usize {
        self.event_id_slots.len()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// COPY text format escaping of one field.
fn copy_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[derive(Clone, Debug)]
struct Live {
    id: String,
    version: u64,
    region: usize,
    day: i64,
    kind: &'static str,
    claims: Vec<String>,
    killed: u64,
    injured: u64,
}

/// The generator.
pub struct Synth {
    rng: Rng,
    pool: Vec<Live>,
    pool_cap: usize,
    /// Percent of lines that report a new incident.
    new_percent: u64,
}

/// Days since 1970-01-01 of 2024-01-01, and the span of days generated (to 2026-10-31).
const DAY0: i64 = 19_723;
const DAYS: i64 = 1_035;

impl Synth {
    pub fn new(seed: u64) -> Self {
        Synth {
            rng: Rng::new(seed),
            pool: Vec::new(),
            pool_cap: 20_000,
            new_percent: 30,
        }
    }

    /// The next import line: a new incident, or follow-up events on a known one.
    pub fn next_line(&mut self) -> Line {
        if self.pool.is_empty() || self.rng.chance(self.new_percent) {
            let with_casualties = self.rng.chance(60);
            return self.new_incident(with_casualties);
        }
        let idx = self.rng.below(self.pool.len() as u64) as usize;
        let n = if self.rng.chance(20) { 2 } else { 1 };
        let mut live = self.pool.swap_remove(idx);
        let expected_version = live.version;
        let mut events = Vec::with_capacity(n);
        let mut retracted = false;
        for _ in 0..n {
            if retracted {
                break;
            }
            let e = self.follow_up(&mut live);
            retracted = e.event_type == "IncidentRetracted";
            events.push(e);
        }
        live.version += events.len() as u64;
        let line = Line {
            incident_id: live.id.clone(),
            expected_version,
            events,
        };
        if !retracted {
            self.pool.push(live);
        }
        line
    }

    /// A new incident: `IncidentReported`, optionally followed by `CasualtiesReported` from the
    /// same source (what a reporter posts for a fresh strike).
    pub fn new_incident(&mut self, with_casualties: bool) -> Line {
        let region = self.rng.below(REGIONS.len() as u64) as usize;
        let info = &REGIONS[region];
        let day = DAY0 + self.rng.below(DAYS as u64) as i64;
        let kind = *self.rng.pick(KINDS);
        let (occurred_at, precision) = if self.rng.chance(50) {
            (date_string(day), "day")
        } else {
            let minute = self.rng.below(24 * 60);
            (
                format!(
                    "{}T{:02}:{:02}:00Z",
                    date_string(day),
                    minute / 60,
                    minute % 60
                ),
                if self.rng.chance(50) { "exact" } else { "hour" },
            )
        };
        let source = self.source(info.side, info.locality);
        let target = *self.rng.pick(TARGETS);
        let perpetrator = *self.rng.pick(perpetrators(info.side));
        let lat = info.lat + (self.rng.below(2000) as f64 - 1000.0) / 10_000.0;
        let lon = info.lon + (self.rng.below(2000) as f64 - 1000.0) / 10_000.0;
        let summary = format!(
            "{} reported near {}, {}; damage to a {} and nearby buildings.",
            kind_phrase(kind),
            info.locality,
            info.code,
            target
        );
        let mut data = json!({
            "kind": kind,
            "occurred_at": occurred_at,
            "time_precision": precision,
            "region": info.code,
            "locality": info.locality,
            "location": {"lat": round4(lat), "lon": round4(lon), "precision": if self.rng.chance(70) { "near" } else { "exact" }},
            "perpetrator": perpetrator,
            "target": target,
            "summary": summary,
            "source": source,
        });
        if self.rng.chance(10) {
            if let Some(obj) = data.as_object_mut() {
                obj.remove("location");
            }
        }
        let mut live = Live {
            id: self.rng.uuid(),
            version: 0,
            region,
            day,
            kind,
            claims: Vec::new(),
            killed: 0,
            injured: 0,
        };
        let mut events = vec![GenEvent {
            event_id: self.rng.uuid(),
            event_type: "IncidentReported",
            data,
        }];
        if with_casualties {
            let killed = self.rng.below(6);
            let injured = killed + self.rng.below(12);
            live.killed = killed;
            live.injured = injured;
            let civilians = if killed > 0 {
                self.rng.below(killed + 1)
            } else {
                0
            };
            let children = if civilians > 0 {
                self.rng.below(civilians + 1) / 2
            } else {
                0
            };
            events.push(GenEvent {
                event_id: self.rng.uuid(),
                event_type: "CasualtiesReported",
                data: json!({
                    "killed": killed, "injured": injured,
                    "civilians_killed": civilians, "children_killed": children,
                    "source": source,
                }),
            });
        }
        live.version = events.len() as u64;
        let line = Line {
            incident_id: live.id.clone(),
            expected_version: 0,
            events,
        };
        if self.pool.len() >= self.pool_cap {
            let i = self.rng.below(self.pool.len() as u64) as usize;
            self.pool.swap_remove(i);
        }
        self.pool.push(live);
        line
    }

    fn follow_up(&mut self, live: &mut Live) -> GenEvent {
        let side = REGIONS[live.region].side;
        let locality = REGIONS[live.region].locality;
        let roll = self.rng.below(100);
        let (event_type, data) = if roll < 42 {
            // A casualty update: counts usually grow as bodies are recovered.
            let killed = live.killed + self.rng.below(4);
            let injured = live.injured.max(killed) + self.rng.below(5);
            live.killed = killed;
            live.injured = injured;
            let mut d = json!({"killed": killed, "injured": injured, "source": self.source(side, locality)});
            if self.rng.chance(30) {
                d["killed_low"] = json!(killed.saturating_sub(self.rng.below(3)));
                d["killed_high"] = json!(killed + self.rng.below(5));
            }
            if killed > 0 && self.rng.chance(50) {
                let civilians = self.rng.below(killed + 1);
                d["civilians_killed"] = json!(civilians);
                d["children_killed"] = json!(civilians / 3);
            }
            ("CasualtiesReported", d)
        } else if roll < 58 {
            (
                "SourceAdded",
                json!({"source": self.source(side, locality)}),
            )
        } else if roll < 70 || live.claims.is_empty() && roll < 86 {
            let claim_id = self.rng.uuid();
            live.claims.push(claim_id.clone());
            let perp = *self.rng.pick(perpetrators(side));
            (
                "ClaimMade",
                json!({
                    "claim_id": claim_id,
                    "claimant": self.claimant(side),
                    "statement": format!("The strike on {locality} hit a military target operated by the other side."),
                    "attributed_to": perp,
                    "source": self.source(side, locality),
                }),
            )
        } else if roll < 80 {
            let claim_id = self.rng.pick(&live.claims).clone();
            (
                "ClaimDenied",
                json!({
                    "claim_id": claim_id,
                    "by": self.claimant(side),
                    "statement": "No military objects were in the area; the victims were civilians.",
                    "source": self.source(side, locality),
                }),
            )
        } else if roll < 86 {
            let claim_id = self.rng.pick(&live.claims).clone();
            let assessment = if self.rng.chance(50) {
                "confirmed"
            } else {
                "refuted"
            };
            (
                "ClaimAssessed",
                json!({
                    "claim_id": claim_id,
                    "assessment": assessment,
                    "by": *self.rng.pick(&["Bellingcat", "UN HRMMU", "Amnesty International", "HRW"]),
                    "evidence": "Geolocated footage and satellite imagery of the impact site.",
                }),
            )
        } else if roll < 97 {
            let mut d =
                json!({"reason": "Location and date corrected after geolocation of footage."});
            match self.rng.below(3) {
                0 => {
                    // Move to another region of the same side (a reporter mixed up oblasts).
                    let same: Vec<usize> = (0..REGIONS.len())
                        .filter(|&i| REGIONS[i].side == side && i != live.region)
                        .collect();
                    let same = if same.is_empty() {
                        (0..REGIONS.len()).filter(|&i| i != live.region).collect()
                    } else {
                        same
                    };
                    let to = *self.rng.pick(&same);
                    live.region = to;
                    d["region"] = json!(REGIONS[to].code);
                    d["locality"] = json!(REGIONS[to].locality);
                }
                1 => {
                    let back = live.day - 1 - self.rng.below(3) as i64;
                    live.day = if back >= DAY0 { back } else { live.day + 1 };
                    d["occurred_at"] = json!(date_string(live.day));
                    d["time_precision"] = json!("day");
                }
                _ => {
                    let others: Vec<&'static str> =
                        KINDS.iter().copied().filter(|k| *k != live.kind).collect();
                    live.kind = *self.rng.pick(&others);
                    d["kind"] = json!(live.kind);
                }
            }
            ("IncidentCorrected", d)
        } else {
            let mut d = json!({"reason": "Duplicate of an earlier report of the same strike."});
            if let Some(other) = self.pool.last() {
                d["duplicate_of"] = json!(other.id);
            }
            ("IncidentRetracted", d)
        };
        GenEvent {
            event_id: self.rng.uuid(),
            event_type,
            data,
        }
    }

    fn source(&mut self, side: Side, locality: &str) -> Value {
        let (name, kind) = *self.rng.pick(sources(side));
        let name = match name {
            "Regional Military Administration" | "Regional governor" => {
                format!("{locality} {name}")
            }
            n => n.to_string(),
        };
        let mut s = json!({"name": name, "kind": kind});
        if self.rng.chance(60) {
            s["url"] = json!(format!(
                "https://example.org/reports/{}",
                self.rng.below(10_000_000)
            ));
        }
        s
    }

    fn claimant(&mut self, side: Side) -> &'static str {
        let options: &'static [&'static str] = match side {
            Side::Ua | Side::Ru => &["Russian Ministry of Defence", "Ukrainian General Staff"],
            Side::Sy => &["Syrian government", "Syrian opposition"],
            Side::Sd => &["Sudanese Armed Forces", "Rapid Support Forces"],
            Side::Ps | Side::Lb => &["Israel Defense Forces", "Hamas", "Hezbollah"],
        };
        options[self.rng.below(options.len() as u64) as usize]
    }
}

fn kind_phrase(kind: &str) -> &'static str {
    match kind {
        "missile_strike" => "Missile strike",
        "drone_strike" => "Drone strike",
        "air_strike" => "Air strike",
        "shelling" => "Artillery shelling",
        "armed_clash" => "Armed clash",
        "explosion" => "Explosion",
        "attack_on_civilians" => "Attack on civilians",
        "interception" => "Interception of drones",
        _ => "Incident",
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
pub fn date_string(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn body_template_renews_every_id_and_stays_valid_json() {
        let mut synth = Synth::new(3);
        let line = synth.new_incident(true);
        let mut t = BodyTemplate::new(&line);
        assert_eq!(t.events(), line.events.len());
        let mut rng = Rng::new(5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let incident = t.renew(&mut rng);
            assert!(seen.insert(incident));
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            let ids: Vec<&str> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, t.event_ids().collect::<Vec<_>>());
            for id in ids {
                assert!(seen.insert(id.as_bytes().try_into().unwrap()), "id reused");
            }
            // Everything but the ids is the template's.
            assert_eq!(v["expected_version"], 0);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(date_string(DAY0), "2024-01-01");
        assert_eq!(date_string(DAY0 + DAYS - 1), "2026-10-31");
        assert_eq!(date_string(DAY0 + 59), "2024-02-29");
    }

    #[test]
    fn lines_are_consistent_streams() {
        let mut s = Synth::new(42);
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut claims: HashMap<String, Vec<String>> = HashMap::new();
        let mut types: HashMap<&str, u64> = HashMap::new();
        let mut bytes = 0usize;
        let mut events = 0usize;
        for _ in 0..20_000 {
            let line = s.next_line();
            let v = versions.entry(line.incident_id.clone()).or_insert(0);
            assert_eq!(
                *v, line.expected_version,
                "expected versions follow the stream"
            );
            if line.expected_version == 0 {
                assert_eq!(line.events[0].event_type, "IncidentReported");
            }
            *v += line.events.len() as u64;
            for e in &line.events {
                *types.entry(e.event_type).or_default() += 1;
                bytes += e.to_value().to_string().len();
                events += 1;
                let cl = claims.entry(line.incident_id.clone()).or_default();
                if let Some(id) = e.data.get("claim_id").and_then(Value::as_str) {
                    if e.event_type == "ClaimMade" {
                        assert!(!cl.iter().any(|c| c == id));
                        cl.push(id.to_string());
                    } else {
                        assert!(
                            cl.iter().any(|c| c == id),
                            "claim exists before denial/assessment"
                        );
                    }
                }
                if e.event_type == "CasualtiesReported" {
                    let k = e.data["killed"].as_u64().unwrap();
                    if let Some(lo) = e.data.get("killed_low") {
                        assert!(lo.as_u64().unwrap() <= k);
                        assert!(e.data["killed_high"].as_u64().unwrap() >= k);
                    }
                    if let Some(c) = e.data.get("civilians_killed") {
                        assert!(c.as_u64().unwrap() <= k);
                        assert!(e.data["children_killed"].as_u64().unwrap() <= k);
                    }
                }
            }
        }
        for t in [
            "IncidentReported",
            "CasualtiesReported",
            "SourceAdded",
            "ClaimMade",
            "ClaimDenied",
            "ClaimAssessed",
            "IncidentCorrected",
            "IncidentRetracted",
        ] {
            assert!(
                types.get(t).copied().unwrap_or(0) > 50,
                "{t} generated: {types:?}"
            );
        }
        let avg = bytes / events;
        assert!((150..600).contains(&avg), "average event size {avg} bytes");
    }

    #[test]
    fn copy_rows_have_six_columns() {
        let mut s = Synth::new(1);
        let mut out = String::new();
        for _ in 0..100 {
            s.next_line().copy_rows(&mut out);
        }
        for row in out.lines() {
            assert_eq!(row.split('\t').count(), 6, "{row}");
        }
    }
}
