//! `incidentlog`: the event-sourced conflict-incident log. One binary: the HTTP server and the
//! offline tools (replay, verify, import, export, restore, tokens). Each command is a thin call into
//! `incidentlog-api`'s service layer, the store and the projections.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use incidentlog_store::{Backend, Durability, OpenOptions, Store, StoreError};

/// glibc's malloc cost ~30% of the CPU of a small append (hyper's per-request buffers and
/// futures); mimalloc measured +40% single-append throughput at 64 connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod serve;

/// Exit codes (documented in proto-docs/cli.md).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any failure not listed below (I/O, store unavailable, bad input file, ...).
    pub const FAILURE: u8 = 1;
    /// Usage error: unknown flag, bad value (clap's own code).
    pub const USAGE: u8 = 2;
    /// The log is damaged: a checksum or the hash chain does not match (file and offset printed).
    pub const DAMAGED: u8 = 3;
    /// `import` finished, but some lines were rejected (the report lists them).
    pub const REJECTED: u8 = 4;
    /// `import` or `serve` quit at once on a second SIGINT/SIGTERM/SIGHUP (128 + SIGINT, as
    /// shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// incidentlog: an append-only, event-sourced log of conflict incidents with an HTTP API.
///
/// Every flag can also be set through the environment variable named in its help
/// (INCIDENTLOG_*); a flag on the command line wins over its own variable (flags that exclude
/// each other do so wherever they come from).
#[derive(Parser, Debug)]
#[command(name = "incidentlog", version, propagate_version = true)]
struct Cli {
    /// Log level or filter for the logs on stderr (error, warn, info, debug, trace, or an
    /// EnvFilter directive such as `incidentlog_api=debug`). Without it RUST_LOG is used, else
    /// `info`.
    #[arg(
        long,
        global = true,
        env = "INCIDENTLOG_LOG",
        value_name = "LEVEL",
        value_parser = parse_log_filter
    )]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP API until SIGTERM, SIGINT or SIGHUP (then: stop accepting, finish in-flight
    /// appends, sync, exit 0). On a data dir without tokens, creates an admin token and
    /// prints it once.
    Serve(serve::ServeArgs),
    /// Rebuild every view from the log offline and print the event count, time, rate, digest,
    /// incident and region counts.
    Replay(commands::ReplayArgs),
    /// Check every record's checksum and the whole hash chain. Prints the event count and head
    /// hash; exits 3 naming the file and offset of the first damage.
    Verify(commands::VerifyArgs),
    /// Import an NDJSON file (the lines of POST /v1/events, same validation) and print the
    /// import report as JSON. Exits 4 when some lines were rejected.
    Import(commands::ImportArgs),
    /// Rebuild a log from its ndjson export (into an empty store, or one an interrupted
    /// restore left): every position, time and hash as recorded, each hash checked. The way
    /// back from a backup, and from the file store to PostgreSQL and back. Tokens are not part
    /// of the log: create them anew.
    Restore(commands::RestoreArgs),
    /// Write the log (ndjson: recorded events) or the incident views (csv: ACLED-style columns;
    /// geojson: a FeatureCollection of the incidents that have a location).
    Export(commands::ExportArgs),
    /// Manage API tokens (they live with the store; only a hash of each secret is kept).
    Token {
        #[command(subcommand)]
        command: commands::TokenCommand,
    },
}

/// Where the log lives: shared by every command.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Directory of the embedded file store; its tokens live here too. `serve`, `import`,
    /// `restore` and `token create` create it if missing; `verify`, `replay`, `export`,
    /// `token list` and `token revoke` need an existing one.
    #[arg(
        long,
        env = "INCIDENTLOG_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Storage backend: `file` (the embedded log in --data-dir) or a PostgreSQL URL
    /// (`postgres://user:pass@host:5432/db`).
    #[arg(
        long,
        env = "INCIDENTLOG_STORE",
        default_value = "file",
        value_name = "file|postgres://...",
        // The URL may hold a password: never echo it in --help.
        hide_env_values = true,
        value_parser = BackendParser
    )]
    pub store: Backend,
}

/// Durability and segment size: only commands that write take them.
#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    /// `strict`: every acknowledged append is fsynced first. `relaxed`: acknowledge after the
    /// write and let the OS flush (a machine crash may lose the latest appends).
    #[arg(
        long,
        env = "INCIDENTLOG_DURABILITY",
        default_value = "strict",
        value_enum
    )]
    pub durability: DurabilityArg,

    /// Size at which the file store starts a new segment file (e.g. 256MiB, 64MiB, 1000000;
    /// kept between 512 bytes and 1GiB).
    #[arg(
        long,
        env = "INCIDENTLOG_SEGMENT_SIZE",
        default_value = "256MiB",
        value_name = "BYTES",
        value_parser = parse_bytes
    )]
    pub segment_size: u64,

    /// How much of the newest log the file store leaves in the OS page cache (e.g. 64MiB, or
    /// `all`). Older records, once synced, are dropped from it, as PostgreSQL drops finished
    /// WAL: the log is written once and read mostly near its head, and the memory goes back
    /// to the process at once (on a VM whose host reclaims freed memory, fresh pages cost ~3 ms
    /// per MiB). Reads of older events then come from the disk. `all` leaves the page cache to
    /// the kernel.
    #[arg(
        long,
        env = "INCIDENTLOG_LOG_CACHE",
        default_value = "64MiB",
        value_name = "BYTES|all",
        value_parser = parse_log_cache
    )]
    pub log_cache: LogCache,
}

impl Default for WriteArgs {
    fn default() -> Self {
        WriteArgs {
            durability: DurabilityArg::Strict,
            segment_size: incidentlog_store::DEFAULT_SEGMENT_SIZE,
            log_cache: LogCache(Some(incidentlog_store::DEFAULT_LOG_CACHE)),
        }
    }
}

/// `--log-cache`: bytes, or `None` for `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCache(pub Option<u64>);

fn parse_log_cache(s: &str) -> Result<LogCache, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(LogCache(None));
    }
    parse_bytes(s)
        .map(|n| LogCache(Some(n)))
        .map_err(|e| format!("{e}, or `all`"))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityArg {
    Strict,
    Relaxed,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Strict => Durability::Strict,
            DurabilityArg::Relaxed => Durability::Relaxed,
        }
    }
}

/// `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512KiB, 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest duration a flag takes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 24 * 3600);

/// `30` (seconds), `30s`, `500ms`, `2m`; at most 24 days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 30s, 500ms, 2m)"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(num),
        "ms" => Duration::from_millis(num),
        "m" | "min" => Duration::from_secs(num.saturating_mul(60)),
        other => return Err(format!("unknown duration unit {other:?} (use ms, s or m)")),
    };
    // Every duration flag is a timeout or an interval: zero would time out everything at once
    // (or spin).
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be more than zero"));
    }
    // Far above any sensible timeout, and within what every use takes: the kernel's send
    // timeout (TCP_USER_TIMEOUT, 2^31 - 1 ms) and a deadline computed from now.
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?}: the duration must be at most 24 days ({}s)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// A name stored as `recorded_by` (a token name, or `import --recorded-by`): 1 to 64 of
/// letters, digits and `- _ . @`.
pub fn parse_name(s: &str) -> Result<String, String> {
    if !incidentlog_api::auth::is_token_name(s) {
        return Err(format!(
            "invalid name {s:?}: use 1 to 64 characters among letters, digits and - _ . @"
        ));
    }
    Ok(s.to_string())
}

/// A log filter (`--log`): checked when parsed, so a typo is a usage error, not a warning. A
/// bare word must be a level: EnvFilter would take `wran` for a target name and silently
/// turn every other log off, errors included.
fn parse_log_filter(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if s.trim().is_empty() {
        // An empty filter enables nothing: every log off, errors included, without a word.
        return Err("an empty log filter would turn every log off (say `off` for that)".into());
    }
    let bare_non_level = s.split(',').map(str::trim).any(|d| {
        !d.is_empty() && !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
    });
    if bare_non_level {
        return Err(format!(
            "{s:?} is not a log level or filter: use one of {} or TARGET=LEVEL directives",
            LEVELS.join(", ")
        ));
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?} is not a log level or filter: {e}"))
}

/// `--store`: the error never repeats the value (a mistyped URL may carry a password), which
/// clap's own "invalid value '...'" message would.
#[derive(Clone)]
struct BackendParser;

impl clap::builder::TypedValueParser for BackendParser {
    type Value = Backend;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Backend, clap::Error> {
        let invalid = |msg: String| {
            let mut cmd = cmd.clone();
            let mut e = cmd.error(clap::error::ErrorKind::ValueValidation, msg);
            // Which flag it was (the message says it), for `exit_with_usage_error`.
            if let Some(arg) = arg {
                e.insert(
                    clap::error::ContextKind::InvalidArg,
                    clap::error::ContextValue::String(arg.to_string()),
                );
            }
            e
        };
        let s = value
            .to_str()
            .ok_or_else(|| invalid("--store: not valid UTF-8".into()))?;
        s.parse::<Backend>().map_err(|e| {
            if s.starts_with("postgres://") || s.starts_with("postgresql://") {
                // What the URL parser found wrong (it never repeats the URL).
                invalid(format!("invalid --store: {e}"))
            } else {
                invalid(format!("invalid --store {}", describe_store_value(s)))
            }
        })
    }
}

/// What an invalid `--store` value can safely be called: a short plain word as it is, else
/// at most its URL scheme. A mistyped URL or a `key=value` connection string may carry a
/// password anywhere (user info, path, query), so the rest is never repeated.
fn describe_store_value(s: &str) -> String {
    let expected = "expected \"file\" or a postgres:// URL";
    let plain = |w: &str| {
        !w.is_empty()
            && w.len() <= 32
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'))
    };
    if plain(s) {
        return format!("{s:?}: {expected}");
    }
    match s.split_once(':').map(|(scheme, _)| scheme) {
        Some(scheme) if plain(scheme) => {
            format!(
                "(scheme {scheme:?}; the rest is not shown, it may hold a password): {expected}"
            )
        }
        _ => format!("(not shown, it may hold a password): {expected}"),
    }
}

/// Opens the store the flags name, for writing (`serve`, `import`, `token`): a missing file
/// store is created, a torn tail is cut.
pub async fn open_store(store: &StoreArgs, write: &WriteArgs) -> anyhow::Result<Store> {
    open_store_as(store, write, false, false).await
}

/// Opens the store as the log's only writer (`restore`: see `OpenOptions::sole_writer`).
pub async fn open_store_as_sole_writer(
    store: &StoreArgs,
    write: &WriteArgs,
) -> anyhow::Result<Store> {
    open_store_as(store, write, false, true).await
}

/// Opens the store for reading only (`verify`, `replay`, `export`): the file store must
/// exist and nothing on disk changes (a torn tail is left in place; `verify` reports it).
pub async fn open_store_read_only(store: &StoreArgs) -> anyhow::Result<Store> {
    open_store_as(store, &WriteArgs::default(), true, false).await
}

async fn open_store_as(
    store: &StoreArgs,
    write: &WriteArgs,
    read_only: bool,
    sole_writer: bool,
) -> anyhow::Result<Store> {
    if matches!(store.store, Backend::File) && store.data_dir.exists() && !store.data_dir.is_dir() {
        anyhow::bail!("--data-dir {} is not a directory", store.data_dir.display());
    }
    let opts = OpenOptions {
        data_dir: store.data_dir.clone(),
        backend: store.store.clone(),
        durability: write.durability.into(),
        segment_size: write.segment_size,
        read_only,
        sole_writer,
        log_cache: write.log_cache.0,
        ..OpenOptions::new(&store.data_dir)
    };
    Store::open(&opts).await.map_err(|e| {
        let hint = match (&store.store, &e) {
            // The file store is locked by the process that has it open.
            (Backend::File, StoreError::Unavailable(_)) => {
                " (is a server running on it? stop it first, or use the HTTP API)"
            }
            _ => "",
        };
        let what = match &store.store {
            Backend::File => format!(
                "cannot open the store in {}{hint}",
                store.data_dir.display()
            ),
            Backend::Postgres(_) => "cannot open the PostgreSQL store".to_string(),
        };
        match e {
            // Not "store unavailable", which reads as an outage to wait out: at open it is as
            // often a setting to fix (a permission, a database holding something else).
            StoreError::Unavailable(why) => anyhow::anyhow!(why).context(what),
            e => anyhow::Error::new(e).context(what),
        }
    })
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        // RUST_LOG gets the checks `--log` gets: `wran` would otherwise turn every log off.
        None => match std::env::var("RUST_LOG") {
            Ok(v) => match parse_log_filter(&v) {
                Ok(v) => EnvFilter::try_new(v),
                Err(e) => {
                    say(format_args!("warning: RUST_LOG: {e}; using `info`"));
                    EnvFilter::try_new("info")
                }
            },
            Err(_) => EnvFilter::try_new("info"),
        },
    };
    let filter = filter.unwrap_or_else(|e| {
        say(format_args!("warning: bad log filter ({e}); using `info`"));
        EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A log line that cannot be written (stderr closed, its disk full) is dropped: the
        // fallback report goes through `eprintln!`, which panics on the same error.
        .log_internal_errors(false)
        .init();
}

/// One line on stderr; nothing if stderr is gone (`eprintln!` would panic, and a server
/// whose log pipe closed must go on serving).
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether standard output goes nowhere: `/dev/null`, which is also what the runtime puts in
/// place of a closed stdout (`>&-`) before `main` runs. A secret shown only once must not be
/// "shown" there.
pub fn stdout_discards() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    let Ok(out) = rustix::fs::fstat(std::io::stdout()) else {
        return false;
    };
    null.file_type().is_char_device()
        && rustix::fs::FileType::from_raw_mode(out.st_mode) == rustix::fs::FileType::CharacterDevice
        && out.st_rdev == null.rdev()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// The exit code an error deserves.
fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(StoreError::Corrupt { .. }) = cause.downcast_ref::<StoreError>() {
            return exit::DAMAGED;
        }
        if let Some(commands::Damaged) = cause.downcast_ref::<commands::Damaged>() {
            return exit::DAMAGED;
        }
        if let Some(incidentlog_api::ApiError::DamagedLog(_)) =
            cause.downcast_ref::<incidentlog_api::ApiError>()
        {
            return exit::DAMAGED;
        }
    }
    exit::FAILURE
}

/// Every command runs on 4 KiB pages: with transparent huge pages the first touch of a 2 MiB
/// region makes the kernel zero all of it at once, ~5 ms on this VM, where the host backs
/// fresh memory anew. The offline commands (`replay`, `import`, `export`, `verify`) build
/// hundreds of megabytes of state once: 4 KiB pages made replay ~15% faster. Under `serve`
/// the views grow with every new incident, and a worker that faulted a huge page stalled
/// every task it held: HTTP appends' p99 went 5.4-6.4 ms -> 2.5-2.8 ms, the rate +3%, region
/// GETs unchanged (proto-docs/benchmarks.md, nineteenth session).
fn prefer_small_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only a speed setting: carry on with the system's.
        tracing::debug!("cannot disable transparent huge pages: {e}");
    }
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal or ssh session went away), listened for
/// from the moment this is made: a signal that comes before anyone waits is kept, and none
/// meets its default action (death without a word, requests cut) meanwhile.
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    /// None when SIGINT was ignored at start: a shell script's `incidentlog serve &` (a
    /// non-interactive shell has its background jobs ignore SIGINT, so that a Ctrl-C meant for
    /// the script does not reach them). It stays ignored.
    interrupt: Option<tokio::signal::unix::Signal>,
    /// None when SIGHUP was ignored at start (`nohup incidentlog serve &`): it stays ignored.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        // Read before any handler is installed (a handler replaces the disposition).
        let ignored = ignored_at_start();
        let unless_ignored = |kind: SignalKind| -> std::io::Result<_> {
            if ignored & (1 << (kind.as_raw_value() - 1)) != 0 {
                Ok(None)
            } else {
                signal(kind).map(Some)
            }
        };
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: unless_ignored(SignalKind::interrupt())?,
            hangup: unless_ignored(SignalKind::hangup())?,
        })
    }

    /// Resolves on the next signal; its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = unless_absent(&mut self.interrupt) => "SIGINT",
            _ = unless_absent(&mut self.hangup) => "SIGHUP",
        }
    }

    /// Resolves on the next signal that comes at least [`SECOND_SIGNAL_GAP`] after `first`;
    /// its name. Signals sooner than that count as the first one again: a process manager
    /// that signals a server's whole process group, and a wrapper script that passes its own
    /// signal on, deliver one stop twice at once, and that must not turn a clean stop into a
    /// cut one. (`import`, a command run at a terminal, takes a quick second Ctrl-C as meant.)
    pub async fn next_after(&mut self, first: std::time::Instant) -> &'static str {
        loop {
            let name = self.next().await;
            if first.elapsed() >= SECOND_SIGNAL_GAP {
                return name;
            }
            tracing::info!(
                "{name} right after the first signal: counted as the same stop (send it again \
                 to quit at once)"
            );
        }
    }
}

/// How long after a server's first stop signal another one counts as a second.
pub const SECOND_SIGNAL_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// The next delivery of a signal listened for; never, for one left ignored.
async fn unless_absent(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The signals this process was started with ignored (SIGHUP by `nohup`, SIGINT by a shell
/// script's `&`), from `SigIgn` in /proc/self/status: bit N-1 is signal N. Anywhere that file
/// cannot be read, none.
fn ignored_at_start() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .unwrap_or(0)
}

/// Threads of tokio's blocking pool (reads of the log, import parsing, token files).
const BLOCKING_THREADS: usize = 16;

/// Variables of the repository's scripts and tests, which reach the binary from their
/// environment: not settings, but not typos either.
const SCRIPT_VARIABLES: [&str; 6] = [
    "INCIDENTLOG_TEST_",
    "INCIDENTLOG_BENCH_",
    "INCIDENTLOG_PROFILE",
    "INCIDENTLOG_BIN",
    "INCIDENTLOG_LOAD_BIN",
    "INCIDENTLOG_PG_BIN",
];

/// Prints clap's error and exits with its code, naming the environment variable a bad value
/// came from: clap names the flag (`--rate-limit <PER_SEC>`) even when the value was set
/// through `INCIDENTLOG_RATE_LIMIT`, and an operator looking at a unit file would not find it.
fn exit_with_usage_error(e: clap::Error) -> ! {
    let args = command_line();
    let is_set = |name: &str| std::env::var_os(name).is_some();
    let rendered = e.render().to_string();
    let (first, rest) = rendered.split_once('\n').unwrap_or((&rendered, ""));
    if let Some(name) = variable_of_bad_value(&e, &args, is_set) {
        eprint!("{first} (set by the environment variable {name})\n{rest}");
        std::process::exit(e.exit_code());
    }
    if e.kind() == clap::error::ErrorKind::ArgumentConflict {
        let flags = conflicting_flags(&e);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let behind = variables_behind(&flags, &args, is_set);
        if !behind.is_empty() {
            eprint!("{first} ({})\n{rest}", set_by(&behind));
            std::process::exit(e.exit_code());
        }
    }
    e.exit()
}

/// The long names (without `--`) of the flags a conflict error names.
fn conflicting_flags(e: &clap::Error) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue};
    let mut named = Vec::new();
    for kind in [ContextKind::InvalidArg, ContextKind::PriorArg] {
        match e.get(kind) {
            Some(ContextValue::String(s)) => named.push(s.clone()),
            Some(ContextValue::Strings(v)) => named.extend(v.iter().cloned()),
            _ => {}
        }
    }
    named
        .iter()
        .filter_map(|a| a.split_whitespace().next()?.strip_prefix("--"))
        .map(str::to_string)
        .collect()
}

/// Of the flags `longs` (names without `--`), those given by their `INCIDENTLOG_*` variable
/// rather than on the command line (`args`): `(flag, variable)`, for errors that name a flag
/// the user never typed.
pub(crate) fn variables_behind(
    longs: &[&str],
    args: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let variables = flag_variables();
    longs
        .iter()
        .filter_map(|long| {
            let name = variables
                .iter()
                .find_map(|(flag, env)| (flag.as_deref() == Some(*long)).then_some(env))?;
            let flag = format!("--{long}");
            let on_command_line = args
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
            (!on_command_line && is_set(name)).then(|| (flag, name.clone()))
        })
        .collect()
}

/// "--a is set by the environment variable A, --b by B".
pub(crate) fn set_by(behind: &[(String, String)]) -> String {
    behind
        .iter()
        .enumerate()
        .map(|(i, (flag, var))| {
            if i == 0 {
                format!("{flag} is set by the environment variable {var}")
            } else {
                format!("{flag} by {var}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`variables_behind`] for this process's command line and environment.
pub(crate) fn flags_from_environment(longs: &[&str]) -> Vec<(String, String)> {
    variables_behind(longs, &command_line(), |name| {
        std::env::var_os(name).is_some()
    })
}

/// This process's arguments after the program's name.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The `INCIDENTLOG_*` variable that gave the value `e` refuses: the flag `e` names reads it,
/// it is set (`is_set`), and the command line (`args`) does not give the flag itself.
fn variable_of_bad_value(
    e: &clap::Error,
    args: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    variables_behind(&[long], args, is_set)
        .pop()
        .map(|(_, name)| name)
}

/// Every flag of every command that reads an environment variable: (its long name, the
/// variable).
fn flag_variables() -> Vec<(Option<String>, String)> {
    use clap::CommandFactory;
    fn collect(cmd: &clap::Command, out: &mut Vec<(Option<String>, String)>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                let long = arg.get_long().map(str::to_string);
                out.push((long, env.to_string_lossy().into_owned()));
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, out);
        }
    }
    let mut out = Vec::new();
    collect(&Cli::command(), &mut out);
    out
}

/// `INCIDENTLOG_*` variables that no flag of any command reads: most likely a misspelt
/// setting (`INCIDENTLOG_CORS_ORIGIN` for `INCIDENTLOG_CORS_ORIGINS`), which would otherwise
/// be ignored without a word.
fn unknown_settings(vars: impl Iterator<Item = String>) -> Vec<String> {
    let known: std::collections::HashSet<String> =
        flag_variables().into_iter().map(|(_, env)| env).collect();
    let mut unknown: Vec<String> = vars
        .filter(|v| v.starts_with("INCIDENTLOG_") && !known.contains(v))
        .filter(|v| !SCRIPT_VARIABLES.iter().any(|s| v.starts_with(s)))
        .collect();
    unknown.sort();
    unknown
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_with_usage_error(e),
    };
    init_logging(cli.log.as_deref());
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for name in unknown_settings(names) {
        tracing::warn!("{name} is not a setting of incidentlog (see --help); ignored");
    }
    prefer_small_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each blocking thread that ever runs keeps allocator memory of its own (reads of the
        // log allocate there and are freed elsewhere): with tokio's default of 512, 16 stalled
        // log streams read on 16 fresh threads held +250-350 MB, and streams opened again and
        // again ratcheted a server to 3 GB; with 16 threads, +80 MB and a plateau. Reads and
        // parsing are CPU work on two cores: 16 threads keep them busy.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(format_args!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Replay(args) => commands::replay(args).await,
            Command::Verify(args) => commands::verify(args).await,
            Command::Import(args) => commands::import(args).await,
            Command::Restore(args) => commands::restore(args).await,
            Command::Export(args) => commands::export(args).await,
            Command::Token { command } => commands::token(command).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => {
            // `incidentlog export | head`: the reader left. Not a success: a backup piped
            // into a command that died must not look complete.
            say(format_args!(
                "error: the output was closed before it was complete (its reader stopped)"
            ));
            ExitCode::from(exit::FAILURE)
        }
        Err(err) => {
            say(format_args!("error: {err:#}"));
            ExitCode::from(exit_code_of(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_store_values_are_never_repeated_beyond_their_scheme() {
        for (value, shown) in [
            ("postgress://u:secretpw@db:5432/x", "\"postgress\""),
            ("postgres:/u:secretpw@db/x", "\"postgres\""),
            ("postgress://db/x?password=secretpw", "\"postgress\""),
            ("postgress://u:pa/secretpw@db/x", "\"postgress\""),
            ("host=db user=u password=secretpw", "not shown"),
            ("fiel", "\"fiel\""),
        ] {
            let d = describe_store_value(value);
            assert!(!d.contains("secretpw"), "{value}: {d}");
            assert!(d.contains(shown), "{value}: {d}");
        }
    }

    #[test]
    fn log_filters_are_checked() {
        for ok in [
            "info",
            "WARN",
            "incidentlog_api=debug",
            "warn,incidentlog=trace",
        ] {
            assert!(parse_log_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["wran", "verbose", "info,loud", "bogus[[", "", " "] {
            assert!(parse_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(parse_name("ci-bot_1.x@y"), Ok("ci-bot_1.x@y".to_string()));
        for bad in ["", "bad name", "é", &"a".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1 KiB"), Ok(1024));
        assert_eq!(parse_bytes("2kb"), Ok(2000));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        assert_eq!(parse_log_cache("64MiB"), Ok(LogCache(Some(64 << 20))));
        assert_eq!(parse_log_cache("0"), Ok(LogCache(Some(0))));
        assert_eq!(parse_log_cache("ALL"), Ok(LogCache(None)));
        assert!(parse_log_cache("most").is_err());
    }

    #[test]
    fn misspelt_settings_are_found() {
        let vars = [
            "INCIDENTLOG_CORS_ORIGIN",
            "INCIDENTLOG_CORS_ORIGINS",
            "INCIDENTLOG_LOG",
            "INCIDENTLOG_BODYLIMIT",
            "INCIDENTLOG_TEST_PG",
            "INCIDENTLOG_PROFILE",
            "PATH",
        ];
        assert_eq!(
            unknown_settings(vars.iter().map(|v| v.to_string())),
            vec!["INCIDENTLOG_BODYLIMIT", "INCIDENTLOG_CORS_ORIGIN"]
        );
    }

    #[test]
    fn postgres_urls_are_checked_without_repeating_them() {
        for bad in [
            "postgres://u:secretpw@h:notaport/db",
            "postgres://u:secretpw@h/db?sslmode=bogus",
        ] {
            let err = bad.parse::<Backend>().unwrap_err();
            assert!(err.contains("bad PostgreSQL URL"), "{err}");
            assert!(!err.contains("secretpw"), "{err}");
        }
        assert!("postgres://u:pw@localhost:5432/db"
            .parse::<Backend>()
            .is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        // At most 24 days: what every use takes (the kernel's send timeout, deadlines).
        assert_eq!(
            parse_duration("2073600s"),
            Ok(Duration::from_secs(24 * 24 * 3600))
        );
        for huge in [
            "2073601s",
            "9223372036854775807s",
            "18446744073709551615",
            "4294969296ms",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("0").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
