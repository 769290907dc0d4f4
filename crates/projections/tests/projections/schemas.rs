//! proto-docs/schemas: one JSON Schema per event type, in agreement with `parse_events`.
//! A small validator for the keywords the schemas use (pattern and format are left to the
//! code: no regex engine here) checks the examples and the seed events against them.
use incidentlog_projections::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto-docs/schemas");
const SEED: &str = include_str!("../../../../tests/fixtures/seed-incidents.ndjson");

fn schema(t: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/{t}.json"))
        .unwrap_or_else(|e| panic!("schema of {t}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local refs only");
            &root["$defs"][name]
        }
        None => s,
    }
}

/// Problems of `v` against schema `s` (subset: type, properties, required, additionalProperties,
/// minProperties, enum, minimum, maximum, minLength, maxLength, anyOf, $ref).
fn validate(root: &Value, s: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let s = resolve(root, s);
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            _ => panic!("type {t} not supported"),
        };
        if !ok {
            out.push(format!("{path}: not {t}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!("{path}: not in enum"));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            out.push(format!("{path}: below minimum"));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            out.push(format!("{path}: above maximum"));
        }
    }
    if let Some(x) = v.as_str() {
        let n = x.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            out.push(format!("{path}: length"));
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|a| {
            let mut o = Vec::new();
            validate(root, a, v, path, &mut o);
            o.is_empty()
        }) {
            out.push(format!("{path}: no anyOf branch"));
        }
    }
    if let Some(m) = v.as_object() {
        let props = s
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !m.contains_key(r.as_str().unwrap()) {
                out.push(format!("{path}/{}: required", r.as_str().unwrap()));
            }
        }
        if s.get("minProperties")
            .and_then(Value::as_u64)
            .is_some_and(|n| (m.len() as u64) < n)
        {
            out.push(format!("{path}: too few properties"));
        }
        for (k, x) in m {
            match props.get(k) {
                Some(ps) => validate(root, ps, x, &format!("{path}/{k}"), out),
                None if s.get("additionalProperties") == Some(&json!(false)) => {
                    out.push(format!("{path}/{k}: additional"))
                }
                None => {}
            }
        }
    }
}

fn schema_errors(t: &str, data: &Value) -> Vec<String> {
    let s = schema(t);
    let mut out = Vec::new();
    validate(&s, &s, data, "", &mut out);
    out
}

fn parse(t: &str, data: &Value) -> Result<Vec<TypedEvent>, Vec<FieldError>> {
    parse_events(
        &json!([{"event_id": "a1c3e0b4-6f2d-4e8a-9b1c-000000000101", "type": t, "data": data}]),
        "/events",
    )
    .map_err(Problems::into_kept)
}

#[test]
fn a_schema_for_every_event_type_in_agreement_with_the_code() {
    let files: BTreeSet<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = EVENT_TYPES.iter().map(|t| format!("{t}.json")).collect();
    assert_eq!(files, want);
    for t in EVENT_TYPES {
        let s = schema(t);
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{t}"
        );
        assert_eq!(s["additionalProperties"], false, "{t}");
        let example = s["examples"][0].clone();
        assert!(example.is_object(), "{t} has an example");
        assert_eq!(
            schema_errors(t, &example),
            Vec::<String>::new(),
            "{t} example vs schema"
        );
        assert!(
            parse(t, &example).is_ok(),
            "{t} example vs code: {:?}",
            parse(t, &example).err()
        );
        // the schema's properties are exactly the fields the code accepts
        let mut with_unknown = example.clone();
        with_unknown["zz_unknown"] = json!(1);
        assert!(!schema_errors(t, &with_unknown).is_empty());
        let errs = parse(t, &with_unknown).unwrap_err();
        let allowed: BTreeSet<&str> = errs[0]
            .message
            .split("allowed here: ")
            .nth(1)
            .unwrap()
            .split(", ")
            .collect();
        let props: BTreeSet<&str> = s["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(allowed, props, "{t}");
        // every required field is required by both
        for r in s["required"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            let mut without: Map<String, Value> = example.as_object().unwrap().clone();
            without.remove(r);
            let without = Value::Object(without);
            assert!(!schema_errors(t, &without).is_empty(), "{t} without {r}");
            let errs = parse(t, &without).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.pointer == format!("/events/0/data/{r}")
                        && e.message.contains("required")),
                "{t} without {r}: {errs:?}"
            );
        }
    }
}

#[test]
fn seed_events_validate_against_schemas_and_code() {
    let mut n = 0;
    for line in SEED.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(parse_events(&v["events"], "/events").is_ok());
        for e in v["events"].as_array().unwrap() {
            let t = e["type"].as_str().unwrap();
            assert_eq!(schema_errors(t, &e["data"]), Vec::<String>::new(), "{e}");
            n += 1;
        }
    }
    assert_eq!(n, 10);
}

#[test]
fn schemas_reject_what_the_code_rejects() {
    let cases = [
        ("CasualtiesReported", json!({"source": {"name": "A"}})),
        (
            "CasualtiesReported",
            json!({"source": {"name": "A"}, "killed": -1}),
        ),
        (
            "IncidentReported",
            json!({"kind": "nuke", "occurred_at": "2026-01-01", "region": "UA-63", "source": {"name": "A"}}),
        ),
        (
            "IncidentReported",
            json!({"kind": "shelling", "occurred_at": "2026-01-01", "region": "UA-63", "source": {"name": ""}}),
        ),
        (
            "IncidentReported",
            json!({"kind": "shelling", "occurred_at": "2026-01-01", "region": "UA-63", "source": {"name": "A"}, "location": {"lat": 91, "lon": 0}}),
        ),
        ("IncidentCorrected", json!({"reason": "r"})),
        (
            "ClaimAssessed",
            json!({"claim_id": "c1a1e000-0000-4000-8000-000000000401", "assessment": "maybe", "by": "x"}),
        ),
    ];
    for (t, data) in cases {
        assert!(
            !schema_errors(t, &data).is_empty(),
            "schema accepts {t} {data}"
        );
        assert!(parse(t, &data).is_err(), "code accepts {t} {data}");
    }
}
