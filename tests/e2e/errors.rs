//! Every error status of SPEC section 5, each answered as problem+json and each leaving the
//! log exactly as it was (same event count, same head hash).

use serde_json::json;

use crate::common::*;

/// Runs `f`, then checks that the log head did not move.
fn records_nothing(srv: &Server, admin: &str, what: &str, f: impl FnOnce()) {
    let before = srv.log_head(admin);
    f();
    let after = srv.log_head(admin);
    assert_eq!(before, after, "{what} recorded something");
}

#[test]
fn every_error_status_records_nothing() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    let incident = new_id();
    srv.append(
        &t.reporter,
        &incident,
        &batch(json!(0), vec![reported("shelling", "UA-63", "2026-01-05")]),
    )
    .expect(201);
    let path = format!("/v1/incidents/{incident}/events");

    // 400: malformed JSON body, a body that repeats a key (the earlier value would be
    // dropped silently), malformed query.
    records_nothing(&srv, &t.admin, "400 body", || {
        srv.req("POST", &path)
            .token(&t.reporter)
            .body("application/json", b"{\"events\": [".to_vec())
            .send()
            .expect_problem(400);
        let twice = format!(
            r#"{{"events": [{{"event_id": "{}", "type": "CasualtiesReported",
                "data": {{"killed": 12, "killed": 1, "source": {{"name": "Wire"}}}}}}]}}"#,
            new_id()
        );
        let p = srv
            .req("POST", &path)
            .token(&t.reporter)
            .body("application/json", twice.into_bytes())
            .send()
            .expect_problem(400);
        assert!(p.to_string().contains("duplicate key"), "{p}");
    });
    srv.get("/v1/events?after=minus-one", &t.reader)
        .expect_problem(400);
    // Positions and counts are digits only: Rust's integer parse would take a sign.
    for query in [
        "/v1/events?after=%2B1",
        "/v1/events?limit=%2B5",
        "/v1/events/stream?after=%2B1",
        "/v1/regions/UA-63?at_position=%2B1",
        "/v1/incidents?limit=%2B5",
    ] {
        let p = srv.get(query, &t.reader).expect_problem(400);
        let name = query.split(['?', '=']).nth(1).unwrap_or_default();
        assert_eq!(
            p["errors"][0]["pointer"],
            json!(format!("/{name}")),
            "{query}: {p}"
        );
    }
    srv.get("/v1/incidents/not-a-uuid", &t.reader)
        .expect_problem(400);

    // 401: no token, unknown token, malformed header.
    records_nothing(&srv, &t.admin, "401", || {
        let body = batch(json!("any"), vec![casualties("Wire", 1)]);
        srv.append("", &incident, &body).expect_problem(401);
        srv.append("il_not-a-real-token", &incident, &body)
            .expect_problem(401);
        srv.req("POST", &path)
            .header("Authorization", "Basic dXNlcjpwYXNz")
            .json(&body)
            .send()
            .expect_problem(401);
    });
    srv.get("/v1/regions", "").expect_problem(401);

    // 403: a reader appends; a reporter calls an admin route.
    records_nothing(&srv, &t.admin, "403", || {
        let body = batch(json!("any"), vec![casualties("Wire", 1)]);
        srv.append(&t.reader, &incident, &body).expect_problem(403);
        srv.req("POST", "/v1/admin/replay")
            .token(&t.reporter)
            .send()
            .expect_problem(403);
    });

    // 404: unknown incident; valid region code with nothing recorded.
    srv.get(&format!("/v1/incidents/{}", new_id()), &t.reader)
        .expect_problem(404);
    srv.get("/v1/regions/UA-30", &t.reader).expect_problem(404);
    // 422: a region code that does not exist.
    srv.get("/v1/regions/XX-99", &t.reader).expect_problem(422);

    // 409: version conflict, with expected and actual.
    records_nothing(&srv, &t.admin, "409 version", || {
        let p = srv
            .append(
                &t.reporter,
                &incident,
                &batch(json!(0), vec![casualties("Wire", 1)]),
            )
            .expect_problem(409);
        assert_eq!(p["expected"], json!(0), "{p}");
        assert_eq!(p["actual"], json!(1), "{p}");
        let p = srv
            .append(
                &t.reporter,
                &incident,
                &batch(json!(7), vec![casualties("Wire", 1)]),
            )
            .expect_problem(409);
        assert_eq!(p["expected"], json!(7), "{p}");
        assert_eq!(p["actual"], json!(1), "{p}");
    });
    // 409: an event id reused with other content.
    let first = casualties("Wire", 3);
    srv.append(
        &t.reporter,
        &incident,
        &batch(json!(1), vec![first.clone()]),
    )
    .expect(201);
    records_nothing(&srv, &t.admin, "409 event id", || {
        let mut changed = first.clone();
        changed["data"]["killed"] = json!(4);
        let p = srv
            .append(&t.reporter, &incident, &batch(json!("any"), vec![changed]))
            .expect_problem(409);
        assert!(
            p.get("expected").is_some() && p.get("actual").is_some(),
            "{p}"
        );
    });

    // 413: a body over the limit (1 MiB by default).
    records_nothing(&srv, &t.admin, "413", || {
        let mut ev = casualties("Wire", 1);
        ev["data"]["source"]["name"] = json!("x".repeat(1_100_000));
        let r = srv
            .req("POST", &path)
            .token(&t.reporter)
            .json(&batch(json!("any"), vec![ev]))
            .try_send()
            .expect("an answer to an over-large body");
        r.expect_problem(413);
    });
    // A declared length over the limit is refused at once, before any of the body arrives
    // (it once waited the request timeout and answered 408), for an append and a bulk import.
    for (route, ct, limit) in [
        (path.as_str(), "application/json", 1u64 << 20),
        ("/v1/events", "application/x-ndjson", 64 << 20),
    ] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let started = std::time::Instant::now();
        write!(
            conn,
            "POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            t.reporter,
            limit + 1
        )
        .unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head)
            .expect("an answer before the body");
        assert_eq!(&head, b"HTTP/1.1 413", "{route}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{route}"
        );
    }

    // 415: wrong content type (for an append, and for the bulk import).
    records_nothing(&srv, &t.admin, "415", || {
        let body = serde_json::to_vec(&batch(json!("any"), vec![casualties("Wire", 1)])).unwrap();
        srv.req("POST", &path)
            .token(&t.reporter)
            .body("text/plain", body.clone())
            .send()
            .expect_problem(415);
        srv.req("POST", "/v1/events")
            .token(&t.reporter)
            .body("application/json", b"{}".to_vec())
            .send()
            .expect_problem(415);
    });

    // 422: invalid events, one JSON pointer per bad field; the valid event in the same batch
    // is not recorded either (atomic).
    records_nothing(&srv, &t.admin, "422", || {
        let mut bad = casualties("Wire", 1);
        bad["data"]["killed"] = json!(-1);
        let mut unknown_field = casualties("Wire", 1);
        unknown_field["data"]["colour"] = json!("red");
        let body = batch(
            json!("any"),
            vec![casualties("Wire", 2), bad, unknown_field],
        );
        let p = srv
            .append(&t.reporter, &incident, &body)
            .expect_problem(422);
        let pointers: Vec<&str> = p["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["pointer"].as_str().expect("pointer"))
            .collect();
        assert!(pointers.contains(&"/events/1/data/killed"), "{p}");
        assert!(
            pointers.iter().any(|ptr| ptr.starts_with("/events/2/data")),
            "{p}"
        );
        // Unknown event type.
        let p = srv
            .append(
                &t.reporter,
                &incident,
                &batch(
                    json!("any"),
                    vec![json!({"event_id": new_id(), "type": "IncidentTeleported", "data": {}})],
                ),
            )
            .expect_problem(422);
        assert!(!p["errors"].as_array().expect("errors").is_empty(), "{p}");
        // A second IncidentReported on an existing incident breaks a domain rule.
        srv.append(
            &t.reporter,
            &incident,
            &batch(
                json!("any"),
                vec![reported("shelling", "UA-63", "2026-01-05")],
            ),
        )
        .expect_problem(422);
        // Casualties on an incident that was never reported.
        srv.append(
            &t.reporter,
            &new_id(),
            &batch(json!("any"), vec![casualties("Wire", 1)]),
        )
        .expect_problem(422);
    });
}

/// A bulk body sent in chunks (no declared length) that passes `--bulk-body-limit` is a 413
/// that records none of its lines, though every line before the limit is valid: the body is
/// held whole until its import is answered. The same lines under the limit are all recorded,
/// so the 413's "nothing" is the limit's doing.
#[test]
fn a_chunked_bulk_body_past_the_limit_records_none_of_its_lines() {
    use std::io::{BufReader, Write};
    const LIMIT: usize = 64 * 1024;
    let limit = LIMIT.to_string();
    let (_dir, srv, t) = server_with_tokens(&["--bulk-body-limit", &limit]);
    let (text, ids) = new_incident_lines(600);
    assert!(text.len() > 2 * LIMIT, "{} bytes", text.len());

    records_nothing(&srv, &t.admin, "a chunked bulk body past the limit", || {
        let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "POST /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
            srv.addr, t.reporter
        )
        .unwrap();
        // The server may answer and stop reading once the limit is passed.
        let mut sent = Ok(());
        for piece in text.as_bytes().chunks(4096) {
            sent = write!(conn, "{:x}\r\n", piece.len())
                .and_then(|()| conn.write_all(piece))
                .and_then(|()| conn.write_all(b"\r\n"));
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            let _ = conn.write_all(b"0\r\n\r\n");
        }
        let r = read_response(&mut BufReader::new(conn), false).expect("an answer");
        r.expect_problem(413);
    });
    for id in ids.iter().take(3) {
        srv.get(&format!("/v1/incidents/{id}"), &t.reader)
            .expect_problem(404);
    }

    // The first lines alone, under the limit, are valid and recorded.
    let under: String = text
        .split_inclusive('\n')
        .scan(0usize, |len, line| {
            *len += line.len();
            (*len < LIMIT).then_some(line)
        })
        .collect();
    let lines = under.lines().count();
    assert!(lines > 100, "{lines} lines");
    let r = srv
        .req("POST", "/v1/events")
        .token(&t.reporter)
        .body("application/x-ndjson", under.into_bytes())
        .send();
    r.expect(200);
    assert_eq!(srv.log_head(&t.admin).0, lines as u64, "{}", r.text());
}

/// Paths no route serves and methods a route does not take, on the real binary: 404 and 405
/// as problem+json, nothing recorded.
#[test]
fn unknown_paths_and_methods_are_404_and_405_and_record_nothing() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    let incident = new_id();
    let body = serde_json::to_vec(&batch(
        json!(0),
        vec![reported("shelling", "UA-63", "2026-01-05")],
    ))
    .unwrap();
    records_nothing(&srv, &t.admin, "404 and 405", || {
        for path in [
            "/v1/nope",
            "/nope",
            &format!("/v1/incidents/{incident}/nope"),
        ] {
            srv.req("POST", path)
                .token(&t.reporter)
                .body("application/json", body.clone())
                .send()
                .expect_problem(404);
        }
        for (method, path) in [
            ("PUT", format!("/v1/incidents/{incident}/events")),
            ("DELETE", format!("/v1/incidents/{incident}/events")),
            ("PATCH", format!("/v1/incidents/{incident}")),
            ("POST", "/v1/regions".to_string()),
            ("POST", "/v1/incidents".to_string()),
        ] {
            srv.req(method, &path)
                .token(&t.reporter)
                .body("application/json", body.clone())
                .send()
                .expect_problem(405);
        }
    });
    // The same body at the right method and path is taken.
    srv.req("POST", &format!("/v1/incidents/{incident}/events"))
        .token(&t.reporter)
        .body("application/json", body)
        .send()
        .expect(201);
}

/// A body that stops arriving is answered 408 (problem+json) after `--request-timeout` and
/// records nothing; a body that arrives in two parts within it is appended (the server takes
/// a body that came with its head without arming the timer, and arms it otherwise).
#[test]
fn a_body_that_stops_arriving_is_answered_408() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let (_dir, srv, t) = server_with_tokens(&["--request-timeout", "1s"]);
    let incident = new_id();
    let path = format!("/v1/incidents/{incident}/events");
    let body = serde_json::to_vec(&batch(
        json!(0),
        vec![reported("shelling", "UA-63", "2026-01-05")],
    ))
    .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.reporter,
        body.len()
    );
    let half = body.len() / 2;
    // A connection that has sent the head and the first half of the body.
    let half_sent = || {
        let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body[..half]).unwrap();
        conn
    };

    records_nothing(&srv, &t.admin, "408", || {
        let started = Instant::now();
        let conn = half_sent();
        let answer = read_response(&mut std::io::BufReader::new(conn), false).expect("an answer");
        let waited = started.elapsed();
        answer.expect_problem(408);
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(8),
            "answered after {waited:?}"
        );
    });

    let mut conn = half_sent();
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(&body[half..]).unwrap();
    let answer = read_response(&mut std::io::BufReader::new(conn), false).expect("an answer");
    answer.expect(201);
    let got = srv.get(&format!("/v1/incidents/{incident}"), &t.reader);
    assert_eq!(got.status, 200, "{}", got.text());
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let (_dir, srv, t) = server_with_tokens(&["--rate-limit", "1"]);
    // With one request per second allowed, twenty in a row cannot all pass (each would have to
    // take a second).
    let mut accepted = 0u64;
    let mut limited = None;
    for _ in 0..20 {
        let r = srv.append(
            &t.reporter,
            &new_id(),
            &batch(json!(0), vec![reported("shelling", "UA-63", "2026-01-05")]),
        );
        match r.status {
            201 => accepted += 1,
            429 => {
                limited = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let r = limited.expect("no 429 in 20 requests at 1 request/s");
    r.expect_problem(429);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The log holds exactly the accepted appends: the limited one recorded nothing. (The admin
    // token has its own budget; if it is spent, wait as told.)
    let events = loop {
        let r = srv.get("/v1/admin/verify", &t.admin);
        if r.status == 429 {
            let wait: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            std::thread::sleep(std::time::Duration::from_secs(wait));
            continue;
        }
        r.expect(200);
        break r.json()["events"].as_u64().expect("events");
    };
    assert_eq!(events, accepted);
}

/// Waits (up to 10 s) until `/healthz` answers 200 again, else fails with `why`.
fn served_again_within_10s(srv: &Server, admin: &str, why: &str) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = std::panic::catch_unwind(|| srv.get("/healthz", admin).status == 200);
        if ok.unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One address cannot fill the connection cap: beyond `--max-connections-per-address` its
/// connections are closed at once, while another address is still served. (Linux: every
/// 127/8 address reaches the loopback interface.)
#[cfg(target_os = "linux")]
#[test]
fn one_address_cannot_take_every_connection() {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = temp_dir();
    let srv = Server::start(dir.path(), &["--max-connections-per-address", "2"]);
    let admin = srv.admin_token.clone().expect("first start prints a token");
    // Is the server still serving (or at least holding) this connection? A refused one is
    // closed at once: its read ends.
    let open = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    };
    // Two idle connections that the server accepted and holds; retried while the start's
    // readiness probes (which count too) are still being closed on the server's side.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held: Vec<TcpStream> = loop {
        let mut held: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(srv.addr).unwrap();
                s.write_all(b"G").unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        if held.iter_mut().all(open) {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "two connections were never both held"
        );
    };
    let ask = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ =
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
                String::new()
            }
        }
    };
    let third = ask(TcpStream::connect(srv.addr).unwrap());
    assert!(
        third.is_empty(),
        "a third connection of one address was served: {third}"
    );
    // Another loopback address has its own share.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let other = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.2:0".parse().unwrap())?;
            socket.connect(srv.addr).await?.into_std()
        })
        .expect("connect from 127.0.0.2");
    other.set_nonblocking(false).unwrap();
    let answer = ask(other);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address was refused: {answer:?}"
    );
    // Closed connections give their shares back.
    drop(held);
    served_again_within_10s(&srv, &admin, "shares did not come back on close");
}

/// A client that never finishes its request head is cut off after `--header-read-timeout`,
/// connections beyond `--max-connections` are closed at once, and a well-behaved client is
/// served throughout.
#[test]
fn slow_and_surplus_connections_are_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = temp_dir();
    let srv = Server::start(
        dir.path(),
        &["--header-read-timeout", "1s", "--max-connections", "3"],
    );
    let admin = srv.admin_token.clone().expect("first start prints a token");

    // Half a request head, never finished.
    let mut slow = TcpStream::connect(srv.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // hyper answers a timed-out head with 408 or just closes; either way the socket ends.
    let mut got = Vec::new();
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "slow client was not cut off: {e} after {:?}",
                started.elapsed()
            ),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(8),
        "cut off after {waited:?}"
    );
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "unexpected answer to a timed-out head: {:?}",
        String::from_utf8_lossy(&got)
    );

    // Fill the connection cap with idle connections (each sends one byte so the server has
    // accepted and is serving it), then one more is closed without an answer.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(srv.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    match extra.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "a connection over the cap was served"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    // Once the held connections go (their heads time out or they close), service resumes.
    drop(held);
    served_again_within_10s(&srv, &admin, "server did not recover after the cap");
}
