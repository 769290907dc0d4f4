//! `incidentlog serve`: the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::Args;
use incidentlog_api::service::AppService;
use incidentlog_api::{AllowedHost, AllowedOrigin, ServeConfig};
use incidentlog_store::{Backend, EventStore};

use crate::{exit, open_store, parse_bytes, parse_duration, StoreArgs, WriteArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub write: WriteArgs,

    /// Address and port to listen on (`127.0.0.1:0` picks a free port; the line
    /// `listening on http://ADDR` on stdout tells which).
    #[arg(
        long,
        env = "INCIDENTLOG_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Let requests without a token read (GET); appends and admin routes still need a token.
    #[arg(long, env = "INCIDENTLOG_PUBLIC_READ", value_parser = BoolishValueParser::new())]
    pub public_read: bool,

    /// Largest request body accepted, except bulk import (larger: 413).
    #[arg(
        long,
        env = "INCIDENTLOG_BODY_LIMIT",
        default_value = "1MiB",
        value_name = "BYTES",
        value_parser = body_limit
    )]
    pub body_limit: u64,

    /// Largest body of a bulk import (`POST /v1/events`).
    #[arg(
        long,
        env = "INCIDENTLOG_BULK_BODY_LIMIT",
        default_value = "64MiB",
        value_name = "BYTES",
        value_parser = body_limit
    )]
    pub bulk_body_limit: u64,

    /// Time limit of reads (GETs; 503 after it) and of receiving a request body (408), e.g.
    /// 30s, 500ms; also the grace period of a shutdown. Appends, admin requests, the live feed
    /// and streamed answers are not cut off by it.
    #[arg(
        long,
        env = "INCIDENTLOG_REQUEST_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub request_timeout: Duration,

    /// Requests per second allowed per token (anonymous readers share one budget per client
    /// address); beyond it: 429 with Retry-After. 0 turns the limit off.
    #[arg(
        long,
        env = "INCIDENTLOG_RATE_LIMIT",
        default_value_t = ServeConfig::default().rate_limit_per_sec,
        value_name = "PER_SEC"
    )]
    pub rate_limit: u32,

    /// Requests a token may make at once before the rate limit applies (the size of its
    /// bucket, which refills at `--rate-limit` per second); 0 means one second's worth.
    #[arg(
        long,
        env = "INCIDENTLOG_RATE_LIMIT_BURST",
        default_value_t = ServeConfig::default().rate_limit_burst,
        value_name = "N"
    )]
    pub rate_limit_burst: u32,

    /// Requests handled at once (the live feed not counted); more wait up to the request
    /// timeout, then get 503.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_CONCURRENT_REQUESTS",
        default_value_t = ServeConfig::default().max_concurrent_requests,
        value_name = "N",
        value_parser = at_least_one()
    )]
    pub max_concurrent_requests: usize,

    /// Requests one token (anonymous readers: one client address) may have in flight at once
    /// (the live feed not counted); more get 429 at once, so that one client's slow uploads
    /// cannot hold every slot of --max-concurrent-requests.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_CONCURRENT_PER_CLIENT",
        default_value_t = ServeConfig::default().max_concurrent_per_client,
        value_name = "N",
        value_parser = at_least_one()
    )]
    pub max_concurrent_per_client: usize,

    /// Interval of the heartbeat comments on the live feed (keeps proxies from closing it).
    #[arg(
        long,
        env = "INCIDENTLOG_SSE_HEARTBEAT",
        default_value = "15s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub sse_heartbeat: Duration,

    /// How often the server re-reads the token table (how soon a revocation takes effect).
    #[arg(
        long,
        env = "INCIDENTLOG_TOKEN_REFRESH",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub token_refresh: Duration,

    /// Most long-lived streams at once: live feeds (SSE), ndjson log streams (GET /v1/events
    /// with Accept: application/x-ndjson) and CSV/GeoJSON listings (GET /v1/incidents with
    /// Accept: text/csv or application/geo+json); more get 503; 0 turns all three off.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_SSE_CLIENTS",
        default_value_t = ServeConfig::default().max_sse_clients,
        value_name = "N",
        value_parser = count()
    )]
    pub max_sse_clients: usize,

    /// Most live feeds, ndjson log streams and CSV/GeoJSON listings of one token at once
    /// (anonymous readers: of one client address); more get 429, so that one client cannot
    /// take every slot.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_SSE_PER_CLIENT",
        default_value_t = ServeConfig::default().max_sse_per_client,
        value_name = "N",
        value_parser = at_least_one()
    )]
    pub max_sse_per_client: usize,

    /// Most open connections at once; more are closed as soon as they are accepted.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_CONNECTIONS",
        default_value_t = ServeConfig::default().max_connections,
        value_name = "N",
        value_parser = at_least_one()
    )]
    pub max_connections: usize,

    /// Most open connections from one client address at once; more are closed as soon as
    /// they are accepted, so that one address cannot fill --max-connections. Behind a reverse
    /// proxy every client has the proxy's address: raise it there.
    #[arg(
        long,
        env = "INCIDENTLOG_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = ServeConfig::default().max_connections_per_address,
        value_name = "N",
        value_parser = at_least_one()
    )]
    pub max_connections_per_address: usize,

    /// Time a client has to send a whole request head (request line and headers) before the
    /// connection is closed, e.g. "10s" (protects against slowloris clients).
    #[arg(
        long,
        env = "INCIDENTLOG_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub header_read_timeout: Duration,

    /// Time a client may take nothing of its answer (its receive window shut) or leave data
    /// unacknowledged before the connection is closed, e.g. "30s" (TCP_USER_TIMEOUT): a
    /// stalled live feed or log stream gives back its slot and memory; a slow reader is not cut.
    #[arg(
        long,
        env = "INCIDENTLOG_SEND_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub send_timeout: Duration,

    /// Origin of a browser page allowed to call the API (CORS), e.g.
    /// https://dashboard.example.org; repeat the flag, or separate with commas in the variable.
    /// `*` allows every page. Tokens still decide what each caller may do.
    #[arg(
        long = "cors-origin",
        env = "INCIDENTLOG_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ',',
        value_parser = clap::value_parser!(AllowedOrigin)
    )]
    pub cors_origins: Vec<AllowedOrigin>,

    /// Host name that requests without a token may use (the `Host` header, any port), e.g.
    /// incidents.example.org, besides IP addresses and localhost, which are always allowed;
    /// repeat the flag, or separate with commas in the variable. `*` allows any. Without it:
    /// on a loopback --listen address, only those; on any other, any name. A page of another
    /// site whose name points at this server (DNS rebinding) is refused (421), so it cannot
    /// read a --public-read log. Requests with a token are not checked: a page cannot hold
    /// one. Behind a reverse proxy on loopback that passes the public name on, name it here.
    #[arg(
        long = "allowed-host",
        env = "INCIDENTLOG_ALLOWED_HOSTS",
        value_name = "HOST",
        value_delimiter = ',',
        value_parser = clap::value_parser!(AllowedHost)
    )]
    pub allowed_hosts: Vec<AllowedHost>,
}

/// Largest count a limit takes (far above any machine's capacity; the limits are semaphores,
/// which refuse more than `usize::MAX >> 3` permits, so a larger value must be a usage error
/// before anything is created, not a panic after).
const MAX_LIMIT: u64 = 1 << 30;

/// A body limit: a size (`parse_bytes`), at least one byte (a limit of 0 would refuse every
/// append with 413).
fn body_limit(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err(format!("{s:?}: a body limit must be at least 1 byte")),
        n => Ok(n),
    }
}

/// A count that must be at least 1 (a limit of 0 would refuse everything).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_LIMIT)
}

/// A count that may be 0 (that feature off).
fn count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_LIMIT)
}

/// The server's settings from its flags and variables.
fn serve_config(args: &ServeArgs) -> ServeConfig {
    ServeConfig {
        listen: args.listen,
        public_read: args.public_read,
        body_limit: usize::try_from(args.body_limit).unwrap_or(usize::MAX),
        bulk_body_limit: usize::try_from(args.bulk_body_limit).unwrap_or(usize::MAX),
        request_timeout: args.request_timeout,
        rate_limit_per_sec: args.rate_limit,
        rate_limit_burst: args.rate_limit_burst,
        max_sse_clients: args.max_sse_clients,
        max_sse_per_client: args.max_sse_per_client,
        max_concurrent_requests: args.max_concurrent_requests,
        max_concurrent_per_client: args.max_concurrent_per_client,
        sse_heartbeat: args.sse_heartbeat,
        token_refresh: args.token_refresh,
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        header_read_timeout: args.header_read_timeout,
        send_timeout: args.send_timeout,
        cors_origins: args.cors_origins.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<u8> {
    // Before anything else: a SIGTERM, SIGINT or SIGHUP during the start-up (opening a large log,
    // cutting a torn tail, building the views) stops the server once the start-up is done,
    // instead of killing it half-way with the signal's default action.
    let stop = StopSignal::listen();
    let store = Arc::new(open_store(&args.store, &args.write).await?);
    let config = serve_config(&args);
    // Before the first admin token: a start that fails on a taken port, or on a log that
    // cannot be served (a damaged PostgreSQL log), must not have printed (and stored) a token
    // nobody will see again.
    let listener = incidentlog_api::bind(&config).await?;
    let service = AppService::start(store.clone())
        .await
        .context("cannot start the service (its tokens, the views of the log)")?;
    match incidentlog_api::auth::ensure_admin_token(&store)
        .await
        .context("cannot read the tokens (or create the first admin token)")?
    {
        Some(secret) => {
            let hint = token_command_hint(&args.store);
            if let Err(e) = print_first_token(&secret, args.listen, &hint) {
                // A secret nobody saw must not stay valid (and it was the first start's only
                // chance to show one): revoked, and said where an operator will look.
                let revoked = store
                    .revoke_token(incidentlog_api::auth::FIRST_ADMIN_NAME, chrono::Utc::now())
                    .await;
                tracing::error!(
                    error = %e,
                    revoked = revoked.is_ok(),
                    "could not print the first admin token on stdout, so it was revoked; \
                     create one with `{hint} --name NAME --role admin`"
                );
            }
            // The service loaded the (empty) table before the token was made.
            if let Err(e) = service.reload_tokens().await {
                tracing::warn!(error = %e, "could not reload the tokens after the first one");
            }
        }
        None => match store.tokens().await {
            Ok(tokens) if !incidentlog_api::auth::has_active_admin(&tokens) => tracing::warn!(
                "no admin token is active (every one was revoked): the admin API answers 403 to every \
                 token; create one with `{} --name NAME --role admin`",
                token_command_hint(&args.store)
            ),
            _ => tracing::debug!("tokens exist; no first admin token created"),
        },
    }
    if stop.arrived() {
        tracing::info!("the signal came during the start-up: stopping before serving");
        service.close().await.context("closing the store failed")?;
        tracing::info!("stopped cleanly");
        return Ok(exit::OK);
    }
    incidentlog_api::serve(listener, service.clone(), config, stop.wait())
        .await
        .context("the server stopped with an error")?;
    if let Some(what) = service.damage() {
        tracing::error!(
            damage = %what,
            "stopped, but an integrity check found the log damaged: check it (`incidentlog verify`) before serving it again"
        );
        return Ok(exit::DAMAGED);
    }
    // A store that refused appends (a failed write or sync, its files changed under it) did
    // not stop cleanly, however orderly the shutdown.
    if let Some(why) = store.failed_reason() {
        tracing::error!(
            reason = %why,
            "stopped, but the store had been refusing appends: check the log (`incidentlog verify`) before serving it again"
        );
        return Ok(exit::FAILURE);
    }
    tracing::info!("stopped cleanly");
    Ok(exit::OK)
}

/// The `token create` command for this server's store, as far as it can be shown (a
/// PostgreSQL URL may hold a password: named, not printed).
pub(crate) fn token_command_hint(store: &StoreArgs) -> String {
    match &store.store {
        Backend::Postgres(_) => {
            "incidentlog token create --store <this server's postgres:// URL>".to_string()
        }
        Backend::File if store.data_dir == std::path::Path::new("./data") => {
            "incidentlog token create".to_string()
        }
        Backend::File => format!(
            "incidentlog token create --data-dir {}",
            shell_quoted(&store.data_dir.to_string_lossy())
        ),
    }
}

/// `s` as one shell word (single quotes when it holds anything but plain path characters).
fn shell_quoted(s: &str) -> String {
    if !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | ',')
        })
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Printed once, on stdout, when a data dir gets its first token.
fn print_first_token(secret: &str, listen: SocketAddr, hint: &str) -> std::io::Result<()> {
    use std::io::Write;
    // With port 0 the real address is only known once bound (the `listening on` line).
    let url = if listen.port() == 0 {
        "http://ADDR".to_string()
    } else {
        format!("http://{listen}")
    };
    if crate::stdout_discards() {
        return Err(std::io::Error::other(
            "standard output is /dev/null (closed, or sent there)",
        ));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "admin token: {secret}\n\
         (first start: this admin token is shown only now and only its hash is stored; keep it.\n \
         use it as `curl -H \"Authorization: Bearer $TOKEN\" {url}/v1/regions` with TOKEN set to it\n \
         (not typed into the command line, where shell history and `ps` would keep it),\n \
         and create more with `{hint} --name NAME --role reader|reporter|admin`)"
    )?;
    out.flush()
}

/// SIGTERM, SIGINT (Ctrl-C) or SIGHUP, listened for from the moment it is made.
struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// Installs the handlers now (a signal that comes before anyone waits is kept).
    fn listen() -> StopSignal {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signals = crate::StopSignals::install();
        tokio::spawn(async move {
            let mut signals = match signals {
                Ok(signals) => signals,
                Err(e) => {
                    // Served without a graceful stop rather than not at all.
                    tracing::error!("cannot listen for SIGTERM/SIGINT/SIGHUP: {e}");
                    return std::future::pending::<()>().await;
                }
            };
            let name = signals.next().await;
            let first = std::time::Instant::now();
            tracing::info!(
                "{name} received: shutting down (a second signal quits at once, without \
                 waiting for the requests in flight)"
            );
            tx.send_replace(true);
            // An operator's way out of a shutdown that waits on a hung disk (or a client's
            // request for the whole grace period): nothing is lost by it, since an append is
            // acknowledged only once durable, and an append cut short is a torn tail the next
            // open cuts off (or, on PostgreSQL, a transaction never committed).
            let name = signals.next_after(first).await;
            tracing::error!(
                "{name} received again: quitting at once; requests in flight get no answer \
                 (none of their events was acknowledged) and are to be retried"
            );
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        });
        StopSignal(rx)
    }

    /// Whether a signal came already.
    fn arrived(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a signal came.
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    /// The flags' defaults are written for `--help` ("1MiB", "30s"); they must be the
    /// service's own defaults, or a server started with no flags would differ from one built
    /// in code.
    #[test]
    fn flag_defaults_are_the_service_defaults() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: super::ServeArgs,
        }
        // A flag's variable set in the environment would count as given.
        let set: Vec<_> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .filter(|v| std::env::var_os(v).is_some())
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !set.is_empty() {
            eprintln!("SKIPPED: {} set in the environment", set.join(", "));
            return;
        }
        let cli = Cli::try_parse_from(["serve"]).expect("no flag needed");
        assert_eq!(
            format!("{:?}", super::serve_config(&cli.serve)),
            format!("{:?}", incidentlog_api::ServeConfig::default())
        );
    }

    #[test]
    fn body_limits_are_at_least_one_byte() {
        assert!(super::body_limit("0").is_err());
        assert!(super::body_limit("0MiB").is_err());
        assert_eq!(super::body_limit("1"), Ok(1));
        assert_eq!(super::body_limit("64MiB"), Ok(64 << 20));
    }
}
