//! Sequential scans of segment files: recovery on open and `verify`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::format::{self, FrameError, RecordMeta, RecordView, HEADER_LEN};
use super::index::{IdTable, Index, Segment, MAX_POSITION};
use super::synced;
use crate::{Head, StoreError, VerifyReport};

/// Bytes read per syscall while scanning.
const CHUNK: usize = 8 << 20;

pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

/// How a scan of a byte range ended.
pub(crate) enum ScanEnd {
    /// Every byte was part of a valid record.
    Clean,
    /// The record at `offset` failed its checks (or runs past the end: `reason` says so).
    Bad { offset: u64, reason: &'static str },
}

/// Reads `file[start..end]` in large chunks and calls `f(record, offset)` for every valid
/// record, in order. Stops at the first record that fails its checks.
pub(crate) fn scan_range(
    file: &File,
    start: u64,
    end: u64,
    mut f: impl FnMut(&RecordView<'_>, u64) -> Result<(), StoreError>,
) -> Result<ScanEnd, StoreError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut base = start; // file offset of buf[0]
    let mut pos = 0usize;
    let mut next = start; // next file offset to read
    loop {
        match format::parse_record(&buf[pos..]) {
            Ok(v) => {
                f(&v, base + pos as u64)?;
                pos += v.total_len;
            }
            Err(FrameError::Incomplete) => {
                if next >= end {
                    return Ok(if pos == buf.len() {
                        ScanEnd::Clean
                    } else {
                        ScanEnd::Bad {
                            offset: base + pos as u64,
                            reason: "record runs past the end of the file",
                        }
                    });
                }
                buf.drain(..pos);
                base += pos as u64;
                pos = 0;
                // A record longer than a chunk: read at least all of it (len is bounded).
                let mut want = CHUNK;
                if buf.len() >= format::FRAME_HEAD {
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    want = want.max(len + format::FRAME_HEAD + format::FRAME_TAIL);
                }
                let n = want.min((end - next) as usize);
                let old = buf.len();
                buf.resize(old + n, 0);
                file.read_exact_at(&mut buf[old..], next)?;
                next += n as u64;
            }
            Err(FrameError::Bad(reason)) => {
                return Ok(ScanEnd::Bad {
                    offset: base + pos as u64,
                    reason,
                })
            }
        }
    }
}

/// First index in `buf` where a record with valid checksums starts, if any.
fn valid_record_in(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| format::parse_record(&buf[i..]).is_ok())
}

pub(crate) fn segment_path(log_dir: &Path, first_position: u64) -> PathBuf {
    log_dir.join(format!("{first_position:020}.seg"))
}

/// Segment files of a log directory, sorted by first position.
fn list_segments(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// What recovery hands to the store.
pub(crate) struct Recovered {
    pub index: Index,
    /// The segment appends continue in, and its length.
    pub active_path: PathBuf,
    pub active_len: u64,
    /// A torn tail left in place by a read-only open.
    pub torn_tail: Option<TornTail>,
    /// The synced mark the log was checked against.
    pub mark: Option<Head>,
}

/// A torn tail: where it starts and why it is torn.
#[derive(Clone, Debug)]
pub(crate) struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl TornTail {
    /// What `verify` reports for a torn tail a read-only open left in place.
    pub fn to_error(&self) -> StoreError {
        corrupt(
            &self.file,
            self.offset,
            format!(
                "torn tail ({}): an append cut short by a crash, never acknowledged; opening \
                 the store for writing (`serve`, `import`) cuts it off",
                self.reason
            ),
        )
    }
}

/// Disk sector size: the unit a crash can leave unwritten.
const SECTOR: u64 = 512;

/// Whether damage at `offset` in the last segment looks like a write that a crash cut short
/// (never acknowledged: appends are answered after the sync) rather than damage to a record
/// that was complete on disk. A cut-short write leaves the file ending inside a record, a frame
/// head that is not one (a half-written or garbage tail), or sectors that never reached the
/// disk, which read as zeros. A complete record whose bytes are all there but whose checksum
/// fails, or an intact record behind a damaged length field, was damaged after it was written:
/// cutting it could lose an acknowledged event, so it stops the open like any other damage.
/// `tail` is the file from `offset` to its end; zeros of the reserve (`io::RealFile`) may
/// follow the record, so only the record's own extent is looked at.
fn looks_torn(tail: &[u8], offset: u64) -> bool {
    if matches!(
        format::parse_record(tail),
        Err(format::FrameError::Incomplete)
    ) {
        return true;
    }
    // Where the written bytes end: the last nonzero byte, or up to a checksum's worth after it
    // (a record's checksum may end in zero bytes).
    let written = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let last_end = (written + format::FRAME_TAIL - 1).min(tail.len());
    if (written..=last_end).any(|end| format::intact_body_to_end(&tail[..end])) {
        return false;
    }
    if !format::frame_head_ok(tail) {
        return true;
    }
    zero_sector_in_record(tail, offset)
}

/// Whether a 512-byte sector that starts inside the record at the start of `tail` (whose frame
/// head is valid) reads as zeros: a sector that never reached the disk.
fn zero_sector_in_record(tail: &[u8], offset: u64) -> bool {
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    let extent = (format::FRAME_HEAD + len + format::FRAME_TAIL).min(tail.len());
    // Sectors starting inside the record, as indexes into `tail`.
    let first = (offset.div_ceil(SECTOR) * SECTOR - offset) as usize;
    (first..extent).step_by(SECTOR as usize).any(|s| {
        tail[s..tail.len().min(s + SECTOR as usize)]
            .iter()
            .all(|b| *b == 0)
    })
}

/// Whether the bad record at the start of `tail` (in the last segment) is zeros where bytes
/// should be: its frame head, or a sector of it. Bytes that never reached the disk read that
/// way, and so do bytes a copy of a running store read before the writer got there (it
/// writes over zeros reserved ahead). Records *after* such zeros are unsynced bytes of the
/// same crash (a batch's sectors can reach the disk out of order) or what the copy read
/// later: they cannot be kept without the ones in between, and nothing of them was covered
/// by a sync that the synced mark names (the mark is checked before anything is cut). Unlike
/// garbage or a complete record with a bad checksum, which stay damage.
fn zeros_where_a_record_should_be(tail: &[u8], offset: u64) -> bool {
    if tail.len() >= format::FRAME_HEAD && tail[..format::FRAME_HEAD].iter().all(|b| *b == 0) {
        return true;
    }
    format::frame_head_ok(tail) && zero_sector_in_record(tail, offset)
}

/// Structural state carried across records: appends are contiguous and never cross segments.
struct AppendState {
    /// Records of the append in progress (not yet in the index).
    pending: Vec<(u32, RecordMeta)>,
    /// Offset where the append in progress starts.
    start_offset: u64,
    last_committed: Option<(usize, u64)>,
    /// Committed (event id, position) pairs not yet sent to the id-table thread.
    ids: Vec<(Uuid, u32)>,
    ids_sink: IdSink,
}

/// Where committed ids go: the id-table thread, or (if it could not be started) a table
/// built on this thread.
enum IdSink {
    Thread(
        std::sync::mpsc::Sender<Vec<(Uuid, u32)>>,
        std::thread::JoinHandle<IdTable>,
    ),
    Local(IdTable),
}

/// Ids are handed to the id-table thread in batches of this many.
const ID_BATCH: usize = 16 * 1024;

impl AppendState {
    fn flush_ids(&mut self) {
        let batch = std::mem::replace(&mut self.ids, Vec::with_capacity(ID_BATCH));
        match &mut self.ids_sink {
            // The receiver only goes away if its thread panicked; join reports that.
            IdSink::Thread(tx, _) => {
                let _ = tx.send(batch);
            }
            IdSink::Local(table) => {
                for (id, position) in batch {
                    table.insert(id, position);
                }
            }
        }
    }
}

/// The most of a last segment's tail (from a bad record on) read to judge it: a torn write is
/// one batch, far smaller; more would only be a damaged or sparse file's size.
const TAIL_READ_MAX: u64 = 256 << 20;

/// The offset, relative to `from`, of the first byte of `file` in `from..end` that is not
/// zero; read 1 MiB at a time, holes skipped (`SEEK_DATA`).
fn first_nonzero(file: &File, from: u64, end: u64) -> std::io::Result<Option<usize>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < end {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(data) => at = data,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            // A file system without SEEK_DATA: read on.
            Err(_) => {}
        }
        if at >= end {
            return Ok(None);
        }
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Ok(Some((at - from) as usize + i));
        }
        at += n as u64;
    }
    Ok(None)
}

/// The most events the tables are sized for before the scan (~1.4 GB of log).
const MAX_SIZE_HINT: usize = 1 << 22;

/// Scans every segment, rebuilds the index, cuts a torn tail. Creates the first segment of
/// an empty log. `read_only`: changes nothing on disk (a torn tail is left in place and
/// reported in [`Recovered::torn_tail`], an empty log gets no segment).
pub(crate) fn recover(log_dir: &Path, read_only: bool) -> Result<Recovered, StoreError> {
    let mut torn_tail = None;
    // Read before the segments, so that a log growing meanwhile (a read-only open next to a
    // server) is never behind it.
    let mark = synced::read(log_dir)?;
    let mut segments = list_segments(log_dir)?;
    let mut index = Index::new();
    // Rough size hint for the tables: ~350 bytes per event. Only a hint, taken from sizes a
    // damaged or sparse file can make absurd (`truncate -s 2T`), which must end in the scan's
    // clear error, not in an allocation that aborts: each file counts for at most the 4 GiB a
    // segment may hold, and the hint for at most MAX_SIZE_HINT events (a log larger than
    // that grows its tables as it is read).
    let total: u64 = segments
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len().min(u64::from(u32::MAX)))
        .fold(0u64, u64::saturating_add);
    let expected_events = usize::try_from(total / 300)
        .unwrap_or(MAX_SIZE_HINT)
        .min(MAX_SIZE_HINT);
    index.reserve(expected_events);

    // A last segment whose header never fully reached the disk was being created: drop it.
    // Unless the synced mark says the log reaches into it: then records are missing, which
    // the scan below refuses, and nothing may change on disk before that.
    if let Some((first, path)) = segments.last() {
        let len = std::fs::metadata(path)?.len();
        let marked_inside = mark.as_ref().is_some_and(|m| m.position >= *first);
        if len <= HEADER_LEN as u64 && !marked_inside {
            let mut h = vec![0u8; len as usize];
            open_segment(path)?.read_exact_at(&mut h, 0)?;
            if format::parse_header(&h).is_err() {
                if read_only {
                    tracing::warn!(
                        file = %path.display(),
                        offset = 0,
                        "a segment whose header was never completely written: ignored (opened read-only)"
                    );
                    torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: 0,
                        reason: "segment header never completely written".to_string(),
                    });
                } else {
                    tracing::warn!(
                        file = %path.display(),
                        offset = 0,
                        "removing a segment whose header was never completely written"
                    );
                    std::fs::remove_file(path)?;
                    super::io::sync_dir(log_dir)?;
                }
                segments.pop();
            }
        }
    }

    if let (Some(m), true) = (&mark, segments.is_empty()) {
        let end = synced::LogEnd {
            file: log_dir,
            offset: 0,
            torn: Some("no segment left"),
        };
        synced::check(m, log_dir, 0, end, |_| {
            Err(corrupt(log_dir, 0, "no segments"))
        })?;
    }
    if segments.is_empty() && !read_only {
        let path = segment_path(log_dir, 1);
        create_segment_file(&path, 1)?;
        super::io::sync_dir(log_dir)?;
        segments.push((1, path));
    }

    // The event-id table is the costliest index (a random access per event): build it on a
    // second thread while this one scans and builds the rest.
    let (ids_tx, ids_rx) = std::sync::mpsc::channel::<Vec<(Uuid, u32)>>();
    let ids_sink = match std::thread::Builder::new()
        .name("incidentlog-open-ids".into())
        .spawn(move || {
            let mut table = IdTable::with_capacity(expected_events);
            for batch in ids_rx {
                for (id, position) in batch {
                    table.insert(id, position);
                }
            }
            table
        }) {
        Ok(handle) => IdSink::Thread(ids_tx, handle),
        // No thread to spare (resource limits): do the work here.
        Err(_) => IdSink::Local(IdTable::with_capacity(expected_events)),
    };
    let count = segments.len();
    let mut state = AppendState {
        pending: Vec::new(),
        start_offset: HEADER_LEN as u64,
        last_committed: None,
        ids: Vec::with_capacity(ID_BATCH),
        ids_sink,
    };
    let mut active_len = 0;
    let mut torn_cut = None;
    for (seg_idx, (name_first, path)) in segments.iter().enumerate() {
        let is_last = seg_idx + 1 == count;
        let file = open_segment(path)?;
        let file_len = file.metadata()?.len();
        if file_len > u64::from(u32::MAX) {
            return Err(corrupt(
                path,
                0,
                "segment of 4 GiB or more (its offsets are 32-bit)",
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        if file_len < HEADER_LEN as u64 {
            return Err(corrupt(path, 0, "segment header truncated"));
        }
        file.read_exact_at(&mut header, 0)?;
        let first = format::parse_header(&header).map_err(|r| corrupt(path, 0, r))?;
        if first != *name_first {
            return Err(corrupt(
                path,
                0,
                "header's first position does not match the file name",
            ));
        }
        let expected_first = index.len() + 1;
        if first != expected_first {
            return Err(corrupt(
                path,
                0,
                format!("segment starts at position {first}, expected {expected_first}"),
            ));
        }
        index.segments.push(Segment {
            first_position: first,
            path: path.clone(),
            file: Arc::new(file),
            len: HEADER_LEN as u64,
        });
        state.start_offset = HEADER_LEN as u64;
        let file = index.segments[seg_idx].file.clone();
        let end = scan_range(&file, HEADER_LEN as u64, file_len, |v, offset| {
            on_record(&mut index, &mut state, seg_idx, v, offset, path)
        })?;
        // Where the log ends in the last segment, if before the end of the file: zeros
        // reserved past the last record (`io::RealFile`).
        let mut reserve_from = None;
        // Where the valid, complete appends of this segment end.
        let mut cut = match end {
            ScanEnd::Clean => None,
            ScanEnd::Bad { offset, reason } => {
                if !is_last {
                    return Err(corrupt(path, offset, reason));
                }
                // Where the first byte that is not zero is (read in pieces: a sparse file can
                // make the rest of the segment gigabytes of zeros), then what follows the bad
                // record, up to TAIL_READ_MAX (a torn write is one batch, far smaller), read
                // once, and (searched only if there is data) where a valid record starts
                // after the bad one.
                let first_data = first_nonzero(&file, offset, file_len)?;
                // Data that far past the log's end is no write a crash cut short (a batch is
                // far smaller): damage, named where it is.
                if let Some(first) = first_data.filter(|f| *f as u64 >= TAIL_READ_MAX) {
                    return Err(corrupt(
                        path,
                        offset + first as u64,
                        format!(
                            "{reason}, then only zeros for {} MiB, then other bytes: not an \
                             interrupted write",
                            first >> 20
                        ),
                    ));
                }
                let kept = (file_len - offset).min(TAIL_READ_MAX);
                let mut tail = vec![
                    0u8;
                    if first_data.is_some() {
                        kept as usize
                    } else {
                        0
                    }
                ];
                file.read_exact_at(&mut tail, offset)?;
                let later = || {
                    valid_record_in(tail.get(1..).unwrap_or_default())
                        .map(|i| offset + 1 + i as u64)
                };
                match first_data {
                    // The reserve, or (the same to a reader) sectors of a write a crash cut
                    // short that never reached the disk: no record is there. Appends go on
                    // over it.
                    None => {
                        reserve_from = Some(offset);
                        None
                    }
                    Some(first) if zeros_where_a_record_should_be(&tail, offset) => {
                        let reason = match first {
                            0 => format!("{reason}, a sector of it reads as zeros"),
                            i => format!(
                                "zeros where a record should start, then other bytes from \
                                 offset {}",
                                offset + i as u64
                            ),
                        };
                        let reason = match later() {
                            Some(at) => format!(
                                "{reason}; records after it (from offset {at}) were written or \
                                 read out of order: a crash before their sync, or a copy of a \
                                 running store"
                            ),
                            None => reason,
                        };
                        Some((offset, reason))
                    }
                    Some(_) => {
                        if let Some(at) = later() {
                            return Err(corrupt(
                                path,
                                offset,
                                format!("{reason}, followed by a valid record at offset {at}"),
                            ));
                        }
                        if !looks_torn(&tail, offset) {
                            return Err(corrupt(
                                path,
                                offset,
                                format!(
                                    "{reason} in a record near the end that is complete on \
                                     disk (no valid record after it): damaged after it was \
                                     written, not an interrupted write (to give it up, \
                                     truncate the file to this offset)"
                                ),
                            ));
                        }
                        Some((offset, reason.to_string()))
                    }
                }
            }
        };
        if !state.pending.is_empty() {
            if !is_last {
                return Err(corrupt(path, state.start_offset, "incomplete append"));
            }
            cut = Some((state.start_offset, "incomplete append".to_string()));
            state.pending.clear();
        }
        let good_len = match cut {
            Some((offset, reason)) if read_only => {
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    reason,
                    "torn tail in the last segment: ignored, left in place (opened read-only)"
                );
                // Replaces a torn header of a newer segment, if any: `verify` reports one
                // damage, and this one is where the records end.
                torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset,
                    reason: reason.clone(),
                });
                offset
            }
            Some((offset, reason)) => {
                // Cut once the synced mark has been checked: a tail that reaches back into
                // synced records is damage, to be left as found.
                torn_cut = Some((path.clone(), offset, reason));
                offset
            }
            None => reserve_from.unwrap_or(file_len),
        };
        index.segments[seg_idx].len = good_len;
        if is_last {
            active_len = good_len;
        }
    }

    state.flush_ids();
    index.ids = match state.ids_sink {
        IdSink::Thread(tx, handle) => {
            drop(tx);
            handle
                .join()
                .map_err(|_| StoreError::Unavailable("building the event-id index failed".into()))?
        }
        IdSink::Local(table) => table,
    };

    // Head hash: the chain hash of the last record.
    if let Some((seg, offset)) = state.last_committed {
        let s = &index.segments[seg];
        let mut buf = vec![0u8; (s.len - offset) as usize];
        s.file.read_exact_at(&mut buf, offset)?;
        let v =
            format::parse_record(&buf).map_err(|_| corrupt(&s.path, offset, "re-read failed"))?;
        index.head = Head {
            position: v.meta.position,
            hash: v.hash(),
        };
    }
    if let Some(m) = &mark {
        let last = index.segments.last();
        let (file, offset, torn) = match (&torn_cut, &torn_tail) {
            (Some((file, offset, why)), _) => (file.as_path(), *offset, Some(why.as_str())),
            (None, Some(t)) => (t.file.as_path(), t.offset, Some(t.reason.as_str())),
            (None, None) => (
                last.map_or(log_dir, |s| s.path.as_path()),
                last.map_or(0, |s| s.len),
                None,
            ),
        };
        let end = synced::LogEnd { file, offset, torn };
        synced::check(m, log_dir, index.len(), end, |position| {
            let loc = index
                .locate(position)
                .ok_or_else(|| corrupt(log_dir, 0, "marked position not in the index"))?;
            // Usually the head (a clean close), whose hash was just read.
            let hash = if position == index.head.position {
                index.head.hash
            } else {
                super::read_record(&loc, None)?.1.hash
            };
            Ok((hash, loc.path, loc.start))
        })?;
    }
    if let Some((path, offset, reason)) = torn_cut {
        tracing::warn!(
            file = %path.display(),
            offset,
            reason,
            "torn tail in the last segment: truncating"
        );
        let f = super::io::open_by_name(std::fs::OpenOptions::new().write(true), &path)?;
        f.set_len(offset)?;
        f.sync_all()?;
    }
    if !read_only {
        synced::remove_leftovers(log_dir)?;
        // What recovery kept is served from now on, and the mark will name it: make sure it
        // is on stable storage (a killed process may have left it written but unsynced).
        if index.head.position > 0 && mark.is_none_or(|m| m.position < index.head.position) {
            // With a mark, only the active segment can hold unsynced bytes (a segment is synced
            // before the next one starts); without one (a log from before marks, or copied
            // in), every segment and the directories are synced.
            let segments = match mark {
                Some(_) => &index.segments[index.segments.len().saturating_sub(1)..],
                None => &index.segments[..],
            };
            for s in segments {
                s.file.sync_all()?;
            }
            super::io::sync_dir(log_dir)?;
            if let Some(data_dir) = log_dir.parent() {
                super::io::sync_dir(data_dir)?;
            }
        }
    }
    index.shrink();
    let active_path = index
        .segments
        .last()
        .map(|s| s.path.clone())
        .unwrap_or_default();
    Ok(Recovered {
        index,
        active_path,
        active_len,
        torn_tail,
        mark,
    })
}

fn on_record(
    index: &mut Index,
    state: &mut AppendState,
    seg_idx: usize,
    v: &RecordView<'_>,
    offset: u64,
    path: &Path,
) -> Result<(), StoreError> {
    let m = &v.meta;
    let expected = index.len() + state.pending.len() as u64 + 1;
    if m.position != expected {
        return Err(corrupt(
            path,
            offset,
            format!("record has position {}, expected {expected}", m.position),
        ));
    }
    if m.position > MAX_POSITION {
        return Err(corrupt(
            path,
            offset,
            "position beyond the file store's limit",
        ));
    }
    if m.append_len == 0 || m.append_index >= m.append_len {
        return Err(corrupt(path, offset, "bad append index"));
    }
    match state.pending.last() {
        Some((_, prev)) => {
            if m.append_index != prev.append_index + 1
                || m.append_len != prev.append_len
                || m.stream_id != prev.stream_id
            {
                return Err(corrupt(
                    path,
                    offset,
                    "append interrupted by another record",
                ));
            }
        }
        None => {
            if m.append_index != 0 {
                return Err(corrupt(path, offset, "append does not start at index 0"));
            }
            state.start_offset = offset;
        }
    }
    // A time no reader can turn into a date would fail every read of this record later.
    if m.recorded_at_time().is_none() {
        return Err(corrupt(path, offset, format::RECORDED_AT_OUT_OF_RANGE));
    }
    if m.recorded_at < index.last_recorded_at
        || state
            .pending
            .last()
            .is_some_and(|(_, p)| m.recorded_at < p.recorded_at)
    {
        return Err(corrupt(path, offset, "recorded_at decreases"));
    }
    state.pending.push((offset as u32, *m));
    if m.append_index + 1 == m.append_len {
        for (off, meta) in state.pending.drain(..) {
            let (position, version) = index.push_without_id(off, meta.recorded_at, meta.stream_id);
            if u64::from(version) != meta.stream_version {
                return Err(corrupt(
                    path,
                    u64::from(off),
                    format!(
                        "stream version {} where {version} was expected",
                        meta.stream_version
                    ),
                ));
            }
            state.ids.push((meta.event_id, position));
        }
        if state.ids.len() >= ID_BATCH {
            state.flush_ids();
        }
        index.segments[seg_idx].len = offset + v.total_len as u64;
        state.last_committed = Some((seg_idx, offset));
    }
    Ok(())
}

/// Opens a segment to read: no symlink followed, a regular file (see `io::open_by_name`).
pub(crate) fn open_segment(path: &Path) -> std::io::Result<File> {
    super::io::open_by_name(std::fs::OpenOptions::new().read(true), path)
}

/// Creates a segment file holding only its header, synced.
pub(crate) fn create_segment_file(path: &Path, first_position: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = super::io::dir_of(path);
    let mut f = super::io::new_file_options(dir)
        .write(true)
        .create_new(true)
        .open(path)?;
    super::io::adopt_dir_owner(&f, dir);
    f.write_all(&format::encode_header(first_position))?;
    f.sync_all()?;
    Ok(())
}

/// Recomputes every checksum and the whole hash chain of the durable log.
pub(crate) fn verify(
    segments: &[(PathBuf, Arc<File>, u64, u64)],
    head: Head,
) -> Result<VerifyReport, StoreError> {
    let mut hash = [0u8; 32];
    let mut next = 1u64;
    for (path, file, first, len) in segments {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let hf = format::parse_header(&header).map_err(|r| corrupt(path, 0, r))?;
        if hf != *first || hf != next {
            return Err(corrupt(
                path,
                0,
                "segment does not start at the expected position",
            ));
        }
        let end = scan_range(file, HEADER_LEN as u64, *len, |v, offset| {
            if v.meta.position != next {
                return Err(corrupt(
                    path,
                    offset,
                    format!("record has position {}, expected {next}", v.meta.position),
                ));
            }
            if v.meta.prev_hash != hash {
                return Err(corrupt(
                    path,
                    offset,
                    "hash chain broken (prev_hash mismatch)",
                ));
            }
            hash = v.hash();
            next += 1;
            Ok(())
        })?;
        if let ScanEnd::Bad { offset, reason } = end {
            return Err(corrupt(path, offset, reason));
        }
    }
    let events = next - 1;
    if events != head.position || hash != head.hash {
        let (path, len) = segments
            .last()
            .map(|(p, _, _, l)| (p.clone(), *l))
            .unwrap_or_default();
        return Err(corrupt(&path, len, "log does not end at the recorded head"));
    }
    Ok(VerifyReport {
        events,
        head_hash: hash,
    })
}
