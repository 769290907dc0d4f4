//! Incident views and regional summaries, rule by rule.
use crate::common::*;
use incidentlog_projections::*;
use serde_json::{json, Value};

const C1: &str = "c1a1e000-0000-4000-8000-000000000001";

fn cas(source: &str, counts: Value) -> (&'static str, Value) {
    let mut d = counts;
    d["source"] = json!({"name": source});
    ("CasualtiesReported", d)
}

fn fig(v: &Value) -> (u64, u64, u64) {
    (
        v["low"].as_u64().unwrap(),
        v["best"].as_u64().unwrap(),
        v["high"].as_u64().unwrap(),
    )
}

#[test]
fn casualty_figures_across_sources_over_time() {
    // (report, killed (low,best,high), injured (low,best,high), civilians, children) after it
    let steps: Vec<((&str, Value), (u64, u64, u64), (u64, u64, u64), u64, u64)> = vec![
        (cas("A", json!({"injured": 4})), (0, 0, 0), (4, 4, 4), 0, 0),
        (
            cas(
                "A",
                json!({"killed": 2, "civilians_killed": 2, "children_killed": 1}),
            ),
            (2, 2, 2),
            (4, 4, 4),
            2,
            1,
        ),
        (
            cas(
                "B",
                json!({"killed": 5, "killed_low": 3, "killed_high": 8, "injured": 6}),
            ),
            (2, 5, 8),
            (4, 6, 6),
            2,
            1,
        ),
        // A revises: only A's latest counts for A
        (cas("A", json!({"killed": 4})), (3, 4, 8), (4, 6, 6), 2, 1),
        // C gives only civilians: killed figures untouched, civilians follow the latest report
        (
            cas("C", json!({"civilians_killed": 3})),
            (3, 4, 8),
            (4, 6, 6),
            3,
            1,
        ),
        // B revises down with a range
        (
            cas("B", json!({"killed": 4, "killed_high": 6, "injured": 5})),
            (4, 4, 6),
            (4, 5, 5),
            3,
            1,
        ),
        (
            cas("D", json!({"killed": 10, "killed_low": 1})),
            (1, 10, 10),
            (4, 5, 5),
            3,
            1,
        ),
    ];
    let mut log = Log::new();
    log.append(id(1), &[report("missile_strike", "2026-01-02", "UA-63")]);
    for (i, (ev, k, inj, civ, ch)) in steps.into_iter().enumerate() {
        log.append(id(1), &[ev]);
        let p = log.projection();
        let v = serde_json::to_value(p.incident(id(1)).unwrap()).unwrap();
        let c = &v["casualties"];
        assert_eq!(fig(&c["killed"]), k, "step {i}: {c}");
        assert_eq!(fig(&c["injured"]), inj, "step {i}: {c}");
        assert_eq!(c["civilians_killed"], civ, "step {i}");
        assert_eq!(c["children_killed"], ch, "step {i}");
        // the region carries the same figures
        let s = summary_json(&p, "UA-63", &Window::all(), None);
        assert_eq!(s["casualties"], *c, "step {i}");
    }
}

#[test]
fn regional_figures_are_sums_over_incidents() {
    let mut log = Log::new();
    log.append(
        id(1),
        &[
            report("missile_strike", "2026-01-01", "UA-63"),
            cas("A", json!({"killed": 1, "killed_high": 3, "injured": 5})),
        ],
    );
    log.append(
        id(2),
        &[
            report("drone_strike", "2026-01-02", "UA-63"),
            cas("A", json!({"killed": 1, "civilians_killed": 1})),
            cas("B", json!({"killed": 2, "injured": 4})),
        ],
    );
    log.append(id(3), &[report("interception", "2026-01-02", "UA-63")]);
    let p = log.projection();
    let s = summary_json(&p, "UA-63", &Window::all(), None);
    assert_eq!(s["incidents"], 3);
    assert_eq!(
        s["strikes"],
        json!({"total": 2, "by_kind": {"missile_strike": 1, "drone_strike": 1}})
    );
    assert_eq!(
        s["casualties"],
        json!({"killed": {"low": 2, "best": 3, "high": 5}, "injured": {"low": 9, "best": 9, "high": 9}, "civilians_killed": 1, "children_killed": 0})
    );
}

#[test]
fn claim_lifecycle_latest_assessment_wins() {
    let steps: Vec<((&str, Value), &str)> = vec![
        (
            (
                "ClaimMade",
                json!({"claim_id": C1, "claimant": "MoD", "statement": "s", "attributed_to": "X", "source": {"name": "TASS"}}),
            ),
            "unverified",
        ),
        (
            (
                "ClaimDenied",
                json!({"claim_id": C1, "by": "Y", "statement": "no"}),
            ),
            "disputed",
        ),
        (
            ("ClaimDenied", json!({"claim_id": C1, "by": "Z"})),
            "disputed",
        ),
        (
            (
                "ClaimAssessed",
                json!({"claim_id": C1, "assessment": "confirmed", "by": "ACLED", "evidence": "video"}),
            ),
            "confirmed",
        ),
        (
            (
                "ClaimAssessed",
                json!({"claim_id": C1, "assessment": "refuted", "by": "OHCHR"}),
            ),
            "refuted",
        ),
        (
            ("ClaimDenied", json!({"claim_id": C1, "by": "W"})),
            "refuted",
        ),
        (
            (
                "ClaimAssessed",
                json!({"claim_id": C1, "assessment": "confirmed", "by": "UN"}),
            ),
            "confirmed",
        ),
    ];
    let mut log = Log::new();
    log.append(id(1), &[report("shelling", "2026-01-02", "UA-65")]);
    for (i, (ev, status)) in steps.into_iter().enumerate() {
        log.append(id(1), &[ev]);
        let p = log.projection();
        let v = serde_json::to_value(p.incident(id(1)).unwrap()).unwrap();
        assert_eq!(v["claims"][0]["status"], status, "step {i}");
        let s = summary_json(&p, "UA-65", &Window::all(), None);
        assert_eq!(s["claims"]["total"], 1);
        assert_eq!(s["claims"][status], 1, "step {i}: {}", s["claims"]);
    }
    let v = serde_json::to_value(log.projection().incident(id(1)).unwrap()).unwrap();
    let c = &v["claims"][0];
    assert_eq!(c["claimant"], "MoD");
    assert_eq!(c["attributed_to"], "X");
    assert_eq!(c["source"], json!({"name": "TASS"}));
    assert_eq!(c["denials"].as_array().unwrap().len(), 3);
    assert_eq!(c["denials"][0]["statement"], "no");
    let by: Vec<&str> = c["assessments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["ACLED", "OHCHR", "UN"]);
    assert_eq!(c["assessments"][0]["evidence"], "video");
}

#[test]
fn correction_moves_incident_between_regions_and_days() {
    let mut log = Log::new();
    log.append(
        id(1),
        &[
            report("shelling", "2026-01-01", "UA-63"),
            cas("A", json!({"killed": 3})),
        ],
    );
    let before = log.recs.len() as u64;
    log.append(id(1), &[("IncidentCorrected", json!({"reason": "wrong oblast", "region": "UA-65", "occurred_at": "2026-01-02T06:00:00Z", "locality": "Kherson"}))]);
    let p = log.projection();
    let day1 = Window::parse(Some("2026-01-01"), Some("2026-01-01")).unwrap();
    let day2 = Window::parse(Some("2026-01-02"), Some("2026-01-02")).unwrap();
    // now: gone from UA-63 (nothing counted, but the region had a record), in UA-65 on day 2
    let s63 = summary_json(&p, "UA-63", &Window::all(), None);
    assert_eq!(
        (
            s63["incidents"].clone(),
            s63["casualties"]["killed"]["best"].clone()
        ),
        (json!(0), json!(0))
    );
    assert_eq!(s63["first_occurred_at"], Value::Null);
    let s65 = summary_json(&p, "UA-65", &Window::all(), None);
    assert_eq!(s65["incidents"], 1);
    assert_eq!(s65["casualties"]["killed"]["best"], 3);
    assert_eq!(s65["first_occurred_at"], "2026-01-02T06:00:00Z");
    assert_eq!(summary_json(&p, "UA-65", &day1, None)["incidents"], 0);
    assert_eq!(summary_json(&p, "UA-65", &day2, None)["incidents"], 1);
    let codes: Vec<String> = p
        .region_summaries(&Window::all(), None)
        .into_iter()
        .map(|s| s.region)
        .collect();
    assert_eq!(codes, ["UA-65"]);
    // as of before the correction: where it was
    assert_eq!(
        summary_json(&p, "UA-63", &day1, Some(before))["incidents"],
        1
    );
    assert_eq!(
        summary_json(&p, "UA-65", &Window::all(), Some(before)),
        Value::Null
    );
    // the view
    let v = serde_json::to_value(p.incident(id(1)).unwrap()).unwrap();
    assert_eq!(
        (
            v["region"].as_str(),
            v["region_name"].as_str(),
            v["locality"].as_str()
        ),
        (Some("UA-65"), Some("Khersonska oblast"), Some("Kherson"))
    );
    assert_eq!(v["time_precision"], "exact");
    assert_eq!(
        v["corrections"],
        json!([{"reason": "wrong oblast", "fields": ["occurred_at", "time_precision", "region", "locality"], "recorded_at": v["last_recorded_at"]}])
    );
    assert_eq!(v["version"], 3);
}

#[test]
fn retraction_leaves_summaries_keeps_history() {
    let mut log = Log::new();
    log.append(
        id(1),
        &[
            report("shelling", "2026-01-01", "UA-63"),
            cas("A", json!({"killed": 3})),
        ],
    );
    log.append(id(2), &[report("air_strike", "2026-01-02", "UA-63")]);
    let before = log.recs.len() as u64;
    log.append(
        id(1),
        &[(
            "IncidentRetracted",
            json!({"reason": "duplicate of 2", "duplicate_of": id(2).to_string()}),
        )],
    );
    let p = log.projection();
    let s = summary_json(&p, "UA-63", &Window::all(), None);
    assert_eq!(s["incidents"], 1);
    assert_eq!(
        s["strikes"],
        json!({"total": 1, "by_kind": {"air_strike": 1}})
    );
    assert_eq!(s["casualties"]["killed"]["best"], 0);
    assert_eq!(s["first_occurred_at"], "2026-01-02");
    assert_eq!(
        summary_json(&p, "UA-63", &Window::all(), Some(before))["incidents"],
        2
    );
    let v = serde_json::to_value(p.incident(id(1)).unwrap()).unwrap();
    assert_eq!(v["status"], "retracted");
    assert_eq!(v["retraction"]["reason"], "duplicate of 2");
    assert_eq!(v["retraction"]["duplicate_of"], id(2).to_string());
    assert_eq!(v["casualties"]["killed"]["best"], 3);
    // listing: retracted only with status=retracted
    let ids = |q: &IncidentQuery| -> Vec<uuid::Uuid> {
        p.incidents(q)
            .unwrap()
            .incidents
            .iter()
            .map(|v| v.incident_id)
            .collect()
    };
    assert_eq!(ids(&IncidentQuery::default()), [id(2)]);
    assert_eq!(
        ids(&IncidentQuery {
            status: Some(IncidentStatus::Retracted),
            ..Default::default()
        }),
        [id(1)]
    );
    // retracting the only incident of a region: the region drops out of the list
    let mut log2 = Log::new();
    log2.append(
        id(3),
        &[
            report("shelling", "2026-01-01", "UA-65"),
            ("IncidentRetracted", json!({"reason": "false report"})),
        ],
    );
    let p2 = log2.projection();
    assert!(p2.region_summaries(&Window::all(), None).is_empty());
    assert_eq!(
        summary_json(&p2, "UA-65", &Window::all(), None)["incidents"],
        0
    );
}

#[test]
fn windows_with_dates_and_timestamps() {
    let mut log = Log::new();
    let occ = [
        "2026-01-01",
        "2026-01-01T23:30:00Z",
        "2026-01-02T00:00:00Z",
        "2026-01-02T12:00:00+02:00",
        "2026-01-02",
    ];
    for (i, t) in occ.iter().enumerate() {
        log.append(id(i as u128 + 1), &[report("shelling", t, "UA-63")]);
    }
    let p = log.projection();
    // (from, to, incidents, first, last)
    let cases: Vec<(Option<&str>, Option<&str>, u64, Value, Value)> = vec![
        (
            None,
            None,
            5,
            json!("2026-01-01"),
            json!("2026-01-02T10:00:00Z"),
        ),
        (
            Some("2026-01-01"),
            Some("2026-01-01"),
            2,
            json!("2026-01-01"),
            json!("2026-01-01T23:30:00Z"),
        ),
        (
            Some("2026-01-02"),
            None,
            3,
            json!("2026-01-02"),
            json!("2026-01-02T10:00:00Z"),
        ),
        (
            None,
            Some("2026-01-01T23:30:00Z"),
            2,
            json!("2026-01-01"),
            json!("2026-01-01T23:30:00Z"),
        ),
        (
            None,
            Some("2026-01-01T23:29:59Z"),
            1,
            json!("2026-01-01"),
            json!("2026-01-01"),
        ),
        (
            Some("2026-01-01T00:00:01Z"),
            Some("2026-01-02T09:59:59Z"),
            3,
            json!("2026-01-01T23:30:00Z"),
            json!("2026-01-02T00:00:00Z"),
        ),
        (
            Some("2026-01-02T10:00:00Z"),
            Some("2026-01-02T10:00:00Z"),
            1,
            json!("2026-01-02T10:00:00Z"),
            json!("2026-01-02T10:00:00Z"),
        ),
        (
            Some("2026-01-02T00:00:00+01:00"),
            Some("2026-01-01T23:59:59Z"),
            1,
            json!("2026-01-01T23:30:00Z"),
            json!("2026-01-01T23:30:00Z"),
        ),
        (Some("2026-01-03"), None, 0, Value::Null, Value::Null),
    ];
    for (from, to, n, first, last) in cases {
        let w = Window::parse(from, to).unwrap();
        let s = summary_json(&p, "UA-63", &w, None);
        assert_eq!(s["incidents"], n, "{from:?}..{to:?}");
        assert_eq!(
            (&s["first_occurred_at"], &s["last_occurred_at"]),
            (&first, &last),
            "{from:?}..{to:?}"
        );
        let listed = p
            .incidents(&IncidentQuery {
                window: w,
                ..Default::default()
            })
            .unwrap()
            .incidents
            .len();
        assert_eq!(listed as u64, n, "{from:?}..{to:?}");
    }
}

#[test]
fn as_of_by_position_equals_the_prefix() {
    let mut log = Log::new();
    log.import(include_str!(
        "../../../../tests/fixtures/seed-incidents.ndjson"
    ));
    log.append(
        id(1),
        &[
            report("shelling", "2026-01-01T10:00:00Z", "UA-63"),
            cas("A", json!({"killed": 7})),
        ],
    );
    log.append(
        id(1),
        &[(
            "IncidentCorrected",
            json!({"reason": "r", "region": "UA-65"}),
        )],
    );
    log.append(id(1), &[("IncidentRetracted", json!({"reason": "r"}))]);
    let full = log.projection();
    let windows = [
        Window::all(),
        Window::parse(Some("2026-01-01T09:00:00Z"), Some("2026-01-01T12:00:00Z")).unwrap(),
    ];
    for p in 0..=log.recs.len() as u64 {
        let prefix = log.projection_upto(p);
        for w in &windows {
            assert_eq!(
                full.region_summaries(w, Some(p)),
                prefix.region_summaries(w, None),
                "at {p}"
            );
            for code in ["UA-63", "UA-65", "RU-MOS"] {
                let r = Region::parse(code).unwrap();
                assert_eq!(
                    full.region_summary(&r, w, Some(p)),
                    prefix.region_summary(&r, w, None),
                    "{code} at {p}"
                );
            }
        }
    }
}

#[test]
fn listing_limit_above_the_maximum_is_clamped() {
    let mut log = Log::new();
    for i in 1..=1001u128 {
        log.append(id(i), &[report("shelling", "2026-01-02", "UA-63")]);
    }
    let p = log.projection();
    let page = p
        .incidents(&IncidentQuery {
            limit: Some(5000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.incidents.len(), 1000);
    let rest = p
        .incidents(&IncidentQuery {
            limit: Some(5000),
            cursor: page.next_cursor,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rest.incidents.len(), 1);
    assert_eq!(rest.next_cursor, None);
}

#[test]
fn listing_filters_and_cursor() {
    let mut log = Log::new();
    for i in 1..=25u128 {
        let region = if i % 2 == 0 { "UA-63" } else { "UA-65" };
        let kind = if i % 3 == 0 {
            "drone_strike"
        } else {
            "shelling"
        };
        log.append(
            id(i),
            &[report(kind, &format!("2026-01-{:02}", i % 3 + 1), region)],
        );
        if i % 5 == 0 {
            log.append(
                id(i),
                &[(
                    "ClaimMade",
                    json!({"claim_id": C1, "claimant": "x", "statement": "y"}),
                )],
            );
        }
    }
    let p = log.projection();
    let list = |q: IncidentQuery| -> Vec<u128> {
        p.incidents(&q)
            .unwrap()
            .incidents
            .iter()
            .map(|v| v.incident_id.as_u128() & 0xff)
            .collect()
    };
    assert_eq!(
        list(IncidentQuery {
            region: Some(Region::parse("UA-63").unwrap()),
            kind: Some(Kind::DroneStrike),
            ..Default::default()
        }),
        [6, 12, 18, 24]
    );
    assert_eq!(
        list(IncidentQuery {
            claim_status: Some(ClaimStatus::Unverified),
            ..Default::default()
        }),
        [5, 10, 15, 20, 25]
    );
    assert!(list(IncidentQuery {
        claim_status: Some(ClaimStatus::Disputed),
        ..Default::default()
    })
    .is_empty());
    assert_eq!(
        list(IncidentQuery {
            window: Window::parse(Some("2026-01-03"), None).unwrap(),
            limit: Some(3),
            ..Default::default()
        }),
        [2, 5, 8]
    );
    // paging walks everything once, in order of first position
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = p
            .incidents(&IncidentQuery {
                limit: Some(7),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .unwrap();
        assert!(page.incidents.len() <= 7);
        seen.extend(
            page.incidents
                .iter()
                .map(|v| v.incident_id.as_u128() & 0xff),
        );
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u128>>());
    // `matching` (the export's selection) is every page of the same query, one after the other.
    let matching = |q: &IncidentQuery| -> Vec<u128> {
        p.matching(q, false)
            .map(|v| v.incident_id.as_u128() & 0xff)
            .collect()
    };
    assert_eq!(matching(&IncidentQuery::default()), seen);
    for q in [
        IncidentQuery {
            region: Some(Region::parse("UA-63").unwrap()),
            kind: Some(Kind::DroneStrike),
            ..Default::default()
        },
        IncidentQuery {
            claim_status: Some(ClaimStatus::Unverified),
            window: Window::parse(Some("2026-01-02"), None).unwrap(),
            ..Default::default()
        },
    ] {
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = p
                .incidents(&IncidentQuery {
                    limit: Some(2),
                    cursor: cursor.clone(),
                    ..q.clone()
                })
                .unwrap();
            paged.extend(
                page.incidents
                    .iter()
                    .map(|v| v.incident_id.as_u128() & 0xff),
            );
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert!(!paged.is_empty());
        assert_eq!(matching(&q), paged, "{q:?}");
    }
    // A page built over several looks of a few incidents each (the server takes the views'
    // lock once per look) is the page of one look, cursor included, page after page.
    let in_looks = |q: &IncidentQuery, k: usize| -> IncidentPage {
        let mut pager = IncidentPager::new(q).unwrap();
        let mut looks = 0;
        while !pager.is_done() {
            pager.scan(&p, q, k);
            looks += 1;
            assert!(looks <= 100, "a scan of {k} makes no progress");
        }
        pager.finish()
    };
    for base in [
        IncidentQuery::default(),
        IncidentQuery {
            region: Some(Region::parse("UA-63").unwrap()),
            kind: Some(Kind::DroneStrike),
            ..Default::default()
        },
        IncidentQuery {
            claim_status: Some(ClaimStatus::Unverified),
            ..Default::default()
        },
        IncidentQuery {
            claim_status: Some(ClaimStatus::Disputed),
            ..Default::default()
        },
        IncidentQuery {
            window: Window::parse(Some("2026-01-03"), None).unwrap(),
            ..Default::default()
        },
    ] {
        for limit in [1, 2, 7, 25] {
            let mut cursor = None;
            loop {
                let q = IncidentQuery {
                    limit: Some(limit),
                    cursor: cursor.clone(),
                    ..base.clone()
                };
                let one = p.incidents(&q).unwrap();
                for k in [1, 2, 3, 5, 1000] {
                    assert_eq!(in_looks(&q, k), one, "{q:?}, looks of {k}");
                }
                match one.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    // exactly one page: no cursor
    assert_eq!(
        p.incidents(&IncidentQuery {
            limit: Some(25),
            ..Default::default()
        })
        .unwrap()
        .next_cursor,
        None
    );
    for (q, ptr) in [
        (
            IncidentQuery {
                limit: Some(0),
                ..Default::default()
            },
            "/limit",
        ),
        (
            IncidentQuery {
                cursor: Some("garbage".into()),
                ..Default::default()
            },
            "/cursor",
        ),
    ] {
        assert_eq!(p.incidents(&q).unwrap_err().pointer, ptr);
    }
    assert_eq!(
        p.incidents(&IncidentQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap()
        .incidents
        .len(),
        25
    );
    assert_eq!(
        p.incidents(&IncidentQuery::default())
            .unwrap()
            .incidents
            .len(),
        25
    );
}

#[test]
fn sources_are_deduplicated_by_content_in_order_of_first_appearance() {
    let mut log = Log::new();
    log.append(id(1), &[
        ("IncidentReported", json!({"kind": "shelling", "occurred_at": "2026-01-01", "region": "UA-63", "source": {"name": "A", "kind": "official"}})),
        ("CasualtiesReported", json!({"killed": 1, "source": {"name": "A", "kind": "official"}})),
        ("SourceAdded", json!({"source": {"name": "B", "url": "https://b.example/1"}})),
        ("SourceAdded", json!({"source": {"name": "B", "url": "https://b.example/2"}})),
        ("SourceAdded", json!({"source": {"name": "B", "url": "https://b.example/1"}})),
    ]);
    let v = serde_json::to_value(log.projection().incident(id(1)).unwrap()).unwrap();
    assert_eq!(
        v["sources"],
        json!([{"name": "A", "kind": "official"}, {"name": "B", "url": "https://b.example/1"}, {"name": "B", "url": "https://b.example/2"}])
    );
}

#[test]
fn incident_view_shape_and_fold_incident() {
    let mut log = Log::new();
    log.append(id(1), &[("IncidentReported", json!({"kind": "drone_strike", "occurred_at": "2026-01-02T03:04:05Z", "region": "RU-MOS",
        "locality": "Valdai", "location": {"lat": 57.98, "lon": 33.25, "precision": "near"}, "perpetrator": "unknown", "target": "residence",
        "summary": "s", "source": {"name": "Kremlin", "kind": "official", "sha256": "AB".repeat(32), "published_at": "2026-01-02"}}))]);
    log.append(id(2), &[report("shelling", "2026-01-02", "UA-63")]);
    let p = log.projection();
    let view = p.incident(id(1)).unwrap();
    let v = serde_json::to_value(&view).unwrap();
    // top-level keys, in the order they are written
    let text = serde_json::to_string(&view).unwrap();
    let mut keys: Vec<(usize, &str)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (text.find(&format!(",\"{k}\":")).unwrap_or(0), k.as_str()))
        .collect();
    keys.sort();
    let keys: Vec<&str> = keys.into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        keys,
        [
            "incident_id",
            "kind",
            "occurred_at",
            "time_precision",
            "region",
            "region_name",
            "country",
            "locality",
            "location",
            "perpetrator",
            "target",
            "summary",
            "status",
            "retraction",
            "casualties",
            "claims",
            "sources",
            "corrections",
            "version",
            "first_recorded_at",
            "last_recorded_at"
        ]
    );
    assert_eq!(
        v["location"],
        json!({"lat": 57.98, "lon": 33.25, "precision": "near"})
    );
    assert_eq!(v["sources"][0]["sha256"], "ab".repeat(32));
    // The log's form: six fraction digits always (a whole second too), so view and log
    // strings compare equal.
    assert_eq!(v["first_recorded_at"], "2026-01-03T00:00:01.000000Z");
    let back: IncidentView = serde_json::from_value(v).unwrap();
    assert_eq!(back, view);
    let folded = fold_incident(
        log.recs
            .iter()
            .filter(|r| r.incident == id(1))
            .map(|r| r.env()),
    )
    .unwrap()
    .unwrap();
    assert_eq!(folded, view);
    assert_eq!(fold_incident(std::iter::empty()).unwrap(), None);
    assert!(p.incident(id(3)).is_none());
    assert_eq!(p.incident_count(), 2);
    assert_eq!(p.region_count(), 2);
}

#[test]
fn bad_recorded_events_are_errors_and_change_nothing() {
    let mut log = Log::new();
    log.append(id(1), &[report("shelling", "2026-01-02", "UA-63")]);
    let mut p = log.projection();
    let digest = p.digest();
    let data =
        serde_json::value::RawValue::from_string(r#"{"source":{"name":"x"}}"#.into()).unwrap();
    let bad_data =
        serde_json::value::RawValue::from_string(r#"{"source":{"name":"x"},"x":1}"#.into())
            .unwrap();
    let base = Envelope {
        global_position: 2,
        incident_id: id(1),
        stream_version: 2,
        event_id: id(99),
        event_type: "SourceAdded",
        data: &data,
        recorded_at: now(),
        recorded_by: "t",
    };
    let cases: Vec<(Envelope, &str)> = vec![
        (
            Envelope {
                global_position: 1,
                ..base
            },
            "positions must increase",
        ),
        (
            Envelope {
                event_type: "Bogus",
                ..base
            },
            "unknown event type",
        ),
        (
            Envelope {
                data: &bad_data,
                ..base
            },
            "does not decode",
        ),
        (
            Envelope {
                stream_version: 3,
                ..base
            },
            "stream_version 3",
        ),
        (
            Envelope {
                incident_id: id(2),
                stream_version: 1,
                ..base
            },
            "must be IncidentReported",
        ),
    ];
    for (e, msg) in cases {
        let err = p.apply(&e).unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} should mention {msg:?}");
        assert_eq!(p.digest(), digest);
        assert_eq!(p.position(), 1);
    }
    p.apply(&base).unwrap();
    assert_ne!(p.digest(), digest);
    // gaps are tolerated (a missing position must not freeze the views)
    p.apply(&Envelope {
        global_position: 10,
        stream_version: 3,
        ..base
    })
    .unwrap();
    assert_eq!(p.position(), 10);
}

#[test]
fn digest_is_the_same_on_any_number_of_threads() {
    // Enough incidents for several serialization blocks per thread.
    let mut log = Log::new();
    for n in 0..2_600u128 {
        let region = ["UA-63", "UA-65", "SD-KH"][(n % 3) as usize];
        log.append(id(10_000 + n), &[report("shelling", "2026-01-02", region)]);
    }
    let p = log.projection();
    let expected = digest_by_definition(&p, &["UA-63", "UA-65", "SD-KH"]);
    for threads in [1, 2, 3, 8] {
        assert_eq!(p.digest_on(threads), expected, "{threads} threads");
    }
    assert_eq!(p.digest(), expected);
}

#[test]
fn digest_is_stable_and_sensitive() {
    let mut log = Log::new();
    log.import(include_str!(
        "../../../../tests/fixtures/seed-incidents.ndjson"
    ));
    let a = log.projection();
    let b = log.projection();
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest().len(), 64);
    // a clone continued is the same as a fresh fold
    let mut c = log.projection_upto(5);
    let d = c.clone();
    for r in &log.recs[5..] {
        c.apply(&r.env()).unwrap();
    }
    assert_eq!(c.digest(), a.digest());
    assert_ne!(d.digest(), a.digest());
    log.append(id(1), &[report("shelling", "2026-01-02", "UA-63")]);
    assert_ne!(log.projection().digest(), a.digest());
}

/// A rebuild decodes events on its reading threads (`DecodedEvent`, owning its strings) and
/// folds them elsewhere: every field of every event type, escaped strings included, folds to
/// the same views as the direct fold.
#[test]
fn events_decoded_ahead_fold_like_events_applied_directly() {
    let q = "\"quoted\" \\ back é 😀";
    let source = json!({"name": format!("Src {q}"), "kind": "media", "url": "https://a.example/x?q=\"1\"",
        "archive_url": "https://archive.example/a", "published_at": "2026-01-02", "sha256": "ab".repeat(32)});
    let mut log = Log::new();
    log.append(
        id(1),
        &[
            ("IncidentReported", json!({"kind": "drone_strike", "occurred_at": "2026-01-02T03:04:05Z",
                "time_precision": "hour", "region": "UA-63", "locality": format!("Loc {q}"),
                "location": {"lat": 49.99, "lon": 36.23, "precision": "near"}, "perpetrator": format!("P {q}"),
                "target": format!("T {q}"), "summary": format!("S {q}"), "source": source})),
            ("CasualtiesReported", json!({"source": {"name": format!("Cas {q}")}, "killed": 3, "injured": 5,
                "killed_low": 2, "killed_high": 4, "civilians_killed": 2, "children_killed": 1})),
            ("ClaimMade", json!({"claim_id": C1, "claimant": format!("C {q}"), "statement": format!("St {q}"),
                "attributed_to": format!("A {q}"), "source": {"name": format!("CS {q}"), "url": "https://c.example"}})),
            ("ClaimDenied", json!({"claim_id": C1, "by": format!("D {q}"), "statement": format!("No {q}"),
                "source": {"name": format!("DS {q}")}})),
            ("ClaimAssessed", json!({"claim_id": C1, "assessment": "refuted", "by": format!("B {q}"),
                "evidence": format!("E {q}")})),
            ("SourceAdded", json!({"source": {"name": format!("Added {q}"), "kind": "ngo"}})),
        ],
    );
    log.append(id(2), &[report("shelling", "2026-01-02", "UA-63")]);
    log.append(id(2), &[
        ("IncidentCorrected", json!({"reason": format!("R {q}"), "kind": "missile_strike",
                "occurred_at": "2026-01-03", "time_precision": "day", "region": "UA-65",
                "locality": format!("L2 {q}"), "location": {"lat": 46.6, "lon": 32.6},
                "perpetrator": format!("P2 {q}"), "target": format!("T2 {q}"), "summary": format!("S2 {q}")})),
    ]);
    log.append(
        id(2),
        &[(
            "IncidentRetracted",
            json!({"reason": format!("dup {q}"), "duplicate_of": id(1)}),
        )],
    );
    let direct = log.projection();
    let mut ahead = Projection::new();
    for r in &log.recs {
        let decoded = DecodedEvent::decode(&r.env()).unwrap();
        assert_eq!(decoded.global_position(), r.position);
        ahead.apply_decoded(decoded).unwrap();
    }
    assert_eq!(ahead.digest(), direct.digest());
    for i in [id(1), id(2)] {
        let v = serde_json::to_value(ahead.incident(i).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::to_value(direct.incident(i).unwrap()).unwrap()
        );
    }
    let fields = [
        (
            id(1),
            &[
                "Loc", "P", "T", "S", "C", "St", "A", "D", "No", "B", "E", "Added", "Src", "Cas",
            ][..],
        ),
        (id(2), &["L2", "P2", "T2", "S2", "R", "dup"][..]),
    ];
    for (i, names) in fields {
        let v = serde_json::to_string(&ahead.incident(i).unwrap()).unwrap();
        for field in names {
            let escaped = serde_json::to_string(&format!("{field} {q}")).unwrap();
            assert!(v.contains(&escaped), "{field} missing from {v}");
        }
    }
    // Out of order is refused before anything is decoded, like `apply`.
    let first = DecodedEvent::decode(&log.recs[0].env()).unwrap();
    assert!(matches!(
        ahead.apply_decoded(first),
        Err(ProjectionError::OutOfOrder { .. })
    ));
}
