//! Hostile requests against a running server: random and truncated JSON, huge numbers, deep
//! nesting, invalid UTF-8, oversize bodies, wrong content types, bad paths, bad auth,
//! malformed HTTP, then slow clients holding connections. Afterwards the server must be
//! healthy, its memory bounded, and its log unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use incidentlog_bench::rng::Rng;
use incidentlog_bench::synth::Synth;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::Conn;
use crate::Target;

/// What a hostile request may get back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A 4xx answer.
    Client,
    /// A 4xx answer or a closed connection (malformed HTTP).
    ClientOrClose,
    /// 200 from the bulk endpoint with every line rejected, or a 4xx.
    BulkAllRejected,
}

struct Hostile {
    label: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn request(method: &str, path: &str, auth: Option<&str>, ct: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    if let Some(ct) = ct {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + inner.len());
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(close);
    }
    s
}

fn build(i: usize, rng: &mut Rng, synth: &mut Synth, token: Option<&str>) -> Hostile {
    let json = Some("application/json");
    let ndjson = Some("application/x-ndjson");
    let line = synth.new_incident(true);
    let path = format!("/v1/incidents/{}/events", line.incident_id);
    let valid = line.append_body();
    let data_of_first = line.events[0].data.to_string();
    let id = &line.incident_id;
    let eid = &line.events[0].event_id;
    let append = |body: &[u8]| request("POST", &path, token, json, body);
    let c = |label, bytes| Hostile {
        label,
        bytes,
        expect: Expect::Client,
    };
    match i % 14 {
        0 => {
            let n = 1 + rng.below(2000) as usize;
            let body: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            c("random bytes", append(&body))
        }
        1 => {
            let cut = rng.below(valid.len() as u64 - 1) as usize;
            c("truncated JSON", append(&valid.as_bytes()[..cut]))
        }
        2 => {
            let bad = *rng.pick(&[
                "1e400",
                "18446744073709551616",
                "-1",
                "1.5",
                "\"3\"",
                "99999999999999999999999999999999999999",
                "-0.0000001",
                "NaN",
                "Infinity",
            ]);
            let body = format!(
                r#"{{"expected_version":0,"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}},{{"event_id":"{}","type":"CasualtiesReported","data":{{"killed":{bad},"source":{{"name":"x","kind":"media"}}}}}}]}}"#,
                rng.uuid()
            );
            c("huge number", append(body.as_bytes()))
        }
        3 => {
            let depth = 1_000 + rng.below(200_000) as usize;
            let body = match rng.below(3) {
                0 => nested(depth, "[", "]", "1"),
                1 => format!(
                    r#"{{"expected_version":0,"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{}}}]}}"#,
                    nested(depth, r#"{"a":"#, "}", "1")
                ),
                _ => format!(r#"{{"expected_version":{}}}"#, nested(depth, "[", "]", "0")),
            };
            c("deep nesting", append(body.as_bytes()))
        }
        4 => {
            let mut body = valid.clone().into_bytes();
            // Overwrite a byte inside the summary text with an invalid UTF-8 sequence.
            if let Some(p) = valid.find("reported near") {
                body[p] = 0xFF;
                body[p + 1] = 0xC3;
            }
            c("invalid UTF-8", append(&body))
        }
        5 => {
            // Oversize bodies: 1.5 MiB to an append (limit 1 MiB); now and then 65 MiB bulk.
            if i % 280 == 5 {
                let mut body = Vec::with_capacity(65 << 20);
                let l = format!("{}\n", line.to_ndjson());
                while body.len() < 65 << 20 {
                    body.extend_from_slice(l.as_bytes());
                }
                c(
                    "oversize bulk body",
                    request("POST", "/v1/events", token, ndjson, &body),
                )
            } else {
                let pad = "x".repeat(3 << 19);
                let body = valid.replacen("reported near", &format!("reported near {pad}"), 1);
                c("oversize body", append(body.as_bytes()))
            }
        }
        6 => {
            let ct = rng.pick(&[
                Some("text/plain"),
                Some("application/xml"),
                None,
                Some("multipart/form-data; boundary=x"),
                Some("application/x-www-form-urlencoded"),
            ]);
            c(
                "wrong content type",
                request("POST", &path, token, *ct, valid.as_bytes()),
            )
        }
        7 => {
            if rng.chance(50) {
                c(
                    "bulk with JSON content type",
                    request(
                        "POST",
                        "/v1/events",
                        token,
                        json,
                        format!("{}\n", line.to_ndjson()).as_bytes(),
                    ),
                )
            } else {
                let mut body = String::new();
                for _ in 0..(1 + rng.below(20)) {
                    match rng.below(4) {
                        0 => body.push_str("{not json\n"),
                        1 => body.push_str("[]\n"),
                        2 => body.push_str(&format!(
                            "{{\"incident_id\":\"{}\",\"events\":[]}}\n",
                            rng.uuid()
                        )),
                        _ => body.push_str(&format!(
                            "{{\"incident_id\":\"nope\",\"events\":[{valid}]}}\n"
                        )),
                    }
                }
                Hostile {
                    label: "bulk with bad lines",
                    bytes: request("POST", "/v1/events", token, ndjson, body.as_bytes()),
                    expect: Expect::BulkAllRejected,
                }
            }
        }
        8 => {
            // Well-formed JSON, invalid events (SPEC section 4).
            let src = r#"{"name":"x","kind":"media"}"#;
            let ir = |data: &str| {
                format!(
                    r#"{{"expected_version":0,"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data}}}]}}"#
                )
            };
            let body = match rng.below(12) {
                0 => format!(
                    r#"{{"events":[{{"event_id":"{eid}","type":"IncidentExploded","data":{{}}}}]}}"#
                ),
                1 => ir(&data_of_first.replacen('{', r#"{"unknown_field":1,"#, 1)),
                2 => format!(
                    r#"{{"events":[{{"event_id":"{eid}","type":"CasualtiesReported","data":{{"killed":1,"source":{src}}}}}]}}"#
                ),
                3 => ir(&data_of_first.replacen(
                    &format!(
                        "\"region\":\"{}\"",
                        line.events[0].data["region"].as_str().unwrap_or("")
                    ),
                    "\"region\":\"XX-99\"",
                    1,
                )),
                4 => ir(&data_of_first.replacen(
                    &format!(
                        "\"occurred_at\":\"{}\"",
                        line.events[0].data["occurred_at"].as_str().unwrap_or("")
                    ),
                    "\"occurred_at\":\"2099-01-01\"",
                    1,
                )),
                5 => format!(
                    r#"{{"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}},{{"event_id":"{}","type":"CasualtiesReported","data":{{"killed":3,"killed_low":5,"source":{src}}}}}]}}"#,
                    rng.uuid()
                ),
                6 => format!(
                    r#"{{"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}},{{"event_id":"{}","type":"ClaimDenied","data":{{"claim_id":"{}","by":"x"}}}}]}}"#,
                    rng.uuid(),
                    rng.uuid()
                ),
                7 => format!(
                    r#"{{"events":[{{"event_id":"not-a-uuid","type":"IncidentReported","data":{data_of_first}}}]}}"#
                ),
                8 => format!(
                    r#"{{"expected_version":"minus one","events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}}]}}"#
                ),
                9 => format!(
                    r#"{{"expected_version":5,"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}}]}}"#
                ),
                10 => r#"{"events":[]}"#.to_string(),
                _ => format!(
                    r#"{{"events":[{{"event_id":"{eid}","type":"IncidentReported","data":{data_of_first}}},{{"event_id":"{eid}","type":"SourceAdded","data":{{"source":{src}}}}}]}}"#
                ),
            };
            c("invalid event", append(body.as_bytes()))
        }
        9 => {
            let long = "a".repeat(8 << 10);
            let p = rng
                .pick(&[
                    "/v1/incidents/not-a-uuid".to_string(),
                    "/v1/incidents/not-a-uuid/events".to_string(),
                    format!("/v1/incidents/{id}"),
                    "/v1/regions/ZZ-ZZ".to_string(),
                    "/v1/regions/UA-99".to_string(),
                    "/v1/regions/UA-63?from=garbage".to_string(),
                    "/v1/regions/UA-63?at_position=-5".to_string(),
                    "/v1/regions/UA-63?as_of=yesterday".to_string(),
                    "/v1/events?limit=99999999999999999999".to_string(),
                    "/v1/events?after=-1".to_string(),
                    "/v1/incidents?limit=0&cursor=%00%FF".to_string(),
                    "/v1/incidents?claim_status=maybe".to_string(),
                    format!("/v1/regions/{long}"),
                    "/v1/nothing-here".to_string(),
                ])
                .clone();
            c("bad path or query", request("GET", &p, token, None, b""))
        }
        10 => {
            let bad = rng.below(4);
            let auth = match bad {
                0 => None,
                1 => Some("not-a-token".to_string()),
                2 => Some("x".repeat(20 << 10)),
                _ => Some(format!("{}x", token.unwrap_or(""))),
            };
            c(
                "bad auth",
                request("POST", &path, auth.as_deref(), json, valid.as_bytes()),
            )
        }
        11 => {
            let bytes: Vec<u8> = match rng.below(9) {
                0 => b"GARBAGE\r\n\r\n".to_vec(),
                1 => b"GET / HTTP/9.9\r\n\r\n".to_vec(),
                2 => format!("POST {path} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n").into_bytes(),
                3 => format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").into_bytes(),
                4 => format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n").into_bytes(),
                5 => {
                    // Declares more than it sends, then half-closes.
                    let mut b = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", token.unwrap_or(""), valid.len() + 100).into_bytes();
                    b.extend_from_slice(valid.as_bytes());
                    b
                }
                6 => format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n", token.unwrap_or("")).into_bytes(),
                // Headers beyond any sane limit (hyper's default buffer is ~400 KiB).
                7 => format!("GET /v1/regions HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(600 << 10)).into_bytes(),
                _ => format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
            };
            Hostile {
                label: "malformed HTTP",
                bytes,
                expect: Expect::ClientOrClose,
            }
        }
        12 => {
            let m = *rng.pick(&["PUT", "DELETE", "PATCH"]);
            c(
                "wrong method",
                request(m, &path, token, json, valid.as_bytes()),
            )
        }
        _ => {
            // A valid append body with a non-JSON suffix, and a JSON document with trailing junk.
            let body = format!("{valid} trailing");
            c("trailing junk", append(body.as_bytes()))
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn health(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Duration> {
    let mut c = Conn::new(addr, token);
    c.timeout = Duration::from_secs(5);
    let t0 = Instant::now();
    let r = c.request("GET", path, None, b"").await?;
    if r.status != 200 {
        bail!("{path} answered {}", r.status);
    }
    Ok(t0.elapsed())
}

/// Slow clients: half trickle their headers, half declare a body and trickle it. Held for
/// `secs`, one byte per 200 ms.
async fn slow_client(addr: SocketAddr, n: usize, secs: f64, path: String) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let msg = if n.is_multiple_of(2) {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
            "s".repeat(10_000)
        )
    } else {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{}", "{".repeat(10_000))
    };
    for b in msg.as_bytes() {
        if Instant::now() >= deadline || s.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(
    t: Target,
    count: usize,
    slow_clients: usize,
    slow_secs: f64,
    pid: Option<u32>,
    rss_limit_mib: u64,
    seed: u64,
) -> Result<()> {
    let addr = t.addr()?;
    let token = t.token.clone();
    health(addr, "/healthz", None).await?;
    let (before, _) = crate::log_event_ids(&t, addr).await?;
    let rss_before = pid.and_then(rss_kib);
    let mut rng = Rng::new(seed);
    let mut synth = Synth::new(seed ^ 0xBAD);
    let count = count.min(1_000_000);
    let requests: Vec<Hostile> = (0..count)
        .map(|i| build(i, &mut rng, &mut synth, token.as_deref()))
        .collect();
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let requests = requests.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut violations = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(h) = requests.get(i) else { break };
                let mut conn = Conn::new(addr, None);
                conn.timeout = Duration::from_secs(30);
                let half_close = h.label == "malformed HTTP";
                let res = conn.raw(&h.bytes, half_close).await;
                let outcome = match (&res, h.expect) {
                    (Ok(Some(r)), _) if (400..500).contains(&r.status) => format!("{}", r.status),
                    (Ok(Some(r)), Expect::BulkAllRejected) if r.status == 200 => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.body).unwrap_or_default();
                        if v["appended"].as_u64() == Some(0) && v["duplicates"].as_u64() == Some(0)
                        {
                            "200-all-rejected".to_string()
                        } else {
                            violations
                                .push(format!("#{i} {}: bulk recorded something: {v}", h.label));
                            "200-RECORDED".to_string()
                        }
                    }
                    (Ok(None), Expect::ClientOrClose) => "closed".to_string(),
                    (Err(_), Expect::ClientOrClose) => "closed".to_string(),
                    (Ok(Some(r)), _) => {
                        violations.push(format!(
                            "#{i} {}: status {}: {}",
                            h.label,
                            r.status,
                            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                        ));
                        format!("{}-UNEXPECTED", r.status)
                    }
                    (Ok(None), _) => {
                        violations.push(format!(
                            "#{i} {}: connection closed without an answer",
                            h.label
                        ));
                        "closed-UNEXPECTED".to_string()
                    }
                    (Err(e), _) => {
                        // A server may close early on an oversize body it rejected.
                        if h.label.starts_with("oversize") {
                            "closed".to_string()
                        } else {
                            violations.push(format!("#{i} {}: {e:#}", h.label));
                            "error-UNEXPECTED".to_string()
                        }
                    }
                };
                *outcomes
                    .entry(format!("{} -> {outcome}", h.label))
                    .or_default() += 1;
            }
            (outcomes, violations)
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    for task in tasks {
        let (o, v) = task.await?;
        for (k, n) in o {
            *outcomes.entry(k).or_default() += n;
        }
        violations.extend(v);
    }
    for (k, n) in &outcomes {
        println!("HOSTILE {k}: {n}");
    }

    // Slow clients hold connections while ordinary requests must still be served.
    let slow_path = format!("/v1/incidents/{}/events", rng.uuid());
    let slow: Vec<_> = (0..slow_clients.min(2048))
        .map(|n| tokio::spawn(slow_client(addr, n, slow_secs, slow_path.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    let probes = ((slow_secs * 4.0) as usize).clamp(4, 200);
    for k in 0..probes {
        let p = if k % 2 == 0 {
            "/healthz"
        } else {
            "/v1/events?after=0&limit=1"
        };
        match health(addr, p, token.as_deref()).await {
            Ok(d) => worst = worst.max(d),
            Err(e) => violations.push(format!(
                "while {slow_clients} slow clients held connections, {p}: {e:#}"
            )),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in slow {
        let _ = s.await;
    }
    println!("HOSTILE slow clients: {slow_clients} held {slow_secs}s; worst ordinary latency meanwhile {:.1} ms", worst.as_secs_f64() * 1000.0);

    // Afterwards: healthy, memory bounded, nothing recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Err(e) = health(addr, "/healthz", None).await {
        violations.push(format!("after: /healthz: {e:#}"));
    }
    if let Err(e) = health(addr, "/readyz", None).await {
        violations.push(format!("after: /readyz: {e:#}"));
    }
    let (after, _) = crate::log_event_ids(&t, addr).await?;
    if after != before {
        violations.push(format!(
            "the log changed: {} events before, {} after",
            before.len(),
            after.len()
        ));
    }
    if let (Some(pid), Some(b)) = (pid, rss_before) {
        match rss_kib(pid) {
            Some(a) => {
                println!("BENCH hostile_rss_before_mib={:.1} MiB", b as f64 / 1024.0);
                println!("BENCH hostile_rss_after_mib={:.1} MiB", a as f64 / 1024.0);
                if a > rss_limit_mib * 1024 {
                    violations.push(format!(
                        "resident memory {} MiB above the limit of {rss_limit_mib} MiB",
                        a / 1024
                    ));
                }
            }
            None => violations.push(format!("server process {pid} is gone")),
        }
    }
    println!(
        "HOSTILE total: {} requests + {slow_clients} slow clients, {} violations, log {} events before and after",
        requests.len(),
        violations.len(),
        before.len()
    );
    if !violations.is_empty() {
        for v in violations.iter().take(30) {
            eprintln!("VIOLATION {v}");
        }
        bail!("{} hostile-request violations", violations.len());
    }
    Ok(())
}
