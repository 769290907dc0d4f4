//! The application layer: appends decided under the incident's version, bulk import, live
//! views, as-of queries, replay and verify. No HTTP machinery here (no axum, no requests or
//! status codes): `http` maps this to routes. What it returns is the crate's own: `ApiError`,
//! whose variants `http` turns into statuses, and the `wire` types the answers are made of.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use incidentlog_projections::{
    decide, decide_and_apply, fold_incident, hyphenated_uuid, parse_events, whole_number,
    DecodedEvent, Envelope, FieldError, IncidentPage, IncidentPager, IncidentQuery, IncidentState,
    IncidentView, Json, JsonMembers, JsonValue, Problems, Projection, ProjectionError, Region,
    RegionSummary, TypedEvent, Window,
};
use incidentlog_store::{
    AppendOutcome, AppendRequest, EventRef, EventStore, ExpectedVersion, Head, NewEvent,
    RecordedEvent, Store, StoreError, VerifyReport,
};
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{watch, OwnedMutexGuard};
use uuid::Uuid;

use crate::auth::TokenTable;
use crate::error::{field_error, ApiError};
use crate::metrics::ServiceMetrics;
use crate::wire::{expected_json, AppendResponse};

/// Calls a store method without inflating the caller's future: the file store's futures are
/// small and awaited in place; other backends' (large) futures are boxed. Futures of the
/// request path are moved through every middleware layer, so their size is paid per request.
macro_rules! lean {
    ($store:expr, $method:ident ( $($arg:expr),* )) => {
        match {
            let s: &Store = &$store;
            s
        } {
            Store::File(f) => f.$method($($arg),*).await,
            other => Box::pin(other.$method($($arg),*)).await,
        }
    };
}

// After `lean!`, which it uses.
mod handoff;
mod import;
pub use import::IMPORT_CHUNK_EVENTS;
mod restore;
use handoff::Handoff;
pub use restore::RestoreCheck;

/// Page size of catch-up and replay reads: large enough that per-call overhead does not
/// count, small enough for one reading thread (the file store spreads reads of 8k events and
/// more over several, whose CPU a two-core machine's fold then lacks; measured in
/// `proto-docs/benchmarks.md`).
const REPLAY_PAGE: usize = 4 * 1024;
/// Events per read of an ndjson log stream (about 150 KB of output, what a stalled reader
/// holds).
const LOG_NDJSON_PAGE: usize = 256;
/// Incidents per block of a CSV or GeoJSON listing (the JSON listing's largest page; about
/// 0.5 MB of CSV, one short hold of the views' read lock each).
pub const TABLE_BLOCK: usize = 1000;

/// Incidents a listing looks at under one hold of the views' lock (~0.2-0.5 ms).
const SCAN_BLOCK: usize = 8192;
/// A rebuild reserves room for this many events at most up front (more grow as they come).
const REBUILD_RESERVE_MAX: u64 = 1 << 24;
/// How long an append with `expected_version: "any"` keeps deciding again when another
/// process wins the race for its incident (several servers on one database), before it gives
/// up with a 503 (never a 409: "any" cannot mismatch).
const ANY_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// Per-incident lock stripes: in-process writers of one incident take turns, so that
/// decide-then-append never runs on state another writer of this process is changing.
const STRIPES: usize = 8192;
/// Events applied to the live views per write-lock hold.
const APPLY_SLICE: usize = 256;
/// How long a read waits for the live views to reach the durable head before answering anyway.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(30);
/// The same while the store reports itself unavailable.
const UNAVAILABLE_READ_WAIT: Duration = Duration::from_secs(1);

impl Inner {
    fn new(store: Arc<Store>, projection: Projection, position: u64, live: bool) -> Inner {
        let (applied, _) = watch::channel(position);
        let (closing, _) = watch::channel(false);
        Inner {
            store,
            projection: RwLock::new(projection),
            applied,
            start_head: position,
            closing,
            closed: AtomicBool::new(false),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            import_lock: tokio::sync::Mutex::new(()),
            imports_stop: AtomicBool::new(false),
            replay_lock: tokio::sync::Mutex::new(()),
            follower: Mutex::new(None),
            handoff: Mutex::new(Handoff::starting_after(position)),
            handed_over: tokio::sync::Notify::new(),
            appends_in_flight: std::sync::atomic::AtomicUsize::new(0),
            view_reads: Arc::new(tokio::sync::Semaphore::new(view_read_turns())),
            view_callers: Mutex::new(HashMap::new()),
            table_blocks: Arc::new(tokio::sync::Semaphore::new(view_read_turns())),
            tokens: TokenTable::new(),
            metrics: ServiceMetrics::default(),
            live,
            views_generation: std::sync::atomic::AtomicU64::new(0),
            // An offline service runs no check.
            integrity: watch::channel(if live {
                Integrity::Checking
            } else {
                Integrity::Done
            })
            .0,
        }
    }
}

/// A caller's turn among its own long reads ([`AppService::off_workers`]); the caller's
/// entry goes when its last read ends, however that read ends (a request cut off mid-wait
/// drops its turn like one that finished).
struct CallerTurn {
    inner: Arc<Inner>,
    caller: String,
    /// The caller's turns (taken out, and let go, under the map's lock on drop).
    turns: Option<Arc<tokio::sync::Semaphore>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl CallerTurn {
    async fn take(inner: Arc<Inner>, caller: &str) -> Result<CallerTurn, ApiError> {
        let turns = inner
            .view_callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(view_read_turns())))
            .clone();
        let mut turn = CallerTurn {
            inner,
            caller: caller.to_owned(),
            turns: Some(turns.clone()),
            permit: None,
        };
        turn.permit = Some(
            turns
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Unavailable("shutting down".into()))?,
        );
        Ok(turn)
    }
}

impl Drop for CallerTurn {
    fn drop(&mut self) {
        self.permit.take();
        let mut callers = self
            .inner
            .view_callers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Clones are made, and (here) let go, under this lock: two (the map's and this one)
        // means no other read of this caller waits or runs. Two reads ending at once each
        // see the other's until it is let go, so the second to get here removes the entry.
        if let Some(turns) = self.turns.take() {
            let last = Arc::strong_count(&turns) == 2;
            drop(turns);
            if last {
                callers.remove(&self.caller);
            }
        }
    }
}

/// The borrowed form of a recorded event, as the projections crate reads it.
pub fn envelope(e: &RecordedEvent) -> Envelope<'_> {
    envelope_of(e.borrowed())
}

fn envelope_of(e: EventRef<'_>) -> Envelope<'_> {
    Envelope {
        global_position: e.global_position,
        incident_id: e.stream_id,
        stream_version: e.stream_version,
        event_id: e.event_id,
        event_type: e.event_type,
        data: e.data,
        recorded_at: e.recorded_at,
        recorded_by: e.recorded_by,
    }
}

/// A parsed append: what `POST /v1/incidents/{id}/events` and each bulk line turn into.
#[derive(Debug)]
pub struct AppendCommand {
    pub incident_id: Uuid,
    pub expected: ExpectedVersion,
    pub events: Vec<TypedEvent>,
}

/// Parses an append body `{"expected_version"?, "events": [...]}` (and, for bulk lines,
/// `"incident_id"`). Every problem is reported with a JSON pointer.
pub fn parse_command(
    body: &Json<'_>,
    path_incident: Option<Uuid>,
) -> Result<AppendCommand, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(vec![field_error(
            "",
            "expected a JSON object",
        )]));
    };
    let mut errors = Problems::default();
    // In key order, whatever order the body has them in.
    let mut keys: Vec<&str> = obj.keys().collect();
    keys.sort_unstable();
    for key in keys {
        let known = matches!(key, "expected_version" | "events")
            || (path_incident.is_none() && key == "incident_id");
        if !known {
            errors.push(field_error(
                format!("/{}", escape_pointer(key)),
                "unknown field",
            ));
        }
    }
    let incident_id = match path_incident {
        Some(id) => Some(id),
        None => match obj.get("incident_id") {
            None => {
                errors.push(field_error("/incident_id", "required"));
                None
            }
            // Ids in bodies are the hyphenated form, as `event_id` and `claim_id` are.
            Some(v) => match v.as_str().and_then(hyphenated_uuid) {
                Some(id) => Some(id),
                None => {
                    errors.push(field_error(
                        "/incident_id",
                        "expected a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                    ));
                    None
                }
            },
        },
    };
    let expected = match obj.get("expected_version") {
        None | Some(Json::Null) => Some(ExpectedVersion::Any),
        Some(Json::String(s)) if s == "any" => Some(ExpectedVersion::Any),
        // A whole number written `2.0` is 2, as for the event counts (JSON Schema's "integer").
        Some(v) => match v.as_number().and_then(whole_number) {
            Some(n) => Some(ExpectedVersion::Exact(n)),
            None => {
                errors.push(field_error(
                    "/expected_version",
                    "expected a non-negative integer or \"any\"",
                ));
                None
            }
        },
    };
    let events = match obj.get("events") {
        None => {
            errors.push(field_error("/events", "required"));
            None
        }
        Some(Json::Array(a)) if a.is_empty() => {
            errors.push(field_error("/events", "at least one event is required"));
            None
        }
        Some(v) if matches!(v, Json::Array(_)) => match parse_events(v, "/events") {
            Ok(events) => Some(events),
            Err(e) => {
                errors.append(e);
                None
            }
        },
        Some(_) => {
            errors.push(field_error("/events", "expected an array of events"));
            None
        }
    };
    match (incident_id, expected, events) {
        (Some(incident_id), Some(expected), Some(events)) if errors.is_empty() => {
            Ok(AppendCommand {
                incident_id,
                expected,
                events,
            })
        }
        _ => Err(ApiError::invalid(errors)),
    }
}

/// RFC 6901 escaping of one reference token.
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The result of an append: the SPEC body, and whether it recorded anything (201) or was an
/// idempotent repeat (200).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub response: AppendResponse,
    pub created: bool,
}

/// A rejected bulk line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RejectedLine {
    /// 1-based line number.
    pub line: u64,
    /// The HTTP status this line would have had as a single append.
    pub status: u16,
    pub detail: String,
    /// One entry per bad field, as in that append's problem document (pointers into the
    /// line's object); empty when the problem is not with one field.
    #[schema(value_type = Vec<crate::wire::FieldErrorDoc>)]
    pub errors: Vec<incidentlog_projections::FieldError>,
}

/// Answer of a bulk import. `appended` and `duplicates` count events.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ImportReport {
    pub appended: u64,
    pub duplicates: u64,
    /// The rejected lines in line order: the first [`REJECTED_LISTED`] of them.
    pub rejected: Vec<RejectedLine>,
    /// How many lines were rejected in all; only there when `rejected` lists fewer (a body of
    /// 64 MiB can hold tens of millions of bad lines, and each listed one costs memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_total: Option<u64>,
}

/// Most rejected lines an import report lists.
pub const REJECTED_LISTED: usize = 10_000;

/// Outcome of rebuilding the views from the log.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    /// Fold and digest together.
    pub duration_ms: u64,
    /// Folding the events into fresh views.
    pub fold_ms: u64,
    /// Hashing the rebuilt views.
    pub digest_ms: u64,
    pub digest: String,
    /// Every incident recorded by that position, retracted ones included.
    pub incidents: u64,
    /// Of those, the retracted ones.
    pub retracted: u64,
    /// Regions with at least one non-retracted incident: those `GET /v1/regions` lists.
    pub regions: u64,
}

/// Which state a read wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    Live,
    /// Built from the events recorded at or before this time.
    Time(DateTime<Utc>),
    /// Built from the events up to this global position (clamped to the head).
    Position(u64),
}

/// The application service. Cheap to clone.
#[derive(Clone)]
pub struct AppService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    projection: RwLock<Projection>,
    /// Last position applied to `projection`.
    applied: watch::Sender<u64>,
    /// Head of the log when the service started; ready once applied reaches it.
    start_head: u64,
    closing: watch::Sender<bool>,
    closed: AtomicBool,
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    import_lock: tokio::sync::Mutex<()>,
    /// Set when a shutdown's grace period is over: bulk imports stop at their next batch
    /// (`stop_imports`).
    imports_stop: AtomicBool,
    replay_lock: tokio::sync::Mutex<()>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) tokens: TokenTable,
    pub(crate) metrics: ServiceMetrics,
    /// False for an offline service (`start_offline`): no views, decisions from the store.
    live: bool,
    /// Bumped when a replay swaps in rebuilt views: what was derived from the old ones (the
    /// HTTP layer's summary cache) is stale even at an unchanged position.
    views_generation: std::sync::atomic::AtomicU64,
    /// Where the integrity check after start stands (`check_integrity`).
    integrity: watch::Sender<Integrity>,
    /// Appended events on their way from the requests to the live views (`follow`).
    handoff: Mutex<Handoff>,
    /// Wakes the follower when what it waits for was handed over.
    handed_over: tokio::sync::Notify,
    /// Appends of this process that may still hand events over (`InFlight`).
    appends_in_flight: std::sync::atomic::AtomicUsize,
    /// Turns of the long view reads on blocking threads ([`AppService::off_workers`]), and
    /// each caller's own turns before those.
    view_reads: Arc<tokio::sync::Semaphore>,
    view_callers: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Turns of the streamed tables' blocks on blocking threads (`incidents_table`).
    table_blocks: Arc<tokio::sync::Semaphore>,
}

/// The machine's cores, asked once: `available_parallelism` reads the cgroup's files each
/// time, and a new caller's first long read needs the count.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Long reads of the views run at once: as many as the machine has cores.
fn view_read_turns() -> usize {
    cores()
}

/// The integrity check after start (checksums and the whole hash chain).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Integrity {
    /// Running: the server is `starting`.
    Checking,
    /// Finished without finding damage (or could not run: logged).
    Done,
    /// The log was changed or damaged (what and where): appends are refused and `/readyz`
    /// says `damaged`.
    Damaged(String),
}

impl AppService {
    /// Opens the service on a store: folds the whole log into the live views, then follows
    /// new events in the background. Also loads the token table.
    pub async fn start(store: Arc<Store>) -> Result<AppService, ApiError> {
        let started = Instant::now();
        let (projection, position) = rebuild_views(&*store, None, &|_| {}).await?;
        tracing::info!(
            events = position,
            ms = started.elapsed().as_millis() as u64,
            "live views caught up"
        );
        let inner = Arc::new(Inner::new(store, projection, position, true));
        if let Store::File(f) = &*inner.store {
            let histogram = inner.metrics.store_write_seconds.clone();
            f.observe_writes(move |took| histogram.observe_duration(took));
        }
        inner.tokens.reload(&inner.store).await?;
        let handle = tokio::spawn(follow(inner.clone(), position));
        *lock(&inner.follower) = Some(handle);
        tokio::spawn(check_integrity(inner.clone()));
        Ok(AppService { inner })
    }

    /// A service without live views, for offline writers such as `incidentlog import`: it
    /// neither folds the log at start nor follows it, and decides every append on the
    /// incident's stream as the store has it (the same rules, the same validation). Reads
    /// of views answer from an empty projection; use `start` for serving.
    pub async fn start_offline(store: Arc<Store>) -> Result<AppService, ApiError> {
        let inner = Arc::new(Inner::new(store, Projection::new(), 0, false));
        Ok(AppService { inner })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub(crate) fn tokens(&self) -> &TokenTable {
        &self.inner.tokens
    }

    /// Re-reads the token table from the store now (the server also does this periodically).
    pub async fn reload_tokens(&self) -> Result<(), ApiError> {
        self.inner.tokens.reload(&self.inner.store).await
    }

    pub fn metrics(&self) -> &ServiceMetrics {
        &self.inner.metrics
    }

    /// The file store, for its own statistics (`None` on PostgreSQL: one transaction per
    /// batch, see the database's statistics).
    pub fn file_store(&self) -> Option<&incidentlog_store::FileStore> {
        match &*self.inner.store {
            Store::File(f) => Some(f),
            _ => None,
        }
    }

    /// The store's durable head position.
    pub fn store_head(&self) -> u64 {
        self.inner.store.head().position
    }

    /// Last position applied to the live views.
    pub fn applied_position(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Whether the service can take appends and answer reads: `"ok"`, or why not: `"closing"`
    /// (shutting down), `"damaged"` (the integrity check after start failed), `"unavailable"`
    /// (the store refuses appends until it is reopened, e.g. after a failed sync; the store
    /// logged why) or `"starting"` (the views are catching up with the head seen at start, or
    /// the integrity check is still running).
    pub fn readiness(&self) -> &'static str {
        let integrity = match &*self.inner.integrity.borrow() {
            Integrity::Checking => Some("starting"),
            Integrity::Damaged(_) => Some("damaged"),
            Integrity::Done => None,
        };
        if self.inner.closed.load(Relaxed) {
            "closing"
        } else if let Some(why) = integrity {
            why
        } else if self.inner.store.unavailable_reason().is_some() {
            "unavailable"
        } else if self.applied_position() < self.inner.start_head {
            "starting"
        } else {
            "ok"
        }
    }

    /// Why the store cannot take appends now, if it knows (a failed or hung write or sync, an
    /// unreachable database, a close under way).
    pub fn unavailable_reason(&self) -> Option<String> {
        self.inner.store.unavailable_reason()
    }

    /// Resolves when the service starts closing (used to end SSE streams).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Tells bulk imports to stop at their next batch of lines: each then answers 503 naming
    /// the first line not recorded, once its chunk in flight is durable (a shutdown whose
    /// grace period is over, so that an import longer than it still gets an answer). Returns
    /// whether an import was running or waiting.
    pub fn stop_imports(&self) -> bool {
        self.inner.imports_stop.store(true, Relaxed);
        self.inner.import_lock.try_lock().is_err()
    }

    /// Stops the follower and closes the store (waits for in-flight appends, syncs).
    pub async fn close(&self) -> Result<(), ApiError> {
        self.inner.closed.store(true, Relaxed);
        self.inner.closing.send_replace(true);
        self.inner.store.close().await?;
        let handle = lock(&self.inner.follower).take();
        if let Some(handle) = handle {
            handle.abort();
        }
        Ok(())
    }

    fn read_projection(&self) -> RwLockReadGuard<'_, Projection> {
        self.inner
            .projection
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.stripes[stripe_index(id)].clone()
    }

    /// Waits until the live views include every event acknowledged so far (read-your-writes).
    ///
    /// Reads wait, writes do not: an append is answered once durable, and the store publishes
    /// its durable head before answering, so a read that begins after a 2xx sees a head at or
    /// past that append and waits here until the views have applied it. Under write load
    /// this is one follower step (well under a millisecond); on a quiet log it returns at once.
    pub async fn caught_up(&self) {
        self.wait_applied_for(self.inner.store.head().position, self.read_wait())
            .await;
    }

    /// How long a read waits for the views: a store that cannot be reached (PostgreSQL down)
    /// may not feed them either, so briefly then (a failed file store still can: its log is
    /// readable), not the full while.
    fn read_wait(&self) -> Duration {
        match self.inner.store.unavailable_reason() {
            Some(_) => UNAVAILABLE_READ_WAIT,
            None => READ_YOUR_WRITES_WAIT,
        }
    }

    /// Waits until the live views include `position`.
    pub async fn wait_applied(&self, position: u64) {
        self.wait_applied_for(position, READ_YOUR_WRITES_WAIT).await;
    }

    async fn wait_applied_for(&self, position: u64, limit: Duration) {
        if !self.inner.live || self.applied_position() >= position {
            return;
        }
        let mut rx = self.inner.applied.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            tracing::warn!(
                position,
                applied = self.applied_position(),
                "live views did not reach an acknowledged position in time"
            );
        }
    }

    /// The decision state of an incident as the store has it now (decision-only:
    /// `IncidentState::into_decision_only`).
    async fn decision_state(&self, id: Uuid) -> Result<IncidentState, ApiError> {
        let version = lean!(self.inner.store, stream_version(id))?;
        if version == 0 {
            return Ok(IncidentState::with_id(id).into_decision_only());
        }
        if self.inner.live {
            let state = self.read_projection().decision_state(id);
            if state.version() == version {
                return Ok(state);
            }
            // The views lag the store by a moment: wait for them to reach the durable head
            // once before re-reading the whole stream.
            let head = self.inner.store.head().position;
            let mut rx = self.inner.applied.subscribe();
            let _ =
                tokio::time::timeout(Duration::from_millis(200), rx.wait_for(|p| *p >= head)).await;
            let state = self.read_projection().decision_state(id);
            if state.version() == version {
                return Ok(state);
            }
        }
        let events = lean!(self.inner.store, read_stream(id))?;
        let mut state = IncidentState::with_id(id).into_decision_only();
        for e in &events {
            state.apply(&envelope(e))?;
        }
        Ok(state)
    }

    /// Appends one batch of events to one incident (SPEC 3): idempotent repeats answer with
    /// the original positions, the batch is decided against the incident's state at the
    /// version it is appended under; answered once durable (reads wait for the views, see `caught_up`).
    pub async fn append(
        &self,
        cmd: AppendCommand,
        recorded_by: &str,
    ) -> Result<Appended, ApiError> {
        self.refuse_if_damaged()?;
        let in_flight = self.inner.live.then(|| InFlight::begin(&*self.inner));
        let stripe = self.stripe(cmd.incident_id);
        let guard = stripe.lock().await;
        let result = self.append_locked(&cmd, recorded_by).await;
        drop(guard);
        // A refusal is counted in `incidentlog_appends_rejected_total` by the HTTP layer
        // (which also sees what never gets here) or, for a bulk line, by the import.
        let outcome = result?;
        let appended = self.appended(&cmd, outcome);
        if in_flight.is_some() {
            self.hand_over(cmd, outcome);
        }
        drop(in_flight);
        Ok(appended)
    }

    /// Hands the events of a recorded append to the live views, stamped as the store recorded
    /// them, so that the follower need not read and decode them again.
    fn hand_over(&self, cmd: AppendCommand, outcome: AppendOutcome) {
        let mut events = Vec::with_capacity(cmd.events.len());
        if stamp_recorded(cmd.incident_id, cmd.events, &outcome, &mut events).is_ok() {
            self.inner.hand_over(events);
        }
    }

    fn appended(&self, cmd: &AppendCommand, outcome: AppendOutcome) -> Appended {
        let n = cmd.events.len() as u64;
        let m = &self.inner.metrics;
        if outcome.duplicate {
            m.events_duplicate.fetch_add(n, Relaxed);
        } else {
            m.events_appended.fetch_add(n, Relaxed);
            m.append_batch_size.observe(n as f64);
        }
        Appended {
            response: AppendResponse {
                incident_id: outcome.stream_id,
                version: outcome.version,
                first_position: outcome.first_position,
                last_position: outcome.last_position,
            },
            created: !outcome.duplicate,
        }
    }

    async fn append_locked(
        &self,
        cmd: &AppendCommand,
        recorded_by: &str,
    ) -> Result<AppendOutcome, ApiError> {
        let started = Instant::now();
        for attempt in 0u32.. {
            // The clock that stamps the log decides what is "the future" (`EventStore::now`).
            let now = self.inner.store.now();
            let version = if is_new_incident_append(cmd, now) {
                // No lookup of the version: decided on the empty state and written with
                // expected version 0, the store's own checks (event ids first, then the
                // version) give the answer the lookup would: an exact repeat is a duplicate,
                // id reuse and an existing incident are 409.
                0
            } else {
                let state = self.decision_state(cmd.incident_id).await?;
                let version = state.version();
                if let ExpectedVersion::Exact(n) = cmd.expected {
                    if n != version {
                        let err = self.conflict(cmd, version);
                        return self.unless_repeat(cmd, recorded_by, err).await;
                    }
                }
                if let Err(errors) = decide(&state, &cmd.events, now, "/events") {
                    return self
                        .unless_repeat(cmd, recorded_by, ApiError::invalid(errors))
                        .await;
                }
                version
            };
            match self.write(cmd, version, recorded_by).await {
                Ok(outcome) => return Ok(outcome),
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    if cmd.expected != ExpectedVersion::Any {
                        return Err(self.conflict(cmd, actual));
                    }
                    if started.elapsed() >= ANY_RETRY_WINDOW {
                        break;
                    }
                    self.inner.metrics.append_retries.fetch_add(1, Relaxed);
                    race_backoff(attempt, cmd.incident_id).await;
                }
                Err(e @ StoreError::EventIdConflict { .. }) => {
                    return Err(self.with_versions(cmd, e.into()).await)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Busy {
            retry_after_secs: 1,
            why: "too many concurrent writers on this incident; try again",
        })
    }

    /// Hands a decided batch to the store under `expected_version = version`.
    async fn write(
        &self,
        cmd: &AppendCommand,
        version: u64,
        recorded_by: &str,
    ) -> Result<AppendOutcome, StoreError> {
        let request = AppendRequest {
            stream_id: cmd.incident_id,
            expected_version: ExpectedVersion::Exact(version),
            events: new_events(&cmd.events),
            recorded_by: recorded_by.to_string(),
        };
        let started = Instant::now();
        let result = lean!(self.inner.store, append(request));
        // Only appends the store wrote: a repeat or a conflict is answered without a sync,
        // and would pull the durability latency down.
        if matches!(&result, Ok(o) if !o.duplicate) {
            self.inner
                .metrics
                .store_append_seconds
                .observe_duration(started.elapsed());
        }
        result
    }

    fn conflict(&self, cmd: &AppendCommand, actual: u64) -> ApiError {
        ApiError::Conflict {
            detail: format!(
                "incident {} is at version {actual}, expected {}",
                cmd.incident_id,
                expected_json(cmd.expected)
            ),
            expected: expected_json(cmd.expected),
            actual,
            event_id: None,
            position: None,
        }
    }

    /// Fills `expected`/`actual` of an event-id conflict with the client's expectation and
    /// the incident's current version.
    async fn with_versions(&self, cmd: &AppendCommand, err: ApiError) -> ApiError {
        match err {
            ApiError::Conflict {
                detail,
                event_id,
                position,
                ..
            } => {
                let actual = lean!(self.inner.store, stream_version(cmd.incident_id)).unwrap_or(0);
                let detail = match event_id {
                    Some(id) => self.reuse_detail(cmd, id).await.unwrap_or(detail),
                    None => detail,
                };
                ApiError::Conflict {
                    detail,
                    expected: expected_json(cmd.expected),
                    actual,
                    event_id,
                    position,
                }
            }
            other => other,
        }
    }

    /// Says what is wrong with a recorded `event_id` the batch carries again, when it is not
    /// "other content": the same event re-sent outside its original append (SPEC 3 answers 200
    /// only for a repeat of a whole append). `None` keeps the store's detail.
    async fn reuse_detail(&self, cmd: &AppendCommand, id: Uuid) -> Option<String> {
        let sent = cmd.events.iter().find(|e| e.event_id == id)?;
        let recorded = lean!(self.inner.store, event_by_id(id)).ok()??;
        if recorded.stream_id != cmd.incident_id {
            return Some(format!(
                "event_id {id} is already recorded (position {}) in incident {}: an event_id \
                 names one event of one incident",
                recorded.global_position, recorded.stream_id
            ));
        }
        let same = recorded.event_type == sent.event_type()
            && recorded.data.get() == sent.canonical_data().get();
        same.then(|| {
            format!(
                "event_id {id} is already recorded (position {}) with the same content, but as part \
                 of another append: an idempotent retry must re-send that whole append (all its \
                 events, in order); this request mixes recorded and new events or repeats only \
                 part of one",
                recorded.global_position
            )
        })
    }

    /// On a failed check: if some event id of the batch may be recorded already, this may be
    /// a repeat (or a reuse), and the store decides: the original outcome, an event-id
    /// conflict, or "not recorded after all". Otherwise the original error stands.
    async fn unless_repeat(
        &self,
        cmd: &AppendCommand,
        recorded_by: &str,
        err: ApiError,
    ) -> Result<AppendOutcome, ApiError> {
        if !self.may_repeat(cmd).await? {
            return Err(err);
        }
        self.settle_repeat(cmd, recorded_by, err).await
    }

    /// Whether some event id of the batch may be recorded already (the store's cheap probe:
    /// `false` is certain).
    async fn may_repeat(&self, cmd: &AppendCommand) -> Result<bool, ApiError> {
        for e in &cmd.events {
            if lean!(self.inner.store, maybe_recorded(e.event_id))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hands a batch that may repeat recorded events to the store under
    /// `ExpectedVersion::NEVER`, which is answered but never written.
    async fn settle_repeat(
        &self,
        cmd: &AppendCommand,
        recorded_by: &str,
        err: ApiError,
    ) -> Result<AppendOutcome, ApiError> {
        let request = AppendRequest {
            stream_id: cmd.incident_id,
            expected_version: ExpectedVersion::NEVER,
            events: new_events(&cmd.events),
            recorded_by: recorded_by.to_string(),
        };
        let result = lean!(self.inner.store, append(request));
        self.repeat_answer(cmd, err, result).await
    }

    /// The answer to a batch sent as a possible repeat under `ExpectedVersion::NEVER`: an
    /// exact repeat is the original outcome, a reuse of its ids an event-id conflict, and
    /// "not recorded" (`WrongExpectedVersion`) the batch's own validation error `err`.
    async fn repeat_answer(
        &self,
        cmd: &AppendCommand,
        err: ApiError,
        result: Result<AppendOutcome, StoreError>,
    ) -> Result<AppendOutcome, ApiError> {
        match result {
            Ok(outcome) => {
                if !outcome.duplicate {
                    // Cannot happen (NEVER is never written); never hide a write.
                    tracing::error!(?outcome, "append with a recorded event id was written");
                }
                Ok(outcome)
            }
            Err(e @ StoreError::EventIdConflict { .. }) => {
                Err(self.with_versions(cmd, e.into()).await)
            }
            Err(StoreError::WrongExpectedVersion { .. }) => Err(err),
            Err(e) => Err(e.into()),
        }
    }

    // ---- reads ----

    /// The log position a read at `at` refers to: `None` for the live state.
    pub async fn resolve(&self, at: AsOf) -> Result<Option<u64>, ApiError> {
        // A time just past may still have events stamped at or before it on their way to the
        // disk: wait for them, or the same question would get another answer a moment later.
        let position = match at {
            AsOf::Live => {
                self.caught_up().await;
                return Ok(None);
            }
            AsOf::Time(t) => {
                lean!(self.inner.store, settle_recorded_at(t))?;
                lean!(self.inner.store, position_at(t))?
            }
            AsOf::Position(p) => p,
        };
        // Beyond the durable head: clamped to it. Within it, the views must have applied it
        // (one wait, for that position only): an answer from an earlier position would change
        // when asked again (the views of a server whose database went away stay behind the
        // head it had seen).
        let position = position.min(self.inner.store.head().position);
        self.wait_applied_for(position, self.read_wait()).await;
        let applied = self.applied_position();
        if applied < position {
            return Err(ApiError::Unavailable(format!(
                "the views have applied the log up to position {applied}, not yet {position}: \
                 try again"
            )));
        }
        Ok(Some(position))
    }

    /// The view of one incident, live or as of a time/position; `NotFound` when it has no
    /// events (at that point).
    pub async fn incident(&self, id: Uuid, at: AsOf) -> Result<IncidentView, ApiError> {
        let not_found = || ApiError::NotFound(format!("no incident {id}"));
        match self.resolve(at).await? {
            None => self.read_projection().incident(id).ok_or_else(not_found),
            Some(p) => {
                let events = lean!(self.inner.store, read_stream(id))?;
                let view = fold_incident(
                    events
                        .iter()
                        .take_while(|e| e.global_position <= p)
                        .map(envelope),
                )?;
                view.ok_or_else(not_found)
            }
        }
    }

    /// A page of incident views (live), for `caller` (see [`AppService::off_workers`]).
    pub async fn incidents(
        &self,
        caller: &str,
        query: &IncidentQuery,
    ) -> Result<IncidentPage, ApiError> {
        self.caught_up().await;
        let query = query.clone();
        self.off_workers(caller, move |svc| svc.incidents_page(&query))
            .await?
            .map_err(ApiError::bad_request_at)
    }

    /// Runs `f`, a read of the views that can take milliseconds of CPU (every region's
    /// summary at a past position: ~30 ms on the 1M-event log; a listing's scan: 5-14 ms),
    /// on a blocking thread, as many at once as the machine has cores. On the runtime's
    /// workers such reads held up every other request's task queued behind them (an audit:
    /// six readers of past summaries took another token's appends from 3,700/s to 5/s, p50
    /// 155 ms); off them, the OS shares the cores and an append's task runs when it is ready.
    ///
    /// The reads of one `caller` (a token's name, an anonymous address) first take turns
    /// among themselves, as many at once as there are cores: the queue for the cores then
    /// holds a few reads of each caller, and one read of a quiet caller waits behind those,
    /// not behind every read of the busiest one (an audit: 96 long reads of six tokens kept
    /// another token's one-region summary waiting ~2 s).
    pub async fn off_workers<T: Send + 'static>(
        &self,
        caller: &str,
        f: impl FnOnce(&AppService) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let mine = CallerTurn::take(self.inner.clone(), caller).await?;
        self.run_off_workers(self.inner.view_reads.clone(), Some(mine), f)
            .await
    }

    /// Callers with a long read waiting or running (each has an entry while it does).
    pub fn long_read_callers(&self) -> usize {
        self.inner
            .view_callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// `f` on a blocking thread once `turns` gives it a turn. The turns (that one and
    /// `held`) go with `f` and end when it does: a request cut off while `f` runs (its client
    /// gone) does not give its turn to the next read while the work goes on.
    async fn run_off_workers<T: Send + 'static>(
        &self,
        turns: Arc<tokio::sync::Semaphore>,
        held: Option<CallerTurn>,
        f: impl FnOnce(&AppService) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let turn = turns
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        let svc = self.clone();
        tokio::task::spawn_blocking(move || {
            let _turns = (turn, held);
            f(&svc)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a read of the views failed: {e}")))
    }

    /// A page of incident views, read [`SCAN_BLOCK`] incidents at a time, each block under a
    /// lock of its own: a filter that matches few incidents scans them all (5-14 ms on the
    /// 1M-event log), and under one hold the follower, and every append behind it, waited
    /// for it (an audit: six readers listing took another token's appends from 3,700/s to
    /// 41/s). Each incident is as its block found it, no earlier than the views at the call.
    fn incidents_page(&self, query: &IncidentQuery) -> Result<IncidentPage, FieldError> {
        let mut pager = IncidentPager::new(query)?;
        while !pager.is_done() {
            pager.scan(&self.read_projection(), query, SCAN_BLOCK);
        }
        Ok(pager.finish())
    }

    /// Every incident matching `query`'s filters (its limit and cursor aside) as one CSV or
    /// GeoJSON table, in pieces of [`TABLE_BLOCK`] incidents, each read under the views' lock
    /// as the client takes them (the pages of the JSON listing, one after the other). Each
    /// incident is as its block found it: no earlier than the views at the request.
    pub fn incidents_table(
        &self,
        query: IncidentQuery,
        format: crate::export::TableFormat,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
        struct Table {
            svc: AppService,
            query: IncidentQuery,
            writer: crate::export::TableWriter,
            /// `None` before the first block; then the cursor of the next (`None` at the end).
            next: Option<Option<String>>,
        }
        let table = Table {
            svc: self.clone(),
            query,
            writer: crate::export::TableWriter::new(format),
            next: None,
        };
        futures_util::stream::try_unfold(table, |mut t| async move {
            let mut out = Vec::new();
            let cursor = match t.next.take() {
                None => {
                    t.svc.caught_up().await;
                    t.writer.begin(&mut out)?;
                    None
                }
                Some(None) => return Ok(None),
                Some(Some(cursor)) => Some(cursor),
            };
            let query = IncidentQuery {
                limit: Some(TABLE_BLOCK),
                cursor,
                ..t.query.clone()
            };
            // A queue of their own: a stream goes on block after block (each stream one block
            // in turn), not behind every long read each time (behind them, a full CSV under a
            // flood of past summaries ran ~130 times slower).
            let page = t
                .svc
                .run_off_workers(t.svc.inner.table_blocks.clone(), None, move |svc| {
                    svc.incidents_page(&query)
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .map_err(|e| std::io::Error::other(e.message))?;
            for view in &page.incidents {
                t.writer.view(view, &mut out)?;
            }
            if page.next_cursor.is_none() {
                t.writer.end(&mut out)?;
            }
            t.next = Some(page.next_cursor);
            Ok(Some((out, t)))
        })
    }

    /// The summary of one region at a resolved position (`None`: live), and the position the
    /// answer describes (read under the same lock).
    pub fn region_summary_at(
        &self,
        region: &Region,
        window: &Window,
        at: Option<u64>,
    ) -> (Option<RegionSummary>, u64) {
        let p = self.read_projection();
        (
            p.region_summary(region, window, at),
            at.unwrap_or(p.position()),
        )
    }

    /// Summaries of every region at a resolved position (`None`: live), and that position.
    /// One region at a time, each under a lock of its own: all of them at a past position take
    /// ~30 ms on the 1M-event log, and under one hold the follower, and every append behind
    /// it, waited for them (an audit: six readers took another token's appends from 3,700/s
    /// to 10/s). The answer is the same: a summary at a position the views have passed does
    /// not change as they go on.
    pub fn region_summaries_at(
        &self,
        window: &Window,
        at: Option<u64>,
    ) -> (Vec<RegionSummary>, u64) {
        let (position, regions) = {
            let p = self.read_projection();
            let position = at.map_or(p.position(), |a| a.min(p.position()));
            (position, p.regions_recorded(Some(position)))
        };
        let summaries = regions
            .iter()
            .filter_map(|r| {
                self.read_projection()
                    .region_summary(r, window, Some(position))
            })
            .filter(|s| s.incidents > 0)
            .collect();
        (summaries, position)
    }

    /// Events of one incident, in order.
    pub async fn stream_events(&self, id: Uuid) -> Result<Vec<RecordedEvent>, ApiError> {
        Ok(lean!(self.inner.store, read_stream(id))?)
    }

    /// A page of one incident's events (versions after `after`, at most `limit`); `None` for
    /// an unknown incident.
    pub async fn stream_page(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<RecordedEvent>>, ApiError> {
        let events = lean!(self.inner.store, read_stream_page(id, after, limit))?;
        if events.is_empty() && lean!(self.inner.store, stream_version(id))? == 0 {
            return Ok(None);
        }
        Ok(Some(events))
    }

    /// A page of the global log.
    pub async fn log_page(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, ApiError> {
        Ok(lean!(self.inner.store, read_all(after, limit))?)
    }

    /// The log after `after` up to the durable head as of the call (at most `limit` events),
    /// as ndjson (the lines `incidentlog export` writes), read a page at a time as the
    /// consumer takes it: an online backup that `incidentlog restore` reads back. Also the
    /// position and hash of the last event it will send (`None` when it sends none), for the
    /// reader to check it got everything. A store error ends the stream with that error.
    pub async fn log_ndjson(
        &self,
        after: u64,
        limit: Option<u64>,
    ) -> Result<
        (
            Option<Head>,
            impl futures_util::Stream<Item = Result<Vec<u8>, StoreError>> + Send + 'static,
        ),
        ApiError,
    > {
        let head = self.inner.store.head();
        let end = limit.map_or(head.position, |n| {
            head.position.min(after.saturating_add(n))
        });
        let last = if end <= after {
            None
        } else if end == head.position {
            Some(head)
        } else {
            let at_end = lean!(self.inner.store, read_all(end - 1, 1))?;
            at_end.first().map(|e| Head {
                position: e.global_position,
                hash: e.hash,
            })
        };
        let svc = self.clone();
        let lines = futures_util::stream::try_unfold(after, move |after| {
            let svc = svc.clone();
            async move {
                if after >= end {
                    return Ok(None);
                }
                let want = usize::try_from(end - after)
                    .unwrap_or(usize::MAX)
                    .min(LOG_NDJSON_PAGE);
                let events = lean!(svc.inner.store, read_all(after, want))?;
                // The stream promised events up to `end` (its header names the last): fewer is
                // an error, which cuts the body, never a clean end.
                let Some(last) = events.last().map(|e| e.global_position) else {
                    return Err(StoreError::Unavailable(format!(
                        "the log ended at position {after}, before {end}"
                    )));
                };
                let mut out = Vec::with_capacity(events.len() * 600);
                for e in &events {
                    serde_json::to_writer(&mut out, &crate::wire::WireEvent(e))
                        .map_err(|e| StoreError::Io(e.into()))?;
                    out.push(b'\n');
                }
                Ok(Some((out, last)))
            }
        });
        Ok((last, lines))
    }

    /// The digest of the live views (for comparison with a replay). Off the runtime's workers
    /// like the other long reads: ~0.5 s on the 1M-event log, during which an audit saw
    /// `/healthz` wait ~0.5 s behind it on a worker.
    pub async fn live_digest(&self) -> Result<(u64, String), ApiError> {
        self.caught_up().await;
        self.run_off_workers(self.inner.view_reads.clone(), None, |svc| {
            let p = svc.read_projection();
            (p.position(), p.digest_on(digest_threads()))
        })
        .await
    }

    /// Rebuilds every view from the log into a fresh projection and swaps it in.
    pub async fn replay_live(&self) -> Result<ReplayReport, ApiError> {
        let _one_replay = self.inner.replay_lock.lock().await;
        let started = Instant::now();
        let store = &*self.inner.store;
        let (fresh, events) = rebuild_views(store, None, &|_| {}).await?;
        // The digest of the rebuilt views (~0.5 s on the 1M-event log) off the workers.
        let (mut fresh, report) = tokio::task::spawn_blocking(move || {
            let report = report_of(&fresh, events, started);
            (fresh, report)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the replay's digest failed: {e}")))?;
        // The last position read: an event the views skip (it does not decode or fold) leaves
        // `fresh.position()` behind it, so the catching up below counts what it read.
        let mut read = events;
        // Bring the fresh views up to the live ones, then swap under the write lock when no
        // event slipped in between.
        for _ in 0..1000 {
            // The rebuild read up to the durable head, which the live views may not have
            // applied yet (appends do not wait for them): let them reach it first.
            self.wait_applied(read).await;
            let live = self.applied_position();
            while read < live {
                let page = store
                    .read_all_map(read, REPLAY_PAGE, decode_for_fold)
                    .await?;
                if page.is_empty() {
                    break;
                }
                for (at, decoded) in page.into_iter().take_while(|(at, _)| *at <= live) {
                    apply_logged(&mut fresh, at, decoded);
                    read = at;
                }
            }
            let mut guard = self
                .inner
                .projection
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if guard.position() == fresh.position() {
                let old = std::mem::replace(&mut *guard, fresh);
                // Under the write lock: no read sees the new views with the old generation.
                self.inner.views_generation.fetch_add(1, Relaxed);
                drop(guard);
                // Freeing the old views (~1 GB of small allocations on a 2M-event log) took
                // ~200 ms: not under the lock every read waits for, and not on a worker.
                tokio::task::spawn_blocking(move || drop(old));
                return Ok(report);
            }
        }
        Err(ApiError::Unavailable(
            "the log moves too fast to swap the rebuilt views in; try again".into(),
        ))
    }

    /// Checks every record's checksum and the hash chain.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let result = self.inner.store.verify().await;
        // Damage found by a later check counts like damage found at start: a server must not
        // go on chaining appends onto a history that was changed under it.
        if let (Err(e @ StoreError::Corrupt { .. }), true) = (&result, self.inner.live) {
            found_damage(&self.inner, e);
        }
        result
    }

    /// What damage an integrity check found in the log (at start or since), if any.
    pub fn damage(&self) -> Option<String> {
        match &*self.inner.integrity.borrow() {
            Integrity::Damaged(what) => Some(what.clone()),
            _ => None,
        }
    }

    /// Resolves once the integrity check after start has finished.
    pub async fn integrity_checked(&self) {
        let mut integrity = self.inner.integrity.subscribe();
        let _ = integrity.wait_for(|i| *i != Integrity::Checking).await;
    }

    /// Changes whenever a replay swaps in rebuilt views (see `Inner::views_generation`).
    pub fn views_generation(&self) -> u64 {
        self.inner.views_generation.load(Relaxed)
    }

    /// Appends are refused on a log that failed the integrity check: new events must not be
    /// chained onto a history that was changed.
    pub(crate) fn refuse_if_damaged(&self) -> Result<(), ApiError> {
        match &*self.inner.integrity.borrow() {
            // Where the damage is (a file, an offset) is the operator's to know: logged.
            Integrity::Damaged(what) => Err(ApiError::StoreUnavailable {
                during: ": appends are refused, the log failed an integrity check; \
                         an operator must check it (`incidentlog verify`)"
                    .into(),
                cause: what.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Runs once after start, beside serving: every checksum and the whole hash chain, which
/// opening the log does not check (a 1M-event log would take ~0.5 s longer to open). A record
/// edited with its checksum recomputed is found here within seconds of the start; until the
/// check is done the server is `starting` (not ready), so a load balancer sends it no
/// traffic before its log has been verified.
/// A check that could not run (a read error, the database away) is tried again, with longer
/// pauses each time, and the server stays `starting` meanwhile: "not checked" is not "checked".
async fn check_integrity(inner: Arc<Inner>) {
    let mut pause = Duration::from_secs(2);
    loop {
        let started = Instant::now();
        match inner.store.verify().await {
            Ok(r) => {
                tracing::info!(
                    events = r.events,
                    ms = started.elapsed().as_millis() as u64,
                    "integrity check passed: checksums and hash chain"
                );
                break;
            }
            Err(e @ StoreError::Corrupt { .. }) => return found_damage(&inner, &e),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the integrity check could not run; the server stays `starting` (not \
                     ready) and tries again in {} s",
                    pause.as_secs()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
        // (A check asked for meanwhile may have found damage already: it stands.)
        if matches!(&*inner.integrity.borrow(), Integrity::Damaged(_)) {
            return;
        }
    }
    // (A check asked for meanwhile may have found damage already: it stands.)
    inner.integrity.send_if_modified(|i| {
        let checking = *i == Integrity::Checking;
        if checking {
            *i = Integrity::Done;
        }
        checking
    });
}

/// An integrity check (at start, or asked for) found the log damaged: logged once, and from
/// now on appends are refused and `/readyz` says `damaged`.
fn found_damage(inner: &Inner, e: &StoreError) {
    inner.integrity.send_if_modified(|i| {
        if matches!(i, Integrity::Damaged(_)) {
            return false;
        }
        tracing::error!(
            error = %e,
            "integrity check FAILED: the log was changed or damaged; appends are refused and \
             /readyz says `damaged` until it is checked"
        );
        *i = Integrity::Damaged(e.to_string());
        true
    });
}

/// The pause before deciding again after a race lost to another process: none at first, then
/// up to a few milliseconds, random, so that two servers' writers of one incident stop
/// arriving in lockstep (the one whose views learn of the other's appends last would lose
/// every round).
async fn race_backoff(attempt: u32, incident: Uuid) {
    if attempt < 2 {
        tokio::task::yield_now().await;
        return;
    }
    let cap_us = 1000u64 << attempt.min(3);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A cheap mix of the clock and the incident: no randomness source needed for a jitter.
    let mix = (u64::from(nanos) ^ incident.as_u64_pair().0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    tokio::time::sleep(Duration::from_micros((mix >> 32) % cap_us)).await;
}

/// The lock stripe of incident `id` (an index into `Inner::stripes`).
pub(crate) fn stripe_index(id: Uuid) -> usize {
    // Client-chosen ids may share prefixes: mix both halves.
    let (hi, lo) = id.as_u64_pair();
    let mixed = (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize % STRIPES
}

/// `expected_version: 0` with events the empty state accepts: decided without reading the
/// incident. (When the empty state refuses them, the general path runs, which checks the
/// version before the events.)
fn is_new_incident_append(cmd: &AppendCommand, now: DateTime<Utc>) -> bool {
    cmd.expected == ExpectedVersion::Exact(0)
        && decide(
            &IncidentState::with_id(cmd.incident_id),
            &cmd.events,
            now,
            "/events",
        )
        .is_ok()
}

fn new_events(events: &[TypedEvent]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent {
            event_id: e.event_id,
            event_type: e.event_type().to_string(),
            data: e.canonical_data(),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies one event decoded where it was read; a stored event that does not decode or fold
/// is logged and skipped so that one bad record never freezes the views (`verify` reports
/// damage separately).
fn apply_logged(p: &mut Projection, at: u64, decoded: Result<DecodedEvent, ProjectionError>) {
    if let Err(err) = decoded.and_then(|d| p.apply_decoded(d)) {
        tracing::error!(position = at, error = %err, "event skipped by the views");
    }
}

/// Threads for a digest's serialization: two, or one on a one-core machine (the digest
/// figures in `proto-docs/projections.md` were measured with two).
fn digest_threads() -> usize {
    cores().min(2)
}

fn report_of(p: &Projection, events: u64, started: Instant) -> ReplayReport {
    let folded = started.elapsed();
    let digest = p.digest_on(digest_threads());
    let total = started.elapsed();
    ReplayReport {
        events,
        duration_ms: total.as_millis() as u64,
        fold_ms: folded.as_millis() as u64,
        digest_ms: (total - folded).as_millis() as u64,
        digest,
        incidents: p.incident_count() as u64,
        retracted: p.retracted_count() as u64,
        regions: p.region_summaries(&Window::all(), None).len() as u64,
    }
}

/// Folds the log (up to `at_position`, clamped to the head) into a fresh projection; returns
/// it and the last position folded. Reads in large pages, one page ahead of the fold; the
/// reading threads also decode the events, so the fold does nothing else. The start-up, the
/// admin replay, `replay` and `export` all build their views with it.
pub async fn rebuild_views<S: EventStore>(
    store: &S,
    at_position: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Projection, u64), ApiError> {
    let head = store.head().position;
    let target = at_position.map_or(head, |p| p.min(head));
    let mut projection = Projection::new();
    let mut position = 0u64;
    if target == 0 {
        return Ok((projection, 0));
    }
    projection.reserve(target.min(REBUILD_RESERVE_MAX) as usize);
    let read = |after: u64| {
        let want = REPLAY_PAGE.min((target - after) as usize);
        store.read_all_map(after, want, decode_for_fold)
    };
    // A page takes a few milliseconds to fold: on a blocking thread, not on one of the
    // runtime's workers, which a live server's requests need (`POST /v1/admin/replay`).
    let fold = |mut projection: Projection, page: Vec<(u64, FoldInput)>| {
        tokio::task::spawn_blocking(move || {
            for (at, decoded) in page.into_iter().take_while(|(at, _)| *at <= target) {
                apply_logged(&mut projection, at, decoded);
            }
            projection
        })
    };
    let folded = |joined: Result<Projection, tokio::task::JoinError>| {
        joined.map_err(|e| ApiError::Internal(format!("folding the log into the views: {e}")))
    };
    let mut page = read(0).await?;
    while let Some(last) = page.last().map(|(p, _)| *p) {
        let upto = last.min(target);
        if upto >= target {
            projection = folded(fold(projection, page).await)?;
            position = upto;
            progress(position);
            break;
        }
        // Read the next page while this one is folded.
        let (next, joined) = futures_util::future::join(read(upto), fold(projection, page)).await;
        projection = folded(joined)?;
        position = upto;
        progress(position);
        page = next?;
    }
    Ok((projection, position))
}

/// An event as [`decode_for_fold`] hands it to the views.
type FoldInput = Result<DecodedEvent, ProjectionError>;

/// An event as the views fold it, with its position, decoded on the thread that read it (a
/// rebuild's reading threads; the live views' reads of what nobody handed over).
fn decode_for_fold(e: EventRef<'_>) -> (u64, FoldInput) {
    (e.global_position, DecodedEvent::decode(&envelope_of(e)))
}

/// Rebuilds the views from the log offline (the CLI's `replay`): events, duration, digest,
/// and the views themselves (a caller about to exit may skip freeing them).
pub async fn replay<S: EventStore>(
    store: &S,
    at_position: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(ReplayReport, Projection), ApiError> {
    let started = Instant::now();
    let (projection, events) = rebuild_views(store, at_position, progress).await?;
    let report = report_of(&projection, events, started);
    Ok((report, projection))
}

/// Keeps the live views up to date from `from` on, in position order: folds the events the
/// appending requests hand over (`handoff`) and reads from the store whatever nobody hands
/// over, then publishes the applied position.
async fn follow(inner: Arc<Inner>, from: u64) {
    let mut closing = inner.closing.subscribe();
    let mut head = inner.store.watch_head();
    let mut position = from;
    // Since when a durable position has waited for its hand-over.
    let mut gap_since: Option<(u64, tokio::time::Instant)> = None;
    let mut ready = Vec::new();
    loop {
        lock(&inner.handoff).take_ready(&mut ready);
        if !ready.is_empty() {
            let events = ready.drain(..).map(|d| (d.global_position(), Ok(d)));
            let applied = fold_into_views(&inner, &mut position, events);
            inner.metrics.events_handed_over.fetch_add(applied, Relaxed);
            // Room for a usual batch is kept, not a burst's.
            ready.shrink_to(READY_KEPT);
            continue;
        }
        let durable = *head.borrow_and_update();
        // Appends of this process in flight will hand their events over: a durable position
        // nobody handed over yet is most likely theirs, about to come, and worth a moment's
        // wait rather than a read. Otherwise it is read at once.
        let handing_over = inner.appends_in_flight.load(Relaxed) > 0;
        let gap = durable > position;
        let gap_expired = gap && {
            let now = tokio::time::Instant::now();
            match gap_since {
                Some((p, since)) if p == position => now >= since + HANDOFF_GRACE,
                _ => {
                    gap_since = Some((position, now));
                    false
                }
            }
        };
        if !gap || (handing_over && !gap_expired) {
            let head_gone = if handing_over {
                // Woken by the hand-overs; the head is looked at again at least every
                // `HANDOFF_GRACE` (it moves with every batch, and waking for each would
                // cost more than the hand-over saves).
                tokio::select! {
                    _ = tokio::time::timeout(HANDOFF_GRACE, inner.handed_over.notified()) => false,
                    _ = closing.wait_for(|c| *c) => return,
                }
            } else {
                tokio::select! {
                    _ = inner.handed_over.notified() => false,
                    changed = head.changed() => changed.is_err(),
                    _ = closing.wait_for(|c| *c) => return,
                }
            };
            if head_gone {
                // The store is closing or gone; look again later (or stop).
                if pause_unless_closing(&mut closing).await {
                    return;
                }
                head = inner.store.watch_head();
            }
            continue;
        }
        gap_since = None;
        if let Err(err) = read_into_views(&inner, &mut position, durable).await {
            if *closing.borrow() {
                // The store is closing under the reader: not a failure.
                return;
            }
            tracing::error!(error = %err, position, "reading the log for the live views failed; retrying");
            if pause_unless_closing(&mut closing).await {
                return;
            }
        }
    }
}

/// How long the follower waits for an append of this process to hand over a durable
/// position before reading it from the store. The request that wrote it was woken when the
/// store published it, so this is only reached when nobody will hand it over.
const HANDOFF_GRACE: Duration = Duration::from_millis(2);

/// Handed-over events the follower keeps room for between batches (`Handoff::take_ready`).
const READY_KEPT: usize = 1024;

/// Counts an append of this process as one that may still hand events over, until dropped
/// (also when its request is cancelled).
/// (A borrow of `Inner` for a request; an `Arc` for a task of its own, as a bulk import's
/// writes.)
struct InFlight<I: std::ops::Deref<Target = Inner>>(I);

impl<I: std::ops::Deref<Target = Inner>> InFlight<I> {
    fn begin(inner: I) -> InFlight<I> {
        inner.appends_in_flight.fetch_add(1, Relaxed);
        InFlight(inner)
    }
}

impl<I: std::ops::Deref<Target = Inner>> Drop for InFlight<I> {
    fn drop(&mut self) {
        // A follower waiting for a hand-over need not wait once no append can make one.
        if self.0.appends_in_flight.fetch_sub(1, Relaxed) == 1 {
            self.0.handed_over.notify_one();
        }
    }
}

impl Inner {
    /// Hands recorded events (positions ascending, without gaps) to the follower.
    fn hand_over(&self, events: Vec<DecodedEvent>) {
        if lock(&self.handoff).hand_over(events) {
            self.handed_over.notify_one();
        }
    }
}

/// Stamps the events of one recorded append as the store recorded them (its outcome) and
/// pushes them onto `out`. Gives the events back when the outcome does not describe exactly
/// them (a repeat, a store that split the append): those the follower reads from the store.
fn stamp_recorded(
    incident_id: Uuid,
    events: Vec<TypedEvent>,
    outcome: &AppendOutcome,
    out: &mut Vec<DecodedEvent>,
) -> Result<(), Vec<TypedEvent>> {
    let (false, Some(recorded_at)) = (outcome.duplicate, outcome.recorded_at) else {
        return Err(events);
    };
    let n = events.len() as u64;
    if n == 0
        || outcome.stream_id != incident_id
        || outcome.last_position + 1 != outcome.first_position + n
        || outcome.version < n
    {
        return Err(events);
    }
    let first_version = outcome.version - n + 1;
    out.extend((0..).zip(events).map(|(i, e)| {
        DecodedEvent::appended(
            e,
            outcome.first_position + i,
            incident_id,
            first_version + i,
            recorded_at,
        )
    }));
    Ok(())
}

/// Waits half a second; true if the service started closing meanwhile.
async fn pause_unless_closing(closing: &mut watch::Receiver<bool>) -> bool {
    let closed = tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(500)) => false,
        _ = closing.wait_for(|c| *c) => true,
    };
    closed || *closing.borrow()
}

/// Reads the log after `position` up to `durable` into the live views.
async fn read_into_views(
    inner: &Inner,
    position: &mut u64,
    durable: u64,
) -> Result<(), StoreError> {
    while *position < durable {
        let want = REPLAY_PAGE.min((durable - *position) as usize);
        // Decoded where the store reads them, so the write lock is held only to fold.
        let page = inner
            .store
            .read_all_map(*position, want, decode_for_fold)
            .await?;
        if page.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "the log's durable head is {durable}, but nothing could be read after {position}"
            )));
        }
        fold_into_views(inner, position, page.into_iter());
        // Hand-overs of what was read here are not waited for (they are dropped if they come).
        lock(&inner.handoff).advanced_to(*position);
    }
    Ok(())
}

/// Folds events in position order under short write-lock holds (reads keep a low latency
/// under heavy appends), and publishes the applied position after each. Returns how many
/// it applied.
fn fold_into_views(
    inner: &Inner,
    position: &mut u64,
    items: impl Iterator<Item = (u64, Result<DecodedEvent, ProjectionError>)>,
) -> u64 {
    let mut items = items.peekable();
    let mut applied = 0;
    while items.peek().is_some() {
        {
            let mut p = inner.projection.write().unwrap_or_else(|p| p.into_inner());
            for (at, decoded) in items.by_ref().take(APPLY_SLICE) {
                if at > *position {
                    apply_logged(&mut p, at, decoded);
                    *position = at;
                    applied += 1;
                }
            }
        }
        inner.applied.send_replace(*position);
    }
    inner.metrics.events_applied.fetch_add(applied, Relaxed);
    applied
}
