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
