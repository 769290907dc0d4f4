//! `incidentlog-load`: load generator, synthetic log writer and drill helper for incidentlog.
//! Loopback only, every loop bounded in count and time. Prints `BENCH name=value unit` lines.
#![forbid(unsafe_code)]

mod hostile;
mod http;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use incidentlog_bench::rng::Rng;
use incidentlog_bench::stats::Latencies;
use incidentlog_bench::synth::{region_codes, BodyTemplate, Synth};

use crate::http::{loopback_target, Conn};

/// The same allocator as the server: the load generator shares the machine's two cores with
/// it, so its own cost per request is kept small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "incidentlog-load",
    about = "Load generator and drill helper for incidentlog (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Server address (`127.0.0.1:8080` or `http://127.0.0.1:8080`); loopback only.
    #[arg(long, env = "INCIDENTLOG_LOAD_TARGET")]
    target: String,
    /// Bearer token (or set INCIDENTLOG_LOAD_TOKEN).
    #[arg(long, env = "INCIDENTLOG_LOAD_TOKEN")]
    token: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
}

impl Target {
    fn addr(&self) -> Result<SocketAddr> {
        loopback_target(&self.target)
    }
    fn conn(&self, addr: SocketAddr) -> Conn {
        let mut c = Conn::new(addr, self.token.as_deref());
        c.timeout = Duration::from_secs_f64(self.timeout_secs.max(0.1));
        c
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic NDJSON import file (and optionally the same events as PostgreSQL COPY rows).
    Gen {
        /// Number of events (the last line may overshoot by one event).
        #[arg(long)]
        events: u64,
        /// The NDJSON file to write (lines of POST /v1/events).
        #[arg(long)]
        out: PathBuf,
        /// Also write the same events as COPY text rows
        /// (incident_id, stream_version, event_id, event_type, data, recorded_by).
        #[arg(long)]
        copy_out: Option<PathBuf>,
        /// Seed of the generator: the same seed writes the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write a pgbench script inserting one event row per transaction (the row of one
    /// single-event HTTP append), and the DDL of the peer table.
    PgbenchScript {
        /// The pgbench script to write.
        #[arg(long)]
        out: PathBuf,
        /// The SQL that creates the peer table, to write.
        #[arg(long)]
        ddl_out: PathBuf,
        /// Seed of the generator: the same seed writes the same script.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Single-event appends: each request a new incident (IncidentReported, optionally then
    /// CasualtiesReported) at C keep-alive connections.
    Append {
        #[command(flatten)]
        t: Target,
        /// Keep-alive connections, each with one request at a time.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Stop after this many requests in all.
        #[arg(long, default_value_t = 5_000_000)]
        max_requests: u64,
        /// Two events per request (IncidentReported then CasualtiesReported).
        #[arg(long)]
        casualties: bool,
        /// Write the event id of every 2xx-acknowledged event to this file (one per line).
        #[arg(long)]
        ack_file: Option<PathBuf>,
        /// Stop every connection as soon as the server goes away (kill drills).
        #[arg(long)]
        stop_on_disconnect: bool,
        /// Seed of the generator: the same seed sends the same requests.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Name of the figures in the `BENCH` output lines.
        #[arg(long, default_value = "http_append")]
        name: String,
    },
    /// Bulk import of an NDJSON file over `POST /v1/events` in big bodies.
    Import {
        #[command(flatten)]
        t: Target,
        /// The NDJSON file to send (as `gen` writes it).
        #[arg(long)]
        file: PathBuf,
        /// Body size in MiB (the server's bulk limit is 64 MiB).
        #[arg(long, default_value_t = 16)]
        body_mib: usize,
        /// Concurrent bodies. 1 keeps the file's order (lines use exact expected versions).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Name of the figures in the `BENCH` output lines.
        #[arg(long, default_value = "http_import")]
        name: String,
    },
    /// GET latency at C connections; `{region}` in a path cycles through the generator's regions.
    Get {
        #[command(flatten)]
        t: Target,
        /// Keep-alive connections, each with one request at a time.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration_secs: f64,
        /// Stop after this many requests in all.
        #[arg(long, default_value_t = 5_000_000)]
        max_requests: u64,
        /// Path(s) to request, e.g. `/v1/regions/{region}`.
        #[arg(long, required = true)]
        path: Vec<String>,
        /// Name of the figures in the `BENCH` output lines.
        #[arg(long, default_value = "http_get")]
        name: String,
    },
    /// Check that every acknowledged event id is in the server's log (pages GET /v1/events)
    /// and that positions are gap-free.
    CheckAcks {
        #[command(flatten)]
        t: Target,
        /// Files of acknowledged event ids, one per line (as `append --ack-file` writes them).
        #[arg(long, required = true, num_args = 1..)]
        acks: Vec<PathBuf>,
        /// Also fail when the log holds events that were never acknowledged (when every
        /// request got an answer, an error answer must have recorded nothing).
        #[arg(long)]
        exact: bool,
    },
    /// Count the events in the server's log (pages GET /v1/events); prints `EVENTS n`.
    Count {
        #[command(flatten)]
        t: Target,
    },
    /// Hostile requests, then slow clients; checks the server stays healthy, bounded in memory,
    /// and records nothing.
    Hostile {
        #[command(flatten)]
        t: Target,
        /// Hostile requests to send.
        #[arg(long, default_value_t = 1200)]
        count: usize,
        /// Slow clients held open at once.
        #[arg(long, default_value_t = 64)]
        slow_clients: usize,
        /// How long the slow clients trickle, in seconds.
        #[arg(long, default_value_t = 5.0)]
        slow_secs: f64,
        /// Server pid, for the resident memory check.
        #[arg(long)]
        pid: Option<u32>,
        /// Fail when the server's resident memory grows past this many MiB.
        #[arg(long, default_value_t = 512)]
        rss_limit_mib: u64,
        /// Seed of the generator: the same seed sends the same requests.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The disk's own limit: one ~300-byte write + fdatasync per op, single writer.
    Fsync {
        /// Directory to write the scratch file in (on the disk to measure).
        #[arg(long)]
        dir: PathBuf,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Stop after this many write + fdatasync operations.
        #[arg(long, default_value_t = 1_000_000)]
        max_ops: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Gen {
            events,
            out,
            copy_out,
            seed,
        } => gen(events, out, copy_out, seed),
        Cmd::PgbenchScript { out, ddl_out, seed } => pgbench_script(out, ddl_out, seed),
        Cmd::Fsync {
            dir,
            seconds,
            max_ops,
        } => fsync(dir, seconds, max_ops),
        cmd => {
            // Appends run on one thread: without wake-ups across threads the client takes ~12%
            // less CPU per request (proto-docs/benchmarks.md), CPU it shares with the server it
            // measures, as pgbench shares it with PostgreSQL (pgbench keeps `-j 2`, its faster
            // setting here). One thread issues well over 100k requests/s. The other commands
            // keep a worker per core, so that the client does not queue the answers whose
            // latency it measures.
            let mut runtime = match cmd {
                Cmd::Append { .. } => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            runtime.enable_all().build()?.block_on(async_main(cmd))
        }
    }
}

async fn async_main(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Append {
            t,
            connections,
            duration_secs,
            max_requests,
            casualties,
            ack_file,
            stop_on_disconnect,
            seed,
            name,
        } => {
            append(
                t,
                connections,
                duration_secs,
                max_requests,
                casualties,
                ack_file,
                stop_on_disconnect,
                seed,
                name,
            )
            .await
        }
        Cmd::Import {
            t,
            file,
            body_mib,
            connections,
            name,
        } => import(t, file, body_mib, connections, name).await,
        Cmd::Get {
            t,
            connections,
            duration_secs,
            max_requests,
            path,
            name,
        } => get(t, connections, duration_secs, max_requests, path, name).await,
        Cmd::CheckAcks { t, acks, exact } => check_acks(t, acks, exact).await,
        Cmd::Count { t } => {
            let addr = t.addr()?;
            let (ids, _) = log_event_ids(&t, addr).await?;
            println!("EVENTS {}", ids.len());
            Ok(())
        }
        Cmd::Hostile {
            t,
            count,
            slow_clients,
            slow_secs,
            pid,
            rss_limit_mib,
            seed,
        } => hostile::run(t, count, slow_clients, slow_secs, pid, rss_limit_mib, seed).await,
        Cmd::Gen { .. } | Cmd::PgbenchScript { .. } | Cmd::Fsync { .. } => Ok(()),
    }
}

fn bench(name: &str, value: f64, unit: &str) {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        println!("BENCH {name}={value:.0} {unit}");
    } else {
        println!("BENCH {name}={value:.3} {unit}");
    }
}

fn gen(events: u64, out: PathBuf, copy_out: Option<PathBuf>, seed: u64) -> Result<()> {
    let started = Instant::now();
    let mut w = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&out).with_context(|| format!("create {}", out.display()))?,
    );
    let mut copy = match &copy_out {
        Some(p) => Some(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => None,
    };
    let mut synth = Synth::new(seed);
    let (mut n, mut lines, mut bytes) = (0u64, 0u64, 0u64);
    let mut rows = String::new();
    while n < events {
        let line = synth.next_line();
        let text = line.to_ndjson();
        bytes += text.len() as u64 + 1;
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")?;
        if let Some(c) = copy.as_mut() {
            rows.clear();
            line.copy_rows(&mut rows);
            c.write_all(rows.as_bytes())?;
        }
        n += line.events.len() as u64;
        lines += 1;
    }
    w.flush()?;
    if let Some(mut c) = copy {
        c.flush()?;
    }
    eprintln!(
        "wrote {n} events in {lines} lines ({:.1} MB, {:.0} bytes/event) to {} in {:.1}s",
        bytes as f64 / 1e6,
        bytes as f64 / n.max(1) as f64,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    println!("EVENTS {n}");
    Ok(())
}

/// Distinct request bodies each connection of `append` cycles through.
const TEMPLATES_PER_CONNECTION: usize = 16;

/// The peer table: the same columns an event store row needs (position, stream, version,
/// id, type, payload, time, author), with the same uniqueness rules.
const PEER_DDL: &str = "CREATE TABLE IF NOT EXISTS events (
  global_position bigserial PRIMARY KEY,
  incident_id uuid NOT NULL,
  stream_version bigint NOT NULL,
  event_id uuid NOT NULL UNIQUE,
  event_type text NOT NULL,
  data jsonb NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  recorded_by text NOT NULL,
  UNIQUE (incident_id, stream_version)
);
";

fn pgbench_script(out: PathBuf, ddl_out: PathBuf, seed: u64) -> Result<()> {
    let mut synth = Synth::new(seed);
    let line = synth.new_incident(false);
    let data = line.events[0].data.to_string().replace('\'', "''");
    let script = format!(
        "INSERT INTO events (incident_id, stream_version, event_id, event_type, data, recorded_by) \
         VALUES (gen_random_uuid(), 1, gen_random_uuid(), 'IncidentReported', '{data}'::jsonb, 'bench');\n"
    );
    std::fs::write(&out, script)?;
    std::fs::write(&ddl_out, PEER_DDL)?;
    Ok(())
}

fn fsync(dir: PathBuf, seconds: f64, max_ops: u64) -> Result<()> {
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let record = [b'x'; 300];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut ops = 0u64;
    while ops < max_ops && Instant::now() < deadline {
        f.write_all(&record)?;
        f.sync_data()?;
        ops += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    bench(
        "disk_fdatasync_per_sec",
        (ops as f64 / secs).round(),
        "syncs/s",
    );
    Ok(())
}

#[derive(Default)]
struct WorkerResult {
    lat: Latencies,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    /// Events acknowledged (any 2xx).
    events: u64,
    /// Events recorded by this run (201).
    created: u64,
    acks: Vec<String>,
    first_error: Option<String>,
}

/// Waits for every worker and merges their results.
async fn join_workers(tasks: Vec<tokio::task::JoinHandle<WorkerResult>>) -> Result<WorkerResult> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await?);
    }
    Ok(merge_results(results))
}

fn merge_results(results: Vec<WorkerResult>) -> WorkerResult {
    let mut all = WorkerResult {
        lat: Latencies::with_cap(4_000_000),
        ..Default::default()
    };
    for r in results {
        all.lat.merge(r.lat);
        for (s, n) in r.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.errors += r.errors;
        all.events += r.events;
        all.created += r.created;
        all.acks.extend(r.acks);
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    all
}

fn print_statuses(name: &str, r: &WorkerResult) {
    let s: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("STATUS {name} {} errors={}", s.join(" "), r.errors);
    if let Some(e) = &r.first_error {
        eprintln!("{name}: first error: {e}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn append(
    t: Target,
    connections: usize,
    duration_secs: f64,
    max_requests: u64,
    casualties: bool,
    ack_file: Option<PathBuf>,
    stop_on_disconnect: bool,
    seed: u64,
    name: String,
) -> Result<()> {
    let addr = t.addr()?;
    let connections = connections.clamp(1, 4096);
    let deadline = Instant::now() + Duration::from_secs_f64(duration_secs);
    let issued = Arc::new(AtomicU64::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..connections {
        let mut conn = t.conn(addr);
        let issued = issued.clone();
        let gone = gone.clone();
        let keep_acks = ack_file.is_some();
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                lat: Latencies::with_cap(200_000),
                ..Default::default()
            };
            let mut synth = Synth::new(seed);
            // Distinct bodies per connection, ids renewed per request (see BodyTemplate).
            let mut templates: Vec<BodyTemplate> = (0..TEMPLATES_PER_CONNECTION)
                .map(|_| BodyTemplate::new(&synth.new_incident(casualties)))
                .collect();
            let mut rng = Rng::new(seed ^ 0x5EED);
            let mut path = String::with_capacity(64);
            let mut ok_once = false;
            let mut turn = 0usize;
            while Instant::now() < deadline
                && !gone.load(Ordering::Relaxed)
                && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let template = &mut templates[turn % TEMPLATES_PER_CONNECTION];
                turn += 1;
                let incident = template.renew(&mut rng);
                path.clear();
                path.push_str("/v1/incidents/");
                path.push_str(std::str::from_utf8(&incident).unwrap_or_default());
                path.push_str("/events");
                let t0 = Instant::now();
                match conn
                    .request("POST", &path, Some("application/json"), &template.body)
                    .await
                {
                    Ok(resp) => {
                        ok_once = true;
                        *r.statuses.entry(resp.status).or_default() += 1;
                        if (200..300).contains(&resp.status) {
                            r.lat.record(t0.elapsed());
                            r.events += template.events() as u64;
                            // 200 = an idempotent repeat (nothing written): acknowledged,
                            // but not throughput.
                            if resp.status == 201 {
                                r.created += template.events() as u64;
                            }
                            if keep_acks {
                                r.acks.extend(template.event_ids().map(str::to_owned));
                            }
                        } else if r.first_error.is_none() {
                            r.first_error = Some(format!(
                                "status {}: {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
                            ));
                        }
                    }
                    Err(e) => {
                        r.errors += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(format!("{e:#}"));
                        }
                        if stop_on_disconnect && ok_once {
                            gone.store(true, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            r
        }));
    }
    let all = join_workers(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = ack_file {
        let mut w = BufWriter::new(std::fs::File::create(&p)?);
        for id in &all.acks {
            writeln!(w, "{id}")?;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    let ok_requests: u64 = all
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    print_statuses(&name, &all);
    // Only events this run recorded (201) count: a run that repeats ids of an earlier run
    // (same --seed) measures idempotent answers, not appends.
    bench(
        &format!("{name}_events_per_sec"),
        (all.created as f64 / secs).round(),
        "events/s",
    );
    bench(
        &format!("{name}_requests_per_sec"),
        (ok_requests as f64 / secs).round(),
        "requests/s",
    );
    bench(&format!("{name}_p50_ms"), all.lat.percentile_ms(50.0), "ms");
    bench(&format!("{name}_p99_ms"), all.lat.percentile_ms(99.0), "ms");
    bench(&format!("{name}_acked_events"), all.events as f64, "events");
    Ok(())
}

async fn import(
    t: Target,
    file: PathBuf,
    body_mib: usize,
    connections: usize,
    name: String,
) -> Result<()> {
    let addr = t.addr()?;
    let body_limit = body_mib.clamp(1, 63) << 20;
    let connections = connections.clamp(1, 64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(connections + 1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    // Reader thread: cut the file into bodies at line boundaries.
    let reader = std::thread::spawn(move || -> Result<u64> {
        let f = std::fs::File::open(&file).with_context(|| format!("open {}", file.display()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut body = Vec::with_capacity(body_limit + (1 << 20));
        let mut line = Vec::new();
        let mut lines = 0u64;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if !body.is_empty() && body.len() + line.len() > body_limit {
                if tx.blocking_send(std::mem::take(&mut body)).is_err() {
                    bail!("import workers stopped");
                }
                body.reserve(body_limit + (1 << 20));
            }
            body.extend_from_slice(&line);
            if !line.ends_with(b"\n") {
                body.push(b'\n');
            }
            lines += 1;
        }
        if !body.is_empty() && tx.blocking_send(body).is_err() {
            bail!("import workers stopped");
        }
        Ok(lines)
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let rx = rx.clone();
        let mut conn = t.conn(addr);
        conn.timeout = conn.timeout.max(Duration::from_secs(600));
        tasks.push(tokio::spawn(async move {
            let (mut appended, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
            let mut first_rejections = Vec::new();
            loop {
                let body = { rx.lock().await.recv().await };
                let Some(body) = body else { break };
                let resp = conn
                    .request("POST", "/v1/events", Some("application/x-ndjson"), &body)
                    .await?;
                if resp.status != 200 {
                    bail!(
                        "bulk import answered {}: {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)])
                    );
                }
                let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
                appended += v["appended"].as_u64().unwrap_or(0);
                duplicates += v["duplicates"].as_u64().unwrap_or(0);
                if let Some(rej) = v["rejected"].as_array() {
                    rejected += rej.len() as u64;
                    for x in rej
                        .iter()
                        .take(3usize.saturating_sub(first_rejections.len()))
                    {
                        first_rejections.push(x.to_string());
                    }
                }
            }
            Ok::<_, anyhow::Error>((appended, duplicates, rejected, first_rejections))
        }));
    }
    let (mut appended, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let mut failure = None;
    for task in tasks {
        match task.await? {
            Ok((a, d, r, first)) => {
                appended += a;
                duplicates += d;
                rejected += r;
                for f in first {
                    eprintln!("{name}: rejected: {f}");
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(rx);
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let lines = lines?;
    eprintln!("{name}: {lines} lines, {appended} appended, {duplicates} duplicates, {rejected} rejected in {secs:.2}s");
    bench(
        &format!("{name}_events_per_sec"),
        ((appended + duplicates) as f64 / secs).round(),
        "events/s",
    );
    bench(&format!("{name}_appended"), appended as f64, "events");
    bench(&format!("{name}_rejected_lines"), rejected as f64, "lines");
    Ok(())
}

async fn get(
    t: Target,
    connections: usize,
    duration_secs: f64,
    max_requests: u64,
    paths: Vec<String>,
    name: String,
) -> Result<()> {
    let addr = t.addr()?;
    let regions = region_codes();
    let connections = connections.clamp(1, 4096);
    let deadline = Instant::now() + Duration::from_secs_f64(duration_secs);
    let issued = Arc::new(AtomicU64::new(0));
    let paths = Arc::new(paths);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..connections {
        let mut conn = t.conn(addr);
        let issued = issued.clone();
        let paths = paths.clone();
        let regions = regions.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                lat: Latencies::with_cap(200_000),
                ..Default::default()
            };
            let mut i = w;
            while Instant::now() < deadline {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests {
                    break;
                }
                let p = &paths[i % paths.len()];
                let path = p.replace("{region}", regions[i % regions.len()]);
                i += 1;
                let t0 = Instant::now();
                match conn.request("GET", &path, None, b"").await {
                    Ok(resp) => {
                        *r.statuses.entry(resp.status).or_default() += 1;
                        if resp.status == 200 {
                            r.lat.record(t0.elapsed());
                        } else if r.first_error.is_none() {
                            r.first_error = Some(format!(
                                "{path}: status {}: {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
                            ));
                        }
                    }
                    Err(e) => {
                        r.errors += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(format!("{path}: {e:#}"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            r
        }));
    }
    let all = join_workers(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    print_statuses(&name, &all);
    bench(
        &format!("{name}_requests_per_sec"),
        (all.lat.count() as f64 / secs).round(),
        "requests/s",
    );
    bench(&format!("{name}_p50_ms"), all.lat.percentile_ms(50.0), "ms");
    bench(&format!("{name}_p99_ms"), all.lat.percentile_ms(99.0), "ms");
    bench(&format!("{name}_max_ms"), all.lat.max_ms(), "ms");
    if all.lat.count() == 0 {
        bail!("{name}: no successful request");
    }
    Ok(())
}

/// Every event id in the server's log, in order, and the last position; checks that
/// positions are 1..N without gaps or repeats.
pub(crate) async fn log_event_ids(t: &Target, addr: SocketAddr) -> Result<(Vec<String>, u64)> {
    let mut conn = t.conn(addr);
    let mut after = 0u64;
    let mut ids = Vec::new();
    // Bounded: 100M events at 1000 per page.
    for _ in 0..100_000 {
        let resp = conn
            .request(
                "GET",
                &format!("/v1/events?after={after}&limit=1000"),
                None,
                b"",
            )
            .await?;
        if resp.status != 200 {
            bail!(
                "GET /v1/events answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
        let events = v["events"].as_array().context("no events array")?;
        if events.is_empty() {
            return Ok((ids, after));
        }
        for e in events {
            let pos = e["global_position"]
                .as_u64()
                .context("event without global_position")?;
            if pos != after + 1 {
                bail!("log positions not gap-free: {pos} after {after}");
            }
            after = pos;
            ids.push(
                e["event_id"]
                    .as_str()
                    .context("event without event_id")?
                    .to_string(),
            );
        }
    }
    bail!("log too long to page through")
}

async fn check_acks(t: Target, acks: Vec<PathBuf>, exact: bool) -> Result<()> {
    let addr = t.addr()?;
    let (ids, head) = log_event_ids(&t, addr).await?;
    let present: HashSet<&str> = ids.iter().map(String::as_str).collect();
    if present.len() != ids.len() {
        bail!(
            "the log holds {} events but only {} distinct ids",
            ids.len(),
            present.len()
        );
    }
    let mut acked = 0u64;
    let mut missing = Vec::new();
    let mut acked_ids: HashSet<String> = HashSet::new();
    for p in &acks {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        for id in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            acked += 1;
            if !present.contains(id) {
                missing.push(id.to_string());
            }
            acked_ids.insert(id.to_string());
        }
    }
    let extra: Vec<&String> = ids
        .iter()
        .filter(|id| !acked_ids.contains(id.as_str()))
        .collect();
    println!(
        "ACKS acknowledged={acked} log_events={} head={head} missing={} unacknowledged_in_log={}",
        ids.len(),
        missing.len(),
        extra.len()
    );
    if exact && !extra.is_empty() {
        for e in extra.iter().take(10) {
            eprintln!("in the log but never acknowledged (its request got an error answer): {e}");
        }
        bail!(
            "{} events are in the log although their requests were answered with an error",
            extra.len()
        );
    }
    if !missing.is_empty() {
        for m in missing.iter().take(20) {
            eprintln!("missing acknowledged event {m}");
        }
        bail!("{} acknowledged events are missing", missing.len());
    }
    Ok(())
}
