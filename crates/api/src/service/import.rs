//! Bulk import: NDJSON lines in the format of `POST /v1/events`, each line its own atomic
//! append with the single-append validation, written in chunks of ~4k events that share one
//! `append_many` (one sync).
//!
//! Three stages overlap:
//! - lines are parsed (JSON, typed events, canonical bytes) on threads of their own at a lower
//!   priority (`Parsers`), several batches ahead of the staging, which must go in line order;
//! - staging decides each line on its incident's state as the earlier lines left it
//!   (`decide_and_apply`) and queues it in the current chunk;
//! - the previous chunk is written while the current one is staged. Lines of the current
//!   chunk whose incident is in the chunk being written are decided on the states that chunk
//!   leaves, before it is known to have landed. That is a speculation: when the written chunk
//!   comes back with anything but plain successes (a conflict, an accepted line the store
//!   found to be a repeat, a retry), the current chunk's decisions are thrown away and its
//!   lines staged again on what was recorded. The store writes no line of a chunk after one
//!   it turned away (`append_many`); those lines are staged again first, so accepted lines
//!   are recorded in line order.
//!
//! Nothing of a chunk is sent before the chunk before it has been settled, so the store sees
//! the chunks one at a time, in line order, as without the overlap. A line that failed
//! validation but may repeat recorded events rides in its chunk under
//! `ExpectedVersion::NEVER`: answered by the store, never written, and no speculation rests
//! on it (it changed no state).
use super::*;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Lines (and bytes) per parsing task of a bulk import, and how many tasks run ahead.
const PARSE_BATCH_LINES: usize = 2048;
const PARSE_BATCH_BYTES: usize = 4 << 20;
/// Enough to keep the parsing threads busy while a chunk is written and synced (8 against 2:
/// ~7% faster `incidentlog import` of the 1M-event bench log, at most ~32 MiB more held).
const PARSE_AHEAD: usize = 8;
/// The longest line a bulk import takes (the default bulk body limit): one append of ~200k
/// events.
pub const MAX_IMPORT_LINE: usize = 64 << 20;
/// Bytes a line may have beyond `MAX_IMPORT_LINE`: its LF, a CR before it, a byte order mark.
const LINE_EXTRAS: usize = 5;
/// Lines in a row that repeat nothing before an import stops looking up each line's ids.
const PROBE_PATIENCE: usize = 4096;
/// Field problems listed per rejected line of a bulk report (its `detail` counts them all).
const LINE_ERRORS_LISTED: usize = 20;
/// How long a line read may wait for more input before the lines read so far are parsed and
/// written (an import fed slowly through a pipe records each line within about this).
const INPUT_IDLE: Duration = Duration::from_millis(100);
/// Events per `append_many` call of a bulk import (one sync each). Smaller chunks keep the
/// store's writer busy in smaller steps behind the staging, which waited for each written
/// chunk: 4,096 against 16,384 made `incidentlog import` of the 1M-event bench log ~7% faster
/// (8,192: ~2%; 2,048: slower), with 245 syncs instead of 62.
pub const IMPORT_CHUNK_EVENTS: usize = 4 * 1024;
/// Decision states an import keeps from one chunk to the next (decision-only, a few hundred
/// bytes each: `IncidentState::into_decision_only`), so that the next chunk decides on them
/// instead of waiting for the live views to apply the last one (which put the views' fold on
/// the import's critical path), or, offline, instead of reading and folding the stream again.
/// Offline, they are the only copy of the incidents' states.
const CARRY_STATES_LIVE: usize = 64 * 1024;
const CARRY_STATES_OFFLINE: usize = 1024 * 1024;

type Results = Vec<Result<AppendOutcome, StoreError>>;

impl AppService {
    /// Bulk import of NDJSON lines (the format of `POST /v1/events`): each line its own atomic
    /// append with the same validation as a single append; accepted lines are written in
    /// chunks that share one sync. Lines touching the same incident are checked in line order
    /// against each other. Rejected lines record nothing.
    pub async fn import_ndjson<R: AsyncBufRead + Unpin>(
        &self,
        input: R,
        recorded_by: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ImportReport, ApiError> {
        self.refuse_if_damaged()?;
        let _one_import = self.inner.import_lock.lock().await;
        let mut import = Importer {
            svc: self,
            recorded_by,
            report: ImportReport::default(),
            last_position: 0,
            cur: Chunk::default(),
            writing: None,
            carried: FastMap::default(),
            carry_max: if self.inner.live {
                CARRY_STATES_LIVE
            } else {
                CARRY_STATES_OFFLINE
            },
            spare_lines: Vec::new(),
            at_line: 1,
            probing: false,
            probe_misses: 0,
        };
        let mut result = import.run(input, progress).await;
        // The first line not recorded, should the import have failed.
        let mut stopped_at = import.cur.lines.first().map_or(import.at_line, |s| s.line);
        if let Some(w) = import.writing.take() {
            // Failed half-way: let the chunk being written finish before answering, and count
            // what it recorded (it is not settled).
            if let Ok((results, _, lines)) = w.results.await {
                for (staged, outcome) in lines.iter().zip(&results).map(recorded) {
                    match outcome {
                        Some(o) if !o.duplicate => import.report.appended += staged.events as u64,
                        Some(_) => {}
                        None => stopped_at = stopped_at.min(staged.line),
                    }
                }
            }
        }
        free_in_background(std::mem::take(&mut import.carried));
        // A store that failed before a write (reading a state, on PostgreSQL), or a shutdown,
        // says where the import stopped too, as a failed write does.
        if let Err(ApiError::StoreUnavailable { during, .. } | ApiError::ShuttingDown { during }) =
            &mut result
        {
            if during.is_empty() {
                *during = import.stopped_at(stopped_at);
            }
        }
        result?;
        let mut report = import.report;
        keep_first_rejected(&mut report.rejected);
        if report.rejected_total == Some(report.rejected.len() as u64) {
            report.rejected_total = None;
        }
        Ok(report)
    }
}

struct Importer<'a> {
    svc: &'a AppService,
    recorded_by: &'a str,
    report: ImportReport,
    last_position: u64,
    /// The chunk being staged.
    cur: Chunk,
    /// The chunk being written, if any.
    writing: Option<Writing>,
    /// States of incidents whose lines of earlier chunks all landed (at most `carry_max`):
    /// valid while the stream is still at their version. Every state the import holds is
    /// decision-only.
    carried: FastMap<Uuid, Box<IncidentState>>,
    carry_max: usize,
    /// The lines of the last settled chunk, emptied, for the next chunk to stage into.
    spare_lines: Vec<Staged>,
    /// The line being staged (or the first of the parsed batch being prepared).
    at_line: u64,
    /// Set once the import has met lines that repeat recorded events (a re-run of an import) or
    /// reuse their ids:
    /// from then on, each line's ids are looked up first (`may_repeat`), and a line that may be
    /// a repeat is not folded into its incident's state. Folded, a repeat the store then
    /// answered as such made the state wrong: the incident's stream was read and folded again
    /// for its next line, which made re-running an import of long streams quadratic (76 s
    /// against 0.6 s for 100k lines on 200 incidents). Off again after `PROBE_PATIENCE` lines
    /// in a row that repeat nothing.
    probing: bool,
    probe_misses: usize,
}

/// A line waiting to be staged (again).
struct Pending {
    line: u64,
    cmd: AppendCommand,
    new: Vec<NewEvent>,
    /// Whether its ids may be looked up (`Importer::probing`): not again for a line that a
    /// lookup took for a repeat and the store then found new.
    probe: bool,
}

#[derive(Default)]
struct Chunk {
    /// The store's request of each staged line, handed to `append_many` as they are.
    requests: Vec<AppendRequest>,
    /// The rest of each staged line (one per request).
    lines: Vec<Staged>,
    /// Decision state of each incident of the chunk after its accepted lines (boxed: moved
    /// between maps, and rehashed as they grow).
    states: FastMap<Uuid, Box<IncidentState>>,
    event_ids: FastSet<Uuid>,
    /// Lock stripes of the chunk's incidents (by stripe index), held until the chunk is settled.
    guards: FastMap<usize, OwnedMutexGuard<()>>,
    events: usize,
    /// Index into `lines` of the last line accepted for each incident (folded into `states`);
    /// each accepted line links to the one before it (`Staged::earlier`).
    accepted: FastMap<Uuid, usize>,
}

struct Staged {
    line: u64,
    /// Its events, once written, may have gone to the live views (`hand_over_written`):
    /// `events` keeps their number.
    cmd: AppendCommand,
    events: usize,
    /// A line that may repeat recorded event ids, sent as a question (`ExpectedVersion::NEVER`):
    /// the store answers it (an exact repeat: the original outcome; else a conflict) in the
    /// chunk's one `append_many` instead of a round trip of its own, and never writes it.
    repeat: Option<Repeat>,
    /// The line accepted before this one for the same incident in this chunk, if any (a list
    /// per incident without a vector to allocate for each).
    earlier: Option<usize>,
}

/// What a line sent as a question is, should the store find it is not a repeat after all.
enum Repeat {
    /// It failed validation: that error is its answer.
    Invalid(ApiError),
    /// It passed (without being folded into its incident's state): it is to be staged again,
    /// as a new append. Only a lookup's false "maybe" (two ids sharing a 64-bit key, odds of
    /// ~1e-13 per line) gets here; such a line is recorded after the rest of its chunk.
    Valid,
}

impl Staged {
    /// (Only lines not yet written are staged again: their events are all there.)
    fn into_pending(self, request: AppendRequest) -> Pending {
        Pending {
            line: self.line,
            cmd: self.cmd,
            new: request.events,
            probe: true,
        }
    }
}

/// A chunk handed to the store: its `append_many` runs on its own task.
struct Writing {
    /// The results, how long the store took (not counting the wait to collect them), and the
    /// chunk's lines.
    results: tokio::task::JoinHandle<(Results, Duration, Vec<Staged>)>,
    states: FastMap<Uuid, Box<IncidentState>>,
    event_ids: FastSet<Uuid>,
    guards: FastMap<usize, OwnedMutexGuard<()>>,
}

/// What staging one line came to.
enum Step {
    Done,
    /// Stage these lines first, in this order (the last one is the line itself).
    Again(Vec<Pending>),
}

impl Importer<'_> {
    async fn run<R: AsyncBufRead + Unpin>(
        &mut self,
        mut input: R,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApiError> {
        let mut line_no = 0u64;
        let mut eof = false;
        // Lines read but not yet written waited `INPUT_IDLE` for more input (a pipe fed by a
        // slow producer): what was read is parsed and written now instead of waiting for a
        // full batch or the end of the input.
        let mut flush = false;
        // The start of a line whose end has not arrived yet, carried into the next batch.
        let mut partial: Vec<u8> = Vec::new();
        // A line longer than `MAX_IMPORT_LINE`, which ends the input there.
        let mut too_long: Option<u64> = None;
        let parsers = Parsers::start();
        let mut parsing: VecDeque<Parsing> = VecDeque::new();
        // Batches come back from parsing to be refilled (fresh megabytes for each cost page
        // faults).
        let mut spare: Vec<LineBatch> = Vec::new();
        loop {
            if !eof && parsing.len() < PARSE_AHEAD {
                let mut batch = spare.pop().unwrap_or_default();
                batch.bytes.clear();
                batch.lines.clear();
                batch.bytes.append(&mut partial);
                // Where the line being read starts (a carried partial line starts at 0).
                let mut line_start = 0;
                // Set once something read is waiting to be written: the read may not wait
                // past it.
                let mut deadline: Option<tokio::time::Instant> = None;
                // Full or not, a batch holding the start of a line reads on to its end.
                while (batch.lines.len() < PARSE_BATCH_LINES
                    && batch.bytes.len() < PARSE_BATCH_BYTES)
                    || batch.bytes.len() > line_start
                {
                    if deadline.is_none()
                        && (!batch.lines.is_empty() || !parsing.is_empty() || self.unwritten())
                    {
                        deadline = Some(tokio::time::Instant::now() + INPUT_IDLE);
                    }
                    // A line may not grow past `MAX_IMPORT_LINE` (a file without line breaks,
                    // `/dev/zero`: the offline import has no body limit to stop it).
                    // (A few bytes more than a line may hold: its line break, a CR before it,
                    // and a byte order mark before the first line.)
                    let room = MAX_IMPORT_LINE + LINE_EXTRAS - (batch.bytes.len() - line_start);
                    let mut bounded = (&mut input).take(room as u64);
                    let read = bounded.read_until(b'\n', &mut batch.bytes);
                    let n = match deadline {
                        None => read.await,
                        Some(at) => match tokio::time::timeout_at(at, read).await {
                            Ok(r) => r,
                            Err(_) => {
                                // `read_until` keeps what it read when dropped: an incomplete
                                // line moves on to the next batch, the complete ones go now.
                                partial.extend_from_slice(&batch.bytes[line_start..]);
                                batch.bytes.truncate(line_start);
                                flush = true;
                                break;
                            }
                        },
                    }
                    .map_err(|e| ApiError::bad_request(format!("reading the input failed: {e}")))?;
                    if batch.bytes.len() == line_start {
                        eof = true;
                        break;
                    }
                    // Room used up without a line break.
                    if batch.bytes.len() - line_start >= MAX_IMPORT_LINE + LINE_EXTRAS
                        && !batch.bytes.ends_with(b"\n")
                    {
                        // The lines before it are recorded first (they were read, and may be
                        // waiting to be parsed and written); the import then stops, saying
                        // where.
                        batch.bytes.truncate(line_start);
                        too_long = Some(line_no + 1);
                        eof = true;
                        break;
                    }
                    let mut start = line_start;
                    // A UTF-8 byte order mark before the first line (Windows tools write
                    // one; RFC 8259 lets a parser ignore it).
                    if line_no == 0 && batch.bytes[start..].starts_with(b"\xEF\xBB\xBF") {
                        start += 3;
                    }
                    line_no += 1;
                    batch.lines.push((line_no, start, batch.bytes.len()));
                    line_start = batch.bytes.len();
                    if n == 0 {
                        // The last line, without a final newline (its start was carried).
                        eof = true;
                        break;
                    }
                }
                if !batch.lines.is_empty() {
                    parsing.push_back(parsers.parse(batch)?);
                }
                if !eof && !flush && parsing.len() < PARSE_AHEAD {
                    continue;
                }
            }
            let Some(next) = parsing.pop_front() else {
                if eof {
                    break;
                }
                // Only a flush gets here without a batch parsing: write what is staged.
                flush = false;
                self.write_all_staged().await?;
                continue;
            };
            let (parsed, used) = next
                .await
                .map_err(|e| ApiError::Internal(format!("parsing task failed: {e}")))?;
            if spare.len() < PARSE_AHEAD {
                spare.push(used);
            }
            if let Some((first, _)) = parsed.first() {
                self.at_line = *first;
            }
            if self.svc.inner.imports_stop.load(Relaxed) {
                // The server is shutting down and its grace period is over: stop between
                // lines (where, the caller says).
                return Err(ApiError::ShuttingDown {
                    during: String::new(),
                });
            }
            self.prefetch(&parsed).await?;
            let mut last_line = 0;
            for (line, p) in parsed {
                last_line = line;
                match p {
                    Parsed::Blank => {}
                    Parsed::Rejected(err) => self.reject(line, &err),
                    Parsed::Command(cmd, new) => {
                        // Staged directly; only what comes back to be staged again is queued.
                        if let Step::Again(lines) = self
                            .stage(Pending {
                                line,
                                cmd,
                                new,
                                probe: true,
                            })
                            .await?
                        {
                            self.stage_all(lines).await?;
                        }
                    }
                }
            }
            progress(last_line);
            if flush && parsing.is_empty() {
                flush = false;
                self.write_all_staged().await?;
            }
        }
        self.write_all_staged().await?;
        progress(line_no);
        if let Some(line) = too_long {
            return Err(ApiError::PayloadTooLarge(format!(
                "line {line} is longer than {} MiB, the most one line may hold (is the input \
                 NDJSON?); the import stopped there{}",
                MAX_IMPORT_LINE >> 20,
                self.stopped_at(line)
                    .strip_prefix(&format!(" at line {line}"))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// A line refused: listed in the report, counted in the metrics.
    fn reject(&mut self, line: u64, err: &ApiError) {
        self.svc
            .inner
            .metrics
            .appends_rejected
            .fetch_add(1, Relaxed);
        let report = &mut self.report;
        *report.rejected_total.get_or_insert(0) += 1;
        report.rejected.push(RejectedLine {
            line,
            status: err.status().as_u16(),
            detail: err.public_detail(),
            // The first few per line (10,000 lines listed; each may hold thousands).
            errors: err
                .field_errors()
                .iter()
                .take(LINE_ERRORS_LISTED)
                .cloned()
                .collect(),
        });
        // Rejections arrive nearly in line order: trim to the first ones now and then, so
        // that memory stays bounded (at most twice the listed number).
        if report.rejected.len() >= 2 * REJECTED_LISTED {
            keep_first_rejected(&mut report.rejected);
        }
    }

    /// The store failed at `line`: the import stops there (the lines before it landed).
    fn store_failed_at(&self, line: u64, cause: &str) -> ApiError {
        ApiError::StoreUnavailable {
            during: self.stopped_at(line),
            cause: cause.to_string(),
        }
    }

    /// What a store failure's answer says of where the import stopped.
    fn stopped_at(&self, line: u64) -> String {
        format!(
            " at line {line} ({} events appended before)",
            self.report.appended
        )
    }

    /// Lines staged or being written, not yet settled.
    fn unwritten(&self) -> bool {
        !self.cur.lines.is_empty() || self.writing.is_some()
    }

    /// Writes (durably) every staged line and settles it.
    async fn write_all_staged(&mut self) -> Result<(), ApiError> {
        loop {
            let again = self.write_now().await?;
            if again.is_empty() {
                return Ok(());
            }
            // The chunk being written came back with trouble: stage the next one's lines again.
            self.stage_all(again).await?;
        }
    }

    /// The states of the incidents of a parsed batch that the import does not hold yet, fetched
    /// together and kept like the carried ones (valid while the stream is at their version,
    /// which `state_for` checks): copied from the live views under one read lock, or, offline,
    /// read from the store in one round trip. One at a time, each copy waited for the lock
    /// between the follower's folding slices: ~6 us per incident, a third of the staging's
    /// time in a live import.
    async fn prefetch(&mut self, parsed: &[(u64, Parsed)]) -> Result<(), ApiError> {
        let mut wanted = Vec::new();
        let mut seen = FastSet::default();
        for (_, p) in parsed {
            let Parsed::Command(cmd, _) = p else { continue };
            let id = cmd.incident_id;
            let held = self.cur.states.contains_key(&id)
                || self.carried.contains_key(&id)
                || self
                    .writing
                    .as_ref()
                    .is_some_and(|w| w.states.contains_key(&id));
            if !held && seen.insert(id) {
                wanted.push(id);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        if self.svc.inner.live {
            // A state the views have not brought up to the stream's version yet is not used
            // (`state_for` then asks `decision_state`, which waits for the views or reads).
            let states: Vec<IncidentState> = {
                let views = self.svc.read_projection();
                wanted.iter().map(|id| views.decision_state(*id)).collect()
            };
            for (id, state) in wanted.into_iter().zip(states) {
                self.carried.insert(id, Box::new(state));
            }
            return Ok(());
        }
        let streams = lean!(self.svc.inner.store, read_streams(wanted.clone()))?;
        for (id, events) in wanted.into_iter().zip(streams) {
            let mut state = IncidentState::with_id(id).into_decision_only();
            for e in &events {
                state.apply(&envelope(e))?;
            }
            self.carried.insert(id, Box::new(state));
        }
        Ok(())
    }

    /// Stages `lines` in order, and whatever staging hands back to be staged again first.
    async fn stage_all(&mut self, lines: Vec<Pending>) -> Result<(), ApiError> {
        let mut queue = VecDeque::from(lines);
        while let Some(p) = queue.pop_front() {
            if let Step::Again(lines) = self.stage(p).await? {
                for p in lines.into_iter().rev() {
                    queue.push_front(p);
                }
            }
        }
        Ok(())
    }

    /// Validates one line against its incident's running state and queues it in the chunk.
    async fn stage(&mut self, p: Pending) -> Result<Step, ApiError> {
        self.at_line = p.line;
        let svc = self.svc;
        let ids = || p.cmd.events.iter().map(|e| e.event_id);
        // An event id still on its way to the log: write it first, so that the line is
        // recognised as a repeat (or reuse) of a recorded one.
        if let Some(w) = &self.writing {
            if ids().any(|id| w.event_ids.contains(&id)) {
                return Ok(Step::Again(followed_by(self.settle().await?, p)));
            }
        }
        if ids().any(|id| self.cur.event_ids.contains(&id)) {
            return Ok(Step::Again(followed_by(self.write_now().await?, p)));
        }
        let id = p.cmd.incident_id;
        if !self.cur.states.contains_key(&id) {
            let state = self.state_for(id).await?;
            self.cur.states.insert(id, state);
        }
        let Some(state) = self.cur.states.get_mut(&id) else {
            return Err(ApiError::Internal("staged incident state vanished".into()));
        };
        let version = state.version();
        // Once repeats have been met, a line that may be one is decided without being folded
        // into the state, and asked of the store as a question (below).
        let mut maybe_repeat = false;
        if self.probing && p.probe {
            if svc.may_repeat(&p.cmd).await? {
                maybe_repeat = true;
                self.probe_misses = 0;
            } else {
                self.probe_misses += 1;
                self.probing = self.probe_misses < PROBE_PATIENCE;
            }
        }
        let Some(state) = self.cur.states.get_mut(&id) else {
            return Err(ApiError::Internal("staged incident state vanished".into()));
        };
        // The clock that stamps the log (on PostgreSQL, the database's), as for an append.
        let now = svc.inner.store.now();
        let failure = match p.cmd.expected {
            ExpectedVersion::Exact(n) if n != version => Some(svc.conflict(&p.cmd, version)),
            _ if maybe_repeat => decide(state, &p.cmd.events, now, "/events")
                .err()
                .map(ApiError::invalid),
            _ => decide_and_apply(state, &p.cmd.events, now, "/events")
                .err()
                .map(ApiError::invalid),
        };
        if maybe_repeat && failure.is_none() {
            self.ask(p, Repeat::Valid);
            return self.send_when_full().await;
        }
        let Some(err) = failure else {
            self.cur.event_ids.extend(ids());
            let at = self.cur.lines.len();
            let earlier = self.cur.accepted.insert(id, at);
            self.queue(p, ExpectedVersion::Exact(version), None, earlier);
            return self.send_when_full().await;
        };
        // The state may be a speculation on the chunk being written: settle that first, then
        // decide again (a rejection must stand on what was recorded).
        if self.writing.is_some() {
            return Ok(Step::Again(followed_by(self.settle().await?, p)));
        }
        // ... or on lines of this chunk that may not land as decided: one that repeats
        // recorded events leaves the stream where it was. Write them, then decide again.
        let mut earlier = self.cur.accepted.get(&id).copied();
        while let Some(i) = earlier {
            let line = &self.cur.lines[i];
            if svc.may_repeat(&line.cmd).await? {
                return Ok(Step::Again(followed_by(self.write_now().await?, p)));
            }
            earlier = line.earlier;
        }
        // A line that may repeat recorded events goes into the chunk under a version no stream
        // reaches: the store answers it in order with the lines before it (an exact repeat:
        // the original outcome; a reuse: a conflict; not recorded after all: the validation
        // error) and never writes it. Anything else is rejected right away.
        if maybe_repeat || svc.may_repeat(&p.cmd).await? {
            self.ask(p, Repeat::Invalid(err));
            return self.send_when_full().await;
        }
        self.reject(p.line, &err);
        Ok(Step::Done)
    }

    /// Queues `p` in the chunk as a question (`ExpectedVersion::NEVER`): answered by the store
    /// in order with the lines before it, never written, and stopping nothing.
    fn ask(&mut self, p: Pending, repeat: Repeat) {
        self.queue(p, ExpectedVersion::NEVER, Some(repeat), None);
    }

    /// Queues `p` in the current chunk under `expected`.
    fn queue(
        &mut self,
        p: Pending,
        expected: ExpectedVersion,
        repeat: Option<Repeat>,
        earlier: Option<usize>,
    ) {
        self.cur.events += p.cmd.events.len();
        self.cur.requests.push(AppendRequest {
            stream_id: p.cmd.incident_id,
            expected_version: expected,
            events: p.new,
            recorded_by: self.recorded_by.to_string(),
        });
        self.cur.lines.push(Staged {
            line: p.line,
            events: p.cmd.events.len(),
            cmd: p.cmd,
            repeat,
            earlier,
        });
    }

    /// Once the chunk is full: settles the chunk being written and hands this one over.
    async fn send_when_full(&mut self) -> Result<Step, ApiError> {
        if self.cur.events >= IMPORT_CHUNK_EVENTS {
            let again = self.settle().await?;
            if !again.is_empty() {
                return Ok(Step::Again(again));
            }
            self.send();
        }
        Ok(Step::Done)
    }

    /// The decision state of `id` for the current chunk, with its lock stripe: from the chunk
    /// being written (a speculation), or kept from an earlier chunk while the stream is still
    /// at its version, or else read.
    async fn state_for(&mut self, id: Uuid) -> Result<Box<IncidentState>, ApiError> {
        let svc = self.svc;
        // The stripe's index, not a clone of it: one atomic on a cold cache line less per
        // incident of the chunk (the lock is cloned only to be taken).
        let idx = super::stripe_index(id);
        if !self.cur.guards.contains_key(&idx) {
            // The chunk being written may hold the stripe: take it over (locking it again
            // would wait for ourselves).
            let held = self.writing.as_mut().and_then(|w| w.guards.remove(&idx));
            let guard = match held {
                Some(g) => g,
                None => svc.stripe(id).lock_owned().await,
            };
            self.cur.guards.insert(idx, guard);
        }
        if let Some(state) = self.writing.as_mut().and_then(|w| w.states.remove(&id)) {
            return Ok(state);
        }
        match self.carried.remove(&id) {
            // Decided by an earlier chunk and still the stream's head (no other writer since).
            Some(state) if state.version() == lean!(svc.inner.store, stream_version(id))? => {
                Ok(state)
            }
            _ => Ok(Box::new(svc.decision_state(id).await?)),
        }
    }

    /// Hands the current chunk to the store (on its own task) and starts an empty one. The
    /// chunk before must have been settled.
    fn send(&mut self) {
        let chunk = std::mem::take(&mut self.cur);
        // The next chunk stages into the lines of the last settled one, emptied: growing
        // megabytes afresh per chunk costs page faults. (The requests go to the store.)
        self.cur.lines = std::mem::take(&mut self.spare_lines);
        self.cur.requests.reserve(chunk.requests.len());
        let requests = chunk.requests;
        let mut lines = chunk.lines;
        let inner = self.svc.inner.clone();
        // The follower waits a moment for the hand-over of what this chunk writes instead of
        // reading it back from the store.
        let in_flight = inner.live.then(|| InFlight::begin(inner.clone()));
        self.writing = Some(Writing {
            results: tokio::spawn(async move {
                let started = Instant::now();
                let results = lean!(inner.store, append_many(requests));
                let took = started.elapsed();
                count_written(&inner.metrics, &lines, &results);
                if in_flight.is_some() {
                    hand_over_written(&inner, &mut lines, &results);
                }
                drop(in_flight);
                (results, took, lines)
            }),
            states: chunk.states,
            event_ids: chunk.event_ids,
            guards: chunk.guards,
        });
    }

    /// Settles the chunk being written, then writes the current one and settles it too. Returns
    /// the lines to stage again when the first came back with trouble (then nothing was
    /// written of the current chunk, whose lines those are).
    async fn write_now(&mut self) -> Result<Vec<Pending>, ApiError> {
        let again = self.settle().await?;
        if !again.is_empty() || self.cur.lines.is_empty() {
            return Ok(again);
        }
        self.send();
        // The current chunk is empty now: nothing of it to stage again.
        self.settle().await
    }

    /// Waits for the chunk being written and settles each line's result. With anything but
    /// plain successes, the current chunk (staged on the written one's states) is taken apart
    /// and its lines are returned, to be staged again.
    async fn settle(&mut self) -> Result<Vec<Pending>, ApiError> {
        let Some(mut w) = self.writing.take() else {
            return Ok(Vec::new());
        };
        let svc = self.svc;
        let (results, took, mut lines) = (&mut w.results)
            .await
            .map_err(|e| ApiError::Internal(format!("writing task failed: {e}")))?;
        let m = &svc.inner.metrics;
        // A chunk of repeats and conflicts only wrote nothing and waited for no sync.
        if results.iter().any(|r| matches!(r, Ok(o) if !o.duplicate)) {
            m.store_append_seconds.observe_duration(took);
        }
        // Lines to decide again, before the current chunk's: the store wrote none of them.
        let mut again: Vec<Pending> = Vec::new();
        // A line of this chunk that would have written failed its check: the store wrote no
        // later line (see `EventStore::append_many`), so that they can be recorded after it
        // is settled, in line order.
        let mut stopped = false;
        let mut failed_incidents = FastSet::default();
        // Incidents whose stream may differ from the chunk's decision state.
        let mut unsure = FastSet::default();
        let mut trouble = false;
        for (staged, result) in lines.drain(..).zip(results) {
            let Staged {
                line,
                cmd,
                events,
                repeat,
                ..
            } = staged;
            let n = events as u64;
            if let Some(repeat) = repeat {
                if let Err(StoreError::Unavailable(cause)) = &result {
                    return Err(self.store_failed_at(line, cause));
                }
                let err = match repeat {
                    Repeat::Invalid(err) => err,
                    // New after all (see `Repeat::Valid`): staged again, not looked up.
                    Repeat::Valid
                        if matches!(result, Err(StoreError::WrongExpectedVersion { .. })) =>
                    {
                        trouble = true;
                        let new = new_events(&cmd.events);
                        again.push(Pending {
                            line,
                            cmd,
                            new,
                            probe: false,
                        });
                        continue;
                    }
                    // (Unused: the store answered it as a repeat or a conflict.)
                    Repeat::Valid => ApiError::Internal(String::new()),
                };
                // A question changed no state and stopped nothing: an exact repeat counts, a
                // reuse is rejected.
                match svc.repeat_answer(&cmd, err, result).await {
                    Ok(outcome) => {
                        self.probing = true;
                        self.probe_misses = 0;
                        self.last_position = self.last_position.max(outcome.last_position);
                        self.report.duplicates += n;
                        m.events_duplicate.fetch_add(n, Relaxed);
                    }
                    Err(answer) => self.reject(line, &answer),
                }
                continue;
            }
            match result {
                Ok(outcome) => {
                    self.last_position = self.last_position.max(outcome.last_position);
                    // (The metrics counted them when the store answered: `count_written`.)
                    if outcome.duplicate {
                        // Folded into the state, the repeat made it wrong.
                        unsure.insert(cmd.incident_id);
                        self.probing = true;
                        self.probe_misses = 0;
                        self.report.duplicates += n;
                    } else {
                        self.report.appended += n;
                        m.append_batch_size.observe(n as f64);
                    }
                }
                // Another process wrote to the incident between validation and write (or an
                // accepted line before was found to repeat recorded events): with "any" decide
                // again; after an earlier failed line (not written) decide again.
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    trouble = true;
                    failed_incidents.insert(cmd.incident_id);
                    if cmd.expected == ExpectedVersion::Any || stopped {
                        let new = new_events(&cmd.events);
                        again.push(Pending {
                            line,
                            cmd,
                            new,
                            probe: true,
                        });
                    } else {
                        let e = svc.conflict(&cmd, actual);
                        self.reject(line, &e);
                    }
                    stopped = true;
                }
                Err(StoreError::Unavailable(cause)) => {
                    return Err(self.store_failed_at(line, &cause));
                }
                Err(e) => {
                    trouble = true;
                    stopped |= e.is_check_failure();
                    // A reused id is a recorded id too: look the next lines' ids up.
                    if matches!(e, StoreError::EventIdConflict { .. }) {
                        self.probing = true;
                        self.probe_misses = 0;
                    }
                    failed_incidents.insert(cmd.incident_id);
                    let e = svc.with_versions(&cmd, e.into()).await;
                    self.reject(line, &e);
                }
            }
        }
        trouble |= !unsure.is_empty();
        unsure.extend(failed_incidents);
        // Keep the states of the incidents whose lines all landed (those the current chunk
        // took over are its own now).
        if self.carried.len() + w.states.len() > self.carry_max {
            self.carried.clear();
        }
        for (id, state) in w.states {
            if !unsure.contains(&id) {
                self.carried.insert(id, state);
            }
        }
        drop(w.guards);
        self.spare_lines = lines;
        if !trouble {
            return Ok(Vec::new());
        }
        // The current chunk was staged on states that did not all land: take it apart (which
        // also releases its stripes before the single appends below retake them).
        let Chunk {
            requests,
            lines,
            guards,
            ..
        } = std::mem::take(&mut self.cur);
        drop(guards);
        for id in &unsure {
            self.carried.remove(id);
        }
        again.extend(
            lines
                .into_iter()
                .zip(requests)
                .map(|(s, r)| s.into_pending(r)),
        );
        Ok(again)
    }
}

/// Counts what the store recorded of a written chunk (plain lines; a repeat's answer is
/// counted when settled), as soon as it answers: an import whose client went away is never
/// settled, but what it wrote was appended all the same.
fn count_written(metrics: &ServiceMetrics, lines: &[Staged], results: &Results) {
    for (staged, outcome) in lines.iter().zip(results).map(recorded) {
        let Some(outcome) = outcome else { continue };
        let n = staged.events as u64;
        if outcome.duplicate {
            metrics.events_duplicate.fetch_add(n, Relaxed);
        } else {
            metrics.events_appended.fetch_add(n, Relaxed);
        }
    }
}

/// A written line and what the store recorded for it as a plain append (`None`: a repeat the
/// store answered, or a failure).
fn recorded<'a>(
    (staged, result): (&'a Staged, &'a Result<AppendOutcome, StoreError>),
) -> (&'a Staged, Option<&'a AppendOutcome>) {
    let outcome = match (&staged.repeat, result) {
        (None, Ok(outcome)) => Some(outcome),
        _ => None,
    };
    (staged, outcome)
}

/// Hands the events of a written chunk's recorded lines to the live views (taking them out of
/// the lines), as a single append does: the follower need not read and decode them again. Only
/// the store's outcomes are used, before the import settles them: what the store recorded is
/// recorded whatever the import makes of it.
fn hand_over_written(inner: &Inner, lines: &mut [Staged], results: &Results) {
    let mut run: Vec<DecodedEvent> = Vec::new();
    for (staged, result) in lines.iter_mut().zip(results) {
        let (None, Ok(outcome)) = (&staged.repeat, result) else {
            continue;
        };
        // A hand-over is a run of positions without gaps.
        if run
            .last()
            .is_some_and(|e| e.global_position() + 1 != outcome.first_position)
        {
            inner.hand_over(std::mem::take(&mut run));
        }
        let events = std::mem::take(&mut staged.cmd.events);
        if let Err(events) = stamp_recorded(staged.cmd.incident_id, events, outcome, &mut run) {
            staged.cmd.events = events;
        }
    }
    if !run.is_empty() {
        inner.hand_over(run);
    }
}

/// `lines`, then `p`: what to stage again, in line order.
fn followed_by(mut lines: Vec<Pending>, p: Pending) -> Vec<Pending> {
    lines.push(p);
    lines
}

/// A batch's parsed lines, with the batch (to be refilled).
type BatchParse = (Vec<(u64, Parsed)>, LineBatch);
/// A batch's parse on its way back from a parsing thread.
type Parsing = tokio::sync::oneshot::Receiver<BatchParse>;
/// A batch to parse and where to send what it came to.
type ParseJob = (LineBatch, tokio::sync::oneshot::Sender<BatchParse>);

/// The scheduling priority (nice value) of an import's parsing threads, below the default 0 of
/// the rest of the process.
const PARSE_NICE: i32 = 10;
/// Most parsing threads an import starts (one per core up to this).
const PARSE_THREADS_MAX: usize = 4;

/// The threads that parse an import's lines, at a lower scheduling priority than the rest of
/// the process. They run ahead of the staging anyway; the staging and the store's writer, which
/// every line waits for in turn, should get a core first. On tokio's blocking pool, at the same
/// priority, the parsers had taken the cores while the writer waited, and a core sat idle
/// whenever the staging then waited for the writer: ~10% of an offline import's time. (Linux
/// gives each thread its own nice value; elsewhere, or when refused, they compete as equals.)
/// The threads end when the import drops its `Parsers`.
struct Parsers {
    jobs: std::sync::mpsc::Sender<ParseJob>,
}

impl Parsers {
    fn start() -> Parsers {
        let (jobs, queue) = std::sync::mpsc::channel::<ParseJob>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, PARSE_THREADS_MAX);
        for _ in 0..threads {
            let queue = queue.clone();
            // A thread that cannot be started leaves the others the work; with none, `parse`
            // fails.
            let _ = std::thread::Builder::new()
                .name("incidentlog-parse".into())
                .spawn(move || {
                    let _ = rustix::process::setpriority_process(None, PARSE_NICE);
                    loop {
                        let job = lock(&queue).recv();
                        let Ok((batch, reply)) = job else { return };
                        let parsed = batch.parse();
                        // The import stopped waiting for it (it failed): nothing to do.
                        let _ = reply.send((parsed, batch));
                    }
                });
        }
        Parsers { jobs }
    }

    fn parse(&self, batch: LineBatch) -> Result<Parsing, ApiError> {
        let (reply, parsed) = tokio::sync::oneshot::channel();
        self.jobs
            .send((batch, reply))
            .map_err(|_| ApiError::Internal("no thread to parse the input".into()))?;
        Ok(parsed)
    }
}

/// Lines read for one parsing task: the bytes, and (line number, start, end) of each line.
#[derive(Default)]
struct LineBatch {
    bytes: Vec<u8>,
    lines: Vec<(u64, usize, usize)>,
}

enum Parsed {
    Blank,
    Rejected(ApiError),
    Command(AppendCommand, Vec<NewEvent>),
}

impl LineBatch {
    /// Parses every line (pure CPU work, run on a parsing thread).
    fn parse(&self) -> Vec<(u64, Parsed)> {
        self.lines
            .iter()
            .map(|&(line, start, end)| {
                let text = trim_ascii(&self.bytes[start..end]);
                let parsed = if text.is_empty() {
                    Parsed::Blank
                } else {
                    match incidentlog_projections::Json::from_slice(text) {
                        Err(e) => {
                            Parsed::Rejected(ApiError::bad_request(format!("malformed JSON: {e}")))
                        }
                        Ok(v) => match parse_command(&v, None) {
                            Ok(cmd) => {
                                let new = new_events(&cmd.events);
                                Parsed::Command(cmd, new)
                            }
                            Err(mut e) => {
                                // Thousands of rejected lines may wait here to be reported:
                                // each keeps the few problems its report lists.
                                e.keep_first_field_errors(LINE_ERRORS_LISTED);
                                Parsed::Rejected(e)
                            }
                        },
                    }
                };
                (line, parsed)
            })
            .collect()
    }
}

fn keep_first_rejected(rejected: &mut Vec<RejectedLine>) {
    rejected.sort_by_key(|r| r.line);
    rejected.truncate(REJECTED_LISTED);
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Frees the states an import kept on a thread of its own: a million of them take ~0.25 s to
/// free, which the import's answer should not wait for (offline, the process exits right after
/// and need not free them at all). Small maps are freed at once.
fn free_in_background(states: FastMap<Uuid, Box<IncidentState>>) {
    const FREED_INLINE: usize = 4096;
    if states.len() <= FREED_INLINE {
        return;
    }
    // If no thread can be started, the states are freed here when the closure is dropped.
    let _ = std::thread::Builder::new()
        .name("incidentlog-free".into())
        .spawn(move || drop(states));
}
