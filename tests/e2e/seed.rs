//! The seed scenario: the four seed incidents imported over HTTP give exactly the regional
//! summaries computed by hand from tests/fixtures/seed-incidents.ndjson with the rules of
//! SPEC section 4; they survive a restart, and replay gives the live digest.

use serde_json::{json, Value};

use crate::common::*;

/// Hand-computed from the seed file (10 events, positions 1..=10):
/// - UA-63: incident 1, a missile strike on 2026-01-02; one report: killed 2 (civilians 2,
///   children 1), so low = best = high = 2; no injured figure, so 0; no claims.
/// - UA-65: incident 2 (shelling, 2026-01-02, killed 2, civilians 2) and incident 3 (drone
///   strike, 2026-01-01, no casualty report; one claim, denied and never assessed:
///   disputed).
/// - RU-MOS: incident 4 (drone strike, 2026-01-01, no casualties, one denied claim).
fn expected_summaries() -> Vec<Value> {
    vec![
        json!({
            "region": "RU-MOS", "name": "Moskovskaya oblast'", "country": "RU",
            "incidents": 1,
            "strikes": {"total": 1, "by_kind": {"drone_strike": 1}},
            "casualties": {"killed": {"low": 0, "best": 0, "high": 0},
                           "injured": {"low": 0, "best": 0, "high": 0},
                           "civilians_killed": 0, "children_killed": 0},
            "claims": {"total": 1, "unverified": 0, "disputed": 1, "confirmed": 0, "refuted": 0},
            "first_occurred_at": "2026-01-01", "last_occurred_at": "2026-01-01",
            "as_of_position": 10
        }),
        json!({
            "region": "UA-63", "name": "Kharkivska oblast", "country": "UA",
            "incidents": 1,
            "strikes": {"total": 1, "by_kind": {"missile_strike": 1}},
            "casualties": {"killed": {"low": 2, "best": 2, "high": 2},
                           "injured": {"low": 0, "best": 0, "high": 0},
                           "civilians_killed": 2, "children_killed": 1},
            "claims": {"total": 0, "unverified": 0, "disputed": 0, "confirmed": 0, "refuted": 0},
            "first_occurred_at": "2026-01-02", "last_occurred_at": "2026-01-02",
            "as_of_position": 10
        }),
        json!({
            "region": "UA-65", "name": "Khersonska oblast", "country": "UA",
            "incidents": 2,
            "strikes": {"total": 2, "by_kind": {"drone_strike": 1, "shelling": 1}},
            "casualties": {"killed": {"low": 2, "best": 2, "high": 2},
                           "injured": {"low": 0, "best": 0, "high": 0},
                           "civilians_killed": 2, "children_killed": 0},
            "claims": {"total": 1, "unverified": 0, "disputed": 1, "confirmed": 0, "refuted": 0},
            "first_occurred_at": "2026-01-01", "last_occurred_at": "2026-01-02",
            "as_of_position": 10
        }),
    ]
}

const KHERSON_DRONE: &str = "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a03";

fn check_summaries(srv: &Server, token: &str) {
    let expected = expected_summaries();
    for e in &expected {
        let code = e["region"].as_str().unwrap();
        let r = srv.get(&format!("/v1/regions/{code}"), token);
        r.expect(200);
        assert_eq!(r.json(), *e, "summary of {code}");
    }
    let r = srv.get("/v1/regions", token);
    r.expect(200);
    let mut all = r.json()["regions"].as_array().expect("regions").clone();
    all.sort_by(|a, b| a["region"].as_str().cmp(&b["region"].as_str()));
    assert_eq!(all, expected, "GET /v1/regions");

    // Windows on occurred_at are inclusive: only New Year's Day.
    let r = srv.get("/v1/regions/UA-65?from=2026-01-01&to=2026-01-01", token);
    r.expect(200);
    let v = r.json();
    assert_eq!(v["incidents"], 1, "{v}");
    assert_eq!(v["strikes"]["by_kind"], json!({"drone_strike": 1}), "{v}");
    assert_eq!(v["casualties"]["killed"]["best"], 0, "{v}");
    assert_eq!(v["claims"]["disputed"], 1, "{v}");

    // As of position 4 (after incident 2's two events): UA-65 had one shelling only.
    let r = srv.get("/v1/regions/UA-65?at_position=4", token);
    r.expect(200);
    let v = r.json();
    assert_eq!(v["incidents"], 1, "{v}");
    assert_eq!(v["as_of_position"], 4, "{v}");
    assert_eq!(v["claims"]["total"], 0, "{v}");

    // The disputed Kherson drone claim.
    let r = srv.get(&format!("/v1/incidents/{KHERSON_DRONE}"), token);
    r.expect(200);
    let v = r.json();
    assert_eq!(v["status"], "active", "{v}");
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["region"], "UA-65", "{v}");
    let claims = v["claims"].as_array().expect("claims");
    assert_eq!(claims.len(), 1, "{v}");
    assert_eq!(
        claims[0]["claim_id"],
        "c1a1e000-0000-4000-8000-000000000301"
    );
    assert_eq!(claims[0]["status"], "disputed", "{v}");
    assert_eq!(claims[0]["claimant"], "Russian government");
    assert_eq!(
        claims[0]["denials"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
}

fn live_digest(srv: &Server, admin: &str) -> String {
    // The digest of the views the server kept live...
    let r = srv.req("GET", "/v1/admin/digest").token(admin).send();
    r.expect(200);
    let live = r.json();
    assert_eq!(live["position"], 10, "{live}");
    // ...equals the digest of the views rebuilt from the log.
    let r = srv.req("POST", "/v1/admin/replay").token(admin).send();
    r.expect(200);
    let v = r.json();
    assert_eq!(v["events"], 10, "{v}");
    assert_eq!(v["digest"], live["digest"], "rebuilt {v} vs live {live}");
    v["digest"].as_str().expect("digest").to_string()
}

fn cli_replay_digest(dir: &std::path::Path, extra: &[&str]) -> (u64, String) {
    let mut args = vec!["replay", "--json", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cli_ok(&args);
    let v: Value = serde_json::from_str(out.trim()).expect("replay --json");
    (
        v["events"].as_u64().expect("events"),
        v["digest"].as_str().expect("digest").to_string(),
    )
}

#[test]
fn seed_scenario_summaries_restart_and_replay() {
    let dir = temp_dir();
    let mut srv = Server::start(dir.path(), &[]);
    let admin = srv
        .admin_token
        .clone()
        .expect("a first start prints `admin token: SECRET`");
    // The secret is printed once, on its own line: never inside a command to paste, which
    // would leave it in shell history and process listings.
    let lines_with_it = srv
        .startup_stdout
        .iter()
        .filter(|l| l.contains(&admin))
        .count();
    assert_eq!(lines_with_it, 1, "{:?}", srv.startup_stdout);
    import_seed(&srv, &admin);
    check_summaries(&srv, &admin);

    // Re-importing the same file records nothing: every event is a duplicate.
    let r = srv
        .req("POST", "/v1/events")
        .token(&admin)
        .body("application/x-ndjson", seed_bytes())
        .send();
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"appended": 0, "duplicates": 10, "rejected": []})
    );
    let digest = live_digest(&srv, &admin);
    assert_eq!(digest.len(), 64, "digest is hex: {digest}");

    assert!(srv.terminate().success(), "SIGTERM must exit 0");

    // Offline: replay gives the live digest; verify passes.
    assert_eq!(cli_replay_digest(dir.path(), &[]), (10, digest.clone()));
    let (ev, _) = cli_replay_digest(dir.path(), &["--at-position", "4"]);
    assert_eq!(ev, 4);
    let out = cli_ok(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.contains("events:    10"), "{out}");

    // After a restart: no new admin token, same figures, same digest.
    let srv = Server::start(dir.path(), &[]);
    assert!(
        srv.admin_token.is_none(),
        "second start printed a token: {:?}",
        srv.startup_stdout
    );
    check_summaries(&srv, &admin);
    assert_eq!(live_digest(&srv, &admin), digest);
}

/// Every view the API shows, for comparing two states of the server.
fn snapshot(srv: &Server, token: &str) -> Vec<Value> {
    let mut out = vec![srv.get("/v1/regions", token).json()];
    for status in ["active", "retracted"] {
        let page = srv
            .get(&format!("/v1/incidents?status={status}&limit=1000"), token)
            .json();
        for view in page["incidents"].as_array().expect("incidents") {
            let id = view["incident_id"].as_str().unwrap();
            out.push(srv.get(&format!("/v1/incidents/{id}"), token).json());
        }
        out.push(page);
    }
    out
}

#[test]
fn live_views_equal_rebuilt_views_after_corrections_and_retractions() {
    let (dir, mut srv, t) = server_with_tokens(&[]);
    import_seed(&srv, &t.reporter);
    let kharkiv = "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01";
    let kherson_shelling = "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a02";
    let moscow = "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a04";
    let post = |id: &str, events: Vec<Value>| {
        srv.append(&t.reporter, id, &batch(json!("any"), events))
            .expect(201);
    };
    // Incident 2 moves to UA-63 and gets a higher count from a second source.
    post(
        kherson_shelling,
        vec![
            json!({"event_id": new_id(), "type": "IncidentCorrected",
                   "data": {"reason": "geolocated by a second source", "region": "UA-63",
                            "occurred_at": "2026-01-03"}}),
            json!({"event_id": new_id(), "type": "CasualtiesReported",
                   "data": {"killed": 3, "source": {"name": "UN monitors", "kind": "ngo"}}}),
        ],
    );
    // Incident 1 is retracted; the Moscow claim is assessed.
    post(
        kharkiv,
        vec![json!({"event_id": new_id(), "type": "IncidentRetracted",
                    "data": {"reason": "duplicate report"}})],
    );
    post(
        moscow,
        vec![json!({"event_id": new_id(), "type": "ClaimAssessed",
                    "data": {"claim_id": "c1a1e000-0000-4000-8000-000000000401",
                             "assessment": "refuted", "by": "Open-source investigators"}})],
    );

    // Hand-computed from SPEC 4: UA-63 now holds only the moved shelling (incident 1 is
    // retracted): killed best 3 (latest report), low 2 and high 3 over the two sources.
    let v = srv.get("/v1/regions/UA-63", &t.reader).json();
    assert_eq!(v["incidents"], 1, "{v}");
    assert_eq!(v["strikes"]["by_kind"], json!({"shelling": 1}), "{v}");
    assert_eq!(
        v["casualties"]["killed"],
        json!({"low": 2, "best": 3, "high": 3}),
        "{v}"
    );
    assert_eq!(v["casualties"]["civilians_killed"], 2, "{v}");
    assert_eq!(v["casualties"]["children_killed"], 0, "{v}");
    assert_eq!(v["first_occurred_at"], "2026-01-03", "{v}");
    assert_eq!(v["as_of_position"], 14, "{v}");
    let v = srv.get("/v1/regions/UA-65", &t.reader).json();
    assert_eq!(v["incidents"], 1, "{v}");
    assert_eq!(v["casualties"]["killed"]["best"], 0, "{v}");
    let v = srv.get("/v1/regions/RU-MOS", &t.reader).json();
    assert_eq!(
        v["claims"],
        json!({"total": 1, "unverified": 0, "disputed": 0, "confirmed": 0, "refuted": 1}),
        "{v}"
    );
    // The past is still there: as of position 10, the seed figures.
    let v = srv
        .get("/v1/regions/UA-63?at_position=10", &t.reader)
        .json();
    assert_eq!(v["casualties"]["children_killed"], 1, "{v}");

    // Views kept live event by event equal views rebuilt from the log.
    let live = snapshot(&srv, &t.reader);
    let r = srv.req("POST", "/v1/admin/replay").token(&t.admin).send();
    r.expect(200);
    let rebuilt_digest = r.json()["digest"].as_str().unwrap().to_string();
    assert_eq!(
        snapshot(&srv, &t.reader),
        live,
        "rebuilt views differ from the live ones"
    );
    assert!(srv.terminate().success());
    assert_eq!(
        cli_replay_digest(dir.path(), &[]),
        (14, rebuilt_digest.clone())
    );
    // And a restart (views rebuilt on start) shows the same.
    let srv = Server::start(dir.path(), &[]);
    assert_eq!(snapshot(&srv, &t.reader), live);
}

/// The binary serves the OpenAPI document checked in as `proto-docs/openapi.json` (the
/// in-process test `checked_in_openapi_is_current` keeps that file equal to the code's;
/// this one checks what the real server answers).
#[test]
fn the_binary_serves_the_checked_in_openapi_document() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    let r = srv.get("/openapi.json", &t.reader);
    r.expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.header("content-type")
    );
    let served: Value = r.json();
    let checked_in: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("proto-docs/openapi.json"))
            .expect("proto-docs/openapi.json"),
    )
    .expect("proto-docs/openapi.json is JSON");
    assert_eq!(served, checked_in, "regenerate proto-docs/openapi.json");
    assert_eq!(served["openapi"], "3.1.0");
}
