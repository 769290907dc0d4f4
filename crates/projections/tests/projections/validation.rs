//! Strict decoding: every problem reported, each with a pointer and a readable message.
use incidentlog_projections::*;
use serde_json::{json, Value};

const EID: &str = "a1c3e0b4-6f2d-4e8a-9b1c-000000000101";
const CID: &str = "c1a1e000-0000-4000-8000-000000000301";

fn ev(ty: &str, data: Value) -> Value {
    json!({"event_id": EID, "type": ty, "data": data})
}

fn reported() -> Value {
    json!({"kind": "missile_strike", "occurred_at": "2026-01-02", "region": "UA-63",
           "source": {"name": "Kharkiv regional authorities", "kind": "official"}})
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

fn cas(fields: Value) -> Value {
    let mut d = json!({"source": {"name": "OHCHR"}});
    for (k, v) in fields.as_object().unwrap() {
        d[k] = v.clone();
    }
    ev("CasualtiesReported", d)
}

/// JSON text of `v` with every object's keys in reverse order (a `Value` writes them sorted).
fn reversed_text(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let members: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), reversed_text(v)))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(reversed_text).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// `parse_events` on the `Value` and on the borrowed tree the append path parses (from the
/// text with its keys in either order): the same events, or the same errors in the same order.
fn parse_both(events: &Value) -> Result<Vec<TypedEvent>, Vec<FieldError>> {
    let by_value = parse_events(events, "/events");
    for text in [events.to_string(), reversed_text(events)] {
        let tree = Json::from_slice(text.as_bytes()).expect("valid JSON");
        assert_eq!(
            parse_events(&tree, "/events"),
            by_value,
            "the borrowed tree of {text} decodes differently"
        );
    }
    by_value.map_err(Problems::into_kept)
}

/// (events array, expected [(pointer, message fragment)]); an empty list means "accepted".
fn check(events: Value, expected: &[(&str, &str)]) {
    let got = match parse_both(&events) {
        Ok(_) => vec![],
        Err(errs) => errs,
    };
    let got_ptrs: Vec<&str> = got.iter().map(|e| e.pointer.as_str()).collect();
    let want_ptrs: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    assert_eq!(got_ptrs, want_ptrs, "for {events}: {got:#?}");
    for (e, (_, frag)) in got.iter().zip(expected) {
        assert!(
            e.message.contains(frag),
            "{:?} should mention {frag:?}",
            e.message
        );
    }
}

#[test]
fn validation_table() {
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        // the seed's first event is fine
        (json!([ev("IncidentReported", reported())]), vec![]),
        (json!({}), vec![("/events", "array")]),
        (json!([]), vec![("/events", "at least one")]),
        (json!([42]), vec![("/events/0", "object")]),
        (
            json!([{"type": "IncidentReported", "data": reported(), "extra": 1}]),
            vec![
                ("/events/0/extra", "unknown field"),
                ("/events/0/event_id", "required"),
            ],
        ),
        (
            json!([{"event_id": "not-a-uuid", "type": "Nope", "data": {}}]),
            vec![
                ("/events/0/event_id", "UUID"),
                ("/events/0/type", "unknown event type"),
            ],
        ),
        (
            json!([{"event_id": "a1c3e0b46f2d4e8a9b1c000000000101", "type": "SourceAdded", "data": {"source": {"name": "x"}}}]),
            vec![("/events/0/event_id", "UUID")],
        ),
        (
            json!([{"event_id": EID, "type": "SourceAdded"}]),
            vec![("/events/0/data", "required")],
        ),
        (
            json!([ev("IncidentReported", json!({}))]),
            vec![
                ("/events/0/data/kind", "required"),
                ("/events/0/data/occurred_at", "required"),
                ("/events/0/data/region", "required"),
                ("/events/0/data/source", "required"),
            ],
        ),
        (
            json!([ev("IncidentReported", with(reported(), "bogus", json!(1)))]),
            vec![("/events/0/data/bogus", "unknown field")],
        ),
        (
            json!([ev("IncidentReported", with(reported(), "a/b~c", json!(1)))]),
            vec![("/events/0/data/a~1b~0c", "unknown field")],
        ),
        // Several unknown fields: reported in key order, whatever order the body has them in
        // (`parse_both` also parses the text with its keys reversed).
        (
            json!([ev(
                "IncidentReported",
                with(
                    with(with(reported(), "zz", json!(1)), "aa", json!(2)),
                    "mm",
                    json!(3)
                )
            )]),
            vec![
                ("/events/0/data/aa", "unknown field"),
                ("/events/0/data/mm", "unknown field"),
                ("/events/0/data/zz", "unknown field"),
            ],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(
                    with(
                        with(reported(), "kind", json!("nuke")),
                        "region",
                        json!("XX-99")
                    ),
                    "occurred_at",
                    json!("2026-13-01")
                )
            )]),
            vec![
                ("/events/0/data/kind", "missile_strike"),
                ("/events/0/data/occurred_at", "calendar date"),
                ("/events/0/data/region", "ISO 3166-2"),
            ],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "occurred_at", json!("yesterday"))
            )]),
            vec![("/events/0/data/occurred_at", "RFC 3339")],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "occurred_at", json!("2026-1-02"))
            )]),
            vec![("/events/0/data/occurred_at", "RFC 3339")],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "time_precision", json!("exact"))
            )]),
            vec![("/events/0/data/time_precision", "plain date")],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "time_precision", json!("decade"))
            )]),
            vec![("/events/0/data/time_precision", "\"week\"")],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(
                    reported(),
                    "location",
                    json!({"lat": 91, "lon": -180.5, "precision": "city", "alt": 3})
                )
            )]),
            vec![
                ("/events/0/data/location/alt", "unknown field"),
                ("/events/0/data/location/lat", "between -90 and 90"),
                ("/events/0/data/location/lon", "between -180 and 180"),
                ("/events/0/data/location/precision", "\"admin2\""),
            ],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "location", json!({"lat": "50", "lon": 36.2}))
            )]),
            vec![("/events/0/data/location/lat", "number")],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(
                    reported(),
                    "source",
                    json!({"kind": "blog", "url": "ftp://x.org/a", "archive_url": "https://", "sha256": "abc", "published_at": "soon"})
                )
            )]),
            vec![
                ("/events/0/data/source/name", "required"),
                ("/events/0/data/source/kind", "\"social_media\""),
                ("/events/0/data/source/url", "http(s) URL"),
                ("/events/0/data/source/archive_url", "http(s) URL"),
                ("/events/0/data/source/published_at", "RFC 3339"),
                ("/events/0/data/source/sha256", "64 hexadecimal"),
            ],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(
                    with(reported(), "summary", json!("   ")),
                    "locality",
                    json!("a\u{0007}b")
                )
            )]),
            vec![
                ("/events/0/data/locality", "control characters"),
                ("/events/0/data/summary", "empty"),
            ],
        ),
        // Invisible characters alone are blank; one-line names refuse the Unicode line and
        // paragraph separators (free text allows them, as it allows line breaks).
        (
            json!([ev(
                "IncidentReported",
                with(
                    with(
                        with(reported(), "summary", json!("\u{200B}\u{FEFF} \u{2060}")),
                        "locality",
                        json!("Kharkiv\u{2028}centre")
                    ),
                    "target",
                    json!("\u{00AD}\u{200D}")
                )
            )]),
            vec![
                ("/events/0/data/locality", "single line"),
                ("/events/0/data/target", "empty"),
                ("/events/0/data/summary", "empty"),
            ],
        ),
        (
            json!([ev(
                "IncidentReported",
                with(
                    with(reported(), "summary", json!("x".repeat(5001))),
                    "target",
                    json!(7)
                )
            )]),
            vec![
                ("/events/0/data/target", "string"),
                ("/events/0/data/summary", "too long: 5001"),
            ],
        ),
        // null optional fields count as absent
        (
            json!([ev(
                "IncidentReported",
                with(reported(), "summary", Value::Null)
            )]),
            vec![],
        ),
        // casualties
        (
            json!([cas(
                json!({"killed": 3, "killed_low": 2, "killed_high": 5, "injured": 0, "civilians_killed": 3, "children_killed": 1})
            )]),
            vec![],
        ),
        (json!([cas(json!({"injured": 4}))]), vec![]),
        (
            json!([cas(json!({}))]),
            vec![("/events/0/data", "at least one count")],
        ),
        (
            json!([cas(json!({"killed": -1}))]),
            vec![("/events/0/data/killed", "0 or more")],
        ),
        (
            json!([cas(json!({"killed": 1.5}))]),
            vec![("/events/0/data/killed", "whole number")],
        ),
        // One event id, one event: the second use points at itself.
        (
            json!([cas(json!({"killed": 1})), cas(json!({"killed": 2}))]),
            vec![("/events/1/event_id", "repeats the event_id of event 0")],
        ),
        // A whole number written with a fraction is that number (JSON Schema's "integer").
        (json!([cas(json!({"killed": 2.0, "injured": 0.0}))]), vec![]),
        (
            json!([cas(json!({"killed": -2.0}))]),
            vec![("/events/0/data/killed", "0 or more")],
        ),
        (
            json!([cas(json!({"killed": 2e7}))]),
            vec![("/events/0/data/killed", "at most")],
        ),
        (
            json!([cas(json!({"killed": "3"}))]),
            vec![("/events/0/data/killed", "must be a number")],
        ),
        (
            json!([cas(json!({"killed": 20_000_000}))]),
            vec![("/events/0/data/killed", "at most")],
        ),
        (
            json!([cas(
                json!({"killed": 3, "killed_low": 4, "killed_high": 2, "civilians_killed": 5, "children_killed": 4})
            )]),
            vec![
                ("/events/0/data/killed_low", "must not exceed killed (3)"),
                ("/events/0/data/killed_high", "must not be below killed (3)"),
                ("/events/0/data/civilians_killed", "must not exceed killed"),
                ("/events/0/data/children_killed", "must not exceed killed"),
            ],
        ),
        (
            json!([cas(json!({"killed_low": 1}))]),
            vec![("/events/0/data/killed_low", "give killed")],
        ),
        (
            json!([ev("CasualtiesReported", json!({"killed": 1}))]),
            vec![("/events/0/data/source", "required")],
        ),
        // claims
        (
            json!([ev(
                "ClaimMade",
                json!({"claim_id": CID, "claimant": "MoD", "statement": "s"})
            )]),
            vec![],
        ),
        (
            json!([ev("ClaimMade", json!({"claim_id": "x", "statement": ""}))]),
            vec![
                ("/events/0/data/claim_id", "UUID"),
                ("/events/0/data/claimant", "required"),
                ("/events/0/data/statement", "empty"),
            ],
        ),
        (
            json!([ev("ClaimDenied", json!({"claim_id": CID}))]),
            vec![("/events/0/data/by", "required")],
        ),
        (
            json!([ev(
                "ClaimAssessed",
                json!({"claim_id": CID, "assessment": "likely", "by": "ACLED"})
            )]),
            vec![("/events/0/data/assessment", "\"confirmed\", \"refuted\"")],
        ),
        (
            json!([ev("SourceAdded", json!({}))]),
            vec![("/events/0/data/source", "required")],
        ),
        // corrections and retractions
        (
            json!([ev("IncidentCorrected", json!({"reason": "typo"}))]),
            vec![("/events/0/data", "at least one field")],
        ),
        (
            json!([ev("IncidentCorrected", json!({"region": "UA-65"}))]),
            vec![("/events/0/data/reason", "required")],
        ),
        (
            json!([ev(
                "IncidentCorrected",
                json!({"reason": "r", "region": "UA-65"})
            )]),
            vec![],
        ),
        (
            json!([ev("IncidentRetracted", json!({"duplicate_of": "nope"}))]),
            vec![
                ("/events/0/data/reason", "required"),
                ("/events/0/data/duplicate_of", "UUID"),
            ],
        ),
        // every event is checked, problems of all of them reported
        (
            json!([
                ev("IncidentReported", reported()),
                cas(json!({})),
                ev("SourceAdded", json!({"source": {"name": ""}}))
            ]),
            vec![
                ("/events/1/data", "at least one count"),
                ("/events/2/data/source/name", "empty"),
            ],
        ),
    ];
    for (events, expected) in cases {
        check(events, &expected);
    }
}

#[test]
fn canonical_data_is_deterministic_with_defaults_filled() {
    let a = json!([{"type": "IncidentReported", "event_id": EID, "data": {
        "source": {"kind": "official", "name": "Authorities"}, "region": "ua-63",
        "occurred_at": "2026-01-02T12:30:00+02:00", "kind": "shelling", "summary": null,
        "location": {"lon": 36.25, "lat": 49.99}}}]);
    let t = parse_both(&a).unwrap();
    assert_eq!(t[0].event_type(), "IncidentReported");
    assert_eq!(
        t[0].canonical_data().get(),
        r#"{"kind":"shelling","occurred_at":"2026-01-02T10:30:00Z","time_precision":"exact","region":"UA-63","location":{"lat":49.99,"lon":36.25,"precision":"exact"},"source":{"name":"Authorities","kind":"official"}}"#
    );
    // A count written as `2.0` is stored as the number it is.
    let w = json!([cas(json!({"killed": 2.0}))]);
    let t = parse_both(&w).unwrap();
    assert!(
        t[0].canonical_data().get().ends_with(r#""killed":2}"#),
        "{}",
        t[0].canonical_data().get()
    );
    // -0.0 and 0 are the same place, so the same content: a retry that a client re-serialized
    // (JavaScript writes -0 as `0`) is a repeat, not a conflict.
    let zero = |lat: Value, lon: Value| {
        let e = json!([ev(
            "IncidentReported",
            with(reported(), "location", json!({"lat": lat, "lon": lon}))
        )]);
        parse_both(&e).unwrap()[0]
            .canonical_data()
            .get()
            .to_string()
    };
    let negative = zero(json!(-0.0), json!(-0.0));
    assert_eq!(negative, zero(json!(0), json!(0)));
    assert!(
        negative.contains(r#""location":{"lat":0.0,"lon":0.0,"#),
        "{negative}"
    );
    let d = json!([ev("IncidentReported", reported())]);
    let t = parse_both(&d).unwrap();
    assert_eq!(
        t[0].canonical_data().get(),
        r#"{"kind":"missile_strike","occurred_at":"2026-01-02","time_precision":"day","region":"UA-63","source":{"name":"Kharkiv regional authorities","kind":"official"}}"#
    );
    // A corrected date gets the default precision of its form.
    let c = json!([ev(
        "IncidentCorrected",
        json!({"occurred_at": "2026-01-01", "reason": "r"})
    )]);
    let t = parse_both(&c).unwrap();
    assert_eq!(
        t[0].canonical_data().get(),
        r#"{"reason":"r","occurred_at":"2026-01-01","time_precision":"day"}"#
    );
    // Canonical bytes decode back into the same typed event.
    let mut second = cas(json!({"killed": 2, "killed_high": 4}));
    second["event_id"] = json!("00000000-0000-4000-8000-000000000002");
    for e in parse_events(
        &json!([ev("IncidentReported", reported()), second]),
        "/events",
    )
    .unwrap()
    {
        let bytes = e.canonical_data();
        let back = IncidentEvent::decode(1, e.event_type(), bytes.get()).unwrap();
        assert_eq!(back, e.event);
    }
}

#[test]
fn stored_data_is_decoded_strictly() {
    assert!(
        IncidentEvent::decode(1, "SourceAdded", r#"{"source":{"name":"x"},"more":1}"#).is_err()
    );
    assert!(IncidentEvent::decode(
        1,
        "SourceAdded",
        r#"{"source":{"name":"x","colour":"red"}}"#
    )
    .is_err());
    assert!(IncidentEvent::decode(1, "Unknown", r#"{}"#).is_err());
    assert!(IncidentEvent::decode(1, "IncidentRetracted", r#"{"reason":"dup"}"#).is_ok());
}

#[test]
fn regions_come_from_the_iso_table() {
    let r = Region::parse("UA-63").unwrap();
    assert_eq!(
        (r.code(), r.name(), r.country()),
        ("UA-63", "Kharkivska oblast", "UA")
    );
    assert_eq!(Region::parse("fr-idf").unwrap().country(), "FR");
    assert_eq!(
        Region::parse("RU-MOS").unwrap().name(),
        "Moskovskaya oblast'"
    );
    assert_eq!(Region::parse("us-ca").unwrap().code(), "US-CA");
    for bad in [
        "",
        "UA",
        "UA-99",
        "XX-01",
        "UA-63 ",
        "ÜA-63",
        "UA-63-63-63-63",
    ] {
        assert!(Region::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn windows_parse_dates_and_timestamps() {
    assert!(Window::parse(None, None).unwrap().is_all());
    let e = Window::parse(Some("2026-01-03"), Some("2026-01-02")).unwrap_err();
    assert_eq!(e.pointer, "/from");
    assert_eq!(
        Window::parse(None, Some("tomorrow")).unwrap_err().pointer,
        "/to"
    );
    let w = Window::parse(Some("2026-01-02"), Some("2026-01-02")).unwrap();
    let at = |s: &str| OccurredAt::parse(s).unwrap();
    assert!(w.contains(at("2026-01-02")));
    assert!(w.contains(at("2026-01-02T23:59:59.999999999Z")));
    assert!(!w.contains(at("2026-01-03T00:00:00Z")));
    assert!(!w.contains(at("2026-01-01T23:59:59Z")));
    assert!(w.contains(at("2026-01-03T01:00:00+02:00")));
}

/// Text with invisible characters among visible ones (joined emoji, right-to-left names with
/// their direction marks) is accepted as sent, and free text keeps its Unicode line breaks.
#[test]
fn visible_text_with_invisible_characters_is_kept() {
    let locality = "\u{200F}خاركيف\u{200F} 👩\u{200D}⚕️";
    let summary = "first line\u{2028}second line";
    let e = json!([ev(
        "IncidentReported",
        with(
            with(reported(), "locality", json!(locality)),
            "summary",
            json!(summary)
        )
    )]);
    let t = parse_both(&e).unwrap();
    let data: Value = serde_json::from_str(t[0].canonical_data().get()).unwrap();
    assert_eq!(data["locality"], locality);
    assert_eq!(data["summary"], summary);
}

/// More characters that show nothing alone: Hangul fillers, the combining grapheme joiner,
/// tag characters, variation selectors, noncharacters. Text made only of them is blank.
#[test]
fn text_of_fillers_tags_and_selectors_alone_is_blank() {
    for blank in [
        "\u{3164}",
        "\u{115F}\u{1160}",
        "\u{034F}",
        "\u{E0001}\u{E0041}",
        "\u{FE0F} \u{FE00}",
        "\u{FFFE}",
        "\u{17B4}",
        "\u{206A}",
        "\u{061C}",
        "\u{202B}\u{202C}",
        "\u{2066}\u{2069}",
        "\u{FFF9}\u{1D173}",
        "\u{2800}",
        "\u{1BCA0}\u{FFF0}",
        "\u{E0080}\u{E01F0}",
    ] {
        let e = json!([ev(
            "IncidentReported",
            with(reported(), "target", json!(blank))
        )]);
        let errs = parse_both(&e).unwrap_err();
        assert_eq!(errs.len(), 1, "{blank:?}: {errs:?}");
        assert_eq!(errs[0].pointer, "/events/0/data/target");
        assert!(errs[0].message.contains("empty"), "{blank:?}: {errs:?}");
    }
}

/// URLs: the scheme in any case (RFC 3986, 3.1), userinfo, IPv6 literals and ports up to
/// 65535; not a port past it, nor an empty host.
#[test]
fn urls_take_any_scheme_case_and_valid_ports_only() {
    let with_url = |url: &str| {
        json!([ev(
            "IncidentReported",
            with(reported(), "source", json!({"name": "A", "url": url}))
        )])
    };
    for good in [
        "HTTPS://EXAMPLE.COM/",
        "Http://example.com",
        "https://example.com:443/a?b#c",
        "https://example.com:/a",
        "https://user:pw@example.com:8080/",
        "https://[2001:db8::1]:8443/x",
        "https://[::1]",
    ] {
        assert!(parse_both(&with_url(good)).is_ok(), "{good}");
    }
    for bad in [
        "https://example.com:99999/",
        "https://example.com:65536",
        "https://example.com:8o/",
        "https://:80/",
        "https://user@/",
        "https://[::1/",
        "https://[]:80/",
        "https://[::1]x/",
        "ftp://example.com/",
        "https://example.org:80:90/",
        "https://[zz]/",
    ] {
        let errs = parse_both(&with_url(bad)).unwrap_err();
        assert_eq!(errs[0].pointer, "/events/0/data/source/url", "{bad}");
    }
    let errs = parse_both(&with_url("https://example.com:99999/")).unwrap_err();
    assert!(errs[0].message.contains("at most 65535"), "{errs:?}");
}

/// The examples of proto-docs/events.md, one per event type, are valid and, appended in the
/// order shown, accepted one after another by one incident (a newcomer posting them as written
/// must not meet a 409 or a 422).
#[test]
fn the_examples_in_events_md_are_accepted_in_order() {
    let doc = include_str!("../../../../proto-docs/events.md");
    let examples: Vec<Value> = doc
        .split("```json\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        // (The first block is a schematic, not JSON; the count below catches a broken one.)
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .filter(|v| v.get("type").is_some() && v.get("event_id").is_some())
        .collect();
    assert_eq!(examples.len(), 8, "one example per event type");
    let mut ids = std::collections::HashSet::new();
    let mut state = IncidentState::with_id(uuid::Uuid::new_v4());
    // The examples' times are in January 2026.
    let when = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 10, 0, 0, 0).unwrap();
    for (i, example) in examples.iter().enumerate() {
        assert!(
            ids.insert(example["event_id"].as_str().unwrap().to_owned()),
            "example {i} reuses an event_id"
        );
        let typed = parse_both(&json!([example])).unwrap_or_else(|e| panic!("example {i}: {e:?}"));
        decide_and_apply(&mut state, &typed, when, "/events")
            .unwrap_or_else(|e| panic!("example {i} ({}): {e:?}", example["type"]));
    }
    let seed = include_str!("../../../../tests/fixtures/seed-incidents.ndjson");
    for id in &ids {
        assert!(!seed.contains(id.as_str()), "{id} is a seed event's id too");
    }
}

/// Every problem is counted, only the first [`PROBLEMS_KEPT`] are kept: memory follows what an
/// answer lists, not what a body holds.
#[test]
fn problems_are_counted_but_only_the_first_are_kept() {
    let events = Value::Array(vec![json!({}); 10_000]);
    let err = parse_events(&events, "/events").expect_err("no event is valid");
    assert_eq!(err.len(), 30_000);
    assert_eq!(err.kept().len(), PROBLEMS_KEPT);
    assert_eq!(err.kept()[0].pointer, "/events/0/event_id");
    let mut more = Problems::default();
    more.push(FieldError::new("/x", "first"));
    more.append(err);
    assert_eq!(more.len(), 30_001);
    assert_eq!(more.kept()[0].pointer, "/x");
    assert_eq!(more.kept().len(), PROBLEMS_KEPT);
}
