//! Shared helpers of the black-box tests: start the real `incidentlog` binary, talk HTTP/1.1 to
//! it over a plain `TcpStream` (no HTTP client crate, so the tests see exactly what goes over
//! the wire), read Server-Sent Events, run CLI commands.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the tests run on a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// The binary under test.
pub fn bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_incidentlog") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/incidentlog"),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    // Tests are wired from crates/cli; the manifest dir is two levels below the root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn seed_path() -> PathBuf {
    repo_root().join("tests/fixtures/seed-incidents.ndjson")
}

pub fn seed_bytes() -> Vec<u8> {
    std::fs::read(seed_path()).expect("tests/fixtures/seed-incidents.ndjson")
}

/// A unique temporary directory that is removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("incidentlog-e2e-")
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// CLI

/// Runs `incidentlog <args>` to completion (stdin closed) and returns its output.
pub fn cli(args: &[&str]) -> Output {
    cli_with_stdin(args, None)
}

/// A command for the binary with none of the caller's `INCIDENTLOG_*` settings (they would
/// change what the tests run), except the test harness's own `INCIDENTLOG_TEST_*`.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("INCIDENTLOG_") && !k.starts_with("INCIDENTLOG_TEST_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

pub fn cli_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = command();
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn incidentlog");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        // Write from a thread so a child that writes a lot before reading cannot deadlock us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child.wait_with_output().expect("wait incidentlog")
}

/// Runs a CLI command that must succeed; returns its stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "incidentlog {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `incidentlog token create`: returns the secret (stdout holds it alone).
pub fn create_token(data_dir: &Path, name: &str, role: &str) -> String {
    let dir = data_dir.to_str().expect("utf-8 path");
    let out = cli_ok(&[
        "token",
        "create",
        "--data-dir",
        dir,
        "--name",
        name,
        "--role",
        role,
    ]);
    let secret = out.trim().to_string();
    assert!(
        !secret.is_empty() && !secret.contains(char::is_whitespace),
        "token create must print the secret alone, got {out:?}"
    );
    secret
}

/// Copies a directory tree (the data dir of a stopped server).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// `incidentlog serve --listen 127.0.0.1:0 ARGS...` with its standard error kept, once it
/// listens: the process and its address. [`stop_and_read_stderr`] ends it.
pub fn serve_keeping_stderr(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn incidentlog serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("read serve's stdout");
        assert!(n > 0, "serve exited before it listened");
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().parse().expect("an address");
        }
    };
    (child, addr)
}

/// Stops a server of [`serve_keeping_stderr`] with SIGTERM; its standard error.
pub fn stop_and_read_stderr(child: Child) -> String {
    send_signal(child.id(), "TERM");
    let out = child.wait_with_output().expect("serve's stderr");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `incidentlog serve`, killed on drop if still running.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin token printed on a first start (None when tokens already existed).
    pub admin_token: Option<String>,
    /// Every stdout line up to and including the `listening on` line.
    pub startup_stdout: Vec<String>,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `incidentlog serve --data-dir DIR --listen 127.0.0.1:0 EXTRA...` and waits until
    /// it listens and `/readyz` answers 200.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let server = Server::start_unready(data_dir, extra);
        server.wait_ready();
        server
    }

    /// [`Server::start`] with extra environment variables for the process.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Server::spawn(data_dir, extra, env);
        server.wait_ready();
        server
    }

    /// [`Server::start`] without waiting for `/readyz` (for servers that may never be ready).
    pub fn start_unready(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(data_dir, extra, &[])
    }

    fn spawn(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = command()
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Logs go to the test's own stderr: nextest shows them when a test fails.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn incidentlog serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            // Nobody listens any more; keep draining so the child never blocks.
                            continue;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        let mut admin_token = None;
        let addr: SocketAddr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(t) = parse_admin_token(&line) {
                        admin_token = Some(t);
                    }
                    let found = line
                        .split("listening on http://")
                        .nth(1)
                        .map(|a| a.trim().parse::<SocketAddr>());
                    lines.push(line.clone());
                    if let Some(a) = found {
                        break a.unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    panic!(
                        "server did not print `listening on http://ADDR` (exit status {status:?}); stdout so far: {lines:?}"
                    );
                }
            }
        };
        Server {
            child: Some(child),
            addr,
            admin_token,
            startup_stdout: lines,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match try_request(self.addr, "GET", "/readyz", &[], None) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("status {}", r.status),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("/readyz never answered 200 (last: {last})");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal by name.
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Whether the server has exited, without waiting (still running: None).
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts building a request to this server.
    pub fn req(&self, method: &str, path: &str) -> Req {
        Req::new(self.addr, method, path)
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        self.req("GET", path).token(token).send()
    }

    pub fn post_json(&self, path: &str, token: &str, body: &Value) -> Response {
        self.req("POST", path).token(token).json(body).send()
    }

    /// `POST /v1/incidents/{id}/events`.
    pub fn append(&self, token: &str, incident: &str, body: &Value) -> Response {
        self.post_json(&format!("/v1/incidents/{incident}/events"), token, body)
    }

    /// Number of events and head hash, through `GET /v1/admin/verify`.
    pub fn log_head(&self, admin: &str) -> (u64, String) {
        let r = self.get("/v1/admin/verify", admin);
        assert_eq!(r.status, 200, "verify: {}", r.text());
        let v = r.json();
        assert_eq!(v["ok"], Value::Bool(true), "verify: {v}");
        (
            v["events"].as_u64().expect("events"),
            v["head_hash"].as_str().expect("head_hash").to_string(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of an unlabelled metric in the server's `/metrics` (which needs no token).
pub fn metric(srv: &Server, name: &str) -> f64 {
    let r = srv.get("/metrics", "");
    r.expect(200);
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
}

/// Waits until process `pid` handles signal `number` (2 INT, 15 TERM): its caught-signals
/// mask in `/proc/PID/status` has the bit. Before that the signal's default action would
/// kill it, and a test that sends one after a fixed sleep tests that instead on a slow day.
pub fn wait_until_handled(pid: u32, number: u32) {
    let status = format!("/proc/{pid}/status");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let caught = std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                let mask = s
                    .lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))?
                    .trim()
                    .to_string();
                u64::from_str_radix(&mask, 16).ok()
            })
            .unwrap_or(0);
        if caught & (1 << (number - 1)) != 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signal {number} never handled by {pid}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Sends signal `name` (`TERM`, `INT`, ...) to process `pid` (through `kill(1)`, so no
/// unsafe code here).
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Recognises the first-start line `admin token: SECRET`.
pub fn parse_admin_token(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("admin token:")?;
    let t = rest.trim();
    (!t.is_empty()).then(|| t.to_string())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over TcpStream

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }

    /// Asserts an RFC 9457 problem with this status.
    #[track_caller]
    pub fn expect_problem(&self, status: u16) -> Value {
        self.expect(status);
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/problem+json"),
            "status {status} must be problem+json, got content-type {ct:?}: {}",
            self.text()
        );
        let v = self.json();
        assert_eq!(
            v["status"].as_u64(),
            Some(u64::from(status)),
            "problem: {v}"
        );
        assert!(v["title"].is_string(), "problem without title: {v}");
        assert!(v["type"].is_string(), "problem without type: {v}");
        v
    }
}

pub struct Req {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Req {
    pub fn new(addr: SocketAddr, method: &str, path: &str) -> Req {
        Req {
            addr,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A bearer token; an empty string sends no Authorization header.
    pub fn token(mut self, token: &str) -> Req {
        if !token.is_empty() {
            self.headers
                .push(("Authorization".into(), format!("Bearer {token}")));
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn json(self, v: &Value) -> Req {
        self.body("application/json", serde_json::to_vec(v).expect("json"))
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Req {
        self.headers
            .push(("Content-Type".into(), content_type.into()));
        self.body = Some(body);
        self
    }

    /// A body sent without any Content-Type header.
    pub fn raw_body(mut self, body: Vec<u8>) -> Req {
        self.body = Some(body);
        self
    }

    pub fn send(self) -> Response {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        try_request(
            self.addr,
            &self.method,
            &self.path,
            &headers,
            self.body.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.path))
    }

    pub fn try_send(self) -> std::io::Result<Response> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        try_request(
            self.addr,
            &self.method,
            &self.path,
            &headers,
            self.body.as_deref(),
        )
    }
}

fn write_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    // The address, unless the caller names a host of its own.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        // A server may answer (413) and close before reading the whole body: a failed write is
        // not an error as long as an answer can be read.
        if let Err(e) = stream.write_all(b) {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(e);
            }
        }
    }
    stream.flush()
}

/// One request on a fresh connection (`Connection: close`), the whole answer read.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write_request(&mut stream, addr, method, path, headers, body, true)?;
    read_response(&mut BufReader::new(stream), method == "HEAD")
}

/// One answer read off `reader` (for a test that writes its request by hand); `head`: the
/// request was a HEAD, so the answer has no body.
pub fn read_response<R: BufRead>(reader: &mut R, head: bool) -> std::io::Result<Response> {
    let (status, headers) = read_head(reader)?;
    let body = read_body(reader, &headers, head)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a status line",
        ));
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("bad status line {line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed inside the headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
}

fn read_body<R: BufRead>(
    r: &mut R,
    headers: &[(String, String)],
    head_only: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head_only {
        return Ok(body);
    }
    if is_chunked(headers) {
        while let Some(chunk) = read_chunk(r)? {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = header(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// One chunk of a chunked body; None after the last (empty) chunk.
fn read_chunk<R: BufRead>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed inside a chunked body",
        ));
    }
    let size_text = line.trim().split(';').next().unwrap_or("");
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
    if size == 0 {
        // Trailers, then the final CRLF.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
        }
        return Ok(None);
    }
    let mut chunk = vec![0u8; size];
    r.read_exact(&mut chunk)?;
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf)?;
    Ok(Some(chunk))
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A live `text/event-stream` response, read incrementally.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    chunked: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    text: String,
    done: bool,
}

impl SseStream {
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut all: Vec<(&str, &str)> = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        write_request(&mut stream, addr, "GET", path, &all, None, false).expect("write");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).expect("SSE response head");
        let chunked = is_chunked(&headers);
        SseStream {
            reader,
            chunked,
            status,
            headers,
            text: String::new(),
            done: false,
        }
    }

    /// The next event (comments/heartbeats skipped), or None when the server closed the stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            // Normalise CRLF so that the blank-line separator is always "\n\n".
            if self.text.contains('\r') {
                self.text = self.text.replace("\r\n", "\n").replace('\r', "\n");
            }
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text[..end].to_string();
                self.text.drain(..end + 2);
                let mut ev = SseEvent::default();
                let mut data_lines = Vec::new();
                let mut any_field = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line, ""),
                    };
                    any_field = true;
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.event = Some(value.to_string()),
                        "data" => data_lines.push(value.to_string()),
                        _ => {}
                    }
                }
                if !any_field || data_lines.is_empty() && ev.id.is_none() {
                    continue; // a heartbeat comment or an empty block
                }
                ev.data = data_lines.join("\n");
                return Some(ev);
            }
            if self.done {
                return None;
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader).expect("read SSE chunk")
            } else {
                let mut buf = vec![0u8; 8192];
                let n = self.reader.read(&mut buf).expect("read SSE");
                (n > 0).then(|| {
                    buf.truncate(n);
                    buf
                })
            };
            match more {
                Some(bytes) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
                None => self.done = true,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Domain helpers

/// A fresh random UUID (v4) as text.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An `IncidentReported` event.
pub fn reported(kind: &str, region: &str, occurred_at: &str) -> Value {
    serde_json::json!({
        "event_id": new_id(),
        "type": "IncidentReported",
        "data": {
            "kind": kind,
            "occurred_at": occurred_at,
            "region": region,
            "source": {"name": "Test wire", "kind": "media"}
        }
    })
}

/// `n` lines of a bulk import, each a new incident with one `IncidentReported`, and the
/// incidents' ids in line order.
pub fn new_incident_lines(n: usize) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let incident = new_id();
        let line = serde_json::json!({"incident_id": incident,
            "events": [reported("shelling", "UA-63", "2026-01-02")]});
        text.push_str(&line.to_string());
        text.push('\n');
        ids.push(incident);
    }
    (text, ids)
}

/// N and M of an import's "... stopped at line N (M events appended before) ...".
pub fn stopped_at(message: &str) -> (usize, usize) {
    let number = |text: &str| -> usize {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or_else(|_| panic!("{message}"))
    };
    let (_, rest) = message
        .split_once("stopped at line ")
        .unwrap_or_else(|| panic!("{message}"));
    let (_, appended) = rest.split_once(" (").unwrap_or_else(|| panic!("{message}"));
    (number(rest), number(appended))
}

/// A `CasualtiesReported` event.
pub fn casualties(source: &str, killed: u64) -> Value {
    serde_json::json!({
        "event_id": new_id(),
        "type": "CasualtiesReported",
        "data": {"killed": killed, "source": {"name": source, "kind": "media"}}
    })
}

/// An append body.
pub fn batch(expected_version: Value, events: Vec<Value>) -> Value {
    serde_json::json!({"expected_version": expected_version, "events": events})
}

/// One token per role, created offline with `incidentlog token create` before the server
/// starts (so the server prints no first-start token).
pub struct Tokens {
    pub admin: String,
    pub reporter: String,
    pub reader: String,
}

impl Tokens {
    pub fn create(data_dir: &Path) -> Tokens {
        Tokens {
            admin: create_token(data_dir, "root", "admin"),
            reporter: create_token(data_dir, "field-desk", "reporter"),
            reader: create_token(data_dir, "analyst", "reader"),
        }
    }
}

/// A temp data dir with the three tokens and a server on it.
pub fn server_with_tokens(extra: &[&str]) -> (tempfile::TempDir, Server, Tokens) {
    let dir = temp_dir();
    let tokens = Tokens::create(dir.path());
    let server = Server::start(dir.path(), extra);
    assert!(
        server.admin_token.is_none(),
        "a data dir that has tokens must not get a first-start token"
    );
    (dir, server, tokens)
}

/// Imports the seed file over HTTP and checks the report.
pub fn import_seed(server: &Server, token: &str) {
    let r = server
        .req("POST", "/v1/events")
        .token(token)
        .body("application/x-ndjson", seed_bytes())
        .send();
    r.expect(200);
    assert_eq!(
        r.json(),
        serde_json::json!({"appended": 10, "duplicates": 0, "rejected": []}),
        "seed import report"
    );
}
