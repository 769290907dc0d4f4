//! The auth matrix: no token / reader / reporter / admin against a read, an append and an
//! admin route, with and without `--public-read`; revoked tokens; `recorded_by`.

use serde_json::json;

use crate::common::*;

/// Status of (GET /v1/regions, POST append, GET /v1/admin/verify) for one caller.
fn statuses(srv: &Server, token: &str) -> [u16; 3] {
    let read = srv.get("/v1/regions", token).status;
    let append = srv
        .append(
            token,
            &new_id(),
            &batch(
                json!(0),
                vec![reported("air_strike", "UA-63", "2026-01-06")],
            ),
        )
        .status;
    let admin = srv.get("/v1/admin/verify", token).status;
    [read, append, admin]
}

#[test]
fn auth_matrix() {
    // A short refresh so the revocation below takes effect quickly.
    let (dir, srv, t) = server_with_tokens(&["--token-refresh", "300ms"]);
    assert_eq!(statuses(&srv, ""), [401, 401, 401], "no token");
    assert_eq!(
        statuses(&srv, "il_0123456789abcdef"),
        [401, 401, 401],
        "unknown token"
    );
    assert_eq!(statuses(&srv, &t.reader), [200, 403, 403], "reader");
    assert_eq!(statuses(&srv, &t.reporter), [200, 201, 403], "reporter");
    assert_eq!(statuses(&srv, &t.admin), [200, 201, 200], "admin");

    // Health, readiness and metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        srv.get(path, "").expect(200);
    }

    // recorded_by is the token's name.
    let incident = new_id();
    srv.append(
        &t.reporter,
        &incident,
        &batch(json!(0), vec![reported("shelling", "UA-65", "2026-01-06")]),
    )
    .expect(201);
    let r = srv.get(&format!("/v1/incidents/{incident}/events"), &t.reader);
    r.expect(200);
    assert_eq!(r.json()["events"][0]["recorded_by"], "field-desk");

    // A token created while the server runs works at once; a revoked one stops working.
    let late = create_token(dir.path(), "late-reader", "reader");
    srv.get("/v1/regions", &late).expect(200);
    cli_ok(&[
        "token",
        "revoke",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--name",
        "late-reader",
    ]);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let status = srv.get("/v1/regions", &late).status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "a revoked token was still accepted after {TIMEOUT:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn public_read_lets_anonymous_gets_through_only() {
    let (_dir, srv, t) = server_with_tokens(&["--public-read"]);
    assert_eq!(
        statuses(&srv, ""),
        [200, 401, 401],
        "anonymous with --public-read"
    );
    assert_eq!(statuses(&srv, &t.reader), [200, 403, 403], "reader");
    assert_eq!(statuses(&srv, &t.admin), [200, 201, 200], "admin");
    // A bad token is still refused, even for a read.
    assert_eq!(srv.get("/v1/regions", "il_bogus").status, 401);
}

/// DNS rebinding: a page of another site whose name the attacker points at a server on a
/// loopback address sends that name as `Host`. Without a token such a request is refused
/// (421) unless the name is allowed (on loopback, by default, localhost and 127.0.0.1), so a
/// `--public-read` log cannot be read from any web page. A request with a token passes (a
/// page cannot hold one).
#[test]
fn requests_without_a_token_are_answered_only_for_allowed_host_names() {
    let (_dir, srv, t) = server_with_tokens(&["--public-read"]);
    let port = srv.addr.port();
    let with_host = |host: &str, token: &str| {
        let mut req = srv.req("GET", "/v1/regions").header("Host", host);
        if !token.is_empty() {
            req = req.token(token);
        }
        req.send()
    };
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
        "10.0.0.7".to_string(),
    ] {
        assert_eq!(with_host(&host, "").status, 200, "{host}");
    }
    for host in [format!("attacker.example:{port}"), "intranet".to_string()] {
        let p = with_host(&host, "").expect_problem(421);
        assert!(
            p["detail"].as_str().unwrap().contains("--allowed-host"),
            "{p}"
        );
        assert_eq!(
            with_host(&host, &t.reader).status,
            200,
            "{host} with a token"
        );
    }
    let status = |path: &str, headers: &[(&str, &str)]| {
        headers
            .iter()
            .fold(srv.req("GET", path), |req, (k, v)| req.header(k, v))
            .send()
            .status
    };
    // The ops endpoints too (a page could otherwise read /metrics), whose answers no token
    // guards: a made-up `Authorization` header does not let a request past there.
    let foreign = ("Host", "attacker.example");
    assert_eq!(status("/metrics", &[foreign]), 421);
    assert_eq!(status("/metrics", &[foreign, ("Authorization", "x")]), 421);
    // Two `Host` headers: which one counts is unknown, so neither does.
    assert_eq!(status("/healthz", &[("Host", "localhost"), foreign]), 421);

    // Names the operator allows (a reverse proxy's public name), or any.
    let (_dir, named, _) =
        server_with_tokens(&["--public-read", "--allowed-host", "incidents.example.org"]);
    let get = |srv: &Server, host: &str| {
        srv.req("GET", "/v1/regions")
            .header("Host", host)
            .send()
            .status
    };
    assert_eq!(get(&named, "incidents.example.org:443"), 200);
    assert_eq!(
        get(&named, "10.0.0.7"),
        200,
        "an address, never a rebinding"
    );
    assert_eq!(get(&named, "app.localhost"), 200);
    assert_eq!(
        get(&named, "other.example.org"),
        421,
        "only the names given"
    );
    let (_dir, any, _) = server_with_tokens(&["--public-read", "--allowed-host", "*"]);
    assert_eq!(get(&any, "attacker.example"), 200);
}
