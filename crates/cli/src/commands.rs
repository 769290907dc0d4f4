//! The offline commands: replay, verify, import, export, restore, token.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::builder::BoolishValueParser;
use clap::{Args, Subcommand, ValueEnum};
use incidentlog_api::auth::{hash_secret, try_new_secret, Role};
use incidentlog_api::export::{TableFormat, TableWriter};
use incidentlog_api::service::AppService;
use incidentlog_projections::{ClaimStatus, IncidentQuery, Kind, Region, Window};
use incidentlog_store::file::tokens as token_file;
use incidentlog_store::{to_hex, EventStore, RecordedEvent, StoreError, TokenRecord};

use crate::{exit, open_store, open_store_read_only, StoreArgs, WriteArgs};

/// Page size of sequential log reads.
const PAGE: usize = 4096;

/// Logs at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_EVENTS: u64 = 50_000;

/// Marker error: the log is damaged (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("the log is damaged")]
pub struct Damaged;

fn progress_bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {what} ({{eta}} left)"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {{human_pos}} {what} ({{elapsed}})"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A progress bar over `len` bytes, its message (`{n} WHAT`) set by the caller.
fn progress_bar_bytes(len: u64, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template(
            "{spinner} [{wide_bar}] {bytes}/{total_bytes}, {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("0 {what}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

// ---------------------------------------------------------------------------------------------
// replay

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub point: PointInLog,

    /// Print the report as one JSON object instead of text.
    #[arg(long, env = "INCIDENTLOG_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// `--as-of T | --at-position N`: a point in the log's past (`replay`, `export`).
#[derive(Args, Debug)]
pub struct PointInLog {
    /// What was known at this time (RFC 3339, e.g. 2026-01-02T12:00:00Z): only the events
    /// recorded at or before it.
    #[arg(
        long,
        env = "INCIDENTLOG_AS_OF",
        value_name = "T",
        conflicts_with = "at_position",
        value_parser = parse_time
    )]
    pub as_of: Option<DateTime<Utc>>,

    /// What was known after this global position: only the events up to it.
    #[arg(long, env = "INCIDENTLOG_AT_POSITION", value_name = "N")]
    pub at_position: Option<u64>,
}

impl PointInLog {
    /// The position asked for (`None`: none, the head), `--as-of` mapped onto the log. A
    /// position past the log's end is kept (the HTTP API clamps the same way), but a typo
    /// deserves a word on stderr: `done` is what the command did up to the end.
    async fn resolve(
        &self,
        store: &incidentlog_store::Store,
        done: &str,
    ) -> anyhow::Result<Option<u64>> {
        let head = store.head().position;
        if let Some(asked) = self.at_position.filter(|p| *p > head) {
            crate::say(format_args!(
                "note: the log ends at position {head}; {done} up to it, not to {asked}"
            ));
        }
        match self.as_of {
            Some(t) => Ok(Some(
                store
                    .position_at(t)
                    .await
                    .context("cannot map --as-of to a log position")?,
            )),
            None => Ok(self.at_position),
        }
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}); example: 2026-01-02T12:00:00Z"))
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<u8> {
    let opening = Instant::now();
    let store = open_store_read_only(&args.store).await?;
    let open_ms = opening.elapsed().as_millis() as u64;
    let head = store.head().position;
    let at_position = args.point.resolve(&store, "replayed").await?;
    let target = at_position.map_or(head, |p| p.min(head));
    let bar = if target >= PROGRESS_MIN_EVENTS {
        progress_bar(Some(target), "events")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress_bar = bar.clone();
    let progress = move |n: u64| progress_bar.set_position(n);
    let started = Instant::now();
    let (report, views) = incidentlog_api::service::replay(&store, at_position, &progress)
        .await
        .context("replay failed")?;
    let elapsed = started.elapsed();
    exiting_with(views);
    bar.finish_and_clear();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (report.events as f64 / secs).round() as u64
    } else {
        0
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "events": report.events,
            "at_position": target,
            "duration_ms": elapsed.as_millis() as u64,
            "open_ms": open_ms,
            "fold_ms": report.fold_ms,
            "digest_ms": report.digest_ms,
            "events_per_sec": rate,
            "digest": report.digest,
            "incidents": report.incidents,
            "retracted": report.retracted,
            "regions": report.regions,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "events:      {}", report.events)?;
        writeln!(out, "at_position: {target}")?;
        writeln!(
            out,
            "duration:    {} ms (fold {} ms, digest {} ms; opening the log took {} ms before)",
            elapsed.as_millis(),
            report.fold_ms,
            report.digest_ms,
            open_ms
        )?;
        writeln!(out, "rate:        {rate} events/s")?;
        writeln!(out, "digest:      {}", report.digest)?;
        writeln!(
            out,
            "incidents:   {} ({} retracted)",
            report.incidents, report.retracted
        )?;
        writeln!(out, "regions:     {} with incidents", report.regions)?;
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// verify

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// A chain hash published earlier, as POSITION:HASH (the `head_hash` and `events` an
    /// earlier `verify` printed, or the `hash` of any event the API showed). Verify then also
    /// fails (exit 3) unless the log still holds that position with that hash: the chain
    /// alone shows a change only to a reader who cannot recompute it, while a published hash
    /// pins the whole history up to its position, the last records included. Repeatable (in
    /// the environment variable: comma-separated).
    #[arg(
        long,
        env = "INCIDENTLOG_EXPECT_HASH",
        value_delimiter = ',',
        value_name = "POSITION:HASH",
        value_parser = parse_checkpoint
    )]
    pub expect_hash: Vec<Checkpoint>,
}

/// A chain hash the log must still hold at a position (`verify --expect-hash`).
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    position: u64,
    hash: [u8; 32],
}

fn parse_checkpoint(s: &str) -> Result<Checkpoint, String> {
    let (position, hash) = s
        .split_once(':')
        .ok_or("expected POSITION:HASH, e.g. 42:9f86d0...")?;
    let position = position
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or("POSITION must be a global position (an integer >= 1)")?;
    let hash = incidentlog_store::from_hex_32(hash.trim())
        .ok_or("HASH must be 64 hex digits (a chain hash)")?;
    Ok(Checkpoint { position, hash })
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let store = open_store_read_only(&args.store).await?;
    let report = match store.verify().await {
        Ok(report) => report,
        Err(e @ StoreError::Corrupt { .. }) => {
            return Err(anyhow::Error::new(e).context("verify failed"))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("verify could not complete")),
    };
    // The chain is whole, so the hash read for a position is the chain hash there.
    for c in &args.expect_hash {
        let found = store
            .read_all(c.position - 1, 1)
            .await
            .context("verify could not complete")?;
        match found.first() {
            Some(e) if e.global_position == c.position && e.hash == c.hash => {}
            Some(e) if e.global_position == c.position => {
                return Err(anyhow::Error::new(Damaged).context(format!(
                    "verify failed: the chain hash at position {} is {}, not the expected {}: the history up to that position has changed",
                    c.position,
                    to_hex(&e.hash),
                    to_hex(&c.hash)
                )));
            }
            _ => {
                return Err(anyhow::Error::new(Damaged).context(format!(
                    "verify failed: the log ends at position {}, before the expected hash at position {}: history was cut off",
                    report.events, c.position
                )));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ok")?;
    writeln!(out, "events:    {}", report.events)?;
    writeln!(out, "head_hash: {}", to_hex(&report.head_hash))?;
    for c in &args.expect_hash {
        writeln!(
            out,
            "expected:  {} at position {}",
            to_hex(&c.hash),
            c.position
        )?;
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// import

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// NDJSON file: one `{"incident_id", "expected_version"?, "events": [...]}` per line, as for
    /// POST /v1/events. `-` reads standard input.
    #[arg(value_name = "FILE.ndjson")]
    pub file: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub write: WriteArgs,

    /// Name stored as `recorded_by` on every imported event.
    /// Same rules as a token name.
    #[arg(
        long,
        env = "INCIDENTLOG_RECORDED_BY",
        default_value = "cli-import",
        value_name = "NAME",
        value_parser = crate::parse_name
    )]
    pub recorded_by: String,
}

/// Bytes read from a file or stdin on a thread of its own, up to [`READ_AHEAD_CHUNKS`] chunks
/// ahead of the import. tokio's file and stdin hand every read to a blocking thread and wait
/// for it; with both cores busy parsing and staging, that wait came to ~1/6 of an offline
/// import's time (proto-docs/benchmarks.md, nineteenth session).
struct ReadAhead {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    /// Chunks read through go back to the reading thread to be filled again: a fresh megabyte
    /// per read costs its zeroing and page faults.
    used: std::sync::mpsc::Sender<Vec<u8>>,
    /// Bytes the import has taken so far (for a progress bar over a file's size).
    consumed: Arc<std::sync::atomic::AtomicU64>,
}

const READ_CHUNK: usize = 1 << 20;
const READ_AHEAD_CHUNKS: usize = 4;

impl ReadAhead {
    fn start(mut source: impl std::io::Read + Send + 'static) -> anyhow::Result<ReadAhead> {
        let (tx, chunks) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let (used, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("incidentlog-read".into())
            .spawn(move || loop {
                let mut buf = spare.try_recv().unwrap_or_default();
                // A used chunk was full, mostly: little or nothing to zero again.
                buf.resize(READ_CHUNK, 0);
                let read = match source.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                // The import stopped reading (it failed): nothing more to do.
                if tx.blocking_send(read).is_err() || failed {
                    return;
                }
            })
            .context("cannot start the thread that reads the input")?;
        Ok(ReadAhead {
            chunks,
            chunk: Vec::new(),
            at: 0,
            used,
            consumed: Arc::default(),
        })
    }

    /// The count of bytes taken, as it grows.
    fn consumed(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.consumed.clone()
    }
}

impl tokio::io::AsyncBufRead for ReadAhead {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<&[u8]>> {
        use std::task::Poll;
        let this = self.get_mut();
        // The reading thread ends (and the channel closes) at the end of the input and after
        // an error, so a closed channel is the end for every later call too.
        while this.at == this.chunk.len() {
            match this.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let used = std::mem::replace(&mut this.chunk, chunk);
                    // The thread may have ended (end of input): then the chunk is dropped.
                    let _ = this.used.send(used);
                    this.at = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => break,
            }
        }
        Poll::Ready(Ok(&this.chunk[this.at..]))
    }

    fn consume(self: std::pin::Pin<&mut Self>, n: usize) {
        let this = self.get_mut();
        let n = n.min(this.chunk.len() - this.at);
        this.at += n;
        this.consumed
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for ReadAhead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use tokio::io::AsyncBufRead;
        let available = match self.as_mut().poll_fill_buf(cx) {
            std::task::Poll::Ready(Ok(bytes)) => {
                let n = bytes.len().min(out.remaining());
                out.put_slice(&bytes[..n]);
                n
            }
            std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        self.consume(available);
        std::task::Poll::Ready(Ok(()))
    }
}

pub async fn import(args: ImportArgs) -> anyhow::Result<u8> {
    let from_stdin = args.file.as_os_str() == "-";
    // Open the input first: a typo in the file name should not touch the store.
    let (reader, size) = if from_stdin {
        (ReadAhead::start(std::io::stdin())?, None)
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if meta.is_dir() {
            bail!("{} is a directory, not an NDJSON file", args.file.display());
        }
        (ReadAhead::start(file)?, Some(meta.len()))
    };
    let store = Arc::new(open_store(&args.store, &args.write).await?);
    // No views: the import keeps the decision state of every incident it touches, and reads
    // (once) the stream of an incident recorded before it.
    let service = AppService::start_offline(store.clone())
        .await
        .context("cannot start the service")?;
    // A file of known size: a bar over its bytes, with the lines so far. Standard input (or
    // a pipe): a spinner with the count of lines.
    let consumed = reader.consumed();
    let (bar, by_bytes) = match size {
        Some(s) if s >= 4 << 20 => (progress_bar_bytes(s, "lines"), true),
        Some(_) => (indicatif::ProgressBar::hidden(), false),
        None => (progress_bar(None, "lines"), false),
    };
    let progress_bar = bar.clone();
    let progress = move |n: u64| {
        if by_bytes {
            progress_bar.set_position(consumed.load(std::sync::atomic::Ordering::Relaxed));
            progress_bar.set_message(format!("{n} lines"));
        } else {
            progress_bar.set_position(n);
        }
    };
    // Ctrl-C (or SIGTERM) stops the import between two lines, once the chunk being written is
    // durable, and says where: running it again imports the rest.
    let interrupted = stop_imports_on_signal(&service)?;
    let result = service
        .import_ndjson(reader, &args.recorded_by, &progress)
        .await;
    interrupted.abort();
    bar.finish_and_clear();
    // Close (sync) even when the import failed half-way: what was acknowledged stays.
    let closed = service
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("cannot close the store cleanly");
    let report = match result {
        Err(incidentlog_api::ApiError::ShuttingDown { during }) => {
            closed?;
            bail!(
                "interrupted: the import stopped{during}; run it again to import the rest (the \
                 lines already recorded are recognized as repeats)"
            );
        }
        result => result.context("import failed")?,
    };
    closed?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out)?;
    drop(out);
    if report.rejected.iter().any(looks_like_an_exported_event) {
        crate::say(format_args!(
            "note: the rejected lines look like an `incidentlog export` (recorded events, with \
             global_position and hash): `incidentlog restore FILE` rebuilds a log from one; \
             `import` takes the lines of POST /v1/events ({{\"incident_id\", \"events\": [...]}})"
        ));
    }
    Ok(if report.rejected.is_empty() {
        exit::OK
    } else {
        exit::REJECTED
    })
}

/// A line refused for carrying the fields only a recorded event has.
fn looks_like_an_exported_event(line: &incidentlog_api::service::RejectedLine) -> bool {
    let unknown = |pointer: &str| {
        line.errors
            .iter()
            .any(|e| e.pointer == pointer && e.message == "unknown field")
    };
    unknown("/global_position") && unknown("/hash")
}

/// A task that asks `service`'s imports to stop on the first SIGINT, SIGTERM or SIGHUP (installed
/// now, so that a signal is never met by its default action during the import), and quits
/// at once on a second one: an import waiting for input (`import -` from a producer that
/// stalled) only sees the first at its next line.
fn stop_imports_on_signal(service: &AppService) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut signals =
        crate::StopSignals::install().context("cannot listen for SIGINT/SIGTERM/SIGHUP")?;
    let service = service.clone();
    Ok(tokio::spawn(async move {
        signals.next().await;
        service.stop_imports();
        crate::say(format_args!(
            "interrupted: the import stops at its next line, once what it is writing is \
             durable (interrupt again to quit at once)"
        ));
        signals.next().await;
        // What was synced stays; a write cut short is a torn tail the next open cuts off.
        crate::say(format_args!(
            "interrupted again: quitting at once; run the import again to record the rest"
        ));
        std::process::exit(i32::from(crate::exit::INTERRUPTED));
    }))
}

// ---------------------------------------------------------------------------------------------
// restore

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The log as `export --format ndjson` wrote it (or as `GET /v1/events` streams it with
    /// `Accept: application/x-ndjson`), from position 1 on. A regular file: it is read twice.
    #[arg(value_name = "FILE.ndjson")]
    pub file: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub write: WriteArgs,

    /// A chain hash the file must hold, as POSITION:HASH (e.g. the `Incidentlog-Last-Event`
    /// header of the ndjson stream, or a hash published earlier): a file cut short at an append
    /// boundary is otherwise a shorter log that looks whole. Repeatable (in the environment
    /// variable: comma-separated).
    #[arg(
        long,
        env = "INCIDENTLOG_EXPECT_HASH",
        value_delimiter = ',',
        value_name = "POSITION:HASH",
        value_parser = parse_checkpoint
    )]
    pub expect_hash: Vec<Checkpoint>,

    /// Restore a log recorded (in part) later than this machine's clock, as a server whose
    /// clock ran ahead writes it. Refused without this flag, since every new append would be
    /// stamped with the log's latest time until this clock passes it (a clock set wrong here
    /// is the likelier cause).
    #[arg(long, env = "INCIDENTLOG_ALLOW_CLOCK_AHEAD", value_parser = BoolishValueParser::new())]
    pub allow_clock_ahead: bool,
}

/// Events per `EventStore::restore` call (one sync each).
const RESTORE_CHUNK_EVENTS: usize = 4096;
const RESTORE_CHUNK_BYTES: usize = 8 << 20;
/// Longest line an export can hold: one event of at most 32 MiB plus its fields.
const MAX_EXPORT_LINE: u64 = 40 << 20;

/// Lines `from..=to` of the file: where an append (or a problem) is.
#[derive(Clone, Copy)]
struct Lines(u64, u64);

impl std::fmt::Display for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == self.1 {
            write!(f, "line {}", self.0)
        } else {
            write!(f, "lines {}-{}", self.0, self.1)
        }
    }
}

/// One pass over the export from its start: each event parsed and regrouped into its append
/// (every hash checked, see `incidentlog_store::Regrouper`), each published hash compared;
/// `f` gets each append with the lines it spans. Returns the head the file reaches.
fn each_exported_append(
    file: &mut std::fs::File,
    expect: &[Checkpoint],
    mut f: impl FnMut(incidentlog_store::RecordedAppend, Lines) -> anyhow::Result<()>,
) -> anyhow::Result<incidentlog_store::Head> {
    use std::io::{BufRead, Read, Seek};
    file.rewind()
        .context("cannot read the file from its start")?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &*file);
    let mut regrouper = incidentlog_store::Regrouper::new();
    let mut line = Vec::new();
    let mut n = 0u64;
    // The line of the first event of the append being collected.
    let mut append_from: Option<u64> = None;
    let mut seen_expected = vec![false; expect.len()];
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_EXPORT_LINE + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read line {}", n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.len() as u64 > MAX_EXPORT_LINE {
            bail!("line {n} is longer than {MAX_EXPORT_LINE} bytes: not an exported event");
        }
        let mut bytes: &[u8] = &line;
        // A byte order mark an editor may have put before the first line.
        if n == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("line {n} is not UTF-8: not an exported event"))?
            .trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let event = incidentlog_api::wire::parse_wire_event(text)
            .map_err(|e| anyhow::anyhow!("line {n}: not an exported event: {e}"))?;
        for (c, seen) in expect.iter().zip(seen_expected.iter_mut()) {
            if c.position == event.global_position {
                if c.hash != event.hash {
                    return Err(anyhow::Error::new(Damaged).context(format!(
                        "line {n}: the event at position {} has hash {}, not the expected {}",
                        c.position,
                        to_hex(&event.hash),
                        to_hex(&c.hash)
                    )));
                }
                *seen = true;
            }
        }
        let from = append_from.unwrap_or(n);
        match regrouper.push(event) {
            Ok(Some(append)) => {
                append_from = None;
                f(append, Lines(from, n))?;
            }
            Ok(None) => append_from = Some(from),
            Err(StoreError::InvalidInput(why)) => bail!("{}: {why}", Lines(from, n)),
            Err(other) => return Err(anyhow::Error::new(other).context(format!("line {n}"))),
        }
    }
    let head = regrouper.finish().map_err(|e| match (e, append_from) {
        (StoreError::InvalidInput(why), Some(from)) => {
            anyhow::anyhow!("{}: at the end of the file: {why}", Lines(from, n))
        }
        (other, _) => anyhow::Error::new(other).context("at the end of the file"),
    })?;
    if head.position == 0 {
        bail!("the file holds no events: not an export of a log");
    }
    for (c, seen) in expect.iter().zip(&seen_expected) {
        if !seen {
            return Err(anyhow::Error::new(Damaged).context(format!(
                "the file ends at position {}, before the expected hash at position {}: it was cut off",
                head.position, c.position
            )));
        }
    }
    Ok(head)
}

/// The writes of `restore`'s second pass: appends gathered into chunks of about
/// `RESTORE_CHUNK_EVENTS`, two chunks in flight (the next one is encoded while the last one
/// syncs; the store checks each against the ones before it, so a failed chunk fails the next
/// one too).
struct ChunkWriter {
    store: Arc<incidentlog_store::Store>,
    rt: tokio::runtime::Handle,
    bar: indicatif::ProgressBar,
    chunk: Vec<incidentlog_store::RecordedAppend>,
    chunk_events: usize,
    chunk_bytes: usize,
    in_flight: std::collections::VecDeque<(
        u64,
        tokio::task::JoinHandle<Result<incidentlog_store::Head, StoreError>>,
    )>,
    /// Events written so far.
    restored: u64,
}

impl ChunkWriter {
    fn new(store: Arc<incidentlog_store::Store>, bar: indicatif::ProgressBar) -> ChunkWriter {
        ChunkWriter {
            store,
            rt: tokio::runtime::Handle::current(),
            bar,
            chunk: Vec::new(),
            chunk_events: 0,
            chunk_bytes: 0,
            in_flight: Default::default(),
            restored: 0,
        }
    }

    fn push(&mut self, append: incidentlog_store::RecordedAppend) -> anyhow::Result<()> {
        self.chunk_events += append.request.events.len();
        self.chunk_bytes += append
            .request
            .events
            .iter()
            .map(|e| e.data.get().len() + e.event_type.len() + incidentlog_store::RECORD_OVERHEAD)
            .sum::<usize>();
        self.chunk.push(append);
        if self.chunk_events >= RESTORE_CHUNK_EVENTS || self.chunk_bytes >= RESTORE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> anyhow::Result<()> {
        let chunk = std::mem::take(&mut self.chunk);
        (self.chunk_events, self.chunk_bytes) = (0, 0);
        let Some(first) = chunk.first().map(|a| a.first_position) else {
            return Ok(());
        };
        let store = self.store.clone();
        let task = self.rt.spawn(async move { store.restore(chunk).await });
        self.in_flight.push_back((first, task));
        if self.in_flight.len() > 1 {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> anyhow::Result<()> {
        let Some((first, task)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let rt = &self.rt;
        let head = match tokio::task::block_in_place(|| rt.block_on(task))
            .map_err(|e| anyhow::anyhow!("the restore task failed: {e}"))?
        {
            Ok(head) => head,
            // A lost connection or a timeout during the commit: the chunk may be written.
            Err(e @ StoreError::Unavailable(_)) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot restore the appends from position {first} on (some may have been written: run restore again, it goes on from what the store holds)"
                )))
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot restore the appends from position {first} on")))
            }
        };
        self.bar.set_position(head.position);
        self.restored += head.position + 1 - first;
        Ok(())
    }

    /// Sends what is gathered (unless the pass already failed) and waits for every chunk in
    /// flight; the first error wins.
    fn finish(&mut self, passed: anyhow::Result<()>) -> anyhow::Result<()> {
        let mut finished = passed.and_then(|()| self.send());
        while !self.in_flight.is_empty() {
            if let Err(e) = self.wait_oldest() {
                finished = finished.and(Err(e));
            }
        }
        finished
    }
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<u8> {
    if args.file.as_os_str() == "-" {
        bail!("restore reads its file twice (a check, then the writes): give a file, not -");
    }
    // A regular file only (a FIFO or a device cannot be read twice), opened once: both passes
    // read the same file.
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file: restore reads its file twice (a check, then the writes)",
            args.file.display()
        );
    }
    let mut file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        bail!("{} is not a regular file", args.file.display());
    }
    let started = Instant::now();

    // First the whole file is checked: nothing is written from a file that is not one whole
    // log this service could have written.
    let bar = if meta.len() >= 4 << 20 {
        progress_bar(None, "events checked")
    } else {
        indicatif::ProgressBar::hidden()
    };
    // The decisions run on a thread of their own while this one reads and regroups.
    let (to_check, appends) =
        std::sync::mpsc::sync_channel::<(incidentlog_store::RecordedAppend, Lines)>(1024);
    // On PostgreSQL the store is opened first, as the log's sole writer: that refuses while
    // a server writes the log, and keeps servers from starting until the restore ends,
    // checks included. (The file store's lock does as much; it is opened after the check, so
    // that a file refused creates no data directory.)
    let early = match &args.store.store {
        incidentlog_store::Backend::Postgres(_) => Some(Arc::new(
            crate::open_store_as_sole_writer(&args.store, &args.write).await?,
        )),
        incidentlog_store::Backend::File => None,
    };
    let allow_clock_ahead = args.allow_clock_ahead;
    // The clock that will stamp the appends after the restored ones: on PostgreSQL the
    // database's (the store opened above read it), whatever this machine's says.
    let now = early.as_ref().map_or_else(Utc::now, |store| store.now());
    let checker = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut check = incidentlog_api::service::RestoreCheck::new(now);
        if allow_clock_ahead {
            check = check.allowing_clock_ahead();
        }
        for (a, lines) in appends {
            check
                .check(&a)
                .map_err(|why| anyhow::anyhow!("{lines}: {why}"))?;
        }
        // The kept states are many small allocations, freed with the process.
        std::mem::forget(check);
        Ok(())
    });
    // The end of every append, for the second pass to write only what this one checked.
    let mut checked: Vec<(u64, [u8; 32])> = Vec::new();
    let read = each_exported_append(&mut file, &args.expect_hash, |a, lines| {
        checked.push((a.last_position(), a.last_hash));
        bar.set_position(a.last_position());
        // A closed channel means the checker stopped at a problem: its error is reported.
        to_check
            .send((a, lines))
            .map_err(|_| anyhow::anyhow!("the check stopped"))
    });
    drop(to_check);
    let checked_ok = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the check of the file panicked"))?;
    bar.finish_and_clear();
    checked_ok?;
    let file_head = read?;

    let store = match early {
        Some(store) => store,
        None => Arc::new(crate::open_store_as_sole_writer(&args.store, &args.write).await?),
    };
    let store_head = store.head();
    // A store that already holds a beginning of this log (an interrupted restore) goes on
    // from there; any other content is refused.
    if store_head.position > file_head.position {
        bail!(
            "the store already holds {} events, more than the file's {}: restore only into an empty store or one holding a beginning of the same log",
            store_head.position,
            file_head.position
        );
    }
    let bar = if file_head.position >= PROGRESS_MIN_EVENTS {
        progress_bar(Some(file_head.position), "events")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut prefix_checked = store_head.position == 0;
    let mut next_checked = checked.iter();
    let mut writer = ChunkWriter::new(store.clone(), bar.clone());
    // An error of this pass's own checks (not of the closure): the file changed since pass 1.
    let mut closure_failed = false;
    let passed = each_exported_append(&mut file, &[], |append, lines| {
        let taken = (|| -> anyhow::Result<()> {
            let last = append.last_position();
            if next_checked.next() != Some(&(last, append.last_hash)) {
                bail!(
                    "{lines}: the file changed since it was checked (at the append ending at position {last}); nothing from there on was written"
                );
            }
            if last <= store_head.position {
                if last == store_head.position {
                    if append.last_hash != store_head.hash {
                        bail!(
                            "{lines}: the store holds a different log (its hash at position {last} is {}, the file's is {})",
                            store_head.hash_hex(),
                            to_hex(&append.last_hash)
                        );
                    }
                    prefix_checked = true;
                }
                return Ok(());
            }
            if !prefix_checked {
                bail!(
                    "the store's last event (position {}) is inside an append of the file: the store holds a different log",
                    store_head.position
                );
            }
            writer.push(append)
        })();
        closure_failed |= taken.is_err();
        taken
    });
    let passed = passed.map(|_| ()).map_err(|e| {
        if closure_failed {
            e
        } else {
            e.context("the file changed since it was checked; nothing from there on was written")
        }
    });
    // Whatever happened, what is in flight ends first (its error is the first one).
    let finished = writer.finish(passed);
    let restored = writer.restored;
    bar.finish_and_clear();
    // Closed (synced) whatever happened: what was written stays, for a later run to go on.
    let closed = store.close().await;
    finished?;
    closed.context("cannot close the store cleanly")?;
    let head = store.head();
    if head != file_head {
        bail!(
            "the store ends at position {} with hash {}, not the file's {} with {}",
            head.position,
            head.hash_hex(),
            file_head.position,
            to_hex(&file_head.hash)
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ok")?;
    writeln!(
        out,
        "restored:  {restored} events ({} were already in the store)",
        file_head.position - restored
    )?;
    writeln!(out, "events:    {}", head.position)?;
    writeln!(out, "head_hash: {}", head.hash_hex())?;
    writeln!(out, "duration:  {} ms", started.elapsed().as_millis())?;
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// export

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The log: one recorded event per line, as GET /v1/events returns them.
    Ndjson,
    /// Incident views, ACLED's 31 columns in ACLED's order, then ours.
    Csv,
    /// Incident views with a location, as a FeatureCollection of Points.
    Geojson,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Output format.
    #[arg(long, env = "INCIDENTLOG_FORMAT", value_enum, default_value = "ndjson")]
    pub format: ExportFormat,

    /// Write to this file instead of standard output.
    #[arg(long, short, env = "INCIDENTLOG_OUTPUT", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// csv/geojson: include retracted incidents too (their `status` says so).
    #[arg(long, env = "INCIDENTLOG_INCLUDE_RETRACTED", value_parser = BoolishValueParser::new())]
    pub include_retracted: bool,

    // The log up to that point, or the views built from it.
    #[command(flatten)]
    pub point: PointInLog,

    /// csv/geojson: only incidents in this region (ISO 3166-2 code, e.g. UA-63).
    #[arg(long, env = "INCIDENTLOG_REGION", value_name = "CODE", value_parser = clap::value_parser!(Region))]
    pub region: Option<Region>,

    /// csv/geojson: only incidents of this kind (missile_strike, drone_strike, air_strike,
    /// shelling, armed_clash, explosion, attack_on_civilians, interception, other).
    #[arg(long, env = "INCIDENTLOG_KIND", value_name = "KIND", value_parser = clap::value_parser!(Kind))]
    pub kind: Option<Kind>,

    /// csv/geojson: only incidents with a claim in this status (unverified, disputed,
    /// confirmed, refuted).
    #[arg(long, env = "INCIDENTLOG_CLAIM_STATUS", value_name = "STATUS", value_parser = clap::value_parser!(ClaimStatus))]
    pub claim_status: Option<ClaimStatus>,

    /// csv/geojson: only incidents that occurred at or after this date or time (YYYY-MM-DD or
    /// RFC 3339; a date counts from its start), as `from` of GET /v1/incidents.
    #[arg(long, env = "INCIDENTLOG_FROM", value_name = "DATE", value_parser = window_bound(true))]
    pub from: Option<String>,

    /// csv/geojson: only incidents that occurred at or before this date or time (a date counts
    /// to its end), as `to` of GET /v1/incidents.
    #[arg(long, env = "INCIDENTLOG_TO", value_name = "DATE", value_parser = window_bound(false))]
    pub to: Option<String>,
}

/// A `--from` or `--to` value, checked as the window's bound (kept as text for `Window::parse`).
fn window_bound(from: bool) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| {
        let parsed = if from {
            Window::parse(Some(s), None)
        } else {
            Window::parse(None, Some(s))
        };
        parsed.map(|_| s.to_string()).map_err(|e| e.message)
    }
}

impl ExportArgs {
    /// The views' filters, `None` when none is given (every incident).
    fn query(&self) -> Result<Option<IncidentQuery>, String> {
        let window = Window::parse(self.from.as_deref(), self.to.as_deref())
            .map_err(|e| format!("--from/--to: {}", e.message))?;
        if self.region.is_none()
            && self.kind.is_none()
            && self.claim_status.is_none()
            && window.is_all()
        {
            return Ok(None);
        }
        Ok(Some(IncidentQuery {
            region: self.region,
            kind: self.kind,
            claim_status: self.claim_status,
            window,
            ..IncidentQuery::default()
        }))
    }
}

pub async fn export(args: ExportArgs) -> anyhow::Result<u8> {
    let query = match args.query() {
        Ok(q) if (q.is_some() || args.include_retracted) && args.format == ExportFormat::Ndjson => {
            let behind = crate::flags_from_environment(&[
                "region",
                "kind",
                "claim-status",
                "from",
                "to",
                "include-retracted",
            ]);
            let note = if behind.is_empty() {
                String::new()
            } else {
                format!(" ({})", crate::set_by(&behind))
            };
            crate::say(format_args!(
                "error: --region, --kind, --claim-status, --from, --to and --include-retracted select incident views: use them with --format csv or geojson (the ndjson log is whole, or cut with --as-of/--at-position){note}"
            ));
            return Ok(exit::USAGE);
        }
        Ok(q) => q,
        Err(why) => {
            crate::say(format_args!("error: {why}"));
            return Ok(exit::USAGE);
        }
    };
    let store = open_store_read_only(&args.store).await?;
    let log_head = store.head().position;
    let head = args
        .point
        .resolve(&store, "exported")
        .await?
        .map_or(log_head, |p| p.min(log_head));
    let (sink, staged): (Box<dyn Write>, _) = match &args.output {
        // The inherited descriptor itself, as the shell opened it (`>>` appends): opening
        // the alias again would start at offset 0, truncating or overwriting the file.
        Some(path) if names_descriptor(path, 1) => (Box::new(std::io::stdout().lock()), None),
        Some(path) if names_descriptor(path, 2) => (Box::new(std::io::stderr().lock()), None),
        Some(path) => {
            remove_export_temp_on_signal()?;
            let staged = ExportFile::create(path)?;
            (Box::new(staged.file()?), Some(staged))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let to = args
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let to_a_file = args
        .output
        .as_ref()
        .is_some_and(|p| !names_descriptor(p, 1) && !names_descriptor(p, 2));
    let bar = if head >= PROGRESS_MIN_EVENTS && to_a_file {
        progress_bar(Some(head), "events")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let written = write_export(&args, &store, head, query.as_ref(), &bar, &mut out).await;
    bar.finish_and_clear();
    written
        .and_then(|()| out.flush().map_err(anyhow::Error::from))
        .with_context(|| format!("cannot write the export to {to}"))?;
    drop(out);
    if let Some(staged) = staged {
        // Its errors say whether the earlier file is still there.
        staged.commit()?;
    }
    if args.format == ExportFormat::Ndjson
        && head < log_head
        && !cut_between_appends(&store, head).await
    {
        crate::say(format_args!(
            "note: position {head} is inside an append (its events go on after it): `restore` \
             refuses this export, which holds part of it; --at-position at the append's last \
             event, or --as-of, cuts between appends"
        ));
    }
    Ok(exit::OK)
}

/// Whether the event at `position` ends its append (a log cut after it can be restored).
/// A read that fails says nothing: the export itself is complete.
async fn cut_between_appends(store: &incidentlog_store::Store, position: u64) -> bool {
    if position == 0 {
        return true;
    }
    let after = position.saturating_sub(2);
    let want = usize::try_from(position - after).unwrap_or(2);
    let Ok(events) = store.read_all(after, want).await else {
        return true;
    };
    match events.as_slice() {
        [e] => incidentlog_store::ends_an_append(&[0; 32], e),
        [before, e] => incidentlog_store::ends_an_append(&before.hash, e),
        _ => true,
    }
}

/// Writes the export of the log up to `head` to `out`.
async fn write_export(
    args: &ExportArgs,
    store: &incidentlog_store::Store,
    head: u64,
    query: Option<&IncidentQuery>,
    bar: &indicatif::ProgressBar,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match args.format {
        ExportFormat::Ndjson => {
            for_each_page(store, head, bar, |events| {
                for e in events {
                    serde_json::to_writer(&mut *out, &incidentlog_api::wire::WireEvent(e))?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            })
            .await?;
        }
        ExportFormat::Csv | ExportFormat::Geojson => {
            // The views as the server builds them at start-up (the same fold, the same
            // handling of an event the views cannot take), up to the head seen above.
            let progress_bar = bar.clone();
            let progress = move |n: u64| progress_bar.set_position(n);
            let (projection, _) =
                incidentlog_api::service::rebuild_views(store, Some(head), &progress)
                    .await
                    .context("rebuilding the views failed")?;
            let mut table = TableWriter::new(if args.format == ExportFormat::Csv {
                TableFormat::Csv
            } else {
                TableFormat::Geojson
            });
            let every = IncidentQuery::default();
            let query = query.unwrap_or(&every);
            table.begin(&mut *out)?;
            for view in projection.matching(query, args.include_retracted) {
                table.view(&view, &mut *out)?;
            }
            table.end(&mut *out)?;
            exiting_with(projection);
        }
    }
    Ok(())
}

/// Whether `path` is an alias of this process's descriptor `fd` (`/dev/stdout`,
/// `/dev/fd/1`, `/proc/self/fd/1`, and the same for stderr).
fn names_descriptor(path: &Path, fd: u32) -> bool {
    let named = match fd {
        1 => "/dev/stdout",
        2 => "/dev/stderr",
        _ => "",
    };
    let p = path.as_os_str();
    p == named
        || p == format!("/dev/fd/{fd}").as_str()
        || p == format!("/proc/self/fd/{fd}").as_str()
}

/// `export --output PATH`, written next to PATH under a temporary name and renamed over it
/// only once complete and synced: an export that fails (a full disk, a damaged log) leaves
/// whatever PATH held (an earlier backup) as it was, and no partial file. Owner-only, as the
/// store's own files (an export holds what the log does: sources and witnesses); a file that
/// exists keeps its mode. Written in place instead (truncated, as a plain open would) when a
/// rename would change more than the bytes: PATH is a symlink (`/dev/stdout`, a link to the
/// backup), not a regular file, has other hard links, belongs to someone else, is read-only
/// to its owner (the open then fails as a redirection would), or its directory takes no new
/// file from us.
struct ExportFile {
    path: PathBuf,
    file: std::fs::File,
    /// The temporary name, until renamed over `path` (None: written in place).
    staged: Option<PathBuf>,
}

/// Where the export to a file stands, for the signal handler.
enum ExportStage {
    /// No temporary file (yet, or any more after a failure).
    Idle,
    /// Written to this temporary file: a signal removes it, and the export is incomplete.
    Staged(PathBuf),
    /// Renamed into place, in this directory: a signal syncs the directory, and the export
    /// is complete.
    Done(PathBuf),
}

/// The export in progress, for the signal handler; held by the rename, so that a signal
/// during it finds the export before or after, never half-way.
static EXPORT_STAGE: std::sync::Mutex<ExportStage> = std::sync::Mutex::new(ExportStage::Idle);

fn export_stage() -> std::sync::MutexGuard<'static, ExportStage> {
    EXPORT_STAGE.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExportFile {
    fn create(path: &Path) -> anyhow::Result<ExportFile> {
        let existing = std::fs::symlink_metadata(path).ok();
        let stageable = existing.as_ref().is_none_or(|m| {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            m.file_type().is_file()
                && m.nlink() == 1
                && m.uid() == rustix::process::geteuid().as_raw()
                // A backup its owner made read-only is not replaced behind their back.
                && m.permissions().mode() & 0o200 != 0
        });
        if stageable {
            if let Some(staged) = ExportFile::staged(path, existing.as_ref())? {
                return Ok(staged);
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ExportFile {
            path: path.to_path_buf(),
            file,
            staged: None,
        })
    }

    /// A temporary file beside `path`; None when its directory takes no new file from us.
    fn staged(
        path: &Path,
        existing: Option<&std::fs::Metadata>,
    ) -> anyhow::Result<Option<ExportFile>> {
        let name = path
            .file_name()
            .with_context(|| format!("{} names no file", path.display()))?;
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(".incidentlog-export-");
        remove_stale_temps(path, &prefix);
        // The PID and a random part: two exports in two containers can have one PID.
        let random = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
        };
        let mut tmp_name = prefix;
        tmp_name.push(format!("{}-{random:016x}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // Created under the stage's lock, which the signal handler takes too: a signal finds
        // the file not yet made, or made and named for removal.
        let created = {
            let mut stage = export_stage();
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp);
            if created.is_ok() {
                *stage = ExportStage::Staged(tmp.clone());
            }
            created
        };
        let file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && existing.is_some() => {
                return Ok(None)
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot create {} (as {})",
                    path.display(),
                    tmp.display()
                )))
            }
        };
        // Held while the export runs (and released by the kernel however it ends): how a later
        // export tells this file from one a killed export left (`remove_stale_temps`).
        if let Err(e) = file.try_lock() {
            tracing::warn!(
                "cannot lock {}: {e}; another export to the same file could take it for a \
                 leftover",
                tmp.display()
            );
        }
        if let Some(m) = existing {
            use std::os::unix::fs::PermissionsExt;
            let mode = m.permissions().mode() & 0o7777;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
        }
        Ok(Some(ExportFile {
            path: path.to_path_buf(),
            file,
            staged: Some(tmp),
        }))
    }

    fn file(&self) -> anyhow::Result<std::fs::File> {
        self.file.try_clone().context("cannot open the export file")
    }

    /// Syncs the complete export and puts it in place. An error before the rename leaves the earlier
    /// file as it was; one after it says that the export is in place.
    fn commit(mut self) -> anyhow::Result<()> {
        let unwritten = |e: std::io::Error| {
            anyhow::anyhow!(
                "cannot write the export to {} ({e}): nothing was replaced",
                self.path.display()
            )
        };
        // Only a regular file has anything to sync: fsync of a pipe or a device (`-o
        // /dev/null`, a FIFO feeding gzip) fails with EINVAL after every byte went through.
        if self
            .file
            .metadata()
            .map_err(unwritten)?
            .file_type()
            .is_file()
        {
            self.file.sync_all().map_err(unwritten)?;
        }
        let Some(tmp) = self.staged.take() else {
            return Ok(());
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        {
            // A signal now waits for the rename's outcome: the temporary file removed and
            // the export incomplete, or the export complete.
            let mut stage = export_stage();
            let renamed = std::fs::rename(&tmp, &self.path);
            *stage = match renamed {
                Ok(()) => ExportStage::Done(dir.to_path_buf()),
                Err(_) => {
                    let _ = std::fs::remove_file(&tmp);
                    ExportStage::Idle
                }
            };
            renamed.map_err(unwritten)?;
        }
        // FILE is the new export now, whatever happens next: an error says so (the earlier
        // backup is gone), not that the export could not be written.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                anyhow::anyhow!(
                    "the export is complete at {}, in place of the earlier file, but syncing \
                     its directory {} failed ({e}): a power cut could still undo the rename",
                    self.path.display(),
                    dir.display()
                )
            })?;
        Ok(())
    }
}

impl Drop for ExportFile {
    /// An export that did not complete leaves no partial file behind.
    fn drop(&mut self) {
        if let Some(tmp) = &self.staged {
            let _ = std::fs::remove_file(tmp);
            *export_stage() = ExportStage::Idle;
        }
    }
}

/// How old a leftover temporary file must be to be removed.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the temporary files that exports to `path` killed outright (kill -9, the OOM
/// killer, a power cut) left beside it: `{prefix}PID.tmp`, ours, that no export holds locked.
/// A nightly backup retried after such deaths would otherwise pile up copies of the log. A
/// running export holds its file locked (`flock`, which also holds across PID namespaces:
/// an export in another container, where its PID means nothing here).
fn remove_stale_temps(path: &Path, prefix: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        // `PID-RANDOM` (or `PID`, an earlier version's).
        let named_like_ours = file_name
            .as_bytes()
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| rest.strip_suffix(b".tmp"))
            .is_some_and(|id| {
                let (pid, random) = match id.iter().position(|b| *b == b'-') {
                    Some(i) => (&id[..i], &id[i + 1..]),
                    None => (id, &[][..]),
                };
                !pid.is_empty()
                    && pid.iter().all(u8::is_ascii_digit)
                    && random.iter().all(u8::is_ascii_hexdigit)
            });
        if !named_like_ours {
            continue;
        }
        // Ours, and not just made: an export locks its file right after creating it, and one
        // made in the last few seconds may not be locked yet.
        let ours = entry.metadata().is_ok_and(|m| {
            let settled = m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            m.file_type().is_file() && m.uid() == me && settled
        });
        if !ours {
            continue;
        }
        // Unlocked: the export that wrote it is gone. (Locked while it is removed, so that
        // two exports cleaning up at once agree.)
        let Ok(candidate) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if candidate.try_lock().is_ok() && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                "removed {}, left by an export that was killed",
                entry.path().display()
            );
        }
    }
}

/// SIGINT, SIGTERM or SIGHUP during an export: its temporary file is removed before the
/// process ends (as the signal's default action would end it: no partial file, and none to
/// pile up beside a backup a cron job keeps retrying), exit 1. A signal that comes once the
/// export is in place ends it with exit 0: the file is complete (an audit saw exit 1, "the
/// export is incomplete", with the complete file already in place of the backup).
fn remove_export_temp_on_signal() -> anyhow::Result<()> {
    let mut signals = crate::StopSignals::install().context("cannot listen for signals")?;
    tokio::spawn(async move {
        let name = signals.next().await;
        match std::mem::replace(&mut *export_stage(), ExportStage::Idle) {
            ExportStage::Done(dir) => match std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
                Ok(()) => {
                    crate::say(format_args!(
                        "interrupted ({name}) as the export ended: the file is complete"
                    ));
                    std::process::exit(i32::from(exit::OK));
                }
                Err(e) => {
                    crate::say(format_args!(
                        "error: interrupted ({name}) as the export ended: the file is in \
                         place, but syncing {} failed: {e}",
                        dir.display()
                    ));
                    std::process::exit(i32::from(exit::FAILURE));
                }
            },
            ExportStage::Staged(tmp) => {
                let _ = std::fs::remove_file(tmp);
            }
            ExportStage::Idle => {}
        }
        crate::say(format_args!(
            "error: interrupted ({name}): the export is incomplete"
        ));
        std::process::exit(i32::from(exit::FAILURE));
    });
    Ok(())
}

/// Leaves the rebuilt views of an offline command unfreed: the process exits right after, and
/// freeing ~half a GB of small allocations one by one took ~4% of a replay of the 1M-event log
/// (the OS takes the memory back at once).
fn exiting_with(views: incidentlog_projections::Projection) {
    std::mem::forget(views);
}

/// Reads the log up to `head` (not past it: events appended meanwhile, or after a chosen
/// position, are not part of the export) page by page.
async fn for_each_page<S: EventStore>(
    store: &S,
    head: u64,
    bar: &indicatif::ProgressBar,
    mut f: impl FnMut(&[RecordedEvent]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after = 0;
    while after < head {
        let want = usize::try_from(head - after).map_or(PAGE, |left| left.min(PAGE));
        let page = store
            .read_all(after, want)
            .await
            .with_context(|| format!("cannot read the log after position {after}"))?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        f(&page)?;
        bar.set_position(after);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// token

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret, alone, on stdout (shown only now).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Unique name; stored as `recorded_by` on the events this token appends. 1 to 64
        /// letters, digits and - _ . @.
        #[arg(
            long,
            env = "INCIDENTLOG_TOKEN_NAME",
            value_name = "NAME",
            value_parser = crate::parse_name
        )]
        name: String,
        /// reader: GET; reporter: reader + append/import; admin: everything.
        #[arg(
            long,
            env = "INCIDENTLOG_TOKEN_ROLE",
            value_name = "reader|reporter|admin",
            value_parser = ["reader", "reporter", "admin"]
        )]
        role: String,
    },
    /// List tokens: name, role, created, revoked (never the secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON object per token instead of a table.
        #[arg(long, env = "INCIDENTLOG_JSON", value_parser = BoolishValueParser::new())]
        json: bool,
    },
    /// Revoke a token by name (servers stop accepting it within seconds).
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The token to revoke.
        #[arg(long, env = "INCIDENTLOG_TOKEN_NAME", value_name = "NAME")]
        name: String,
    },
}

/// What a token command does to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenMode {
    /// `create`: opens for writing, makes a missing file store.
    Create,
    /// `revoke`: opens an existing store for writing.
    Edit,
    /// `list`: opens an existing store read-only.
    Read,
}

/// Where the token commands read and write tokens.
enum TokenAccess {
    Store(Box<incidentlog_store::Store>),
    /// The file store is held by a running server: edit its `tokens.json` directly, under the
    /// token file's lock (atomic replace); the server re-reads it on an unknown secret and
    /// periodically.
    File(PathBuf),
}

impl TokenAccess {
    /// `create` makes a missing file store; `list` and `revoke` need an existing one (a
    /// mistyped --data-dir must not leave an empty store behind), and `list` only reads (it
    /// works on a read-only data dir, like `verify`).
    async fn open(args: &StoreArgs, mode: TokenMode) -> anyhow::Result<TokenAccess> {
        if mode != TokenMode::Create
            && matches!(args.store, incidentlog_store::Backend::File)
            && !args.data_dir.join("log").is_dir()
        {
            bail!(
                "no store in {} ({} does not exist)",
                args.data_dir.display(),
                args.data_dir.join("log").display()
            );
        }
        if matches!(args.store, incidentlog_store::Backend::File)
            && incidentlog_store::file::held_by_a_process(&args.data_dir)
        {
            tracing::info!("the store is in use by a server; editing its token file");
            return Ok(TokenAccess::File(args.data_dir.clone()));
        }
        let opened = if mode == TokenMode::Read {
            open_store_read_only(args).await
        } else {
            open_store(args, &WriteArgs::default()).await
        };
        match opened {
            Ok(store) => Ok(TokenAccess::Store(Box::new(store))),
            Err(e) => {
                let locked = matches!(args.store, incidentlog_store::Backend::File)
                    && e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<StoreError>(),
                            Some(StoreError::Unavailable(_))
                        )
                    })
                    && args.data_dir.join("LOCK").exists();
                if locked {
                    tracing::info!("the store is in use by a server; editing its token file");
                    Ok(TokenAccess::File(args.data_dir.clone()))
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        match self {
            TokenAccess::Store(s) => Ok(s.tokens().await?),
            TokenAccess::File(dir) => Ok(token_file::load(dir)?),
        }
    }

    async fn add(&self, token: TokenRecord) -> anyhow::Result<()> {
        match self {
            TokenAccess::Store(s) => Ok(s.add_token(token).await?),
            TokenAccess::File(dir) => Ok(token_file::add(dir, token)?),
        }
    }

    async fn revoke(&self, name: &str, at: DateTime<Utc>) -> anyhow::Result<bool> {
        match self {
            TokenAccess::Store(s) => Ok(s.revoke_token(name, at).await?),
            TokenAccess::File(dir) => Ok(token_file::revoke(dir, name, at)?),
        }
    }

    async fn close(&self) -> anyhow::Result<()> {
        if let TokenAccess::Store(s) = self {
            s.close().await.context("cannot close the store")?;
        }
        Ok(())
    }
}

/// A token table the server would refuse (hand-edited against the rules) is refused here
/// too, rather than listed, extended or rewritten as if it were fine.
async fn checked_table(access: &TokenAccess) -> anyhow::Result<Vec<TokenRecord>> {
    let tokens = access.list().await.context("cannot read the tokens")?;
    incidentlog_api::auth::check_token_table(&tokens)
        .map_err(|e| anyhow::anyhow!("the token table is not valid: {e}"))?;
    Ok(tokens)
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<u8> {
    match cmd {
        TokenCommand::Create { store, name, role } => {
            let role: Role = role.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let access = TokenAccess::open(&store, TokenMode::Create).await?;
            checked_table(&access).await?;
            let secret = try_new_secret().map_err(|e| anyhow::anyhow!("{e}"))?;
            access
                .add(TokenRecord {
                    name: name.clone(),
                    role: role.to_string(),
                    secret_hash: hash_secret(&secret),
                    created_at: Utc::now(),
                    revoked_at: None,
                })
                .await
                .with_context(|| format!("cannot create token {name:?}"))?;
            let printed = if crate::stdout_discards() {
                Err(std::io::Error::other(
                    "standard output is /dev/null (closed, or sent there)",
                ))
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{secret}").and_then(|()| out.flush())
            };
            if let Err(e) = printed {
                // A secret nobody saw must not stay valid.
                let revoked = access.revoke(&name, Utc::now()).await;
                access.close().await?;
                revoked.with_context(|| {
                    format!("cannot print the new token's secret ({e}), nor revoke token {name:?} again")
                })?;
                bail!(
                    "cannot print the new token's secret ({e}): token {name:?} was revoked again \
                     (names are not reused: create it under another name)"
                );
            }
            access.close().await?;
            tracing::info!(token = %name, role = %role, "token created");
        }
        TokenCommand::List { store, json } => {
            let access = TokenAccess::open(&store, TokenMode::Read).await?;
            let tokens = checked_table(&access).await?;
            let mut out = std::io::stdout().lock();
            let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if json {
                for t in &tokens {
                    let v = serde_json::json!({
                        "name": t.name, "role": t.role, "created_at": time(&t.created_at),
                        "revoked_at": t.revoked_at.as_ref().map(time),
                    });
                    writeln!(out, "{v}")?;
                }
            } else {
                let width = tokens
                    .iter()
                    .map(|t| t.name.len())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                writeln!(
                    out,
                    "{:<width$}  {:<8}  {:<20}  REVOKED",
                    "NAME", "ROLE", "CREATED"
                )?;
                for t in &tokens {
                    writeln!(
                        out,
                        "{:<width$}  {:<8}  {:<20}  {}",
                        t.name,
                        t.role,
                        time(&t.created_at),
                        t.revoked_at
                            .as_ref()
                            .map(time)
                            .unwrap_or_else(|| "-".into())
                    )?;
                }
            }
        }
        TokenCommand::Revoke { store, name } => {
            let access = TokenAccess::open(&store, TokenMode::Edit).await?;
            let mut tokens = checked_table(&access).await?;
            if let Some(at) = tokens
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| t.revoked_at)
            {
                access.close().await?;
                let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                writeln!(
                    std::io::stdout().lock(),
                    "{name} was already revoked (at {at})"
                )?;
                return Ok(exit::OK);
            }
            let at = Utc::now();
            let found = access
                .revoke(&name, at)
                .await
                .with_context(|| format!("cannot revoke token {name:?}"))?;
            access.close().await?;
            if !found {
                bail!("no token named {name:?}");
            }
            writeln!(std::io::stdout().lock(), "revoked {name}")?;
            let had_admin = incidentlog_api::auth::has_active_admin(&tokens);
            for t in tokens.iter_mut().filter(|t| t.name == name) {
                t.revoked_at = Some(at);
            }
            if had_admin && !incidentlog_api::auth::has_active_admin(&tokens) {
                tracing::warn!(
                    "{name} was the last active admin token: the admin API now answers 403 to \
                     every token, until `{} --name NAME --role admin` makes another",
                    crate::serve::token_command_hint(&store)
                );
            }
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export that does not complete leaves the file it was to replace as it was, and no
    /// partial file; one that completes replaces it, keeping its mode; a new one is 0600; a
    /// symlink or a hard-linked file is written in place.
    #[test]
    fn an_export_file_is_replaced_only_when_complete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.ndjson");
        std::fs::write(&path, "the earlier backup\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let entries = || std::fs::read_dir(dir.path()).unwrap().count();

        let staged = ExportFile::create(&path).unwrap();
        staged.file().unwrap().write_all(b"half an exp").unwrap();
        assert_eq!(entries(), 2, "written beside it, under another name");
        drop(staged);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "the earlier backup\n"
        );
        assert_eq!(entries(), 1, "no partial file left");

        let staged = ExportFile::create(&path).unwrap();
        staged
            .file()
            .unwrap()
            .write_all(b"the new export\n")
            .unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the new export\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(entries(), 1);

        let fresh = dir.path().join("fresh.csv");
        let staged = ExportFile::create(&fresh).unwrap();
        staged.commit().unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A symlink (as /dev/stdout is) and a file with another hard link are written in
        // place: renaming over them would replace the link, or split the file from its twin.
        let link = dir.path().join("latest.ndjson");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let twin = dir.path().join("twin.ndjson");
        std::fs::hard_link(&fresh, &twin).unwrap();
        for (target, read_back) in [(&link, &path), (&twin, &fresh)] {
            let staged = ExportFile::create(target).unwrap();
            staged.file().unwrap().write_all(b"in place\n").unwrap();
            staged.commit().unwrap();
            assert_eq!(std::fs::read_to_string(read_back).unwrap(), "in place\n");
        }
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        // A file its owner made read-only is not replaced by a rename: the open fails as a
        // redirection would (root writes it in place).
        use std::os::unix::fs::MetadataExt;
        let kept = dir.path().join("kept.ndjson");
        std::fs::write(&kept, "keep me\n").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o444)).unwrap();
        let inode = std::fs::metadata(&kept).unwrap().ino();
        match ExportFile::create(&kept) {
            Ok(staged) => {
                assert!(staged.staged.is_none(), "written in place");
                staged.commit().unwrap();
                assert_eq!(std::fs::metadata(&kept).unwrap().ino(), inode);
            }
            Err(e) => {
                assert!(format!("{e:#}").contains("ermission denied"), "{e:#}");
                assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep me\n");
            }
        }
    }

    /// Two exports to one file at once (two containers, where both may be PID 1) each get a
    /// temporary file of their own; the last to finish wins, whole.
    #[test]
    fn two_exports_to_one_file_at_once_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.ndjson");
        let a = ExportFile::create(&path).unwrap();
        let b = ExportFile::create(&path).unwrap();
        assert_ne!(a.staged, b.staged);
        a.file().unwrap().write_all(b"from a\n").unwrap();
        b.file().unwrap().write_all(b"from b\n").unwrap();
        a.commit().unwrap();
        b.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The temporary file of an export killed outright is removed by the next export to the
    /// same file; one an export holds locked (running now, perhaps in another PID namespace)
    /// is left alone, as are other files' and other names'.
    #[test]
    fn an_export_removes_what_a_killed_export_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.ndjson");
        let (dead, alive) = ("4000001-00ff00ff00ff00ff", "4000002-0123456789abcdef");
        let aged = |p: &Path| {
            let a_minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_modified(a_minute_ago).unwrap();
        };
        let temp = |name: &str, id: &str| {
            let p = dir
                .path()
                .join(format!(".{name}.incidentlog-export-{id}.tmp"));
            std::fs::write(&p, "half an export").unwrap();
            aged(&p);
            p
        };
        // An earlier version's name (the PID alone), and one just made, not locked yet.
        let old_style = temp("backup.ndjson", "4000003");
        let just_made = dir
            .path()
            .join(".backup.ndjson.incidentlog-export-4000004-aaaaaaaaaaaaaaaa.tmp");
        std::fs::write(&just_made, "").unwrap();
        let stale = temp("backup.ndjson", dead);
        let running = temp("backup.ndjson", alive);
        let running_lock = std::fs::File::open(&running).unwrap();
        running_lock.try_lock().unwrap();
        let signed = temp("backup.ndjson", "+5");
        let other_file = temp("other.ndjson", dead);
        let not_a_pid = temp("backup.ndjson", "x1");

        let staged = ExportFile::create(&path).unwrap();
        staged.commit().unwrap();
        assert!(!stale.exists(), "the killed export's file is removed");
        assert!(
            !old_style.exists(),
            "an earlier version's leftover is removed"
        );
        for kept in [&running, &other_file, &not_a_pid, &signed, &just_made] {
            assert!(kept.exists(), "{} is kept", kept.display());
        }
        drop(running_lock);
    }
    use tokio::io::AsyncReadExt;

    /// Gives `data` in reads of at most 7 bytes, then fails (a broken pipe, a bad disk).
    struct Dribble {
        data: Vec<u8>,
        at: usize,
    }

    impl std::io::Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return Err(std::io::Error::other("the input broke"));
            }
            let n = buf.len().min(7).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[tokio::test]
    async fn read_ahead_gives_every_byte_in_order_then_the_end() {
        let data: Vec<u8> = (0..3 * READ_CHUNK + 123).map(|i| (i % 251) as u8).collect();
        let mut input = ReadAhead::start(std::io::Cursor::new(data.clone())).unwrap();
        let mut got = Vec::new();
        input.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        // The end stays the end.
        assert_eq!(input.read(&mut [0u8; 16]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn read_ahead_passes_a_read_error_on_after_what_was_read() {
        let data = b"{\"a\":1}\n{\"b\":2}\n".to_vec();
        let mut input = ReadAhead::start(Dribble {
            data: data.clone(),
            at: 0,
        })
        .unwrap();
        let mut got = Vec::new();
        let err = input.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.to_string(), "the input broke");
        assert_eq!(got, data);
        assert_eq!(input.read(&mut [0u8; 16]).await.unwrap(), 0, "then the end");
    }
}
