//! Start and stop: the first-start admin token (not taken by a start that cannot listen),
//! SIGTERM with appends in flight (exit 0, every acknowledged event present after a restart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

#[test]
fn first_start_prints_an_admin_token_once() {
    let dir = temp_dir();
    let mut srv = Server::start(dir.path(), &[]);
    let admin = srv
        .admin_token
        .clone()
        .expect("first start prints the admin token");
    assert!(admin.len() >= 20, "token too short: {admin}");
    srv.get("/v1/admin/verify", &admin).expect(200);
    // The token list names it and never shows a secret.
    let list = cli_ok(&["token", "list", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(list.contains("admin"), "{list}");
    assert!(!list.contains(&admin), "token list leaked a secret: {list}");
    // The offline commands refuse a data dir a server holds, and say why.
    let out = cli(&["replay", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    // ... even once `LOCK` is deleted, as operators do with lock files: the directory itself
    // is locked (a second server on the same log once started and corrupted it).
    std::fs::remove_file(dir.path().join("LOCK")).expect("remove LOCK");
    let d = dir.path().to_str().unwrap();
    for args in [
        &["serve", "--data-dir", d, "--listen", "127.0.0.1:0"][..],
        &["replay", "--data-dir", d],
    ] {
        let out = exit_within(args, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in use"), "{args:?}: {err}");
    }
    // SIGINT (Ctrl-C) stops it as cleanly as SIGTERM, and so does SIGHUP (a closed terminal
    // or ssh session: its default action killed the server without a word).
    srv.signal("INT");
    assert_eq!(srv.wait_exit().code(), Some(0), "SIGINT must exit 0");
    let mut srv = Server::start(dir.path(), &[]);
    assert_eq!(srv.admin_token, None, "{:?}", srv.startup_stdout);
    srv.get("/v1/admin/verify", &admin).expect(200);
    srv.signal("HUP");
    assert_eq!(srv.wait_exit().code(), Some(0), "SIGHUP must exit 0");
}

/// Started with SIGHUP ignored (`nohup incidentlog serve &`, to outlive the terminal), the
/// server keeps ignoring it; SIGTERM still stops it cleanly.
#[test]
fn a_server_started_under_nohup_outlives_a_hangup() {
    keeps_ignoring(std::process::Command::new("nohup"), "HUP");
}

/// A shell script's `incidentlog serve &` starts with SIGINT ignored (so that a Ctrl-C meant
/// for the script does not reach its background jobs); the server keeps it ignored, and stops
/// on SIGTERM as ever.
#[test]
fn a_server_started_with_sigint_ignored_keeps_it_ignored() {
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "trap '' INT; exec \"$0\" \"$@\""]);
    keeps_ignoring(sh, "INT");
}

/// Starts `serve` through `launcher` (which leaves `signal` ignored), sends `signal`, and
/// checks the server is still running; then SIGTERM stops it with exit 0.
fn keeps_ignoring(mut launcher: std::process::Command, signal: &str) {
    use std::io::BufRead;
    use std::process::Stdio;
    let dir = temp_dir();
    let mut child = launcher
        .arg(bin())
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the launcher");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("listening on"));
    assert!(listening.is_some(), "the server did not start");
    send_signal(child.id(), signal);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIG{signal} stopped a server started with SIG{signal} ignored"
    );
    send_signal(child.id(), "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

/// A first admin token that cannot be shown (stdout is a full disk) is revoked at once, and
/// the log says how to make one; `token create` does the same and fails. A secret nobody saw
/// must not stay valid.
#[test]
fn a_token_that_cannot_be_printed_does_not_stay_valid() {
    use std::process::Stdio;
    let dir = temp_dir();
    let data = dir.path().to_str().unwrap();
    let full = || std::fs::File::create("/dev/full").expect("/dev/full");
    let mut child = command()
        .args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(full())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn incidentlog");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = loop {
        let line = rx.recv_timeout(TIMEOUT).expect("the server's log");
        if line.contains("first admin token") {
            break line;
        }
    };
    assert!(
        line.contains("revoked") && line.contains("token create"),
        "{line}"
    );
    send_signal(child.id(), "TERM");
    let _ = child.wait();
    let list = cli_ok(&["token", "list", "--data-dir", data, "--json"]);
    let tokens: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tokens.len(), 1, "{list}");
    assert_eq!(tokens[0]["name"], "admin");
    assert!(!tokens[0]["revoked_at"].is_null(), "{list}");

    let out = command()
        .args([
            "token",
            "create",
            "--data-dir",
            data,
            "--name",
            "desk",
            "--role",
            "reader",
        ])
        .stdout(full())
        .output()
        .expect("run incidentlog");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked again"),
        "{out:?}"
    );
    let list = cli_ok(&["token", "list", "--data-dir", data, "--json"]);
    assert!(
        list.lines()
            .any(|l| l.contains("\"desk\"") && !l.contains("\"revoked_at\":null")),
        "{list}"
    );

    // A closed stdout is /dev/null by the time the program runs: no better.
    let out = command()
        .args([
            "token",
            "create",
            "--data-dir",
            data,
            "--name",
            "night",
            "--role",
            "reader",
        ])
        .stdout(Stdio::null())
        .output()
        .expect("run incidentlog");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let list = cli_ok(&["token", "list", "--data-dir", data, "--json"]);
    assert!(
        list.lines()
            .any(|l| l.contains("\"night\"") && !l.contains("\"revoked_at\":null")),
        "{list}"
    );
}

/// Runs the binary with `args`, which must exit within `limit` (a server that starts where it
/// should not would run on): killed and failed otherwise.
fn exit_within(args: &[&str], limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn incidentlog");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait incidentlog").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("incidentlog {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("wait incidentlog")
}

/// A start that cannot listen (the port is taken) fails before anything else: exit 1, no
/// first admin token printed or stored (it would be shown once, by a run that failed), so the
/// next good start still prints one.
#[test]
fn a_taken_port_fails_the_start_before_the_first_token() {
    let busy = temp_dir();
    let srv = Server::start(busy.path(), &[]);
    let dir = temp_dir();
    let data = dir.path().join("data");
    let taken = srv.addr.to_string();
    let out = cli(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &taken,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("admin token"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    let next = Server::start(&data, &[]);
    assert!(
        next.admin_token.is_some(),
        "the failed start took the first token: {:?}",
        next.startup_stdout
    );
}

/// SIGTERM under load: every append acknowledged is there after a restart, at its
/// position; and an append in flight at the signal (its head and half its body sent before,
/// the rest after) is finished and acknowledged, not cut off.
#[test]
fn sigterm_with_appends_in_flight_loses_nothing_acknowledged() {
    use std::io::{BufReader, Write as _};
    let (dir, mut srv, t) = server_with_tokens(&[]);
    let in_flight_incident = new_id();
    let in_flight_body = serde_json::to_vec(&batch(
        json!(0),
        vec![reported("air_strike", "UA-63", "2026-01-10")],
    ))
    .unwrap();
    let (first_half, second_half) = in_flight_body.split_at(in_flight_body.len() / 2);
    let mut in_flight = std::net::TcpStream::connect(srv.addr).unwrap();
    in_flight.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        in_flight,
        "POST /v1/incidents/{in_flight_incident}/events HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        srv.addr,
        t.reporter,
        in_flight_body.len()
    )
    .unwrap();
    in_flight.write_all(first_half).unwrap();
    // In flight once the server handles it (`/metrics` itself is not counted).
    let deadline = Instant::now() + TIMEOUT;
    while metric(&srv, "incidentlog_requests_in_flight") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the half-sent append never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let acked: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let addr = srv.addr;
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let acked = acked.clone();
            let count = count.clone();
            let token = t.reporter.clone();
            std::thread::spawn(move || loop {
                let incident = new_id();
                let r = Req::new(addr, "POST", &format!("/v1/incidents/{incident}/events"))
                    .token(&token)
                    .json(&batch(
                        json!(0),
                        vec![
                            reported("shelling", "UA-63", "2026-01-10"),
                            casualties("Wire", 2),
                        ],
                    ))
                    .try_send();
                match r {
                    Ok(r) if r.status == 201 => {
                        acked.lock().unwrap().insert(incident, r.json());
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    // Shutting down: refused or cut off. Anything else is a bug.
                    Ok(r) if r.status == 503 => return,
                    Ok(r) => panic!(
                        "unexpected status {} during shutdown: {}",
                        r.status,
                        r.text()
                    ),
                    Err(_) => return,
                }
            })
        })
        .collect();
    // Let the writers get going, then stop the server under load.
    let deadline = Instant::now() + TIMEOUT;
    while count.load(Ordering::SeqCst) < 30 {
        assert!(Instant::now() < deadline, "writers made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.signal("TERM");
    in_flight.write_all(second_half).unwrap();
    let r = read_response(&mut BufReader::new(in_flight), false).expect("an answer");
    assert_eq!(
        r.status,
        201,
        "the append in flight at SIGTERM: {}",
        r.text()
    );
    let status = srv.wait_exit();
    for w in writers {
        w.join().expect("writer thread");
    }
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");

    let mut acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30);
    acked.insert(in_flight_incident.clone(), r.json());
    let srv = Server::start(dir.path(), &[]);
    // Every acknowledged append is there, at the positions it was given.
    let mut by_position: HashMap<u64, String> = HashMap::new();
    let mut after = 0;
    loop {
        let page = srv
            .get(&format!("/v1/events?after={after}&limit=1000"), &t.reader)
            .json();
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        for e in &events {
            by_position.insert(
                e["global_position"].as_u64().unwrap(),
                e["incident_id"].as_str().unwrap().to_string(),
            );
        }
        after = page["next_after"].as_u64().expect("next_after");
    }
    for (incident, ack) in &acked {
        for key in ["first_position", "last_position"] {
            let pos = ack[key].as_u64().unwrap();
            assert_eq!(
                by_position.get(&pos),
                Some(incident),
                "acknowledged event at position {pos} lost or moved"
            );
        }
        let v = srv.get(&format!("/v1/incidents/{incident}"), &t.reader);
        v.expect(200);
        let events = if *incident == in_flight_incident {
            1
        } else {
            2
        };
        assert_eq!(v.json()["version"], events);
    }
    // Positions stay gap-free.
    let max = by_position.keys().copied().max().unwrap_or(0);
    assert_eq!(by_position.len() as u64, max);
    srv.log_head(&t.admin);
}

/// A live-feed client that stops reading (its socket buffers full) cannot hold a SIGTERM
/// forever: after the grace period (the request timeout) the server closes such connections,
/// syncs and exits 0, and what was acknowledged is there after a restart.
#[test]
fn sigterm_does_not_wait_forever_for_a_client_that_stopped_reading() {
    use std::io::Write as _;
    let (dir, mut srv, t) = server_with_tokens(&["--request-timeout", "2s"]);
    // About 12 MB of events: more than loopback's socket buffers hold.
    let mut body = String::new();
    for _ in 0..6_000 {
        let line = json!({
            "incident_id": new_id(),
            "events": [
                reported("shelling", "UA-63", "2026-01-10"),
                casualties("Wire with a long enough name to make the events bigger", 2),
                casualties("Another wire, also with a long name for the same reason", 3),
            ]
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    let r = srv
        .req("POST", "/v1/events")
        .token(&t.reporter)
        .body("application/x-ndjson", body.into_bytes())
        .send();
    r.expect(200);
    // The stalled client: asks for the whole log as a live feed, then never reads.
    let mut stalled = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        stalled,
        "GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        t.reader
    )
    .unwrap();
    // Let the server fill the buffers.
    std::thread::sleep(Duration::from_millis(1_500));
    let stopping = Instant::now();
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "took {:?}",
        stopping.elapsed()
    );
    drop(stalled);
    let srv = Server::start(dir.path(), &[]);
    let r = srv.get("/readyz", &t.reader);
    r.expect(200);
    assert_eq!(r.json()["head"], 18_000);
}

/// A shutdown that waits (here for a request whose body never comes, as it would for a hung
/// disk) ends at once on a second signal, with exit 130; a signal right after the first (a
/// process group's and a wrapper's copy of the same stop) is not a second one. What was
/// acknowledged is there after a restart, and the log verifies.
#[test]
fn a_second_signal_quits_a_shutdown_that_waits() {
    use std::io::Write as _;
    let (dir, mut srv, t) = server_with_tokens(&["--request-timeout", "60s"]);
    let incident = new_id();
    srv.append(
        &t.reporter,
        &incident,
        &batch(
            json!(0),
            vec![reported("air_strike", "UA-63", "2026-01-10")],
        ),
    )
    .expect(201);
    // Holds the shutdown for the grace period (60 s): a body announced but never sent.
    let mut waiting = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        waiting,
        "POST /v1/incidents/{}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"expected_version\"",
        new_id(),
        t.reporter
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.signal("TERM");
    std::thread::sleep(Duration::from_millis(100));
    srv.signal("TERM");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        srv.has_exited(),
        None,
        "a signal right after the first is the same stop, and the shutdown waits for the request"
    );
    let second = Instant::now();
    srv.signal("INT");
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(130), "a second signal quits with 130");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    drop(waiting);
    let srv = Server::start(dir.path(), &[]);
    assert_eq!(srv.log_head(&t.admin).0, 1);
    srv.get(&format!("/v1/incidents/{incident}"), &t.reader)
        .expect(200);
}

/// A server whose log pipe closed (stderr gone: the log collector died, its disk filled)
/// keeps serving and still stops cleanly: a log line it cannot write is dropped, not a panic.
#[test]
fn a_closed_stderr_neither_stops_requests_nor_the_clean_shutdown() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    /// Kills the server if the test fails half-way.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = temp_dir();
    let child = command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut child = Guard(child);
    let child = &mut child.0;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = None;
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("a line").expect("stdout");
        if let Some(t) = parse_admin_token(&line) {
            token = Some(t);
        }
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    let token = token.expect("first start prints a token");
    // The reader of the server's log goes away.
    drop(child.stderr.take());
    for _ in 0..20 {
        let r = Req::new(addr, "POST", &format!("/v1/incidents/{}/events", new_id()))
            .token(&token)
            .json(&batch(
                json!(0),
                vec![reported("shelling", "UA-63", "2026-01-10")],
            ))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // A request that logs at warn level too (a 404 is debug; ask for a bad path).
    let r = Req::new(addr, "GET", "/v1/nope").token(&token).send();
    assert_eq!(r.status, 404);
    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    let out = cli_ok(&[
        "replay",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["events"], 20);
}

/// `--log-cache 0` with tiny segments: every sealed segment leaves the page cache at once
/// (and the active one as it grows), so reads come from the disk. Everything reads back whole
/// and in order, before and after a restart, and the views rebuilt from the log equal the
/// live ones.
#[test]
fn a_log_kept_out_of_the_page_cache_reads_back_whole() {
    let flags = ["--log-cache", "0", "--segment-size", "8KiB"];
    let (dir, mut srv, t) = server_with_tokens(&flags);
    let mut incidents = Vec::new();
    for i in 0..60 {
        let incident = new_id();
        let body = batch(
            json!(0),
            vec![
                reported("shelling", "UA-63", "2026-01-10"),
                casualties("Wire", i % 7),
            ],
        );
        srv.append(&t.reporter, &incident, &body).expect(201);
        incidents.push(incident);
    }
    let segments = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count();
    assert!(segments > 3, "the test needs sealed segments: {segments}");
    let read_all = |srv: &Server| -> Vec<(u64, String)> {
        let page = srv.get("/v1/events?after=0&limit=1000", &t.reader).json();
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                (
                    e["global_position"].as_u64().unwrap(),
                    e["incident_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let expected: Vec<(u64, String)> = incidents
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            [
                (2 * i as u64 + 1, id.clone()),
                (2 * i as u64 + 2, id.clone()),
            ]
        })
        .collect();
    assert_eq!(read_all(&srv), expected);
    let digest = srv
        .req("GET", "/v1/admin/digest")
        .token(&t.admin)
        .send()
        .json()["digest"]
        .clone();
    let replayed = srv.req("POST", "/v1/admin/replay").token(&t.admin).send();
    replayed.expect(200);
    assert_eq!(replayed.json()["digest"], digest);
    assert!(srv.terminate().success(), "SIGTERM must exit 0");

    let out = cli_ok(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.contains("events:    120"), "{out}");
    let srv = Server::start(dir.path(), &flags);
    assert_eq!(read_all(&srv), expected);
    let v = srv.get(&format!("/v1/incidents/{}", incidents[13]), &t.reader);
    v.expect(200);
    assert_eq!(v.json()["version"], 2);
    assert_eq!(v.json()["casualties"]["killed"]["best"], 13 % 7);
    let again = srv.req("GET", "/v1/admin/digest").token(&t.admin).send();
    assert_eq!(again.json()["digest"], digest);
}

/// A bulk import still running when a shutdown's grace period ends stops between lines and
/// answers 503 naming the first line not recorded and how many events landed before it:
/// exactly the lines before it are in the log after a restart, and the server exits 0.
#[test]
fn a_shutdown_stops_a_long_bulk_import_between_lines_with_an_answer() {
    let (dir, mut srv, tokens) = server_with_tokens(&["--request-timeout", "300ms"]);
    const LINES: usize = 120_000;
    let (body, ids) = new_incident_lines(LINES);
    let started = Instant::now();
    let import = {
        let req = srv
            .req("POST", "/v1/events")
            .token(&tokens.reporter)
            .body("application/x-ndjson", body.into_bytes());
        std::thread::spawn(move || req.try_send())
    };
    // Once the import has written its first lines, the shutdown begins; its grace period
    // (300 ms) ends long before the import would.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = srv.get("/v1/events?after=0&limit=1", &tokens.reader);
        if r.json()["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the import never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    srv.signal("TERM");
    let answer = import
        .join()
        .unwrap()
        .expect("the import is answered, not cut off");
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    let problem = answer.expect_problem(503);
    assert_eq!(answer.header("retry-after"), Some("5"));
    let detail = problem["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("shutting down"), "{detail}");
    let (line, appended) = stopped_at(&detail);
    assert!(
        line > 1 && line <= LINES,
        "stopped at line {line} of {LINES}, {:?} after the start: {detail}",
        started.elapsed()
    );
    assert_eq!(appended, line - 1, "{detail}");
    // After a restart: exactly the lines before it, in order.
    let srv = Server::start(dir.path(), &[]);
    let (events, _) = srv.log_head(&tokens.admin);
    assert_eq!(events as usize, appended);
    let last = srv.get(
        &format!("/v1/events?after={}&limit=1", appended - 1),
        &tokens.reader,
    );
    let last = &last.json()["events"][0];
    assert_eq!(
        last["incident_id"].as_str(),
        Some(ids[line - 2].as_str()),
        "{last}"
    );
}

/// A SIGTERM during the start-up (here, while the log is opened and the views built) stops
/// the server cleanly once the start-up is done, without serving: exit 0, not death by the
/// signal's default action half-way through opening the store.
#[test]
fn sigterm_during_the_start_up_stops_cleanly_before_serving() {
    use std::io::Read;
    use std::process::Stdio;

    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let (lines, _) = new_incident_lines(30_000);
    let file = dir.path().join("many.ndjson");
    std::fs::write(&file, lines).unwrap();
    cli_ok(&["import", file.to_str().unwrap(), "--data-dir", data_s]);
    create_token(&data, "root", "admin");

    let mut child = command()
        .args(["serve", "--data-dir", data_s, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as it handles SIGTERM (bit 15 of the caught-signals mask), long before the
    // 30,000 events are open and folded.
    wait_until_handled(child.id(), 15);
    send_signal(child.id(), "TERM");
    let exit = child.wait().unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(
        !stdout.contains("listening on"),
        "served after the signal: {stdout}"
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    // The log is intact and the next start serves it.
    let srv = Server::start(&data, &[]);
    drop(srv);
    cli_ok(&["verify", "--data-dir", data_s]);
}

/// Log lines carry the server's own request id, which no client can make, then the client's
/// (`request_id=3f9c01aa-4/client-7`): a client's id may repeat another request's, or take
/// the server's form, and must not pass for either in the log. The answer echoes the
/// client's id.
#[test]
fn logged_request_ids_are_the_server_s_own_then_the_client_s() {
    let dir = temp_dir();
    let data = dir.path().to_str().expect("utf-8 path");
    let (serve, addr) = serve_keeping_stderr(&["--log", "debug", "--data-dir", data]);
    let forged = "00000000-5";
    let r = Req::new(addr, "GET", "/healthz")
        .header("x-request-id", forged)
        .send();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some(forged));
    let err = stop_and_read_stderr(serve);
    let logged: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("route=\"/healthz\""))
        .filter_map(|l| l.split("request_id=").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(logged.len(), 1, "{err}");
    let (server_id, client_id) = logged[0].split_once('/').expect("server/client");
    assert_eq!(client_id, forged);
    assert_ne!(server_id, forged);
    assert!(!server_id.is_empty());
}
