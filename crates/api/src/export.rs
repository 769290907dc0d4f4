//! Exports of incident views for other tools: ACLED-style CSV and GeoJSON, written by
//! `incidentlog export` and by `GET /v1/incidents` (`Accept: text/csv` or
//! `application/geo+json`) alike, byte for byte.
//!
//! Both work on the JSON shape of an incident view (SPEC section 5, `GET /v1/incidents/{id}`),
//! not on the projection's Rust types, so the files say exactly what the API says. The column
//! mapping is documented in `proto-docs/export-formats.md`.

use std::collections::HashMap;
use std::io::Write;

use incidentlog_projections::{IncidentView, Region};
use serde_json::{json, Map, Value};

/// The two table formats of the incident views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// ACLED's 31 columns in ACLED's order, then ours; one row per incident.
    Csv,
    /// A FeatureCollection of the incidents that have a location.
    Geojson,
}

impl TableFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            TableFormat::Csv => "text/csv; charset=utf-8",
            TableFormat::Geojson => "application/geo+json",
        }
    }
}

/// Writes incident views as one table, in pieces: [`TableWriter::begin`], any number of
/// [`TableWriter::view`], [`TableWriter::end`].
pub struct TableWriter {
    format: TableFormat,
    regions: RegionNames,
    features: u64,
}

impl TableWriter {
    pub fn new(format: TableFormat) -> TableWriter {
        TableWriter {
            format,
            regions: RegionNames::default(),
            features: 0,
        }
    }

    /// The header row, or the FeatureCollection's opening.
    pub fn begin(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            TableFormat::Csv => write_csv_header(out),
            TableFormat::Geojson => {
                out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
        }
    }

    /// One incident: its row, or its Feature when it has a location.
    pub fn view(&mut self, view: &IncidentView, out: &mut impl Write) -> std::io::Result<()> {
        let v = serde_json::to_value(view)?;
        let info = self.regions.get(s(&v, "region"));
        match self.format {
            TableFormat::Csv => write_csv_record(out, &csv_row(&v, info)),
            TableFormat::Geojson => {
                let Some(feature) = geojson_feature(&v, info) else {
                    return Ok(());
                };
                out.write_all(if self.features == 0 { b"\n" } else { b",\n" })?;
                self.features += 1;
                serde_json::to_writer(out, &feature).map_err(std::io::Error::from)
            }
        }
    }

    /// The FeatureCollection's closing (nothing for CSV).
    pub fn end(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            TableFormat::Csv => Ok(()),
            TableFormat::Geojson => out.write_all(b"\n]}\n"),
        }
    }
}

/// Region and country names by code, looked up once each.
#[derive(Default)]
pub struct RegionNames {
    map: HashMap<String, RegionInfo>,
}

impl RegionNames {
    pub fn get(&mut self, code: &str) -> &RegionInfo {
        self.map.entry(code.to_string()).or_insert_with(|| {
            let mut info = RegionInfo::default();
            if let Ok(region) = Region::parse(code) {
                info.name = region.name().to_string();
                info.country_code = region.country().to_string();
            } else {
                info.country_code = code.split('-').next().unwrap_or("").to_string();
            }
            if let Some(c) = rust_iso3166::from_alpha2(&info.country_code) {
                info.country_name = c.name.to_string();
                info.country_numeric = Some(i32::from(c.numeric));
            }
            info
        })
    }
}

/// ACLED's own 31 columns, in ACLED's order.
pub const ACLED_COLUMNS: [&str; 31] = [
    "event_id_cnty",
    "event_date",
    "year",
    "time_precision",
    "disorder_type",
    "event_type",
    "sub_event_type",
    "actor1",
    "assoc_actor_1",
    "inter1",
    "actor2",
    "assoc_actor_2",
    "inter2",
    "interaction",
    "civilian_targeting",
    "iso",
    "region",
    "country",
    "admin1",
    "admin2",
    "admin3",
    "location",
    "latitude",
    "longitude",
    "geo_precision",
    "source",
    "source_scale",
    "notes",
    "fatalities",
    "tags",
    "timestamp",
];

/// Our columns, after ACLED's 31 (never between them).
pub const EXTRA_COLUMNS: [&str; 24] = [
    "incident_id",
    "status",
    "kind",
    "region_code",
    "occurred_at",
    "time_precision_label",
    "location_precision",
    "perpetrator",
    "target",
    "killed_low",
    "killed_best",
    "killed_high",
    "injured_low",
    "injured_best",
    "injured_high",
    "civilians_killed",
    "children_killed",
    "claims_total",
    "claims_unverified",
    "claims_disputed",
    "claims_confirmed",
    "claims_refuted",
    "version",
    "last_recorded_at",
];

/// Facts about a region code that the view may not carry itself.
#[derive(Clone, Debug, Default)]
pub struct RegionInfo {
    pub name: String,
    pub country_code: String,
    pub country_name: String,
    /// ISO 3166-1 numeric code of the country (ACLED's `iso`), if known.
    pub country_numeric: Option<i32>,
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

/// ACLED event_type / sub_event_type / disorder_type for one of our kinds.
pub fn acled_types(kind: &str) -> (&'static str, &'static str, &'static str) {
    const REMOTE: &str = "Explosions/Remote violence";
    const PV: &str = "Political violence";
    const SD: &str = "Strategic developments";
    match kind {
        "missile_strike" | "shelling" => (PV, REMOTE, "Shelling/artillery/missile attack"),
        "drone_strike" | "air_strike" => (PV, REMOTE, "Air/drone strike"),
        "explosion" => (PV, REMOTE, "Remote explosive/landmine/IED"),
        "armed_clash" => (PV, "Battles", "Armed clash"),
        "attack_on_civilians" => (PV, "Violence against civilians", "Attack"),
        "interception" => (SD, SD, "Disrupted weapons use"),
        _ => (SD, SD, "Other"),
    }
}

/// ACLED time precision: 1 = day or better, 2 = week, 3 = month.
pub fn acled_time_precision(p: &str) -> &'static str {
    match p {
        "week" => "2",
        "month" => "3",
        _ => "1",
    }
}

/// ACLED geo precision: 1 = exact, 2 = near, 3 = admin area.
pub fn acled_geo_precision(p: &str) -> &'static str {
    match p {
        "exact" => "1",
        "near" => "2",
        _ => "3",
    }
}

/// `YYYY-MM-DD` of an `occurred_at` (RFC 3339 timestamp or plain date).
pub fn date_part(occurred_at: &str) -> &str {
    occurred_at.get(..10).unwrap_or(occurred_at)
}

/// Unix seconds of an RFC 3339 timestamp (ACLED's `timestamp`), empty if unparsable.
fn unix_seconds(ts: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| t.timestamp().to_string())
        .unwrap_or_default()
}

fn coord(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Degrees as ACLED gives them, to four decimals; what rounds to zero is `0.0000`, never
/// `-0.0000`.
fn degrees(x: f64) -> String {
    let rounded = format!("{x:.4}");
    match rounded.strip_prefix('-') {
        Some(unsigned) if unsigned.bytes().all(|b| b == b'0' || b == b'.') => unsigned.to_string(),
        _ => rounded,
    }
}

/// `lat`, `lon` and precision of the view's location, if it has one.
pub fn location(view: &Value) -> Option<(f64, f64, String)> {
    let loc = view.get("location")?;
    let lat = coord(loc.get("lat")?)?;
    let lon = coord(loc.get("lon")?)?;
    let precision = loc
        .get("precision")
        .and_then(Value::as_str)
        .unwrap_or("exact");
    Some((lat, lon, precision.to_string()))
}

/// Distinct source names, in the order the view lists them.
fn source_names(view: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(sources) = view.get("sources").and_then(Value::as_array) {
        for src in sources {
            let name = match src {
                Value::String(n) => n.as_str(),
                other => s(other, "name"),
            };
            // `;` separates the names of a cell: one inside a name is written `\;` (and a
            // backslash `\\`), so splitting on unescaped `;` gives the names back.
            let name = name.replace('\\', "\\\\").replace(';', "\\;");
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Counts of claims by status: (total, unverified, disputed, confirmed, refuted).
fn claim_counts(view: &Value) -> [u64; 5] {
    let mut c = [0u64; 5];
    if let Some(claims) = view.get("claims").and_then(Value::as_array) {
        for claim in claims {
            c[0] += 1;
            match s(claim, "status") {
                "unverified" => c[1] += 1,
                "disputed" => c[2] += 1,
                "confirmed" => c[3] += 1,
                "refuted" => c[4] += 1,
                _ => {}
            }
        }
    }
    c
}

fn time_precision(view: &Value) -> String {
    match s(view, "time_precision") {
        "" => {
            // SPEC: default `exact` for a timestamp, `day` for a plain date.
            if s(view, "occurred_at").len() > 10 {
                "exact".into()
            } else {
                "day".into()
            }
        }
        p => p.into(),
    }
}

/// The 31 ACLED cells then ours, for one incident view.
pub fn csv_row(view: &Value, region: &RegionInfo) -> Vec<String> {
    let kind = s(view, "kind");
    let (disorder, event_type, sub_event_type) = acled_types(kind);
    let occurred_at = s(view, "occurred_at");
    let date = date_part(occurred_at);
    let tp = time_precision(view);
    let loc = location(view);
    let claims = claim_counts(view);
    let killed_low = n(view, &["casualties", "killed", "low"]);
    let incident_id = s(view, "incident_id");
    let region_name = match s(view, "region_name") {
        "" => region.name.as_str(),
        name => name,
    };
    let mut row: Vec<String> = vec![
        incident_id.to_string(),
        date.to_string(),
        date.get(..4).unwrap_or("").to_string(),
        acled_time_precision(&tp).to_string(),
        disorder.to_string(),
        event_type.to_string(),
        sub_event_type.to_string(),
        s(view, "perpetrator").to_string(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        if kind == "attack_on_civilians" {
            "Civilian targeting".to_string()
        } else {
            String::new()
        },
        region
            .country_numeric
            .map(|c| c.to_string())
            .unwrap_or_default(),
        String::new(),
        region.country_name.clone(),
        region_name.to_string(),
        String::new(),
        String::new(),
        s(view, "locality").to_string(),
        loc.as_ref().map(|l| degrees(l.0)).unwrap_or_default(),
        loc.as_ref().map(|l| degrees(l.1)).unwrap_or_default(),
        loc.as_ref()
            .map(|l| acled_geo_precision(&l.2).to_string())
            .unwrap_or_default(),
        source_names(view).join(";"),
        String::new(),
        s(view, "summary").to_string(),
        killed_low.to_string(),
        String::new(),
        unix_seconds(s(view, "last_recorded_at")),
    ];
    debug_assert_eq!(row.len(), ACLED_COLUMNS.len());
    row.extend([
        incident_id.to_string(),
        s(view, "status").to_string(),
        kind.to_string(),
        s(view, "region").to_string(),
        occurred_at.to_string(),
        tp,
        loc.as_ref().map(|l| l.2.clone()).unwrap_or_default(),
        s(view, "perpetrator").to_string(),
        s(view, "target").to_string(),
        killed_low.to_string(),
        n(view, &["casualties", "killed", "best"]).to_string(),
        n(view, &["casualties", "killed", "high"]).to_string(),
        n(view, &["casualties", "injured", "low"]).to_string(),
        n(view, &["casualties", "injured", "best"]).to_string(),
        n(view, &["casualties", "injured", "high"]).to_string(),
        n(view, &["casualties", "civilians_killed"]).to_string(),
        n(view, &["casualties", "children_killed"]).to_string(),
        claims[0].to_string(),
        claims[1].to_string(),
        claims[2].to_string(),
        claims[3].to_string(),
        claims[4].to_string(),
        n(view, &["version"]).to_string(),
        s(view, "last_recorded_at").to_string(),
    ]);
    row
}

/// One CSV field, quoted when it must be (RFC 4180).
pub fn csv_field(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(field)
    }
}

/// One CSV record with CRLF line end (RFC 4180, what spreadsheet tools expect).
pub fn write_csv_record<W: Write, S: AsRef<str>>(out: &mut W, fields: &[S]) -> std::io::Result<()> {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(csv_field(f.as_ref()).as_bytes())?;
    }
    out.write_all(b"\r\n")
}

pub fn write_csv_header<W: Write>(out: &mut W) -> std::io::Result<()> {
    let header: Vec<&str> = ACLED_COLUMNS
        .iter()
        .chain(EXTRA_COLUMNS.iter())
        .copied()
        .collect();
    write_csv_record(out, &header)
}

/// The GeoJSON Feature of an incident view, or None when it has no location.
pub fn geojson_feature(view: &Value, region: &RegionInfo) -> Option<Value> {
    let (lat, lon, precision) = location(view)?;
    let claims = claim_counts(view);
    let region_name = match s(view, "region_name") {
        "" => region.name.as_str(),
        name => name,
    };
    let mut p = Map::new();
    let mut put = |k: &str, v: Value| {
        p.insert(k.to_string(), v);
    };
    let text = |k: &str| match s(view, k) {
        "" => Value::Null,
        t => Value::String(t.to_string()),
    };
    put("incident_id", text("incident_id"));
    put("status", text("status"));
    put("kind", text("kind"));
    put("region", text("region"));
    put("region_name", json!(region_name));
    put("country", json!(region.country_code));
    put("occurred_at", text("occurred_at"));
    put("date", json!(date_part(s(view, "occurred_at"))));
    put("time_precision", json!(time_precision(view)));
    put("location_precision", json!(precision));
    put("locality", text("locality"));
    put("perpetrator", text("perpetrator"));
    put("target", text("target"));
    put("summary", text("summary"));
    put(
        "killed_low",
        json!(n(view, &["casualties", "killed", "low"])),
    );
    put(
        "killed_best",
        json!(n(view, &["casualties", "killed", "best"])),
    );
    put(
        "killed_high",
        json!(n(view, &["casualties", "killed", "high"])),
    );
    put(
        "injured_low",
        json!(n(view, &["casualties", "injured", "low"])),
    );
    put(
        "injured_best",
        json!(n(view, &["casualties", "injured", "best"])),
    );
    put(
        "injured_high",
        json!(n(view, &["casualties", "injured", "high"])),
    );
    put(
        "civilians_killed",
        json!(n(view, &["casualties", "civilians_killed"])),
    );
    put(
        "children_killed",
        json!(n(view, &["casualties", "children_killed"])),
    );
    put("claims_total", json!(claims[0]));
    put("claims_unverified", json!(claims[1]));
    put("claims_disputed", json!(claims[2]));
    put("claims_confirmed", json!(claims[3]));
    put("claims_refuted", json!(claims[4]));
    put("sources", json!(source_names(view).join(";")));
    put("version", json!(n(view, &["version"])));
    put("first_recorded_at", text("first_recorded_at"));
    put("last_recorded_at", text("last_recorded_at"));
    let id = text("incident_id");
    Some(json!({
        "type": "Feature",
        "id": id,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": Value::Object(p),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Value {
        json!({
            "incident_id": "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01",
            "kind": "drone_strike",
            "occurred_at": "2026-01-02T21:30:00Z",
            "time_precision": "week",
            "region": "UA-63",
            "locality": "Kharkiv, \"centre\"",
            "location": {"lat": 49.99351, "lon": 36.230383, "precision": "near"},
            "perpetrator": "Russian armed forces",
            "summary": "line one\nline two, with comma",
            "status": "active",
            "casualties": {"killed": {"low": 2, "best": 3, "high": 4},
                           "injured": {"low": 0, "best": 5, "high": 6},
                           "civilians_killed": 2, "children_killed": 1},
            "claims": [{"status": "disputed"}, {"status": "confirmed"}],
            "sources": [{"name": "A"}, {"name": "B"}, {"name": "A"}],
            "version": 7,
            "first_recorded_at": "2026-01-03T00:00:00Z",
            "last_recorded_at": "2026-01-04T00:00:00Z"
        })
    }

    fn region() -> RegionInfo {
        RegionInfo {
            name: "Kharkivska oblast".into(),
            country_code: "UA".into(),
            country_name: "Ukraine".into(),
            country_numeric: Some(804),
        }
    }

    fn cell<'a>(row: &'a [String], column: &str) -> &'a str {
        let i = ACLED_COLUMNS
            .iter()
            .chain(EXTRA_COLUMNS.iter())
            .position(|c| *c == column)
            .expect("column");
        &row[i]
    }

    #[test]
    fn csv_row_maps_acled_columns() {
        let row = csv_row(&view(), &region());
        assert_eq!(row.len(), ACLED_COLUMNS.len() + EXTRA_COLUMNS.len());
        assert_eq!(cell(&row, "event_date"), "2026-01-02");
        assert_eq!(cell(&row, "year"), "2026");
        assert_eq!(cell(&row, "time_precision"), "2");
        assert_eq!(cell(&row, "event_type"), "Explosions/Remote violence");
        assert_eq!(cell(&row, "sub_event_type"), "Air/drone strike");
        assert_eq!(cell(&row, "disorder_type"), "Political violence");
        assert_eq!(cell(&row, "iso"), "804");
        assert_eq!(cell(&row, "country"), "Ukraine");
        assert_eq!(cell(&row, "admin1"), "Kharkivska oblast");
        assert_eq!(cell(&row, "latitude"), "49.9935");
        assert_eq!(cell(&row, "longitude"), "36.2304");
        assert_eq!(cell(&row, "geo_precision"), "2");
        assert_eq!(cell(&row, "source"), "A;B");
        assert_eq!(cell(&row, "fatalities"), "2");
        assert_eq!(cell(&row, "timestamp"), "1767484800");
        assert_eq!(cell(&row, "killed_best"), "3");
        assert_eq!(cell(&row, "claims_disputed"), "1");
        assert_eq!(cell(&row, "claims_confirmed"), "1");
        assert_eq!(cell(&row, "version"), "7");
    }

    #[test]
    fn kinds_map_to_acled_types() {
        assert_eq!(
            acled_types("interception"),
            (
                "Strategic developments",
                "Strategic developments",
                "Disrupted weapons use"
            )
        );
        assert_eq!(acled_types("armed_clash").1, "Battles");
        assert_eq!(
            acled_types("shelling").2,
            "Shelling/artillery/missile attack"
        );
        assert_eq!(
            acled_types("attack_on_civilians").1,
            "Violence against civilians"
        );
        assert_eq!(acled_types("other").2, "Other");
    }

    #[test]
    fn csv_quoting() {
        let mut out = Vec::new();
        write_csv_record(&mut out, &["a", "b,c", "d\"e", "f\ng", ""]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,\"b,c\",\"d\"\"e\",\"f\ng\",\r\n"
        );
    }

    #[test]
    fn header_is_acled_then_ours() {
        let mut out = Vec::new();
        write_csv_header(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let cols: Vec<&str> = text.trim_end().split(',').collect();
        assert_eq!(&cols[..31], &ACLED_COLUMNS[..]);
        assert_eq!(cols[31], "incident_id");
    }

    #[test]
    fn degrees_round_to_four_decimals_without_a_negative_zero() {
        assert_eq!(degrees(49.99351), "49.9935");
        assert_eq!(degrees(-36.23038), "-36.2304");
        assert_eq!(degrees(-0.0), "0.0000");
        assert_eq!(degrees(-1e-7), "0.0000");
        assert_eq!(degrees(-0.00005), "-0.0001");
        assert_eq!(degrees(-180.0), "-180.0000");
    }

    #[test]
    fn geojson_point_is_lon_lat() {
        let f = geojson_feature(&view(), &region()).unwrap();
        assert_eq!(f["geometry"]["type"], "Point");
        assert_eq!(f["geometry"]["coordinates"][0], json!(36.230383));
        assert_eq!(f["geometry"]["coordinates"][1], json!(49.99351));
        assert_eq!(f["properties"]["time_precision"], "week");
        assert_eq!(f["properties"]["location_precision"], "near");
        let mut no_loc = view();
        no_loc.as_object_mut().unwrap().remove("location");
        assert!(geojson_feature(&no_loc, &region()).is_none());
    }
}
