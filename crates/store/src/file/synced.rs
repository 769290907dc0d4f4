//! The synced mark, `log/SYNCED`: the last position known to be on stable storage, with its
//! chain hash.
//!
//! The hash chain shows any change *inside* the log, but not a cut at a record boundary: a
//! deleted last segment or a tail cut between two appends leaves a shorter log that verifies
//! clean, because nothing chains to what is gone. Recovery therefore refuses a log that ends
//! before the mark, or whose record at the mark has another hash: acknowledged events are
//! missing, and saying so beats carrying on with new events under their positions.
//!
//! The mark is written off the append path (a thread of its own, at most once per
//! [`INTERVAL`], always the newest synced head, and once more on close), so it costs appends
//! nothing and lags the log by at most about a second. It only ever names synced records, so
//! a crash (which can only lose unsynced bytes) never leaves the log behind it. Written as a
//! new file, synced, then renamed over the old one: it is always whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::scan::corrupt;
use crate::{from_hex_32, Head, StoreError};

pub(crate) const FILE_NAME: &str = "SYNCED";
/// New marks are written under this prefix and a random suffix (two stores of one process
/// may overlap for a moment: never one file for both), then renamed.
const TMP_PREFIX: &str = "SYNCED.tmp-";
/// Marks are written as v2: v1's words and a CRC32C of them, so that damage to the mark
/// itself is told from a log that changed under it. v1 marks (no checksum) are still read.
const MAGIC: &str = "incidentlog-synced-v2";
const MAGIC_V1: &str = "incidentlog-synced-v1";
/// The mark is rewritten at most this often.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Reads the mark; `None` when there is none (a log written before marks existed, or a new one).
pub(crate) fn read(log_dir: &Path) -> Result<Option<Head>, StoreError> {
    let path = log_dir.join(FILE_NAME);
    let bytes = match super::io::read_small_by_name(&path, 4096) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) =>
        {
            return Err(corrupt(&path, 0, format!("not a synced mark: {e}")))
        }
        Err(e) => return Err(e.into()),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(corrupt(&path, 0, "not a synced mark (not UTF-8)"));
    };
    match parse(&text) {
        Ok(head) => Ok(Some(head)),
        Err(Unreadable::Damaged) => Err(corrupt(
            &path,
            0,
            format!(
                "the synced mark itself is damaged (its checksum does not match its words: \
                 {:?}), which says nothing of the log; remove {} to open the log without it \
                 (`incidentlog verify` then checks the log's chain)",
                text.trim_end(),
                path.display()
            ),
        )),
        Err(Unreadable::NotAMark) => Err(corrupt(
            &path,
            0,
            format!("not a synced mark: {:?}", text.trim_end()),
        )),
    }
}

/// Why a mark's text cannot be read.
#[derive(Debug, PartialEq)]
enum Unreadable {
    /// Not the shape of a mark.
    NotAMark,
    /// A v2 mark whose checksum fails: the file was damaged (a flipped bit, a bad sector).
    Damaged,
}

fn parse(text: &str) -> Result<Head, Unreadable> {
    let line = text.strip_suffix('\n').ok_or(Unreadable::NotAMark)?;
    let words: Vec<&str> = line.split(' ').collect();
    let (position, hash) = match words[..] {
        [MAGIC_V1, position, hash] => (position, hash),
        [MAGIC, position, hash, crc] => {
            let covered = &line[..line.len() - crc.len() - 1];
            let crc = u32::from_str_radix(crc, 16)
                .ok()
                .filter(|_| crc.len() == 8)
                .ok_or(Unreadable::NotAMark)?;
            if crc != crc32c::crc32c(covered.as_bytes()) {
                return Err(Unreadable::Damaged);
            }
            (position, hash)
        }
        _ => return Err(Unreadable::NotAMark),
    };
    Ok(Head {
        position: position
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(Unreadable::NotAMark)?,
        hash: from_hex_32(hash).ok_or(Unreadable::NotAMark)?,
    })
}

fn encode(head: &Head) -> String {
    let words = format!("{MAGIC} {} {}", head.position, head.hash_hex());
    let crc = crc32c::crc32c(words.as_bytes());
    format!("{words} {crc:08x}\n")
}

/// Writes the mark: a new file, synced, renamed over the old one, the directory synced.
pub(crate) fn write(log_dir: &Path, head: &Head) -> std::io::Result<()> {
    let tmp = log_dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let written = super::io::new_file_options(log_dir)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            super::io::adopt_dir_owner(&f, log_dir);
            f.write_all(encode(head).as_bytes())?;
            f.sync_data()
        })
        .and_then(|()| std::fs::rename(&tmp, log_dir.join(FILE_NAME)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    super::io::sync_dir(log_dir)
}

/// Removes new marks a crash left unrenamed (a writable open, under the data dir's lock).
pub(crate) fn remove_leftovers(log_dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            match std::fs::remove_file(entry.path()) {
                // Renamed meanwhile (a store of this process that is still closing).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Where a recovered log ends: the file and offset after its last record (where records are
/// missing from, when the mark names more), and why the records after it were set aside, if
/// they were (a torn tail).
pub(crate) struct LogEnd<'a> {
    pub file: &'a Path,
    pub offset: u64,
    pub torn: Option<&'a str>,
}

/// Checks the recovered log against the mark: it must hold the marked position, with the
/// marked hash (`record_at` reads the chain hash of a position the log holds, and the file and
/// offset of its record). A refusal names the place in the log (SPEC: file and offset), and
/// the mark.
pub(crate) fn check(
    mark: &Head,
    log_dir: &Path,
    log_end: u64,
    end: LogEnd<'_>,
    record_at: impl FnOnce(u64) -> Result<([u8; 32], PathBuf, u64), StoreError>,
) -> Result<(), StoreError> {
    let path = log_dir.join(FILE_NAME);
    let remedy = format!(
        "if an older copy of the log was restored on purpose, remove {} to accept the loss",
        path.display()
    );
    if log_end < mark.position {
        let torn = end
            .torn
            .map(|why| format!(" (what follows was set aside: {why})"))
            .unwrap_or_default();
        return Err(corrupt(
            end.file,
            end.offset,
            format!(
                "acknowledged events are missing: the log ends here{torn}, at position \
                 {log_end}, but position {} was synced before, as {} records (a segment \
                 deleted, or the log cut short); {remedy}",
                mark.position,
                path.display()
            ),
        ));
    }
    let (hash, file, offset) = record_at(mark.position)?;
    if hash != mark.hash {
        return Err(corrupt(
            &file,
            offset,
            format!(
                "the history was changed: the record at position {} is not the one synced \
                 there before (chain hash {}, as {} records); {remedy}",
                mark.position,
                mark.hash_hex(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Keeps the mark up to date on a thread of its own; stops (writing the newest head first)
/// when dropped.
pub(crate) struct Marker {
    shared: Arc<MarkerShared>,
    thread: Option<JoinHandle<()>>,
}

struct MarkerShared {
    state: Mutex<MarkerState>,
    wake: Condvar,
}

#[derive(Default)]
struct MarkerState {
    /// The newest synced head.
    synced: Option<Head>,
    stop: bool,
    /// The thread waits for a newer synced head (not in its pause between two marks): only
    /// then does a sync wake it. Woken in the pause, it would only go back to sleep, once per
    /// batch (a futex call and a context switch on the appenders' path).
    waiting: bool,
}

impl Marker {
    /// Starts the thread; `marked` is what the mark says now.
    pub(crate) fn start(log_dir: PathBuf, marked: Option<Head>) -> std::io::Result<Marker> {
        let shared = Arc::new(MarkerShared {
            state: Mutex::new(MarkerState::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("incidentlog-synced-mark".into())
            .spawn(move || mark_loop(&s, &log_dir, marked))?;
        Ok(Marker {
            shared,
            thread: Some(thread),
        })
    }

    /// Everything up to `head` is on stable storage now.
    pub(crate) fn synced(&self, head: Head) {
        if head.position == 0 {
            return;
        }
        let mut state = self.shared.lock();
        if state.synced.is_none_or(|s| s.position < head.position) {
            state.synced = Some(head);
            if state.waiting {
                state.waiting = false;
                self.shared.wake.notify_one();
            }
        }
    }

    /// Writes the newest synced head now and stops the thread.
    pub(crate) fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MarkerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, MarkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn mark_loop(shared: &MarkerShared, log_dir: &Path, mut marked: Option<Head>) {
    let mut failing = false;
    loop {
        let (target, stop) = {
            // Nothing synced past the mark yet (after a start, the mark read from disk).
            let behind = |s: &mut MarkerState| {
                let behind = !s.stop
                    && s.synced
                        .is_none_or(|h| marked.is_some_and(|m| h.position <= m.position));
                s.waiting = behind;
                behind
            };
            let state = shared
                .wake
                .wait_while(shared.lock(), behind)
                .unwrap_or_else(|e| e.into_inner());
            (state.synced, state.stop)
        };
        let ahead = |t: &Head| marked.is_none_or(|m| t.position > m.position);
        if let Some(head) = target.filter(ahead) {
            match write(log_dir, &head) {
                Ok(()) => {
                    marked = Some(head);
                    failing = false;
                }
                Err(e) => {
                    // The log itself is fine: the mark only lags (and is tried again).
                    if !failing {
                        tracing::warn!(error = %e, dir = %log_dir.display(), "could not update the synced mark");
                    }
                    failing = true;
                }
            }
        }
        if stop {
            return;
        }
        // Pace: at most one mark per interval, unless stopping.
        let _ = shared
            .wake
            .wait_timeout_while(shared.lock(), INTERVAL, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_as_written_and_anything_else_is_refused() {
        let head = Head {
            position: 42,
            hash: [7; 32],
        };
        let text = encode(&head);
        assert!(text.starts_with("incidentlog-synced-v2 42 0707"), "{text}");
        assert_eq!(parse(&text), Ok(head));
        // A mark of the format before checksums still reads.
        let v1 = "incidentlog-synced-v1 42 0707070707070707070707070707070707070707070707070707070707070707\n";
        assert_eq!(parse(v1), Ok(head));
        for bad in [
            "",
            "incidentlog-synced-v1 42\n",
            "incidentlog-synced-v1 0 0707070707070707070707070707070707070707070707070707070707070707\n",
            "incidentlog-synced-v2 42 0707070707070707070707070707070707070707070707070707070707070707\n",
            "incidentlog-synced-v1 42 0707070707070707070707070707070707070707070707070707070707070707",
            "incidentlog-synced-v1 42 07 x\n",
            "incidentlog-synced-v3 42 0707070707070707070707070707070707070707070707070707070707070707\n",
        ] {
            assert_eq!(parse(bad), Err(Unreadable::NotAMark), "{bad:?}");
        }
        // Any one character of a v2 mark changed (but the checksum's own, which then reads as
        // another number or none): damage to the mark, not a mark of another log.
        let words = text.len() - 10;
        for i in 0..words {
            let mut damaged = text.clone().into_bytes();
            damaged[i] = if damaged[i] == b'1' { b'2' } else { b'1' };
            let damaged = String::from_utf8(damaged).unwrap();
            let parsed = parse(&damaged);
            assert!(
                parsed == Err(Unreadable::Damaged) || parsed == Err(Unreadable::NotAMark),
                "{damaged:?}: {parsed:?}"
            );
            if damaged.starts_with(MAGIC) && damaged.split(' ').count() == 4 {
                assert_eq!(parsed, Err(Unreadable::Damaged), "{damaged:?}");
            }
        }
    }

    /// A sync during the pause between two marks does not wake the thread, yet is marked once
    /// the pause is over; a sync while the thread waits for one is marked right away.
    #[test]
    fn the_marker_follows_syncs_in_and_after_its_pause() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Marker::start(dir.path().to_path_buf(), None).unwrap();
        let head = |position: u64| Head {
            position,
            hash: [position as u8; 32],
        };
        let marked = |position: u64, within: Duration| {
            let deadline = std::time::Instant::now() + within;
            while read(dir.path()).ok().flatten() != Some(head(position)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "position {position} was not marked within {within:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        m.synced(head(1));
        marked(1, Duration::from_secs(1));
        // In the pause that follows the first mark.
        m.synced(head(2));
        marked(2, INTERVAL + Duration::from_secs(1));
        // Once the pause is over the thread waits for a sync: only the sync's wake-up gets it
        // marked (a lost one would leave it unmarked for good; the bound is generous for a
        // busy disk).
        std::thread::sleep(INTERVAL + Duration::from_millis(200));
        m.synced(head(3));
        marked(3, Duration::from_secs(5));
        m.stop();
    }

    #[test]
    fn the_marker_writes_the_newest_head_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Marker::start(dir.path().to_path_buf(), None).unwrap();
        for position in 1..=5 {
            m.synced(Head {
                position,
                hash: [position as u8; 32],
            });
        }
        m.stop();
        assert_eq!(
            read(dir.path()).unwrap(),
            Some(Head {
                position: 5,
                hash: [5; 32]
            })
        );
    }
}
