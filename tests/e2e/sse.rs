//! The live feed: catch-up from `after`, then live, ids consecutive with no gap and no
//! duplicate across the switch, with appends racing the reader and the switch itself;
//! resume with Last-Event-ID.

use serde_json::{json, Value};

use crate::cli::d;
use crate::common::*;

fn append_one(addr: std::net::SocketAddr, token: &str) {
    let r = Req::new(addr, "POST", &format!("/v1/incidents/{}/events", new_id()))
        .token(token)
        .json(&batch(
            json!(0),
            vec![
                reported("drone_strike", "UA-65", "2026-01-09"),
                casualties("Wire", 1),
            ],
        ))
        .send();
    r.expect(201);
}

/// Reads events until position `until`, checking ids are consecutive from `from`.
fn read_until(stream: &mut SseStream, from: u64, until: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut expect = from;
    while expect <= until {
        let ev = stream.next_event().expect("the feed ended early");
        let id: u64 = ev
            .id
            .as_deref()
            .expect("SSE id")
            .parse()
            .expect("numeric id");
        assert_eq!(id, expect, "gap or duplicate in the feed");
        let data: Value = serde_json::from_str(&ev.data).expect("data is a recorded event");
        assert_eq!(data["global_position"], json!(id));
        assert_eq!(ev.event.as_deref(), data["type"].as_str(), "event = type");
        out.push(data);
        expect += 1;
    }
    out
}

#[test]
fn catch_up_then_live_without_gap_or_duplicate() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    for _ in 0..3 {
        append_one(srv.addr, &t.reporter); // positions 1..=6
    }
    let auth = format!("Bearer {}", t.reader);
    let mut feed = SseStream::open(
        srv.addr,
        "/v1/events/stream?after=2",
        &[("Authorization", &auth)],
    );
    assert_eq!(feed.status, 200);
    let ct = feed
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let caught_up = read_until(&mut feed, 3, 6);
    assert_eq!(caught_up[0]["type"], "IncidentReported");

    // Appends racing with the reader, once live: every one arrives, in order, once (the race
    // with the switch itself: `appends_racing_the_switch_to_live_arrive_once_in_order`).
    let addr = srv.addr;
    let token = t.reporter.clone();
    let writer = std::thread::spawn(move || {
        for _ in 0..10 {
            append_one(addr, &token);
        }
    });
    let live = read_until(&mut feed, 7, 26);
    writer.join().unwrap();
    assert_eq!(live.len(), 20);

    // Resume after a disconnect with Last-Event-ID: starts right after it.
    drop(feed);
    let mut resumed = SseStream::open(
        srv.addr,
        "/v1/events/stream",
        &[("Authorization", &auth), ("Last-Event-ID", "24")],
    );
    assert_eq!(resumed.status, 200);
    read_until(&mut resumed, 25, 26);
    append_one(srv.addr, &t.reporter);
    read_until(&mut resumed, 27, 28);

    // A Last-Event-ID that is not one position is refused, not resumed from elsewhere: twice
    // (once the first was taken), or with a sign.
    for ids in [&["5", "7"][..], &["+5"], &["5, 7"], &["-1"]] {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(ids.iter().map(|id| ("Last-Event-ID", *id)));
        let refused = SseStream::open(srv.addr, "/v1/events/stream", &headers);
        assert_eq!(refused.status, 400, "Last-Event-ID {ids:?}");
    }

    // The feed needs a token like any read.
    let anon = SseStream::open(srv.addr, "/v1/events/stream", &[]);
    assert_eq!(anon.status, 401);
}

/// The switch from catch-up to live while appends land: the feed opens on a log longer than
/// its catch-up reads with a writer already appending, so appends land during the catch-up,
/// at the switch and after it; every position arrives once, in order.
#[test]
fn appends_racing_the_switch_to_live_arrive_once_in_order() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    const BACKLOG: u64 = 1_500;
    const APPENDS: u64 = 150; // two events each
    let (lines, _) = new_incident_lines(BACKLOG as usize);
    srv.req("POST", "/v1/events")
        .token(&t.reporter)
        .body("application/x-ndjson", lines.into_bytes())
        .send()
        .expect(200);
    let started = std::sync::Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (addr, token, started) = (srv.addr, t.reporter.clone(), started.clone());
        std::thread::spawn(move || {
            started.wait();
            for _ in 0..APPENDS {
                append_one(addr, &token);
            }
        })
    };
    started.wait();
    let auth = format!("Bearer {}", t.reader);
    let mut feed = SseStream::open(
        srv.addr,
        "/v1/events/stream?after=0",
        &[("Authorization", &auth)],
    );
    assert_eq!(feed.status, 200);
    let events = read_until(&mut feed, 1, BACKLOG + 2 * APPENDS);
    writer.join().unwrap();
    assert_eq!(events.len() as u64, BACKLOG + 2 * APPENDS);
    assert_eq!(srv.log_head(&t.admin).0, BACKLOG + 2 * APPENDS);
}

#[test]
fn sse_clients_beyond_the_cap_get_503() {
    let (_dir, srv, t) = server_with_tokens(&["--max-sse-clients", "1"]);
    let before = srv.log_head(&t.admin);
    let auth = format!("Bearer {}", t.reader);
    let first = SseStream::open(srv.addr, "/v1/events/stream", &[("Authorization", &auth)]);
    assert_eq!(first.status, 200);
    let r = srv.get("/v1/events/stream", &t.reader);
    let p = r.expect_problem(503);
    assert!(p["detail"].is_string(), "{p}");
    drop(first);
    assert_eq!(srv.log_head(&t.admin), before);
    // Once the first client is gone, a new one is served again.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let s = SseStream::open(srv.addr, "/v1/events/stream", &[("Authorization", &auth)]);
        if s.status == 200 {
            break;
        }
        assert_eq!(s.status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the SSE slot was never freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A live feed that cannot go on (a record damaged on disk, met in the catch-up) says so with a
/// last `problem` event (problem+json that names no file or offset) before it ends, so that it
/// does not look as if the log ended there.
#[test]
fn a_feed_that_meets_a_damaged_record_says_so_before_it_ends() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&data)]);
    let token = create_token(&data, "desk", "reader");
    let srv = Server::start(&data, &[]);
    // A byte in the body of the third record, under the running server (a start refuses a
    // damaged log).
    let (segment, mut bytes, starts) = crate::cli::last_segment_records(&data);
    let third = starts[2];
    bytes[third + 8 + 120] ^= 0x20;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let auth = format!("Bearer {token}");
    let mut feed = SseStream::open(
        srv.addr,
        "/v1/events/stream?after=0",
        &[("Authorization", &auth)],
    );
    assert_eq!(feed.status, 200);
    // Records before the damage may come first (the catch-up reads pages of records).
    let mut position = 0;
    let last = loop {
        let ev = feed
            .next_event()
            .expect("a last event saying why the feed stops");
        if ev.event.as_deref() == Some("problem") {
            break ev;
        }
        position += 1;
        assert_eq!(ev.id, Some(position.to_string()), "{ev:?}");
        assert!(position < 3, "the damaged record was sent: {ev:?}");
    };
    assert_eq!(last.event.as_deref(), Some("problem"), "{last:?}");
    assert_eq!(last.id, None, "{last:?}");
    let problem: Value = serde_json::from_str(&last.data).expect("problem+json");
    assert_eq!(problem["status"], 500, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("request id") && !detail.contains(".seg"),
        "{detail}"
    );
    assert!(feed.next_event().is_none(), "nothing after the problem");
}
