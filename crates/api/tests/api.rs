//! In-process tests of the service rules over the real router (tower `oneshot`), on the file
//! store in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use futures_util::StreamExt;
use incidentlog_api::auth::{ensure_admin_token, hash_secret, try_new_secret};
use incidentlog_api::service::{AppService, ImportReport, IMPORT_CHUNK_EVENTS};
use incidentlog_api::{router, ServeConfig};
use incidentlog_store::file::{LogFile, LogIo, RealIo};
use incidentlog_store::{EventStore, FileStore, OpenOptions, Store, TokenRecord};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

struct App {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    service: AppService,
    router: Router,
    admin: String,
    reporter: String,
    reader: String,
}

async fn add_token(store: &Store, name: &str, role: &str) -> String {
    let secret = try_new_secret().expect("randomness");
    store
        .add_token(TokenRecord {
            name: name.into(),
            role: role.into(),
            secret_hash: hash_secret(&secret),
            created_at: Utc::now(),
            revoked_at: None,
        })
        .await
        .unwrap();
    secret
}

async fn app_with(config: ServeConfig) -> App {
    app_on(config, Arc::new(RealIo::default())).await
}

/// The app on a file store whose segment files go through `io` (fault injection).
async fn app_on(config: ServeConfig, io: Arc<dyn LogIo>) -> App {
    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::open_with_io(&OpenOptions::new(dir.path()), io)
        .await
        .unwrap();
    let store = Arc::new(Store::File(file));
    let admin = ensure_admin_token(&store)
        .await
        .unwrap()
        .expect("first start creates admin");
    assert!(ensure_admin_token(&store).await.unwrap().is_none());
    let reporter = add_token(&store, "rep", "reporter").await;
    let reader = add_token(&store, "ro", "reader").await;
    let service = AppService::start(store.clone()).await.unwrap();
    // Ready as a client would wait for it: the integrity check after start has run (the
    // probes do not wait for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.readiness() == "starting" {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let router = router(service.clone(), &config);
    App {
        _dir: dir,
        store,
        service,
        router,
        admin,
        reporter,
        reader,
    }
}

async fn app() -> App {
    app_with(ServeConfig::default()).await
}

struct Resp {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl App {
    async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Resp {
            status,
            content_type,
            body,
        }
    }

    async fn get_as(&self, path: &str, token: Option<&str>) -> Resp {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.get_as(path, Some(&self.reader.clone())).await
    }

    async fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        ct: &str,
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, ct);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(b.body(body.into()).unwrap()).await
    }

    /// One report of a shelling in UA-63, a new incident.
    async fn append_fresh(&self) -> Resp {
        self.append(
            Uuid::new_v4(),
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        )
        .await
    }

    async fn append(&self, id: Uuid, body: Value) -> Resp {
        self.post_as(
            &format!("/v1/incidents/{id}/events"),
            Some(&self.reporter.clone()),
            "application/json",
            body.to_string(),
        )
        .await
    }

    /// A bulk import (`POST /v1/events`, NDJSON) as the reporter.
    async fn import(&self, body: impl Into<Body>) -> Resp {
        self.post_as(
            "/v1/events",
            Some(&self.reporter.clone()),
            "application/x-ndjson",
            body,
        )
        .await
    }

    async fn head(&self) -> u64 {
        self.store.head().position
    }
}

/// An append through the router from a spawned task (no `App` there): its status.
async fn append_status(router: Router, token: &str, id: Uuid, body: Value) -> StatusCode {
    let req = Request::post(format!("/v1/incidents/{id}/events"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    router.oneshot(req).await.unwrap().status()
}

fn reported(event_id: Uuid, region: &str, kind: &str) -> Value {
    json!({"event_id": event_id, "type": "IncidentReported", "data": {
        "kind": kind, "occurred_at": "2026-01-02", "region": region,
        "source": {"name": "Regional authorities", "kind": "official"}}})
}

fn casualties(event_id: Uuid, killed: i64) -> Value {
    json!({"event_id": event_id, "type": "CasualtiesReported", "data": {
        "killed": killed, "source": {"name": "Regional authorities", "kind": "official"}}})
}

fn claim(event_id: Uuid, claim_id: Uuid) -> Value {
    json!({"event_id": event_id, "type": "ClaimMade", "data": {
        "claim_id": claim_id, "claimant": "Ministry", "statement": "It was a military target."}})
}

fn denial(event_id: Uuid, claim_id: Uuid) -> Value {
    json!({"event_id": event_id, "type": "ClaimDenied", "data": {
        "claim_id": claim_id, "by": "Other ministry"}})
}

/// Imports `lines` through `service` as `recorded_by`: the report, and its rejected lines as
/// `(line, status)`.
async fn import_lines(
    service: &AppService,
    lines: &[String],
    recorded_by: &str,
) -> (ImportReport, Vec<(u64, u16)>) {
    let report = service
        .import_ndjson(lines.join("\n").as_bytes(), recorded_by, &|_| {})
        .await
        .unwrap();
    let rejected = report.rejected.iter().map(|r| (r.line, r.status)).collect();
    (report, rejected)
}

fn assert_first_pointer_under(r: &Resp, prefix: &str) {
    assert!(
        r.body["errors"][0]["pointer"]
            .as_str()
            .unwrap()
            .starts_with(prefix),
        "{}",
        r.body
    );
}

fn assert_problem(r: &Resp, status: u16) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.body);
    assert_eq!(
        r.content_type, "application/problem+json",
        "body: {}",
        r.body
    );
    assert_eq!(r.body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(r.body[field].is_string(), "{field} missing in {}", r.body);
    }
    assert!(r.body["errors"].is_array(), "errors missing in {}", r.body);
}

/// Appends are answered once durable, without waiting for the views; reads wait for the
/// views instead. Every read right after an answer must include it: a view read that did not
/// wait would see the follower lag here within a few rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_right_after_an_append_includes_it() {
    let app = app().await;
    for i in 1..=200u64 {
        let id = Uuid::new_v4();
        let body = json!({"expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
        let r = app.append(id, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        match i % 4 {
            0 => {
                let view = app.get(&format!("/v1/incidents/{id}")).await;
                assert_eq!(view.status, StatusCode::OK, "round {i}: {}", view.body);
            }
            1 => {
                let region = app.get("/v1/regions/UA-63").await;
                assert_eq!(region.body["incidents"], i, "round {i}: {}", region.body);
            }
            2 => {
                let page = app.get("/v1/incidents?region=UA-63&limit=1000").await;
                let n = page.body["incidents"].as_array().map_or(0, Vec::len) as u64;
                assert_eq!(n, i, "round {i}");
            }
            _ => {
                let ready = app.get_as("/readyz", None).await;
                assert_eq!(ready.body["position"], i, "round {i}: {}", ready.body);
            }
        }
    }
}

#[tokio::test]
async fn append_is_read_your_writes_and_idempotent() {
    let app = app().await;
    let id = Uuid::new_v4();
    let (e1, e2) = (Uuid::new_v4(), Uuid::new_v4());
    let body = json!({"expected_version": 0, "events": [reported(e1, "UA-63", "missile_strike"), casualties(e2, 3)]});
    let r = app.append(id, body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"incident_id": id, "version": 2, "first_position": 1, "last_position": 2})
    );

    // Read-your-writes: the views include it as soon as the append is answered.
    let view = app.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["version"], 2);
    let region = app.get("/v1/regions/UA-63").await;
    assert_eq!(region.status, StatusCode::OK, "{}", region.body);
    assert_eq!(region.body["incidents"], 1);
    assert_eq!(region.body["as_of_position"], 2);

    // The same request again: 200, same body, nothing recorded.
    let again = app.append(id, body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body, r.body);
    // Only part of the original batch is not a repeat: 409.
    let part = app.append(id, json!({"events": [casualties(e2, 3)]})).await;
    assert_problem(&part, 409);
    let detail = part.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("same content") && !detail.contains("other content"),
        "a partial repeat is not a reuse with other content: {detail}"
    );
    assert_eq!(app.head().await, 2);

    // The recorded events have the SPEC shape.
    let log = app.get("/v1/events?after=0&limit=10").await;
    assert_eq!(log.status, StatusCode::OK);
    assert_eq!(log.body["next_after"], 2);
    let ev = &log.body["events"][0];
    let mut keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "data",
            "event_id",
            "global_position",
            "hash",
            "incident_id",
            "recorded_at",
            "recorded_by",
            "stream_version",
            "type"
        ]
    );
    assert_eq!(ev["recorded_by"], "rep");
    assert_eq!(ev["type"], "IncidentReported");
    let at = ev["recorded_at"].as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2026-01-02T03:04:05.123456Z".len(),
        "{at}"
    );
    let hash = ev["hash"].as_str().unwrap();
    assert!(
        hash.len() == 64
            && hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let stream = app.get(&format!("/v1/incidents/{id}/events")).await;
    assert_eq!(stream.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(stream.body["events"][1]["stream_version"], 2);
    let empty = app.get("/v1/events?after=2").await;
    assert_eq!(empty.body["next_after"], 2);
    assert_eq!(empty.body["events"], json!([]));
}

#[tokio::test]
async fn conflicts_are_409_with_expected_and_actual_and_record_nothing() {
    let app = app().await;
    let id = Uuid::new_v4();
    let e1 = Uuid::new_v4();
    let r = app
        .append(
            id,
            json!({"expected_version": 0, "events": [reported(e1, "UA-65", "shelling")]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Wrong expected version.
    let r = app
        .append(
            id,
            json!({"expected_version": 0, "events": [casualties(Uuid::new_v4(), 1)]}),
        )
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["expected"], 0);
    assert_eq!(r.body["actual"], 1);
    // expected_version 0 with a valid first event, on an incident that exists: the store's
    // version check answers (no version lookup on this path), with the same body.
    let r = app
        .append(
            id,
            json!({"expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-65", "shelling")]}),
        )
        .await;
    assert_problem(&r, 409);
    assert_eq!(
        (r.body["expected"].clone(), r.body["actual"].clone()),
        (json!(0), json!(1))
    );
    // ...and with a reused event id of other content: 409 naming the id and where it is.
    let r = app
        .append(
            id,
            json!({"expected_version": 0, "events": [reported(e1, "UA-65", "air_strike")]}),
        )
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["event_id"], json!(e1));
    assert_eq!(r.body["position"], 1);
    assert_eq!(
        (r.body["expected"].clone(), r.body["actual"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(app.head().await, 1);
    let r = app.append(Uuid::new_v4(), json!({"expected_version": 5, "events": [reported(Uuid::new_v4(), "UA-65", "shelling")]})).await;
    assert_problem(&r, 409);
    assert_eq!(
        (r.body["expected"].clone(), r.body["actual"].clone()),
        (json!(5), json!(0))
    );

    // event_id reuse with other content.
    let mut changed = reported(e1, "UA-65", "shelling");
    changed["data"]["kind"] = json!("air_strike");
    let r = app.append(id, json!({"events": [changed]})).await;
    assert_problem(&r, 409);
    assert!(
        r.body.get("expected").is_some() && r.body.get("actual").is_some(),
        "{}",
        r.body
    );
    // ...also when the reused id comes with a new one.
    let r = app
        .append(
            id,
            json!({"events": [casualties(e1, 2), casualties(Uuid::new_v4(), 1)]}),
        )
        .await;
    assert_problem(&r, 409);

    assert_eq!(app.head().await, 1);
    let r = app
        .append(
            id,
            json!({"expected_version": 1, "events": [casualties(Uuid::new_v4(), 1)]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn invalid_events_are_422_with_pointers() {
    let app = app().await;
    let id = Uuid::new_v4();
    let mut bad = reported(Uuid::new_v4(), "UA-63", "missile_strike");
    bad["data"]["kind"] = json!("picnic");
    bad["data"]["bogus"] = json!(1);
    let r = app
        .append(id, json!({"events": [bad], "extra": true}))
        .await;
    assert_problem(&r, 422);
    let pointers: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/extra"), "{pointers:?}");
    assert!(pointers.contains(&"/events/0/data/kind"), "{pointers:?}");
    assert!(pointers.contains(&"/events/0/data/bogus"), "{pointers:?}");

    // Rule violations: a claim denial for a claim that does not exist, on a new incident.
    let r = app
        .append(id, json!({"events": [reported(Uuid::new_v4(), "UA-63", "missile_strike"), denial(Uuid::new_v4(), Uuid::new_v4())]}))
        .await;
    assert_problem(&r, 422);
    assert_first_pointer_under(&r, "/events/1");

    // Structure problems.
    for body in [
        json!([]),
        json!({"events": []}),
        json!({"events": {}}),
        json!({"expected_version": -1, "events": [casualties(Uuid::new_v4(), 1)]}),
    ] {
        let r = app.append(id, body).await;
        assert_problem(&r, 422);
    }
    assert_eq!(app.head().await, 0);
    assert_eq!(
        app.get(&format!("/v1/incidents/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A body dense with problems (`{}` for each event: three problems in three bytes) is
/// answered with the first 100 listed and all of them counted, in the detail and in
/// `errors_total`: the server keeps only what it lists (a security audit saw a 64 MiB bulk
/// line of empty objects take it past 10 GB). A bulk line of more than a million JSON values
/// is refused as a whole, before any tree that size is built.
#[tokio::test]
async fn bodies_dense_with_problems_are_counted_not_kept() {
    let app = app().await;
    let id = Uuid::new_v4();
    let events = vec!["{}"; 100_000].join(",");
    let r = app
        .post_as(
            &format!("/v1/incidents/{id}/events"),
            Some(&app.reporter.clone()),
            "application/json",
            format!(r#"{{"events": [{events}]}}"#),
        )
        .await;
    assert_problem(&r, 422);
    assert_eq!(
        r.body["errors"].as_array().unwrap().len(),
        100,
        "{}",
        r.body["detail"]
    );
    assert_eq!(r.body["errors_total"], 300_000);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("300000 problems: /events/0/event_id"),
        "{}",
        r.body["detail"]
    );

    let line = format!(r#"{{"incident_id": "{id}", "events": [{events}]}}"#);
    let huge = format!(
        r#"{{"incident_id": "{id}", "events": [{}]}}"#,
        vec!["{}"; incidentlog_projections::MAX_JSON_VALUES].join(",")
    );
    let r = app.import(format!("{line}\n{huge}\n")).await;
    assert_eq!(r.status, StatusCode::OK);
    let rejected = r.body["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["status"], 422);
    assert_eq!(rejected[0]["errors"].as_array().unwrap().len(), 20);
    assert!(
        rejected[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("300000 problems"),
        "{}",
        rejected[0]["detail"]
    );
    assert_eq!(rejected[1]["status"], 400);
    assert!(
        rejected[1]["detail"]
            .as_str()
            .unwrap()
            .contains("more than 1000000 JSON values"),
        "{}",
        rejected[1]["detail"]
    );
    assert_eq!(app.head().await, 0);
}

#[tokio::test]
async fn a_retraction_as_duplicate_of_itself_is_422_even_in_the_creating_batch() {
    let app = app().await;
    let id = Uuid::new_v4();
    let retract = json!({"event_id": Uuid::new_v4(), "type": "IncidentRetracted", "data": {
        "reason": "duplicate report", "duplicate_of": id}});
    let r = app
        .append(
            id,
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "missile_strike"), retract]}),
        )
        .await;
    assert_problem(&r, 422);
    assert_first_pointer_under(&r, "/events/1");
    assert_eq!(app.head().await, 0);
}

#[tokio::test]
async fn axum_rejections_are_problem_json() {
    let app = app().await;
    let id = Uuid::new_v4();
    let path = format!("/v1/incidents/{id}/events");
    let rep = app.reporter.clone();
    let r = app
        .post_as(&path, Some(&rep), "application/json", "{\"events\": [")
        .await;
    assert_problem(&r, 400);
    let r = app.post_as(&path, Some(&rep), "text/plain", "{}").await;
    assert_problem(&r, 415);
    let big = format!(
        "{{\"events\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = app
        .post_as(&path, Some(&rep), "application/json", big)
        .await;
    assert_problem(&r, 413);
    let r = app
        .post_as(
            "/v1/incidents/not-a-uuid/events",
            Some(&rep),
            "application/json",
            "{}",
        )
        .await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/id", "{}", r.body);
    let r = app.get("/v1/incidents/not-a-uuid").await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/id", "{}", r.body);
    let r = app.get("/v1/events?after=minus-one").await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/after", "{}", r.body);
    let r = app.get("/v1/regions?as_of=yesterday").await;
    assert_problem(&r, 400);
    let r = app.get("/v1/nothing-here").await;
    assert_problem(&r, 404);
    let r = app.get("/v1/regions/XX-NOPE").await;
    assert_problem(&r, 422);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert_eq!(
        detail.matches("is not an ISO 3166-2").count(),
        1,
        "{detail}"
    );
    // Unknown query parameters are 400 naming them, on routes that take none as well, and
    // an append with one records nothing.
    let r = app.get(&format!("/v1/incidents/{id}/events?bogus=1")).await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/bogus", "{}", r.body);
    let r = app
        .post_as(
            &format!("{path}?expected_version=0"),
            Some(&rep),
            "application/json",
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}).to_string(),
        )
        .await;
    assert_problem(&r, 400);
    assert_eq!(app.head().await, 0);
    // `limit=0` cannot be honoured ("at most limit" events per page): 400 at /limit.
    let r = app.get("/v1/events?limit=0").await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/limit", "{}", r.body);
    // A parameter given twice (which one would count?) points at that parameter too.
    let r = app.get("/v1/incidents?limit=1&limit=2").await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/limit", "{}", r.body);
    let r = app.get("/v1/regions/UA-63").await;
    assert_problem(&r, 404);
    let r = app.get(&format!("/v1/incidents/{id}")).await;
    assert_problem(&r, 404);
    let r = app
        .post_as("/v1/events", Some(&rep), "application/json", "{}")
        .await;
    assert_problem(&r, 415);
    assert_eq!(app.head().await, 0);
}

/// An incident recorded at version 2 (a report, then a casualty figure); the figure's event,
/// for a line to repeat it.
async fn incident_with_a_figure(app: &App) -> (Uuid, Value) {
    let id = Uuid::new_v4();
    let figure = casualties(Uuid::new_v4(), 3);
    for (version, event) in [
        (0, reported(Uuid::new_v4(), "UA-63", "shelling")),
        (1, figure.clone()),
    ] {
        let r = app
            .append(id, json!({"expected_version": version, "events": [event]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    (id, figure)
}

/// A line that repeats recorded events (an idempotent re-send with "any") leaves the stream
/// where it was. A later line of the same chunk that expects that version is decided on what
/// was recorded, not on the repeat taken for a new append: accepted, not a 409.
#[tokio::test]
async fn bulk_import_decides_after_a_repeat_on_what_was_recorded() {
    let app = app().await;
    let (id, figure) = incident_with_a_figure(&app).await;
    let body = [
        json!({"incident_id": id, "events": [figure]}),
        json!({"incident_id": id, "expected_version": 2, "events": [casualties(Uuid::new_v4(), 5)]}),
    ]
    .iter()
    .map(|l| l.to_string() + "\n")
    .collect::<String>();
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"appended": 1, "duplicates": 1, "rejected": []}),
        "{}",
        r.body
    );
    assert_eq!(app.head().await, 3);
}

/// The same with a line between the repeat and the conflict: every line the chunk accepted for
/// the incident is looked at, not only the last one. Line 1 repeats a recorded event, line 2
/// was decided after it (one version too far, as it turns out), and line 3 expects the
/// version that lines 1 and 2 really reach.
#[tokio::test]
async fn bulk_import_decides_after_a_repeat_further_back_on_what_was_recorded() {
    let app = app().await;
    let (id, figure) = incident_with_a_figure(&app).await;
    let body = [
        json!({"incident_id": id, "events": [figure]}),
        json!({"incident_id": id, "events": [casualties(Uuid::new_v4(), 4)]}),
        json!({"incident_id": id, "expected_version": 3, "events": [casualties(Uuid::new_v4(), 5)]}),
    ]
    .iter()
    .map(|l| l.to_string() + "\n")
    .collect::<String>();
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"appended": 2, "duplicates": 1, "rejected": []}),
        "{}",
        r.body
    );
    assert_eq!(app.head().await, 4);
}

/// Accepted lines are recorded in line order, whatever lines the store turns away between
/// them: a reused event id (409), an accepted line that turns out to repeat a recorded event,
/// and the later lines of the same and of other incidents in the same chunk. (The store used
/// to write the other incidents' later lines first and the turned-away incident's after them,
/// so that the same body gave another log when it arrived in one piece than line by line.)
#[tokio::test]
async fn bulk_import_records_accepted_lines_in_line_order() {
    let app = app().await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let figure = casualties(Uuid::new_v4(), 1);
    let mut reused = figure.clone();
    reused["data"]["killed"] = json!(2);
    let source = |name: &str| json!({"event_id": Uuid::new_v4(), "type": "SourceAdded", "data": {"source": {"name": name}}});
    let lines = [
        (a, reported(Uuid::new_v4(), "UA-63", "shelling")),
        (a, figure.clone()),
        (a, reused),
        (a, source("first")),
        (b, reported(Uuid::new_v4(), "UA-65", "shelling")),
        (a, figure),
        (a, source("second")),
        (c, reported(Uuid::new_v4(), "UA-63", "drone_strike")),
    ];
    let body: String = lines
        .iter()
        .map(|(id, e)| json!({"incident_id": id, "events": [e]}).to_string() + "\n")
        .collect();
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["appended"], 6, "{}", r.body);
    assert_eq!(r.body["duplicates"], 1, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["line"], 3, "{}", r.body);
    let log = app.get("/v1/events?after=0").await;
    let recorded: Vec<String> = log.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let in_line_order: Vec<String> = [0, 1, 3, 4, 6, 7]
        .iter()
        .map(|&i| lines[i].1["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recorded, in_line_order);
}

/// A body of bad lines cannot make the report (and the server's memory) grow without bound:
/// the first 10,000 rejected lines are listed, in line order, with the total beside them.
#[tokio::test]
async fn bulk_import_lists_at_most_10000_rejected_lines_and_counts_them_all() {
    let app = app().await;
    let good = json!({"incident_id": Uuid::new_v4(), "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    let body = format!("{}\n{}", "x\n".repeat(45_000), good) + "\n";
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["appended"], 1);
    assert_eq!(r.body["rejected_total"], 45_000);
    let lines: Vec<u64> = r.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, (1..=10_000).collect::<Vec<u64>>());
    assert_eq!(app.head().await, 1);
}

/// A byte order mark before the first line (as Windows tools write) is skipped, not a
/// malformed line 1; anywhere else it stays an error.
#[tokio::test]
async fn bulk_import_skips_a_byte_order_mark_at_the_start() {
    let app = app().await;
    let line = |id: Uuid| {
        json!({"incident_id": id, "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]})
            .to_string()
    };
    let body = format!(
        "\u{feff}{}\n{}\n\u{feff}{}\n",
        line(Uuid::new_v4()),
        line(Uuid::new_v4()),
        line(Uuid::new_v4())
    );
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["appended"], 2, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["line"], 3, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["status"], 400, "{}", r.body);
    assert_eq!(app.head().await, 2);
}

#[tokio::test]
async fn bulk_import_reports_each_line_and_records_only_accepted_ones() {
    let app = app().await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (claim_id, figure) = (Uuid::new_v4(), Uuid::new_v4());
    let line1 = json!({"incident_id": a, "expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-63", "drone_strike"), claim(Uuid::new_v4(), claim_id)]});
    let lines = [
        line1.to_string(),
        // 2: depends on line 1 (same chunk): the claim exists only through line 1.
        json!({"incident_id": a, "expected_version": 2, "events": [denial(Uuid::new_v4(), claim_id)]}).to_string(),
        // 3: a repeat of line 1.
        line1.to_string(),
        // 4: malformed JSON.
        "{\"incident_id\": ".to_string(),
        // 5: invalid event.
        json!({"incident_id": b, "events": [casualties(Uuid::new_v4(), -4)]}).to_string(),
        // 6: version conflict.
        json!({"incident_id": a, "expected_version": 1, "events": [casualties(Uuid::new_v4(), 1)]}).to_string(),
        String::new(),
        // 8: a fine new incident.
        json!({"incident_id": c, "events": [reported(Uuid::new_v4(), "UA-65", "shelling"), casualties(figure, 2)]}).to_string(),
        // 9: denial of a claim that does not exist.
        json!({"incident_id": c, "events": [denial(Uuid::new_v4(), Uuid::new_v4())]}).to_string(),
        // 10: a stale line that reuses line 8's event id for other content (a conflict, not
        // a repeat).
        json!({"incident_id": c, "expected_version": 0, "events": [casualties(figure, 7)]}).to_string(),
        // 11: a line that repeats a key (which incident would it be?).
        format!(r#"{{"incident_id": "{b}", "incident_id": "{c}", "events": []}}"#),
        // 12: two problems in one event: each gets its pointer, as in a single append.
        json!({"incident_id": b, "events": [{"event_id": Uuid::new_v4(), "type": "CasualtiesReported",
            "data": {"killed": -4, "colour": "red", "source": {"name": "x"}}}]}).to_string(),
    ];
    let body = lines.join("\n") + "\n";
    let r = app.import(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["appended"], 5, "{}", r.body);
    assert_eq!(r.body["duplicates"], 2, "{}", r.body);
    let rejected: Vec<(u64, u64)> = r.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["line"].as_u64().unwrap(), x["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        [
            (4, 400),
            (5, 422),
            (6, 409),
            (9, 422),
            (10, 409),
            (11, 400),
            (12, 422)
        ],
        "{}",
        r.body
    );
    let two = &r.body["rejected"][6];
    let mut pointers: Vec<&str> = two["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    pointers.sort_unstable();
    assert_eq!(
        pointers,
        ["/events/0/data/colour", "/events/0/data/killed"],
        "{two}"
    );
    let detail = two["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("2 problems: ")
            && detail.contains("/events/0/data/colour")
            && detail.contains("/events/0/data/killed"),
        "{detail}"
    );
    assert_eq!(r.body["rejected"][0]["errors"], json!([]), "{}", r.body);
    assert!(
        r.body["rejected"][5]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("duplicate key \"incident_id\"")),
        "{}",
        r.body
    );
    assert_eq!(app.head().await, 5);
    // Read-your-writes after the bulk answer too.
    let view = app.get(&format!("/v1/incidents/{a}")).await;
    assert_eq!(view.body["version"], 3, "{}", view.body);
    assert_eq!(
        app.get(&format!("/v1/incidents/{b}")).await.status,
        StatusCode::NOT_FOUND
    );

    // The CLI path: the same service code.
    let more = json!({"incident_id": Uuid::new_v4(), "events": [reported(Uuid::new_v4(), "RU-MOS", "explosion")]}).to_string();
    let report = app
        .service
        .import_ndjson(format!("{more}\n{more}\n").as_bytes(), "cli", &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.appended, report.duplicates, report.rejected.len()),
        (1, 1, 0)
    );
    assert_eq!(app.head().await, 6);
}

#[tokio::test]
async fn bulk_import_of_many_lines_spans_chunks() {
    let app = app().await;
    let mut body = String::new();
    let ids: Vec<Uuid> = (0..9000).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        let region = if i % 2 == 0 { "UA-63" } else { "UA-65" };
        body.push_str(&json!({"incident_id": id, "expected_version": 0, "events": [reported(Uuid::new_v4(), region, "shelling"), casualties(Uuid::new_v4(), 1)]}).to_string());
        body.push('\n');
    }
    // Second events for every incident, after the first ones (other chunk for most).
    for id in &ids {
        body.push_str(&json!({"incident_id": id, "expected_version": 2, "events": [casualties(Uuid::new_v4(), 2)]}).to_string());
        body.push('\n');
    }
    let report = app
        .service
        .import_ndjson(body.as_bytes(), "cli", &|_| {})
        .await
        .unwrap();
    assert_eq!(report.rejected, vec![]);
    assert_eq!(report.appended, 27000);
    let r = app.get("/v1/regions/UA-63").await;
    assert_eq!(r.body["incidents"], 4500);
    assert_eq!(r.body["casualties"]["killed"]["best"], 9000);
}

/// The live views take the events of single appends as their requests hand them over, and
/// read everything else from the log: a bulk import, writes straight to the store (as another
/// server on the same database makes them). All of it interleaved, they equal a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_fed_by_hand_overs_and_by_the_log_equal_a_rebuild() {
    let app = app().await;
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let router = app.router.clone();
        let token = app.reporter.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let id = Uuid::new_v4();
                let created = json!({"expected_version": 0, "events": [
                    reported(Uuid::new_v4(), "UA-63", "shelling"), casualties(Uuid::new_v4(), 2)]});
                let claim_id = Uuid::new_v4();
                let disputed = json!({"events": [
                    claim(Uuid::new_v4(), claim_id), denial(Uuid::new_v4(), claim_id)]});
                let rising =
                    json!({"expected_version": 4, "events": [casualties(Uuid::new_v4(), w + 3)]});
                for body in [created, disputed, rising] {
                    assert_eq!(
                        append_status(router.clone(), &token, id, body).await,
                        StatusCode::CREATED
                    );
                }
            }
        }));
    }
    let import = {
        let service = app.service.clone();
        tokio::spawn(async move {
            let mut body = String::new();
            for i in 0..300 {
                let region = if i % 2 == 0 { "UA-65" } else { "UA-63" };
                body.push_str(
                    &json!({"incident_id": Uuid::new_v4(), "expected_version": 0,
                    "events": [reported(Uuid::new_v4(), region, "drone_strike")]})
                    .to_string(),
                );
                body.push('\n');
            }
            service.import_ndjson(body.as_bytes(), "cli", &|_| {}).await
        })
    };
    let foreign = {
        let store = app.store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                let event = reported(Uuid::new_v4(), "RU-BEL", "missile_strike");
                store
                    .append(incidentlog_store::AppendRequest {
                        stream_id: Uuid::new_v4(),
                        expected_version: incidentlog_store::ExpectedVersion::Exact(0),
                        events: vec![incidentlog_store::NewEvent {
                            event_id: Uuid::new_v4(),
                            event_type: "IncidentReported".into(),
                            data: serde_json::value::RawValue::from_string(
                                event["data"].to_string(),
                            )
                            .unwrap(),
                        }],
                        recorded_by: "another server".into(),
                    })
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let report = import.await.unwrap().unwrap();
    assert_eq!(report.appended, 300);
    foreign.await.unwrap();

    let events = 4 * 15 * 5 + 300 + 30;
    assert_eq!(app.head().await, events);
    let (position, live) = app.service.live_digest().await.unwrap();
    assert_eq!(position, events);
    let (rebuilt, _) = incidentlog_api::service::replay(&*app.store, None, &|_| {})
        .await
        .unwrap();
    assert_eq!(rebuilt.events, events);
    assert_eq!(
        live, rebuilt.digest,
        "live views equal a rebuild from the log"
    );
    let r = app.get("/v1/regions/RU-BEL").await;
    assert_eq!(r.body["incidents"], 30, "{}", r.body);
    // Both ways were taken: the single appends' and the import's events were handed over (or
    // read, when the follower got there first), the foreign writes' were read.
    let metrics = app.service.metrics();
    let handed_over = metrics
        .events_handed_over
        .load(std::sync::atomic::Ordering::Relaxed);
    let applied = metrics
        .events_applied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(applied, events, "every event applied once");
    assert!(handed_over > 0, "no event was handed over");
    assert!(
        handed_over <= 4 * 15 * 5 + 300,
        "only this process's appends hand over: {handed_over}"
    );
}

/// A live bulk import hands the events of every chunk the store recorded to the views, as a
/// single append does; a line the store answers otherwise (an exact repeat, a rejection)
/// hands nothing over. The views equal a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_bulk_import_hands_its_recorded_events_to_the_views() {
    let app = app().await;
    let metrics = app.service.metrics();
    let handed_before = metrics
        .events_handed_over
        .load(std::sync::atomic::Ordering::Relaxed);
    let ids: Vec<Uuid> = (0..IMPORT_CHUNK_EVENTS).map(|_| Uuid::new_v4()).collect();
    let mut lines = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let region = if i % 3 == 0 { "UA-65" } else { "UA-63" };
        lines.push(json!({"incident_id": id, "expected_version": 0, "events": [
            reported(Uuid::new_v4(), region, "shelling"), casualties(Uuid::new_v4(), 1)]}));
    }
    let repeated = lines[7].clone();
    for (i, id) in ids.iter().enumerate().step_by(2) {
        let claim_id = Uuid::new_v4();
        lines.push(json!({"incident_id": id, "expected_version": 2, "events": [
            casualties(Uuid::new_v4(), i as i64 % 5 + 2), claim(Uuid::new_v4(), claim_id),
            denial(Uuid::new_v4(), claim_id)]}));
    }
    lines.push(repeated);
    // A stale expected version: rejected, records nothing.
    lines.push(
        json!({"incident_id": ids[1], "expected_version": 0, "events": [
        reported(Uuid::new_v4(), "UA-63", "shelling")]}),
    );
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let report = app
        .service
        .import_ndjson(body.as_bytes(), "cli", &|_| {})
        .await
        .unwrap();
    let appended = 2 * IMPORT_CHUNK_EVENTS as u64 + 3 * (IMPORT_CHUNK_EVENTS as u64 / 2);
    assert_eq!(report.appended, appended, "{report:?}");
    assert_eq!(report.duplicates, 2, "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(app.head().await, appended);
    app.service.caught_up().await;
    let (position, live) = app.service.live_digest().await.unwrap();
    assert_eq!(position, appended);
    let (rebuilt, _) = incidentlog_api::service::replay(&*app.store, None, &|_| {})
        .await
        .unwrap();
    assert_eq!(
        live, rebuilt.digest,
        "live views equal a rebuild from the log"
    );
    let handed_over = metrics
        .events_handed_over
        .load(std::sync::atomic::Ordering::Relaxed)
        - handed_before;
    assert!(
        handed_over > 0 && handed_over <= appended,
        "the import handed over {handed_over} of {appended} events"
    );
    let applied = metrics
        .events_applied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(applied, appended, "every event applied once");
}

#[tokio::test]
async fn concurrent_any_appends_to_one_incident_all_land() {
    let app = app().await;
    let id = Uuid::new_v4();
    app.append(
        id,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let router = app.router.clone();
        let token = app.reporter.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"events": [casualties(Uuid::new_v4(), i)]});
            append_status(router, &token, id, body).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let view = app.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(view.body["version"], 21);
}

#[tokio::test]
async fn as_of_and_at_position() {
    let app = app().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    app.append(a, json!({"events": [reported(Uuid::new_v4(), "UA-63", "missile_strike"), casualties(Uuid::new_v4(), 2)]})).await;
    // Live summaries are cached per position; every append must show at once.
    assert_eq!(app.get("/v1/regions/UA-63").await.body["incidents"], 1);
    assert_eq!(
        app.get("/v1/regions").await.body["regions"][0]["incidents"],
        1
    );
    app.append(
        b,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "drone_strike")]}),
    )
    .await;
    assert_eq!(app.get("/v1/regions/UA-63").await.body["incidents"], 2);
    assert_eq!(
        app.get("/v1/regions").await.body["regions"][0]["incidents"],
        2
    );
    app.append(a, json!({"events": [casualties(Uuid::new_v4(), 5)]}))
        .await;
    let live = app.get("/v1/regions/UA-63").await;
    assert_eq!(live.body["casualties"]["killed"]["best"], 5);
    assert_eq!(live.body["as_of_position"], 4);

    let r = app.get("/v1/regions/UA-63?at_position=2").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["incidents"], 1);
    assert_eq!(r.body["as_of_position"], 2);
    assert_eq!(r.body["casualties"]["killed"]["best"], 2);
    // Beyond the head: clamped to it.
    let r = app.get("/v1/regions/UA-63?at_position=999").await;
    assert_eq!(r.body["as_of_position"], 4);
    assert_eq!(r.body["incidents"], 2);
    // Before anything: nothing recorded for the region then.
    assert_eq!(
        app.get("/v1/regions/UA-63?at_position=0").await.status,
        StatusCode::NOT_FOUND
    );
    let all = app.get("/v1/regions?at_position=3").await;
    assert_eq!(all.body["regions"][0]["incidents"], 2);

    // as_of = recorded_at of position 2.
    let log = app.get("/v1/events").await;
    let t2 = log.body["events"][1]["recorded_at"]
        .as_str()
        .unwrap()
        .to_string();
    let t2q = t2.replace(':', "%3A");
    let r = app.get(&format!("/v1/regions/UA-63?as_of={t2q}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["as_of_position"].as_u64().unwrap() >= 2);
    let r = app
        .get("/v1/regions/UA-63?as_of=2000-01-01T00%3A00%3A00Z")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let v = app.get(&format!("/v1/incidents/{a}?at_position=2")).await;
    assert_eq!(v.body["version"], 2, "{}", v.body);
    let v = app.get(&format!("/v1/incidents/{a}?at_position=1")).await;
    assert_eq!(v.body["version"], 1);
    let v = app.get(&format!("/v1/incidents/{b}?at_position=2")).await;
    assert_eq!(v.status, StatusCode::NOT_FOUND);
    let r = app
        .get(&format!("/v1/incidents/{a}?at_position=1&as_of={t2q}"))
        .await;
    assert_problem(&r, 400);
}

#[tokio::test]
async fn auth_matrix() {
    let app = app().await;
    let id = Uuid::new_v4();
    let body = json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}).to_string();
    let path = format!("/v1/incidents/{id}/events");
    let (admin, rep, ro) = (app.admin.clone(), app.reporter.clone(), app.reader.clone());

    // No token: 401 everywhere but health, readiness and metrics.
    for p in [
        "/v1/regions",
        "/v1/events",
        "/openapi.json",
        "/v1/admin/verify",
    ] {
        assert_problem(&app.get_as(p, None).await, 401);
    }
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get_as(p, None).await.status, StatusCode::OK, "{p}");
    }
    // Paths no route serves too: without a valid token nothing says which paths exist.
    for p in ["/v1/nope", "/nope", &format!("/v1/incidents/{id}/nope")] {
        assert_problem(&app.get_as(p, None).await, 401);
        assert_problem(&app.get_as(p, Some("il_wrong")).await, 401);
        assert_problem(&app.post_as(p, None, "application/json", "{}").await, 401);
        assert_problem(&app.get_as(p, Some(&ro)).await, 404);
        assert_problem(
            &app.post_as(p, Some(&ro), "application/json", "{}").await,
            404,
        );
    }
    assert_problem(&app.get_as("/v1/regions", Some("il_wrong")).await, 401);
    assert_problem(
        &app.post_as(&path, None, "application/json", body.clone())
            .await,
        401,
    );
    // A method no route serves: 405 for every role (no role would do), 401 without a token.
    for token in [&ro, &rep, &admin] {
        let r = app
            .post_as("/v1/regions", Some(token), "application/json", "{}")
            .await;
        assert_problem(&r, 405);
        let put = Request::builder()
            .method(Method::PUT)
            .uri(&path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body.clone()))
            .unwrap();
        assert_problem(&app.send(put).await, 405);
    }
    assert_problem(
        &app.post_as("/v1/regions", None, "application/json", "{}")
            .await,
        401,
    );
    // Under /v1/admin/ everything needs admin first, known path or not, any method.
    for token in [&ro, &rep] {
        assert_problem(&app.get_as("/v1/admin/nope", Some(token)).await, 403);
        assert_problem(
            &app.post_as("/v1/admin/verify", Some(token), "application/json", "{}")
                .await,
            403,
        );
    }
    assert_problem(&app.get_as("/v1/admin/nope", Some(&admin)).await, 404);
    assert_problem(
        &app.post_as("/v1/admin/verify", Some(&admin), "application/json", "{}")
            .await,
        405,
    );
    // Role too low.
    assert_problem(
        &app.post_as(&path, Some(&ro), "application/json", body.clone())
            .await,
        403,
    );
    assert_problem(&app.get_as("/v1/admin/verify", Some(&rep)).await, 403);
    assert_problem(
        &app.post_as("/v1/admin/replay", Some(&rep), "application/json", "")
            .await,
        403,
    );
    assert_eq!(app.head().await, 0);
    // Enough.
    assert_eq!(
        app.get_as("/v1/regions", Some(&ro)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.post_as(&path, Some(&rep), "application/json", body.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let v = app.get_as("/v1/admin/verify", Some(&admin)).await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["ok"], true);
    assert_eq!(v.body["events"], 1);
    assert_eq!(v.body["head_hash"].as_str().unwrap().len(), 64);
    // Read before the replay, which swaps its rebuilt views in: afterwards the "live" digest
    // would be the rebuilt one, and the comparison could not fail.
    let live = app.service.live_digest().await.unwrap().1;
    let replay = app
        .post_as("/v1/admin/replay", Some(&admin), "application/json", "")
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["events"], 1);
    assert_eq!(replay.body["digest"], live);

    // A token created after start works at once; a revoked one stops working on reload.
    let late = add_token(&app.store, "late", "reader").await;
    assert_eq!(
        app.get_as("/v1/regions", Some(&late)).await.status,
        StatusCode::OK
    );
    assert!(app.store.revoke_token("late", Utc::now()).await.unwrap());
    app.service.reload_tokens().await.unwrap();
    assert_problem(&app.get_as("/v1/regions", Some(&late)).await, 401);
}

/// A new token works on first use however many requests present it at once, and right after
/// a flood of made-up secrets: requests that miss share the token table's reloads, and when
/// the reload budget is spent they wait for the next reload instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tokens_work_on_first_use_in_bursts_and_after_unknown_secrets() {
    let app = app().await;
    // More made-up secrets than the reload budget holds.
    for i in 0..12 {
        let bogus = format!("il_bogus_{i}");
        assert_problem(&app.get_as("/v1/regions", Some(&bogus)).await, 401);
    }
    for round in 0..2 {
        let token = add_token(&app.store, &format!("burst{round}"), "reader").await;
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let router = app.router.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get("/v1/regions")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                router.oneshot(req).await.unwrap().status()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), StatusCode::OK, "round {round}");
        }
    }
}

#[tokio::test]
async fn public_read_lets_anonymous_gets_through_but_not_admin_or_writes() {
    let app = app_with(ServeConfig {
        public_read: true,
        ..ServeConfig::default()
    })
    .await;
    assert_eq!(app.get_as("/v1/regions", None).await.status, StatusCode::OK);
    assert_eq!(app.get_as("/v1/events", None).await.status, StatusCode::OK);
    assert_problem(&app.get_as("/v1/admin/verify", None).await, 401);
    let body = json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}).to_string();
    let path = format!("/v1/incidents/{}/events", Uuid::new_v4());
    assert_problem(
        &app.post_as(&path, None, "application/json", body).await,
        401,
    );
    // A bad token is still an error.
    assert_problem(&app.get_as("/v1/regions", Some("il_wrong")).await, 401);
    // An anonymous GET of a path no route serves is a plain 404; any other method is not
    // let through, on unknown paths or known ones.
    assert_problem(&app.get_as("/v1/nope", None).await, 404);
    for p in ["/v1/nope", "/v1/regions"] {
        assert_problem(&app.post_as(p, None, "application/json", "{}").await, 401);
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let app = app_with(ServeConfig {
        rate_limit_per_sec: 1,
        rate_limit_burst: 2,
        ..ServeConfig::default()
    })
    .await;
    let ro = app.reader.clone();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = Request::get("/v1/regions")
            .header(header::AUTHORIZATION, format!("Bearer {ro}"))
            .body(Body::empty())
            .unwrap();
        let res = app.router.clone().oneshot(req).await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().get(header::RETRY_AFTER).is_some());
        }
        statuses.push(res.status().as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
}

async fn next_sse_event(
    body: &mut (impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buf: &mut String,
) -> (u64, String, Value) {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(id) = id {
                return (id, event, serde_json::from_str(&data).unwrap());
            }
            continue; // a comment (heartbeat)
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("SSE event in time")
            .expect("stream open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn sse_catches_up_then_follows_live() {
    let app = app().await;
    let id = Uuid::new_v4();
    app.append(id, json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling"), casualties(Uuid::new_v4(), 1)]})).await;
    app.append(id, json!({"events": [casualties(Uuid::new_v4(), 2)]}))
        .await;

    let req = Request::get("/v1/events/stream?after=1")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .body(Body::empty())
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = res.into_body().into_data_stream();
    let mut buf = String::new();
    let (p, ty, data) = next_sse_event(&mut body, &mut buf).await;
    assert_eq!((p, ty.as_str()), (2, "CasualtiesReported"));
    assert_eq!(data["global_position"], 2);
    assert_eq!(data["incident_id"], json!(id));
    let (p, _, _) = next_sse_event(&mut body, &mut buf).await;
    assert_eq!(p, 3);
    // Live.
    app.append(id, json!({"events": [casualties(Uuid::new_v4(), 3)]}))
        .await;
    let (p, _, data) = next_sse_event(&mut body, &mut buf).await;
    assert_eq!(p, 4);
    assert_eq!(data["stream_version"], 4);

    // Last-Event-ID wins over `after` (a reconnect).
    let req = Request::get("/v1/events/stream?after=0")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .header("last-event-id", "3")
        .body(Body::empty())
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    let mut body = res.into_body().into_data_stream();
    let mut buf = String::new();
    let (p, _, _) = next_sse_event(&mut body, &mut buf).await;
    assert_eq!(p, 4);
}

/// A live feed opened with a token that is then revoked ends at the next token reload, as
/// every other request of that token then fails; feeds of other tokens go on.
#[tokio::test]
async fn sse_feed_ends_when_its_token_is_revoked() {
    let app = app().await;
    let doomed = add_token(&app.store, "doomed", "reader").await;
    app.service.reload_tokens().await.unwrap();
    let open = |token: &str| {
        Request::get("/v1/events/stream")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let res = app.router.clone().oneshot(open(&doomed)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut doomed_feed = res.into_body().into_data_stream();
    let res = app.router.clone().oneshot(open(&app.reader)).await.unwrap();
    let mut other_feed = res.into_body().into_data_stream();
    let id = Uuid::new_v4();
    app.append(
        id,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
    )
    .await;
    let (mut a, mut b) = (String::new(), String::new());
    assert_eq!(next_sse_event(&mut doomed_feed, &mut a).await.0, 1);
    assert_eq!(next_sse_event(&mut other_feed, &mut b).await.0, 1);

    assert!(app.store.revoke_token("doomed", Utc::now()).await.unwrap());
    app.service.reload_tokens().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = doomed_feed.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the revoked token's feed did not end");
    app.append(id, json!({"events": [casualties(Uuid::new_v4(), 1)]}))
        .await;
    assert_eq!(next_sse_event(&mut other_feed, &mut b).await.0, 2);
}

/// A `+` left unencoded in a query string arrives as a space: the error for a timestamp with an
/// offset sent that way says how to send it.
#[tokio::test]
async fn an_unencoded_plus_in_a_time_is_explained() {
    let app = app().await;
    for path in [
        "/v1/regions/UA-63?as_of=2026-01-02T10:00:00+02:00",
        "/v1/regions?from=2026-01-02T10:00:00+02:00",
        "/v1/incidents?to=2026-01-02T10:00:00+02:00",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains("%2B"),
            "{path}: {}",
            r.body
        );
    }
    let encoded = app
        .get("/v1/regions?from=2026-01-02T10:00:00%2B02:00")
        .await;
    assert_eq!(encoded.status, StatusCode::OK, "{}", encoded.body);
    // A space between date and time, without an offset: wrong, but not for a lost `+`.
    let no_offset = app.get("/v1/regions?from=2026-01-02%2010:00:00").await;
    assert_eq!(no_offset.status, StatusCode::BAD_REQUEST);
    assert!(!no_offset.body["detail"].as_str().unwrap().contains("%2B"));
    // `as_of` is read as strictly as `occurred_at`.
    for bad in ["2026-01-02T10:00:00.1234567891Z", "2026-01-02T10:30:60Z"] {
        let r = app.get(&format!("/v1/regions/UA-63?as_of={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_eq!(r.body["errors"][0]["pointer"], "/as_of", "{bad}");
    }
    // What is wrong is said: a word gets the expected form, a date alone the instant meant.
    let r = app.get("/v1/regions?as_of=garbage").await;
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("such as 2026-01-05T14:30:00Z"), "{detail}");
    let r = app.get("/v1/regions?as_of=2026-01-02").await;
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("a date alone is not an instant")
            && detail.contains("2026-01-02T23:59:59.999999Z"),
        "{detail}"
    );
    for (bad, says) in [
        ("2026-02-30", "2026-02-30 is not a date of the calendar"),
        ("2026-01-02T10:00:00", "the time has no offset"),
        ("2026-1-2", "such as 2026-01-05T14:30:00Z"),
        ("2026-01-02T25:00:00", "such as 2026-01-05T14:30:00Z"),
    ] {
        let r = app.get(&format!("/v1/regions?as_of={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{bad}: {detail}");
        assert!(!detail.contains("2026-1-2T23"), "{bad}: {detail}");
        if bad.contains("25:00") {
            assert!(!detail.contains("no offset"), "{bad}: {detail}");
        }
    }
}

/// `--max-sse-clients 0` turns the long-lived answers off: the feed, the ndjson log stream and
/// the CSV listing each get a 503 that says so, without a `Retry-After` (trying again will not
/// help); the JSON pages still answer.
#[tokio::test]
async fn long_lived_answers_turned_off_say_so() {
    let app = app_with(ServeConfig {
        max_sse_clients: 0,
        ..ServeConfig::default()
    })
    .await;
    for (path, accept) in [
        ("/v1/events/stream", "text/event-stream"),
        ("/v1/events", "application/x-ndjson"),
        ("/v1/incidents", "text/csv"),
    ] {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap();
        let r = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(r.headers().get(header::RETRY_AFTER).is_none(), "{path}");
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("turned off"),
            "{path}: {problem}"
        );
    }
    assert_eq!(app.get("/v1/events").await.status, StatusCode::OK);
}

/// ndjson log streams count with the live feeds against `--max-sse-per-client`, and one
/// ends (cut, not completed) when its token is revoked.
#[tokio::test]
async fn log_streams_share_the_live_feed_caps_and_end_on_revocation() {
    let app = app_with(ServeConfig {
        max_sse_per_client: 2,
        ..ServeConfig::default()
    })
    .await;
    let mut body = String::new();
    for _ in 0..600 {
        let line = json!({"incident_id": Uuid::new_v4(), "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
        body.push_str(&format!("{line}\n"));
    }
    assert_eq!(app.import(body).await.body["appended"], 600);
    let doomed = add_token(&app.store, "doomed", "reader").await;
    app.service.reload_tokens().await.unwrap();
    let log = |token: &str| {
        Request::get("/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, "application/x-ndjson")
            .body(Body::empty())
            .unwrap()
    };
    let feed = Request::get("/v1/events/stream")
        .header(header::AUTHORIZATION, format!("Bearer {doomed}"))
        .body(Body::empty())
        .unwrap();
    let first = app.router.clone().oneshot(feed).await.unwrap();
    let second = app.router.clone().oneshot(log(&doomed)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = app.router.clone().oneshot(log(&doomed)).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(first);

    // Read one chunk, then revoke: the rest of the body is an error, never a clean end.
    let mut stream = second.into_body().into_data_stream();
    let chunk = stream.next().await.unwrap().unwrap();
    assert!(!chunk.is_empty());
    assert!(app.store.revoke_token("doomed", Utc::now()).await.unwrap());
    app.service.reload_tokens().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(end, Ok(true), "the stream must end with an error");

    // A stream read to its end gives its slots back; events appended after the request are
    // not in it (it ends at the head it named).
    let reader = app.reader.clone();
    let res = app.router.clone().oneshot(log(&reader)).await.unwrap();
    let named = res.headers()["incidentlog-last-event"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(named.starts_with("600:"), "{named}");
    let more = json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    assert_eq!(
        app.append(Uuid::new_v4(), more).await.status,
        StatusCode::CREATED
    );
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 600);
    for _ in 0..2 {
        let res = app.router.clone().oneshot(log(&reader)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "the slots were given back");
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
    }
    let held: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| app.router.clone().oneshot(log(&reader))))
            .await;
    assert!(held
        .iter()
        .all(|r| r.as_ref().unwrap().status() == StatusCode::OK));
    let over = app.router.clone().oneshot(log(&reader)).await.unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// `GET /v1/incidents` as CSV or GeoJSON lists every matching incident, block after block,
/// in the JSON listing's order; it takes a live-feed slot while it streams; JSON stays the
/// default and wins ties.
#[tokio::test]
async fn incidents_list_as_csv_and_geojson_in_blocks() {
    let app = app_with(ServeConfig {
        max_sse_clients: 1,
        ..ServeConfig::default()
    })
    .await;
    let n = 2 * incidentlog_api::service::TABLE_BLOCK + 500;
    let mut body = String::new();
    for i in 0..n {
        let mut event = reported(
            Uuid::new_v4(),
            if i % 2 == 0 { "UA-63" } else { "UA-65" },
            "shelling",
        );
        if i % 3 == 0 {
            event["data"]["location"] = json!({"lat": 49.99, "lon": 36.23, "precision": "near"});
        }
        let line = json!({"incident_id": Uuid::new_v4(), "events": [event]});
        body.push_str(&format!("{line}\n"));
    }
    assert_eq!(app.import(body).await.body["appended"], n);
    let get = |path: &str, accept: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap()
    };
    let text = |res: axum::response::Response| async move {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    // The JSON listing's order, page after page.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(&format!("/v1/incidents?region=UA-65&limit=1000{cursor}"))
            .await;
        for v in page.body["incidents"].as_array().unwrap() {
            paged.push(v["incident_id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged.len(), n / 2);

    let res = app
        .router
        .clone()
        .oneshot(get("/v1/incidents?region=UA-65", "text/csv"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/csv; charset=utf-8"
    );
    assert_eq!(res.headers()[header::VARY], "accept");
    let csv = text(res).await;
    let mut rows = csv.split("\r\n").filter(|r| !r.is_empty());
    let head: Vec<&str> = rows.next().unwrap().split(',').collect();
    let id_col = head.iter().position(|c| *c == "incident_id").unwrap();
    let ids: Vec<String> = rows
        .map(|r| r.split(',').nth(id_col).unwrap().to_string())
        .collect();
    assert_eq!(ids, paged, "every incident once, in the listing's order");

    let res = app
        .router
        .clone()
        .oneshot(get("/v1/incidents", "application/geo+json"))
        .await
        .unwrap();
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/geo+json");
    let fc: Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["features"].as_array().unwrap().len(), n.div_ceil(3));

    // JSON by default and on ties; a table takes a live-feed slot.
    for accept in [
        "*/*",
        "application/json, text/csv",
        "text/csv;q=0.5, application/json",
        "text/html",
    ] {
        let res = app
            .router
            .clone()
            .oneshot(get("/v1/incidents?limit=1", accept))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{accept}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/json",
            "{accept}"
        );
    }
    let held = app
        .router
        .clone()
        .oneshot(get("/v1/incidents", "text/csv"))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let refused = app.send(get("/v1/incidents", "text/csv")).await;
    assert_problem(&refused, 503);
    drop(held);
    let again = app
        .router
        .clone()
        .oneshot(get("/v1/incidents", "text/csv"))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    drop(again);
    let r = app.send(get("/v1/incidents?cursor=abc", "text/csv")).await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/cursor");
    let r = app
        .send(get("/v1/incidents?region=XX-1", "application/geo+json"))
        .await;
    assert_problem(&r, 400);
}

/// With `cors_origins`, a listed page's preflight is answered without a token and every answer
/// (a 401 too) names the page; other pages get no `Access-Control-Allow-Origin`. Without it,
/// nothing changes: no CORS headers, and an OPTIONS without a token is a 401 like any request.
#[tokio::test]
async fn cors_lets_listed_pages_read_answers_and_preflights_need_no_token() {
    let page = "https://dashboard.example.org";
    let app = app_with(ServeConfig {
        cors_origins: vec![page.parse().expect("an origin")],
        ..ServeConfig::default()
    })
    .await;
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/incidents")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, accept",
            )
            .body(Body::empty())
            .unwrap()
    };
    let res = app.router.clone().oneshot(preflight(page)).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], page);
    let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("accept"),
        "{allowed}"
    );
    assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap()
        .contains("POST"));
    // A preflight answered by the CORS layer carries every answer's headers all the same.
    assert!(!h["x-request-id"].is_empty());
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let mut with_id = preflight("https://elsewhere.example");
    with_id
        .headers_mut()
        .insert("x-request-id", "client-chosen-7".parse().unwrap());
    let res = app.router.clone().oneshot(with_id).await.unwrap();
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    assert_eq!(res.headers()["x-request-id"], "client-chosen-7");
    assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    // An id with a quote or a backslash would break the log line it goes into: replaced.
    for hostile in [r#"a"b=c"#, r"a\b"] {
        let mut with_id = preflight("https://elsewhere.example");
        with_id
            .headers_mut()
            .insert("x-request-id", hostile.parse().unwrap());
        let res = app.router.clone().oneshot(with_id).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap();
        assert!(!id.is_empty() && id != hostile, "{id}");
    }
    // ... and is counted, under its method's "other".
    let metrics = app.get_as("/metrics", None).await.body;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains(r#"route="/v1/incidents",method="other",status="200""#),
        "{metrics}"
    );

    let get = |origin: &str, token: Option<&str>| {
        let mut b = Request::get("/v1/incidents").header(header::ORIGIN, origin);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    };
    let res = app
        .router
        .clone()
        .oneshot(get(page, Some(&app.reader)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], page);
    let exposed = res.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let vary: Vec<&str> = res
        .headers()
        .get_all(header::VARY)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let vary = vary.join(",");
    assert!(vary.contains("origin") && vary.contains("accept"), "{vary}");
    let res = app.router.clone().oneshot(get(page, None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], page);
    let res = app
        .router
        .clone()
        .oneshot(get("https://elsewhere.example", Some(&app.reader)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    let plain = app_with(ServeConfig::default()).await;
    let res = plain.router.clone().oneshot(preflight(page)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let res = plain
        .router
        .clone()
        .oneshot(get(page, Some(&plain.reader)))
        .await
        .unwrap();
    assert!(res
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

/// The status line of a GET sent over a fresh connection (the answer is not read further).
async fn status_over_tcp(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(conn)
        .read_line(&mut line)
        .await
        .unwrap();
    line
}

/// A client that stops reading its ndjson log stream keeps its live-feed slot only until the
/// send timeout: then its connection is closed (the body cut, never ended) and the slot is
/// free again; a client that reads steadily, if slowly, is not cut though its socket stays
/// full for far longer than the timeout. Over real TCP, through `serve`, with a receive
/// buffer the log overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_is_cut_after_the_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_sse_clients: 1,
        send_timeout: Duration::from_secs(2),
        ..ServeConfig::default()
    };
    let app = app_with(config.clone()).await;
    // ~14 MB of log: far more than the socket buffers and hyper's write buffer hold.
    let summary = "Shelling of the district reported by several sources. ".repeat(30);
    for _ in 0..4 {
        let mut body = String::new();
        for _ in 0..2_000 {
            let mut event = reported(Uuid::new_v4(), "UA-63", "shelling");
            event["data"]["summary"] = json!(summary);
            let line = json!({"incident_id": Uuid::new_v4(), "events": [event]});
            body.push_str(&format!("{line}\n"));
        }
        assert_eq!(app.import(body).await.body["appended"], 2_000);
    }
    let listener = incidentlog_api::bind(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(incidentlog_api::serve(
        listener,
        app.service.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nAccept: application/x-ndjson\r\n\r\n",
        app.reader
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = status_over_tcp(addr, &request).await;
    assert!(
        second.starts_with("HTTP/1.1 503"),
        "the slot is taken: {second}"
    );

    // Past the send timeout the slot is given back.
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let again = status_over_tcp(addr, &request).await;
        if again.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(again.starts_with("HTTP/1.1 503"), "{again}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stalled stream still holds its slot"
        );
    }
    // What the stalled client finds when it reads again: part of the log, then the end of
    // the connection (closed, or reset) without the last chunk.
    let mut got = Vec::new();
    let mut piece = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stalled.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&piece[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was not closed");
    let lines = got.iter().filter(|b| **b == b'\n').count();
    assert!(lines > 0 && !got.ends_with(b"0\r\n\r\n"), "{lines} lines");
    assert!(
        got.len() < 12_000_000,
        "the whole log arrived: the stream was not cut ({} bytes)",
        got.len()
    );

    // Slow but steady: after a pause that fills every buffer on the way, 8 KB every 50 ms
    // (160 KB/s) for 4 s, its socket full all along; then the rest at full speed. It gets
    // the whole log. (A timer restarted by completed writes cut such readers: the kernel wakes
    // a blocked writer only once a third of a send buffer of up to 4 MB has drained.)
    // The slot of the probe answered 200 above is given back once the server sees that
    // connection closed: until then this stream may get 503, and tries again.
    let opening = std::time::Instant::now();
    let mut steady = loop {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        conn.read_exact(&mut status).await.unwrap();
        if &status == b"HTTP/1.1 200" {
            break conn;
        }
        assert_eq!(
            &status, b"HTTP/1.1 503",
            "the one slot is busy, nothing else"
        );
        assert!(
            opening.elapsed() < Duration::from_secs(15),
            "the probe's slot was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = std::time::Instant::now();
    let mut body = Vec::new();
    let mut piece = vec![0u8; 8 * 1024];
    while started.elapsed() < Duration::from_secs(4) {
        let n = steady
            .read(&mut piece)
            .await
            .expect("a steady reader is not cut");
        assert!(
            n > 0,
            "a steady reader is not cut (after {} bytes)",
            body.len()
        );
        body.extend_from_slice(&piece[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), steady.read_to_end(&mut body))
        .await
        .expect("the answer ends")
        .expect("a steady reader is not cut");
    assert!(
        body.ends_with(b"0\r\n\r\n"),
        "the whole answer, with its last chunk"
    );
    let events = body
        .windows(18)
        .filter(|w| w == b"{\"global_position\"")
        .count();
    assert_eq!(events, 8_000, "every event of the log");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sse_clients_are_capped() {
    let app = app_with(ServeConfig {
        max_sse_clients: 1,
        ..ServeConfig::default()
    })
    .await;
    let open = || {
        Request::get("/v1/events/stream")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
            .body(Body::empty())
            .unwrap()
    };
    let first = app.router.clone().oneshot(open()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = app.send(open()).await;
    assert_problem(&second, 503);
    drop(first);
    let third = app.router.clone().oneshot(open()).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
}

/// One token cannot take every live-feed slot: beyond `max_sse_per_client` it gets 429 while
/// other tokens still get theirs; a closed stream gives its slot back.
#[tokio::test]
async fn sse_streams_are_capped_per_client() {
    let app = app_with(ServeConfig {
        max_sse_per_client: 2,
        ..ServeConfig::default()
    })
    .await;
    let open = |token: &str| {
        Request::get("/v1/events/stream")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let (ro, admin) = (app.reader.clone(), app.admin.clone());
    let first = app.router.clone().oneshot(open(&ro)).await.unwrap();
    let second = app.router.clone().oneshot(open(&ro)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = app.router.clone().oneshot(open(&ro)).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key(header::RETRY_AFTER));
    let other = app.router.clone().oneshot(open(&admin)).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(first);
    let again = app.router.clone().oneshot(open(&ro)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

/// One token cannot hold every request slot with uploads that never end: beyond
/// `max_concurrent_per_client` it gets 429 at once, other tokens are served, and a request
/// that ends gives its share back.
#[tokio::test]
async fn requests_in_flight_are_capped_per_client() {
    let app = app_with(ServeConfig {
        max_concurrent_per_client: 2,
        ..ServeConfig::default()
    })
    .await;
    let endless_upload = |token: &str| {
        let body = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        Request::post(format!("/v1/incidents/{}/events", Uuid::new_v4()))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(body))
            .unwrap()
    };
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.router.clone().oneshot(endless_upload(&app.admin))))
        .collect();
    // Let both reach their handlers (they then wait for a body that never comes).
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let over = app.get_as("/v1/regions", Some(&app.admin)).await;
    assert_eq!(
        over.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        over.body
    );
    assert_eq!(over.body["status"], 429);
    assert!(
        over.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("in flight")),
        "{:?}",
        over.body
    );
    let other = app.get_as("/v1/regions", Some(&app.reader)).await;
    assert_eq!(other.status, StatusCode::OK, "another token is served");
    for h in &held {
        h.abort();
    }
    for h in held {
        let _ = h.await;
    }
    let again = app.get_as("/v1/regions", Some(&app.admin)).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "shares come back when requests end"
    );
}

/// `GET /v1/incidents/{id}/events` answers the whole stream without parameters (SPEC), and a
/// page of it with `after`/`limit`, `next_after` continuing it.
#[tokio::test]
async fn incident_events_page_through_the_stream() {
    let app = app().await;
    let id = Uuid::new_v4();
    let r = app
        .append(
            id,
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let more: Vec<Value> = (1..5).map(|k| casualties(Uuid::new_v4(), k)).collect();
    let r = app.append(id, json!({"events": more})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let versions = |r: &Resp| -> Vec<u64> {
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["stream_version"].as_u64().unwrap())
            .collect()
    };
    let whole = app.get(&format!("/v1/incidents/{id}/events")).await;
    assert_eq!(versions(&whole), [1, 2, 3, 4, 5]);
    assert!(
        whole.body.get("next_after").is_none(),
        "the SPEC's shape without paging"
    );
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let r = app
            .get(&format!("/v1/incidents/{id}/events?after={after}&limit=2"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let got = versions(&r);
        assert!(got.len() <= 2);
        assert_eq!(r.body["next_after"], got.last().copied().unwrap_or(after));
        if got.is_empty() {
            break;
        }
        after = r.body["next_after"].as_u64().unwrap();
        paged.extend(got);
    }
    assert_eq!(paged, [1, 2, 3, 4, 5]);
    let r = app.get(&format!("/v1/incidents/{id}/events?after=3")).await;
    assert_eq!(versions(&r), [4, 5]);
    let r = app
        .get(&format!("/v1/incidents/{id}/events?limit=5000"))
        .await;
    assert_eq!(
        versions(&r),
        [1, 2, 3, 4, 5],
        "a large limit is clamped, not refused"
    );
    let r = app.get(&format!("/v1/incidents/{id}/events?limit=0")).await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["pointer"], "/limit");
    let r = app
        .get(&format!("/v1/incidents/{}/events?after=0", Uuid::new_v4()))
        .await;
    assert_problem(&r, 404);
}

/// The body of an ndjson `GET /v1/events{query}` (checked to be 200 ndjson).
async fn get_ndjson(app: &App, query: &str, accept: &str) -> String {
    let req = Request::get(format!("/v1/events{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.content_type, "application/x-ndjson");
    match r.body {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => panic!("expected several ndjson lines, got {other}"),
    }
}

/// The `Incidentlog-Last-Event` header of an ndjson `GET /v1/events{query}`.
async fn last_event_header(app: &App, query: &str) -> Option<String> {
    let req = Request::get(format!("/v1/events{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .header(header::ACCEPT, "application/x-ndjson")
        .body(Body::empty())
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.headers()
        .get("incidentlog-last-event")
        .map(|v| v.to_str().unwrap().to_string())
}

/// `GET /v1/events` with `Accept: application/x-ndjson`: the log up to the head as of the
/// request, one recorded event per line exactly as in the JSON pages (and as `export` writes
/// them), over several store reads; what `incidentlog restore` reads back.
#[tokio::test]
async fn the_log_streams_as_ndjson_for_an_online_backup() {
    let app = app().await;
    let mut body = String::new();
    for i in 0..1250 {
        let id = Uuid::new_v4();
        let line = json!({"incident_id": id, "expected_version": 0, "events": [
            reported(Uuid::new_v4(), if i % 2 == 0 { "UA-63" } else { "UA-65" }, "shelling"),
            casualties(Uuid::new_v4(), 1),
        ]});
        body.push_str(&format!("{line}\n"));
    }
    let r = app.import(body).await;
    assert_eq!(r.body["appended"], 2500, "{:?}", r.body);
    assert_eq!(app.head().await, 2500);
    let all = get_ndjson(&app, "", "application/x-ndjson").await;
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2500);
    // The same events as the JSON pages, field for field.
    let mut after = 0;
    let mut paged: Vec<Value> = Vec::new();
    while after < 2500 {
        let page = app
            .get(&format!("/v1/events?after={after}&limit=1000"))
            .await;
        paged.extend(page.body["events"].as_array().unwrap().iter().cloned());
        after = page.body["next_after"].as_u64().unwrap();
    }
    let streamed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(streamed, paged);
    // Restorable: the lines regroup into appends whose chain ends at the store's head.
    let mut regrouper = incidentlog_store::Regrouper::new();
    for l in &lines {
        let e = incidentlog_api::wire::parse_wire_event(l).unwrap();
        regrouper.push(e).unwrap();
    }
    assert_eq!(regrouper.finish().unwrap(), app.store.head());
    // The last event each stream sends, to check a saved copy is whole.
    let hash_at = |p: usize| -> String {
        serde_json::from_str::<Value>(lines[p - 1]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        last_event_header(&app, "").await,
        Some(format!("2500:{}", app.store.head().hash_hex()))
    );
    assert_eq!(
        last_event_header(&app, "?after=10&limit=5").await,
        Some(format!("15:{}", hash_at(15)))
    );
    assert_eq!(last_event_header(&app, "?after=2500").await, None);
    // `after` and `limit` (no clamp), another media range first, past the end.
    let tail = get_ndjson(&app, "?after=1200", "text/html, application/x-ndjson;q=0.9").await;
    let tail: Vec<&str> = tail.lines().collect();
    assert_eq!(tail.len(), 1300);
    assert_eq!(tail[..], lines[1200..]);
    let some = get_ndjson(&app, "?after=10&limit=5", "application/x-ndjson").await;
    assert_eq!(some.lines().collect::<Vec<_>>(), lines[10..15]);
    assert_eq!(
        get_ndjson(&app, "?after=2500", "application/x-ndjson").await,
        ""
    );
    // Plain JSON without the header, or when the client prefers JSON; the same 400 for a
    // zero limit.
    let r = app.get("/v1/events?after=0").await;
    assert_eq!(r.content_type, "application/json");
    for accept in [
        "application/json, application/x-ndjson;q=0.1",
        "application/x-ndjson;q=0",
        "application/x-ndjson, application/json",
        "*/*",
    ] {
        let req = Request::get("/v1/events?after=2400")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap();
        let r = app.send(req).await;
        assert_eq!(r.content_type, "application/json", "{accept}");
    }
    let alias = get_ndjson(&app, "?after=2400", "Application/NDJSON;q=0.5, */*;q=0.1").await;
    assert_eq!(alias.lines().count(), 100);
    let req = Request::get("/v1/events?limit=0")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .header(header::ACCEPT, "application/x-ndjson")
        .body(Body::empty())
        .unwrap();
    assert_problem(&app.send(req).await, 400);
}

#[tokio::test]
async fn metrics_and_health() {
    let app = app().await;
    let id = Uuid::new_v4();
    let body = json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    assert_eq!(
        app.append(id, body.clone()).await.status,
        StatusCode::CREATED
    );
    // A repeat, and an event id reused with other content, are answered without a write:
    // not in the store's append latency.
    assert_eq!(app.append(id, body.clone()).await.status, StatusCode::OK);
    let mut reused = body.clone();
    reused["events"][0]["data"]["kind"] = json!("drone_strike");
    assert_eq!(
        app.append(id, reused.clone()).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.append(Uuid::new_v4(), reused).await.status,
        StatusCode::CONFLICT
    );
    let r = app.get_as("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["position"], 1);
    let res = app
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("incidentlog_http_request_duration_seconds_count{route=\"/v1/incidents/{id}/events\",method=\"POST\",status=\"201\"} 1"), "{text}");
    assert!(text.contains("incidentlog_events_total 1"), "{text}");
    // The file store's group commit: one batch so far, holding the one event.
    assert!(
        text.contains("incidentlog_store_batches_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("incidentlog_store_batched_events_total 1\n"),
        "{text}"
    );
    // The repeat and the reuses were compared with the recorded copy (each read once, from
    // the page cache, unless its batch was still in the writer's hands).
    let repeat_reads = |from: &str| -> u64 {
        let series = format!("incidentlog_store_repeat_reads_total{{from=\"{from}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series}in {text}"))
    };
    let (cached, from_disk) = (repeat_reads("page_cache"), repeat_reads("disk"));
    assert!(
        (1..=3).contains(&(cached + from_disk)),
        "{cached} + {from_disk}"
    );
    assert!(
        text.contains("incidentlog_events_appended_total 1"),
        "{text}"
    );
    // The one batch the store wrote and synced, timed.
    assert!(
        text.contains("incidentlog_store_write_seconds_count 1\n"),
        "{text}"
    );
    // Only the append written: not the repeat, not the refused reuses.
    assert!(
        text.contains("incidentlog_append_batch_size_count 1\n")
            && text.contains("incidentlog_append_batch_size_sum 1\n"),
        "{text}"
    );
    assert!(text.contains("incidentlog_sse_subscribers 0"), "{text}");
    assert!(
        text.contains("incidentlog_store_append_seconds_count 1\n"),
        "{text}"
    );
}

/// `incidentlog_appends_rejected_total` counts every append refused for what it said, however
/// early (an extractor's 413/415, a malformed body, a bad path), and every rejected bulk line
/// once; not refusals of the caller (401) or of an import as a whole. HEAD has its own label.
#[tokio::test]
async fn rejected_appends_are_counted_once_each_however_early() {
    let app = app().await;
    let id = Uuid::new_v4();
    let ok =
        json!({"expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    assert_eq!(app.append(id, ok).await.status, StatusCode::CREATED);
    let stale = json!({"expected_version": 0, "events": [casualties(Uuid::new_v4(), 1)]});
    let path = format!("/v1/incidents/{id}/events");
    let reporter = app.reporter.clone();
    let refusals = [
        // 409: stale expected version; 422: no events; 400: malformed; 415; 413.
        app.append(id, stale).await.status,
        app.append(id, json!({"events": []})).await.status,
        app.post_as(&path, Some(&reporter), "application/json", "{bad")
            .await
            .status,
        app.post_as(&path, Some(&reporter), "text/plain", "{}")
            .await
            .status,
        app.post_as(
            &path,
            Some(&reporter),
            "application/json",
            vec![b' '; 2 << 20],
        )
        .await
        .status,
        app.post_as(
            "/v1/incidents/not-a-uuid/events",
            Some(&reporter),
            "application/json",
            "{}",
        )
        .await
        .status,
    ];
    assert_eq!(refusals.map(|s| s.as_u16()), [409, 422, 400, 415, 413, 400]);
    // Not counted: no token.
    let r = app.post_as(&path, None, "application/json", "{}").await;
    assert_problem(&r, 401);
    // A bulk import with two bad lines (malformed, invalid) among good ones.
    let good = json!({"incident_id": Uuid::new_v4(), "expected_version": 0,
        "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    let invalid = json!({"incident_id": Uuid::new_v4(), "events": []});
    let r = app.import(format!("{good}\n{{bad\n{invalid}\n")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["rejected"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.body
    );
    let head = Request::head("/v1/regions")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.reader))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(head).await.status, StatusCode::OK);
    let text = app.get_as("/metrics", None).await.body;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("incidentlog_appends_rejected_total 8\n"),
        "{text}"
    );
    assert!(
        text.contains("incidentlog_http_request_duration_seconds_count{route=\"/v1/regions\",method=\"HEAD\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_shuts_down_cleanly_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&OpenOptions::new(dir.path())).await.unwrap());
    let service = AppService::start(store.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServeConfig::default()
    };
    let listener = incidentlog_api::bind(&config).await.unwrap();
    let server = tokio::spawn(incidentlog_api::serve(
        listener,
        service,
        config,
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    // The store was closed: appends are refused.
    let r = store
        .append(incidentlog_store::AppendRequest {
            stream_id: Uuid::new_v4(),
            expected_version: incidentlog_store::ExpectedVersion::Any,
            events: vec![incidentlog_store::NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "X".into(),
                data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            }],
            recorded_by: "t".into(),
        })
        .await;
    assert!(r.is_err());
}

/// An event the views cannot take (written straight to the store, as a newer version might)
/// is skipped by the live views and by a rebuild alike. When it is the newest event the admin
/// replay still finishes (it once waited for the views to pass it forever), with the live
/// digest.
#[tokio::test]
async fn admin_replay_finishes_when_the_newest_event_is_one_the_views_skip() {
    let app = app().await;
    let r = app.append_fresh().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    app.store
        .append(incidentlog_store::AppendRequest {
            stream_id: Uuid::new_v4(),
            expected_version: incidentlog_store::ExpectedVersion::Any,
            events: vec![incidentlog_store::NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "FromTheFuture".into(),
                data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            }],
            recorded_by: "t".into(),
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while app.service.applied_position() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the live views pass the event they skip");
    let admin = app.admin.clone();
    // Before the replay, which swaps its rebuilt views in (see `auth_matrix`).
    let live = app.service.live_digest().await.unwrap().1;
    let replay = tokio::time::timeout(
        Duration::from_secs(10),
        app.post_as("/v1/admin/replay", Some(&admin), "application/json", ""),
    )
    .await
    .expect("the admin replay finishes");
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["digest"], live);
}

#[test]
fn checked_in_openapi_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-docs/openapi.json");
    let generated = incidentlog_api::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "proto-docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p incidentlog-api checked_in_openapi_is_current`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/v1/incidents/{id}/events",
        "/v1/events",
        "/v1/events/stream",
        "/v1/regions/{code}",
        "/v1/admin/replay",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
    // `expected_version` may be left out or null ("any"), as the server accepts.
    for body in ["AppendBodyDoc", "ImportLineDoc"] {
        let schema = &doc["components"]["schemas"][body];
        let required = schema["required"].as_array().unwrap();
        assert!(
            !required.contains(&json!("expected_version")) && required.contains(&json!("events")),
            "{body}: {required:?}"
        );
        let kinds: Vec<&Value> = schema["properties"]["expected_version"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| &k["type"])
            .collect();
        assert_eq!(
            kinds,
            [&json!("integer"), &json!("string"), &json!("null")],
            "{body}"
        );
    }
}

#[tokio::test]
async fn offline_import_applies_the_same_rules() {
    let app = app().await;
    let id = Uuid::new_v4();
    let claim_id = Uuid::new_v4();
    let first = json!({"events": [reported(Uuid::new_v4(), "UA-65", "shelling"), claim(Uuid::new_v4(), claim_id)]});
    assert_eq!(
        app.append(id, first.clone()).await.status,
        StatusCode::CREATED
    );

    let offline = AppService::start_offline(app.store.clone()).await.unwrap();
    let mut repeat = first.clone();
    repeat["incident_id"] = json!(id);
    let lines = [
        repeat.to_string(),
        // Depends on the stored stream (the claim exists there).
        json!({"incident_id": id, "expected_version": 2, "events": [denial(Uuid::new_v4(), claim_id)]}).to_string(),
        // Stale expectation.
        json!({"incident_id": id, "expected_version": 2, "events": [casualties(Uuid::new_v4(), 1)]}).to_string(),
        // Unknown claim.
        json!({"incident_id": id, "events": [denial(Uuid::new_v4(), Uuid::new_v4())]}).to_string(),
    ];
    let (report, rejected) = import_lines(&offline, &lines, "offline").await;
    assert_eq!((report.appended, report.duplicates), (1, 2), "{report:?}");
    assert_eq!(rejected, [(3, 409), (4, 422)]);
    assert_eq!(app.head().await, 3);
    app.service.wait_applied(3).await;
    let view = app.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(view.body["version"], 3);
    assert_eq!(
        view.body["claims"][0]["status"], "disputed",
        "{}",
        view.body
    );
}

/// An import keeps the decision states of one chunk for the next (offline they are the only
/// copy): lines of a later chunk are decided on what earlier chunks accepted, a rejected line
/// leaves its incident's state as it was, and an incident recorded before the import is read
/// from the store.
#[tokio::test]
async fn offline_import_decides_later_chunks_on_earlier_ones() {
    let app = app().await;
    let before = Uuid::new_v4();
    let before_claim = Uuid::new_v4();
    app.append(
        before,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling"), claim(Uuid::new_v4(), before_claim)]}),
    )
    .await;
    let (a, a_claim) = (Uuid::new_v4(), Uuid::new_v4());
    let line = |v: Value| v.to_string();
    let mut lines = vec![
        // 1: incident a with a claim.
        line(
            json!({"incident_id": a, "expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-65", "drone_strike"), claim(Uuid::new_v4(), a_claim)]}),
        ),
        // 2: rejected (a has version 2), so a stays at 2.
        line(
            json!({"incident_id": a, "expected_version": 5, "events": [casualties(Uuid::new_v4(), 9)]}),
        ),
        // 3: the incident recorded before the import, read from the store.
        line(
            json!({"incident_id": before, "expected_version": 2, "events": [denial(Uuid::new_v4(), before_claim)]}),
        ),
    ];
    // More than a chunk of other incidents.
    for _ in 0..IMPORT_CHUNK_EVENTS + 600 {
        lines.push(line(
            json!({"incident_id": Uuid::new_v4(), "expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        ));
    }
    let later = lines.len() as u64 + 1;
    lines.extend([
        // The claim made in the first chunk can be denied.
        line(json!({"incident_id": a, "expected_version": 2, "events": [denial(Uuid::new_v4(), a_claim)]})),
        // An unknown claim cannot.
        line(json!({"incident_id": a, "events": [denial(Uuid::new_v4(), Uuid::new_v4())]})),
        // Stale: the denial above made it version 3.
        line(json!({"incident_id": before, "expected_version": 2, "events": [casualties(Uuid::new_v4(), 1)]})),
        line(json!({"incident_id": before, "expected_version": 3, "events": [casualties(Uuid::new_v4(), 4)]})),
    ]);
    let offline = AppService::start_offline(app.store.clone()).await.unwrap();
    let (report, rejected) = import_lines(&offline, &lines, "offline").await;
    assert_eq!(
        rejected,
        [(2, 409), (later + 1, 422), (later + 2, 409)],
        "{:?}",
        report.rejected
    );
    assert_eq!(
        report.appended,
        2 + 1 + IMPORT_CHUNK_EVENTS as u64 + 600 + 1 + 1,
        "{report:?}"
    );
    let head = app.head().await;
    app.service.wait_applied(head).await;
    let a_view = app.get(&format!("/v1/incidents/{a}")).await;
    assert_eq!(a_view.body["version"], 3);
    assert_eq!(a_view.body["claims"][0]["status"], "disputed");
    let before_view = app.get(&format!("/v1/incidents/{before}")).await;
    assert_eq!(before_view.body["version"], 4);
    assert_eq!(before_view.body["casualties"]["killed"]["best"], 4);
}

/// Input that delivers its bytes in small reads, then fails like a dropped connection.
struct CutOff {
    data: Vec<u8>,
    at: usize,
}

impl tokio::io::AsyncRead for CutOff {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at >= self.data.len() {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer went away",
            )));
        }
        let n = buf
            .remaining()
            .min(64 * 1024)
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Real segment files with `before_sync` run before every sync (a delay, a panic): fault
/// injection deep in the disk layer.
/// Syncs that run `fault` once the flag is set, and pass before.
fn armed_sync(
    fault: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> (Arc<std::sync::atomic::AtomicBool>, Arc<HookedSync>) {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = armed.clone();
    let before_sync = Arc::new(move || {
        if trigger.load(std::sync::atomic::Ordering::SeqCst) {
            return fault();
        }
        Ok(())
    });
    (armed, Arc::new(HookedSync { before_sync }))
}

/// Runs a hook before every sync; the sync fails with the hook's error.
struct HookedSync {
    before_sync: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>,
}

struct HookedSyncFile {
    inner: Box<dyn LogFile>,
    before_sync: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>,
}

impl LogIo for HookedSync {
    fn open_append(
        &self,
        path: &std::path::Path,
        create: bool,
        len: u64,
    ) -> std::io::Result<Box<dyn LogFile>> {
        Ok(Box::new(HookedSyncFile {
            inner: RealIo::default().open_append(path, create, len)?,
            before_sync: self.before_sync.clone(),
        }))
    }
}

impl LogFile for HookedSyncFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        (self.before_sync)()?;
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn trim_reserve(&mut self) -> std::io::Result<()> {
        self.inner.trim_reserve()
    }
    fn sealed(&mut self) {
        self.inner.sealed()
    }
}

/// A store that fails (a sync refused: a full disk) answers 503 without its cause: the cause
/// (an OS error, a path) is the operator's, logged with the request id. A bulk import's 503
/// still says at which line it stopped and how much landed before.
#[tokio::test]
async fn a_failed_sync_answers_503_without_the_cause() {
    let (armed, io) = armed_sync(|| {
        Err(std::io::Error::other(
            "injected: No space left on /srv/secret-volume",
        ))
    });
    let app = app_on(ServeConfig::default(), io).await;
    let line = |id: Uuid| {
        json!({"incident_id": id, "expected_version": 0,
            "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]})
        .to_string()
            + "\n"
    };
    let imported = app.import(line(Uuid::new_v4())).await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.body);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);

    let r = app.append_fresh().await;
    assert_problem(&r, 503);
    let detail = r.body["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.starts_with("store unavailable"), "{detail}");
    let imported = app
        .import(line(Uuid::new_v4()) + &line(Uuid::new_v4()))
        .await;
    assert_problem(&imported, 503);
    let import_detail = imported.body["detail"].as_str().unwrap_or_default();
    assert!(
        import_detail.contains("at line 1 (0 events appended before)"),
        "{import_detail}"
    );
    for d in [detail.as_str(), import_detail] {
        assert!(
            !d.contains("injected") && !d.contains("secret-volume"),
            "the cause leaked: {d}"
        );
        assert!(d.contains("request id"), "{d}");
    }
    assert_eq!(app.head().await, 1);
}

/// When the store's disk layer panics under an append, the append is answered (503
/// problem+json, no internals shown), not left hanging; nothing unacknowledged becomes
/// visible; the service says it is not ready; later appends and imports fail fast the same
/// way; reads keep working on what was acknowledged.
#[tokio::test]
async fn a_panic_in_the_disk_layer_answers_503_and_hides_what_it_did_not_acknowledge() {
    // Syncs panic once armed (a bug or a fault deep in the disk layer).
    let (armed, io) = armed_sync(|| panic!("injected: the disk layer panicked mid-sync"));
    let app = app_on(ServeConfig::default(), io).await;
    let kept = Uuid::new_v4();
    let r = app
        .append(
            kept,
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = app.head().await;

    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let lost = Uuid::new_v4();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        app.append(
            lost,
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        ),
    )
    .await
    .expect("an append whose sync panicked is answered");
    assert_problem(&r, 503);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(!detail.contains("injected"), "internals leaked: {detail}");
    assert_eq!(
        app.head().await,
        before,
        "an unsynced append became visible"
    );
    assert_eq!(
        app.get(&format!("/v1/incidents/{lost}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/v1/incidents/{kept}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get_as("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let again = app.append_fresh().await;
    assert_problem(&again, 503);
    let line = json!({"incident_id": Uuid::new_v4(), "expected_version": 0,
        "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    let imported = app.import(line.to_string() + "\n").await;
    assert_problem(&imported, 503);
    assert_eq!(app.head().await, before);
    // Shutting down still finishes (the I/O thread that would answer is gone).
    tokio::time::timeout(Duration::from_secs(10), app.service.close())
        .await
        .expect("close returns after a panic in the disk layer")
        .expect("close of a poisoned store");
}

/// An import whose input fails half-way answers an error only once the chunk it was writing
/// has settled: what it recorded is a prefix of whole lines, in line order, and stays put
/// after the answer. Sending the whole input again lands the rest exactly once. Syncs are
/// slowed down so that the chunk in flight when the input breaks is still being written then.
#[tokio::test]
async fn an_import_cut_off_half_way_answers_after_its_last_write_and_a_retry_lands_the_rest() {
    let slow = Duration::from_millis(400);
    // Every sync takes `slow` longer: a chunk is still on its way to disk well after the
    // import's next step.
    let before_sync = Arc::new(move || {
        std::thread::sleep(slow);
        Ok(())
    });
    let app = app_on(ServeConfig::default(), Arc::new(HookedSync { before_sync })).await;
    let lines: Vec<(Uuid, String)> = (0..60_000)
        .map(|_| {
            let event_id = Uuid::new_v4();
            let line = json!({"incident_id": Uuid::new_v4(), "expected_version": 0,
                "events": [reported(event_id, "UA-63", "shelling")]});
            (event_id, line.to_string() + "\n")
        })
        .collect();
    let all: String = lines.iter().map(|(_, l)| l.as_str()).collect();
    // The input breaks off in the middle of line 50,001 (the import parses up to 16,384 lines
    // ahead of staging, and writes chunks of IMPORT_CHUNK_EVENTS events).
    let cut = lines[..50_000].iter().map(|(_, l)| l.len()).sum::<usize>() + 40;
    let input = tokio::io::BufReader::new(CutOff {
        data: all.as_bytes()[..cut].to_vec(),
        at: 0,
    });
    let err = app
        .service
        .import_ndjson(input, "cut", &|_| {})
        .await
        .expect_err("a broken input is an error");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(
        err.public_detail().contains("reading the input failed"),
        "{}",
        err.public_detail()
    );
    let landed = app.head().await;
    assert!(
        (IMPORT_CHUNK_EVENTS as u64..=50_000).contains(&landed),
        "at least the first chunk was written before the input broke: {landed}"
    );
    // Nothing is still being written behind the answer (a chunk sent before the input broke
    // would land within one slow sync).
    tokio::time::sleep(slow + Duration::from_millis(300)).await;
    assert_eq!(
        app.head().await,
        landed,
        "a chunk landed after the error was answered"
    );
    let recorded = app.store.read_all(0, landed as usize).await.unwrap();
    let ids: Vec<Uuid> = recorded.iter().map(|e| e.event_id).collect();
    let prefix: Vec<Uuid> = lines[..landed as usize].iter().map(|(id, _)| *id).collect();
    assert!(
        ids == prefix,
        "the log holds the first {landed} lines in line order"
    );
    // What landed is counted, though the import that wrote it failed before settling it.
    let appended = app
        .service
        .metrics()
        .events_appended
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        appended, landed,
        "events_appended_total after a failed import"
    );

    let report = app
        .service
        .import_ndjson(all.as_bytes(), "retry", &|_| {})
        .await
        .unwrap();
    assert!(
        report.rejected.is_empty(),
        "{:?}",
        &report.rejected[..report.rejected.len().min(3)]
    );
    assert_eq!(
        (report.appended, report.duplicates),
        (60_000 - landed, landed)
    );
    assert_eq!(app.head().await, 60_000);
}

/// One chunk of an import is written while the next is staged on the states it leaves. When
/// the written chunk comes back with a surprise (here a repeat the store answers as a
/// duplicate, so the incident did not move), the next chunk's decisions are redone on what was
/// recorded: a line accepted on the speculation is now a conflict, a line refused on it lands.
#[tokio::test]
async fn import_redecides_a_chunk_staged_on_a_written_chunk_that_did_not_all_land() {
    let app = app().await;
    let x = Uuid::new_v4();
    let repeated = casualties(Uuid::new_v4(), 1);
    app.append(
        x,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
    )
    .await;
    app.append(x, json!({"events": [repeated.clone()]})).await;
    let line = |v: Value| v.to_string();
    // First chunk (IMPORT_CHUNK_EVENTS events): the repeat, staged as a new append at version
    // 2 -> 3.
    let mut lines = vec![line(json!({"incident_id": x, "events": [repeated]}))];
    let y = Uuid::new_v4();
    lines.push(line(
        json!({"incident_id": y, "expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-65", "shelling")]}),
    ));
    for _ in 0..IMPORT_CHUNK_EVENTS - 2 {
        lines.push(line(
            json!({"incident_id": Uuid::new_v4(), "expected_version": 0, "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        ));
    }
    let next = lines.len() as u64 + 1;
    lines.extend([
        // Accepted on the speculation (x at 3), a conflict on what was recorded (x at 2).
        line(json!({"incident_id": x, "expected_version": 3, "events": [casualties(Uuid::new_v4(), 7)]})),
        // Fine either way: y was created in the first chunk.
        line(json!({"incident_id": y, "expected_version": 1, "events": [casualties(Uuid::new_v4(), 2)]})),
        // Refused on the speculation, accepted on what was recorded.
        line(json!({"incident_id": x, "expected_version": 2, "events": [casualties(Uuid::new_v4(), 5)]})),
    ]);
    let (report, rejected) = import_lines(&app.service, &lines, "cli").await;
    assert_eq!(rejected, [(next, 409)], "{:?}", report.rejected);
    assert_eq!(
        (report.appended, report.duplicates),
        (1 + IMPORT_CHUNK_EVENTS as u64 - 2 + 1 + 1, 1),
        "{report:?}"
    );
    let x_view = app.get(&format!("/v1/incidents/{x}")).await;
    assert_eq!(x_view.body["version"], 3);
    assert_eq!(x_view.body["casualties"]["killed"]["best"], 5);
    let y_view = app.get(&format!("/v1/incidents/{y}")).await;
    assert_eq!(y_view.body["version"], 2);
}

/// Once an import has met repeats of recorded events (a re-run), it looks each line's ids up
/// and decides a line that may be a repeat without folding it into its incident's state:
/// exact repeats, a reused id with other content (409) and the lines after it all come out as
/// they would one at a time, in line order.
#[tokio::test]
async fn a_rerun_import_decides_possible_repeats_without_folding_them() {
    let app = app().await;
    let x = Uuid::new_v4();
    let (first, second) = (casualties(Uuid::new_v4(), 1), casualties(Uuid::new_v4(), 2));
    app.append(
        x,
        json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
    )
    .await;
    app.append(x, json!({"events": [first.clone()]})).await;
    app.append(x, json!({"events": [second.clone()]})).await;
    let line = |v: Value| v.to_string();
    // First chunk: a repeat (the import starts looking ids up), then new incidents.
    let mut lines = vec![line(json!({"incident_id": x, "events": [first.clone()]}))];
    for _ in 0..IMPORT_CHUNK_EVENTS - 1 {
        lines.push(line(
            json!({"incident_id": Uuid::new_v4(), "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        ));
    }
    let reuse_line = lines.len() as u64 + 2;
    let mut reused = first.clone();
    reused["data"]["killed"] = json!(9);
    let y = Uuid::new_v4();
    let y_report = reported(Uuid::new_v4(), "UA-65", "shelling");
    let last = casualties(Uuid::new_v4(), 5);
    lines.extend([
        line(json!({"incident_id": x, "events": [second]})),
        line(json!({"incident_id": x, "events": [reused]})),
        line(json!({"incident_id": y, "events": [y_report.clone()]})),
        line(json!({"incident_id": x, "expected_version": 3, "events": [last.clone()]})),
    ]);
    let (report, rejected) = import_lines(&app.service, &lines, "cli").await;
    assert_eq!(rejected, [(reuse_line, 409)], "{:?}", report.rejected);
    assert_eq!(
        (report.appended, report.duplicates),
        (IMPORT_CHUNK_EVENTS as u64 - 1 + 2, 2),
        "{report:?}"
    );
    let x_view = app.get(&format!("/v1/incidents/{x}")).await;
    assert_eq!(x_view.body["version"], 4);
    assert_eq!(x_view.body["casualties"]["killed"]["best"], 5);
    // In line order: y's report, then x's last figure, at the end of the log.
    let head = app.head().await;
    let tail = app.get(&format!("/v1/events?after={}", head - 2)).await;
    let ids: Vec<&str> = tail.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            y_report["event_id"].as_str().unwrap(),
            last["event_id"].as_str().unwrap()
        ]
    );
}

/// Single appends to the incidents of a running import wait for its lock stripes and land;
/// neither side stalls (the next chunk takes over the stripes of the chunk being written).
#[tokio::test]
async fn appends_during_a_long_import_of_the_same_incidents_all_land() {
    let app = app().await;
    let hot: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &hot {
        app.append(
            *id,
            json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}),
        )
        .await;
    }
    let mut body = String::new();
    for i in 0..40_000 {
        let id = if i % 10 == 0 {
            hot[(i / 10) % hot.len()]
        } else {
            Uuid::new_v4()
        };
        let ev = if i % 10 == 0 {
            casualties(Uuid::new_v4(), 1)
        } else {
            reported(Uuid::new_v4(), "UA-65", "shelling")
        };
        body.push_str(&json!({"incident_id": id, "events": [ev]}).to_string());
        body.push('\n');
    }
    let writer = {
        let router = app.router.clone();
        let token = app.reporter.clone();
        let hot = hot.clone();
        tokio::spawn(async move {
            let mut created = 0;
            for i in 0..200 {
                let id = hot[i % hot.len()];
                let body = json!({"events": [casualties(Uuid::new_v4(), 2)]});
                let status = append_status(router.clone(), &token, id, body).await;
                assert_eq!(status, StatusCode::CREATED);
                created += 1;
            }
            created
        })
    };
    let import = app.service.import_ndjson(body.as_bytes(), "cli", &|_| {});
    let report = tokio::time::timeout(Duration::from_secs(120), import)
        .await
        .expect("the import finishes")
        .unwrap();
    let created = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the appends finish")
        .unwrap();
    assert_eq!(report.rejected, vec![]);
    assert_eq!(report.appended, 40_000);
    let mut versions = 0;
    for id in &hot {
        let v = app.get(&format!("/v1/incidents/{id}")).await;
        versions += v.body["version"].as_u64().unwrap();
    }
    assert_eq!(versions, 4 + 4_000 + created);
}

/// Bulk bodies are held whole until their import is answered (a 413 must record nothing), so
/// the memory they hold is bounded (twice the bulk limit), counted by the bytes that have
/// arrived: uploads that trickle hold next to nothing and keep no other import waiting (an
/// audit kept every other import waiting 30 s with two trickled uploads from two tokens, when
/// two bodies were the bound). One client holds at most one bulk body (its second is 429 at
/// once). A body that finds no memory free waits, holding nothing; one that would pass the
/// bound half-way is answered 503 with `Retry-After` at once.
#[tokio::test]
async fn bulk_bodies_hold_memory_for_what_arrived_and_trickles_keep_no_one_waiting() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const KIB: usize = 1024;
    let app = app_with(ServeConfig {
        bulk_body_limit: 64 * KIB,
        ..ServeConfig::default()
    })
    .await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(add_token(&app.store, &format!("bulk{i}"), "reporter").await);
    }
    app.service.reload_tokens().await.unwrap();
    // A bulk body in these chunks; one that does not end waits for more, forever.
    let post = |token: &str, chunks: Vec<Vec<u8>>, ends: bool| {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
        )
        .chain(futures_util::stream::pending().take(if ends { 0 } else { 1 }));
        let req = Request::post("/v1/events")
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from_stream(stream))
            .unwrap();
        let router = app.router.clone();
        tokio::spawn(async move { router.oneshot(req).await.unwrap() })
    };
    let blank = |n: usize| vec![b'\n'; n];

    // Three tokens trickle: one line each, then nothing more, ever.
    let reading = Arc::new(AtomicUsize::new(0));
    let mut trickling = Vec::new();
    for token in &tokens[..3] {
        let reading = reading.clone();
        let stream = futures_util::stream::once(async move {
            reading.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"\n"))
        })
        .chain(futures_util::stream::pending());
        let req = Request::post("/v1/events")
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from_stream(stream))
            .unwrap();
        let router = app.router.clone();
        trickling.push(tokio::spawn(async move { router.oneshot(req).await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reading.load(Ordering::SeqCst), 3, "all three are read");
    // Each trickling token's second import: 429 at once.
    let second = post(&tokens[0], vec![blank(1)], true).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()[header::RETRY_AFTER], "1");
    // Another client's import goes through while they trickle.
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        post(&tokens[3], vec![blank(40 * KIB)], true),
    )
    .await
    .expect("an import is not kept waiting by trickled uploads")
    .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    // Memory: 128 KiB in all. Two bodies of 60 KiB that never end hold 120 KiB (the three
    // trickles 1 KiB each).
    let big = [
        post(&tokens[3], vec![blank(60 * KIB)], false),
        post(&tokens[4], vec![blank(60 * KIB)], false),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A body whose first bytes fit but whose rest does not: 503 at once, with Retry-After.
    let extra = add_token(&app.store, "bulk5", "reporter").await;
    app.service.reload_tokens().await.unwrap();
    let half_way = tokio::time::timeout(
        Duration::from_secs(5),
        post(&extra, vec![blank(KIB), blank(30 * KIB)], true),
    )
    .await
    .expect("a body that would pass the bound half-way is answered at once")
    .unwrap();
    assert_eq!(half_way.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(half_way.headers()[header::RETRY_AFTER], "1");
    // One whose first bytes do not fit waits, holding nothing, and goes on once memory frees.
    let waiting = post(&extra, vec![blank(30 * KIB)], true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "waits for memory");
    for t in big {
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
    }
    let went_on = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting body is read once memory is free")
        .unwrap();
    assert_eq!(went_on.status(), StatusCode::OK);
    for t in trickling {
        t.abort();
    }
}

/// What the audits of the seventh and eighth sessions found at the edges of the API.
#[tokio::test]
async fn refused_callers_learn_no_routes_and_small_contract_edges_hold() {
    let app = app().await;
    let (admin, ro) = (app.admin.clone(), app.reader.clone());
    let raw = |method: Method, path: &str, token: Option<&str>| {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let router = app.router.clone();
        let req = b.body(Body::empty()).unwrap();
        async move { router.oneshot(req).await.unwrap() }
    };
    // A refused caller gets no `Allow`: it would tell which methods (and paths) exist.
    let r = raw(Method::DELETE, "/v1/regions", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers().get(header::ALLOW).is_none(),
        "{:?}",
        r.headers()
    );
    let r = raw(Method::GET, "/v1/admin/replay", Some(&ro)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.headers().get(header::ALLOW).is_none(),
        "{:?}",
        r.headers()
    );
    // Answers are not to be sniffed or kept by shared caches.
    let r = raw(Method::GET, "/v1/regions", Some(&ro)).await;
    assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    // Two Authorization headers: which would count? Neither.
    let req = Request::get("/v1/regions")
        .header(header::AUTHORIZATION, format!("Bearer {ro}"))
        .header(header::AUTHORIZATION, "Bearer il_other")
        .body(Body::empty())
        .unwrap();
    let r = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A caller allowed in learns the methods of a path it used wrongly.
    let r = raw(Method::DELETE, "/v1/regions", Some(&ro)).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "GET,HEAD");
    // HEAD still answers without a body.
    let r = raw(Method::HEAD, "/v1/regions", Some(&ro)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(body.is_empty(), "{body:?}");

    // Admin routes take no query parameters, like every other /v1 route.
    for (method, path) in [
        (Method::GET, "/v1/admin/verify?x=1"),
        (Method::GET, "/v1/admin/digest?x=1"),
        (Method::POST, "/v1/admin/replay?x=1"),
    ] {
        let r = raw(method, path, Some(&admin)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }

    // `expected_version` written 2.0 is 2, as the counts are.
    let id = Uuid::new_v4();
    let first = Uuid::new_v4();
    let r = app
        .append(
            id,
            json!({"expected_version": 0.0, "events": [reported(first, "UA-63", "shelling")]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = app
        .append(
            id,
            json!({"expected_version": 1.0, "events": [casualties(Uuid::new_v4(), 2)]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_problem(
        &app.append(
            id,
            json!({"expected_version": 1.5, "events": [casualties(Uuid::new_v4(), 2)]}),
        )
        .await,
        422,
    );
    // The same event (same content) sent to another incident: the detail says so.
    let other = Uuid::new_v4();
    let r = app
        .append(
            other,
            json!({"events": [reported(first, "UA-63", "shelling")]}),
        )
        .await;
    assert_problem(&r, 409);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("in incident {id}")), "{detail}");
    assert!(!detail.contains("other content"), "{detail}");
    assert_eq!(app.head().await, 2);

    // Metrics: the digest route has its own label; the log's size is a counter.
    assert_eq!(
        raw(Method::GET, "/v1/admin/digest", Some(&admin))
            .await
            .status(),
        StatusCode::OK
    );
    let text = String::from_utf8(
        axum::body::to_bytes(
            raw(Method::GET, "/metrics", None).await.into_body(),
            usize::MAX,
        )
        .await
        .unwrap()
        .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("route=\"/v1/admin/digest\",method=\"GET\",status=\"200\""),
        "{text}"
    );
    assert!(
        text.contains("# TYPE incidentlog_events_total counter"),
        "{text}"
    );
    // JSON is UTF-8: another declared charset is refused, UTF-8 spelled any way is fine.
    let body = json!({"events": [reported(Uuid::new_v4(), "UA-63", "shelling")]}).to_string();
    let r = app
        .post_as(
            &format!("/v1/incidents/{}/events", Uuid::new_v4()),
            Some(&app.reporter.clone()),
            "application/json; charset=latin1",
            body.clone(),
        )
        .await;
    assert_problem(&r, 415);
    assert_eq!(app.head().await, 2);
    let r = app
        .post_as(
            &format!("/v1/incidents/{}/events", Uuid::new_v4()),
            Some(&app.reporter.clone()),
            "application/json; Charset=\"UTF-8\"",
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // A path id may be any UUID form; ids in bodies are hyphenated, a bulk line's included.
    let simple = id.simple().to_string();
    let r = app.get(&format!("/v1/incidents/{simple}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["incident_id"], id.to_string());
    let line = json!({"incident_id": Uuid::new_v4().simple().to_string(),
                      "events": [reported(Uuid::new_v4(), "UA-63", "shelling")]});
    let r = app.import(format!("{line}\n")).await;
    assert_eq!(
        r.body["rejected"][0]["errors"][0]["pointer"], "/incident_id",
        "{}",
        r.body
    );
    assert_eq!(app.head().await, 3);

    // Answers list at most 100 field problems (`errors_total` counts them), bulk lines 20.
    let bad: Vec<Value> = (0..250)
        .map(|_| json!({"event_id": Uuid::new_v4(), "type": "SourceAdded", "data": {"source": {"name": "x", "bogus": 1}}}))
        .collect();
    let r = app.append(Uuid::new_v4(), json!({"events": bad})).await;
    assert_problem(&r, 422);
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 100);
    assert_eq!(r.body["errors_total"], 250);
    let line = json!({"incident_id": Uuid::new_v4(), "events": bad});
    let r = app.import(format!("{line}\n")).await;
    assert_eq!(
        r.body["rejected"][0]["errors"].as_array().unwrap().len(),
        20
    );
    assert!(
        r.body["rejected"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("250 problems"),
        "{}",
        r.body
    );
    assert_eq!(app.head().await, 3);
}

/// A token file that cannot be read (damaged, or hand-edited against the rules) under a
/// running server: the tokens loaded before stay in use; an unknown secret gets a quick 503
/// with `Retry-After` (it may be a token made since), not a slow 500 each; once the file
/// reads again, unknown secrets are 401 again.
#[tokio::test]
async fn an_unreadable_token_file_keeps_the_tokens_loaded_before() {
    let app = app().await;
    let file = app._dir.path().join("tokens.json");
    let good = std::fs::read(&file).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    // Damaged; then a name outside the rules; then two tokens of one name.
    let reader_name = "\"name\": \"ro\"";
    assert!(text.contains(reader_name), "{text}");
    // The reader's entry edited by hand: a field set to `value`, or copied from the reporter's.
    let edited = |field: &str, value: Option<Value>| -> Vec<u8> {
        let mut table: Value = serde_json::from_slice(&good).unwrap();
        let entries = table.as_array_mut().unwrap();
        let of = |name: &str| entries.iter().position(|t| t["name"] == name).unwrap();
        let (ro, rep) = (of("ro"), of("rep"));
        entries[ro][field] = value.unwrap_or_else(|| entries[rep][field].clone());
        serde_json::to_vec_pretty(&table).unwrap()
    };
    let damaged = [
        good[..good.len() - 40].to_vec(),
        text.replacen(reader_name, "\"name\": \"Mallory <x>\\n\"", 1)
            .into_bytes(),
        text.replacen(reader_name, "\"name\": \"rep\"", 1)
            .into_bytes(),
        // A role in the wrong case, and one secret for two names.
        edited("role", Some(json!("READER"))),
        edited("secret_hash", None),
    ];
    for bad in damaged {
        assert_ne!(bad, good);
        std::fs::write(&file, &bad).unwrap();
        let started = std::time::Instant::now();
        let unknown: Vec<_> = futures_util::future::join_all(
            (0..20).map(|_| app.get_as("/v1/regions", Some("il_made_up_secret"))),
        )
        .await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        for r in &unknown {
            assert_problem(r, 503);
        }
        // Tokens loaded before still work, under their names.
        assert_eq!(
            app.get_as("/v1/regions", Some(&app.reader)).await.status,
            StatusCode::OK
        );
        assert_eq!(app.append_fresh().await.status, StatusCode::CREATED);
    }
    std::fs::write(&file, &good).unwrap();
    assert_problem(
        &app.get_as("/v1/regions", Some("il_made_up_secret")).await,
        401,
    );
}

/// A path that ends with a slash is served by no route, so auth treats it as unknown too:
/// 401 without a token (even beside the open `/healthz`), 404 with one of any role (not 403
/// as for the route it resembles).
#[tokio::test]
async fn paths_ending_with_a_slash_are_unknown_paths() {
    let app = app().await;
    for path in ["/healthz/", "/metrics/", "/readyz/"] {
        assert_problem(&app.get_as(path, None).await, 401);
    }
    for path in ["/v1/events/", "/v1/events//", "/v1/incidents/x/events/"] {
        let reader = app.reader.clone();
        let r = app
            .post_as(path, Some(&reader), "application/x-ndjson", "")
            .await;
        assert_problem(&r, 404);
    }
}

/// A long read of the views (every region's summary at a past position, a listing's scan)
/// runs off the runtime's workers: with the only worker's runtime, an append is still
/// answered while such a read is held. (Run on the worker, the read held it, and with it
/// every task behind it: an audit saw another token's appends fall to 5/s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn long_view_reads_leave_the_workers_to_other_requests() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let app = app().await;
    let (started, read_started) = tokio::sync::oneshot::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    // Ends the read after 20 s whatever happens: a read that held the only worker would
    // otherwise hang the test (the runtime's timers need a worker too).
    let gave_up = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (release, gave_up) = (release.clone(), gave_up.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            gave_up.store(true, SeqCst);
            let _ = release.send(());
        })
    };
    let long = tokio::spawn({
        let service = app.service.clone();
        async move {
            service
                .off_workers("a reader", move |_| {
                    let _ = started.send(());
                    held.recv().is_ok()
                })
                .await
        }
    });
    read_started.await.expect("the long read starts");
    let r = app.append_fresh().await;
    assert!(
        !gave_up.load(SeqCst),
        "the append waited for the long read of the views to end"
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    release.send(()).unwrap();
    assert!(long.await.unwrap().unwrap());
    drop(watchdog);
}

/// Long reads take turns per caller first: a caller whose reads fill every turn and queue
/// more does not keep another caller's one read waiting behind all of them. When one of the
/// busy caller's reads ends, the other caller's read is the next to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_view_reads_take_turns_per_caller() {
    let app = app().await;
    let turns = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut releases = std::collections::HashMap::new();
    let mut reads = Vec::new();
    let mut read = |caller: &'static str, name: String| {
        let (release, held) = std::sync::mpsc::channel::<()>();
        releases.insert(name.clone(), release);
        let (service, started_tx) = (app.service.clone(), started_tx.clone());
        reads.push(tokio::spawn(async move {
            service
                .off_workers(caller, move |_| {
                    let _ = started_tx.send(name);
                    let _ = held.recv_timeout(Duration::from_secs(30));
                })
                .await
        }));
    };
    // The busy caller takes every turn...
    for i in 0..turns {
        read("token busy", format!("busy {i}"));
    }
    for _ in 0..turns {
        started.recv().await.expect("a read starts");
    }
    // ...and queues as many again; then the quiet caller asks once.
    for i in turns..2 * turns {
        read("token busy", format!("busy {i}"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    read("token quiet", "quiet".to_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    releases["busy 0"].send(()).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("a read starts once a turn is free");
    assert_eq!(next.as_deref(), Some("quiet"));
    for release in releases.values() {
        let _ = release.send(());
    }
    for r in reads {
        r.await.unwrap().unwrap();
    }
    // Their entries go with their last reads.
    assert_eq!(app.service.long_read_callers(), 0);
}

/// A long read whose request is cut off (its client gone) keeps its turn until its work on
/// the blocking thread ends: otherwise every cut-off request would start one more ~30 ms
/// computation while the earlier ones still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_long_read_keeps_its_turn_until_its_work_ends() {
    let app = app().await;
    let turns = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut releases = Vec::new();
    let mut cut_off = Vec::new();
    for i in 0..turns {
        let (release, held) = std::sync::mpsc::channel::<()>();
        releases.push(release);
        let (service, started_tx) = (app.service.clone(), started_tx.clone());
        cut_off.push(tokio::spawn(async move {
            service
                .off_workers(&format!("token cut-{i}"), move |_| {
                    let _ = started_tx.send(i);
                    let _ = held.recv_timeout(Duration::from_secs(30));
                })
                .await
        }));
        started.recv().await.expect("a read starts");
    }
    // Every request cut off while its work runs on.
    for task in &cut_off {
        task.abort();
    }
    for task in cut_off {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    let (service, started_tx) = (app.service.clone(), started_tx.clone());
    let next = tokio::spawn(async move {
        service
            .off_workers("token next", move |_| {
                let _ = started_tx.send(usize::MAX);
            })
            .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), started.recv())
            .await
            .is_err(),
        "a read started while the cut-off reads' work still held every turn"
    );
    releases[0].send(()).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("a turn comes free when a cut-off read's work ends");
    assert_eq!(first, Some(usize::MAX));
    next.await.unwrap().unwrap();
    for release in &releases[1..] {
        let _ = release.send(());
    }
    // The cut-off reads' entries go when their work ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.service.long_read_callers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a caller's entry stayed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
