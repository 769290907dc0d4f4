//! The narrow file interface the writer uses, so tests can inject write and sync failures.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

/// Zeros written past the end of the active segment whenever a small batch reaches the end of
/// what was written before (see [`RealFile`]).
pub const RESERVE_BYTES: u64 = 1 << 20;

/// The active segment as the writer sees it.
#[doc(hidden)]
pub trait LogFile: Send + 'static {
    /// Writes `buf` at the end of the log (the file may go on with reserved zeros after it).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (the bytes of a batch whose write or sync failed), reserve
    /// included.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Gives back, durably, the zeros reserved past the end of the log: the segment ends with
    /// its last record from now on (before it is sealed, and on a clean close). A file that
    /// reserves nothing has nothing to give back.
    fn trim_reserve(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Nothing more will be written to this segment (the log went on in a new one).
    fn sealed(&mut self) {}
    /// Before a batch: whether the file is still linked and not cut short of the log (an
    /// operator's `rm`, `truncate`; at most every 10 ms), and still the segment at its path
    /// (a data directory moved or replaced; at most once a second). Appends written into such
    /// a file would be lost at the next start: the batch is refused instead. Err: what
    /// happened.
    fn check_in_place(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Opens segment files for appending.
#[doc(hidden)]
pub trait LogIo: Send + Sync + 'static {
    /// Opens `path` for appending after its first `len` bytes (what recovery found valid:
    /// anything after it is reserved zeros), creating it (which must not exist, `len` 0) when
    /// `create`.
    fn open_append(&self, path: &Path, create: bool, len: u64) -> io::Result<Box<dyn LogFile>>;
}

/// Real files.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RealIo {
    /// [`crate::OpenOptions::log_cache`].
    pub log_cache: Option<u64>,
}

/// The page cache is given back in steps of at least this much (one call per ~2,000
/// single-event appends).
const DROP_STEP: u64 = 1 << 20;

/// A segment file with zeros written and synced ahead of the log's end. ext4 (like most
/// journaling file systems) makes `fdatasync` commit its journal whenever the file grew: a
/// write of new blocks changes the file's size and extents. Overwriting blocks already written
/// and synced needs only the data flushed, which is what makes PostgreSQL's pre-zeroed WAL
/// segments cheap to sync. So when a small batch (the group commit of single appends) reaches
/// the end of the file, [`RESERVE_BYTES`] of zeros go after it, synced with it; the batches
/// after it overwrite them in place, about one journal commit per MiB instead of one per batch
/// (measured in proto-docs/benchmarks.md, "Twelfth session"). Before the batches use the
/// reserve up, a helper thread writes and syncs the next [`RESERVE_BYTES`] of zeros beyond it
/// ([`TopUp`]), so a batch seldom waits for zeros itself. Recovery takes zeros from the end of
/// the last record to the end of the file for that reserve, not for damage (`scan::recover`).
/// A large batch (an import chunk) just extends the file: its own size already dwarfs one
/// commit.
struct RealFile<F: Positional = File> {
    file: F,
    /// Where the file is (none in tests of the reserve): see [`LogFile::check_in_place`].
    path: Option<std::path::PathBuf>,
    /// When the path was last checked to still lead to this file.
    path_checked: Option<std::time::Instant>,
    /// When the file was last checked to be linked and whole.
    file_checked: Option<std::time::Instant>,
    /// Opens the file again for the helper: its own open file description, so that a failed
    /// writeback is reported to the log thread's `fdatasync` as well as to the helper's (Linux
    /// reports a writeback error once per open file description; a shared descriptor would let
    /// the helper's sync take the error and a batch's sync then succeed).
    reopen: Reopen<F>,
    /// Where the next record goes.
    len: u64,
    /// The file's length: zeros from `len` to here, written and synced.
    reserved: u64,
    /// Zeros being written from `reserved` up to here by the helper: no record may go past
    /// `reserved` until they are done.
    pending: Option<u64>,
    /// Started by the first top-up.
    helper: Option<TopUp>,
    /// The helper could not be started: batches write their zeros themselves.
    no_helper: bool,
    /// The last top-up failed (a full disk): none is tried again before the batches have used
    /// the reserve up and written zeros themselves.
    top_up_failed: bool,
    /// How much of the newest log stays in the page cache ([`crate::OpenOptions::log_cache`]).
    cache: Option<u64>,
    /// The page cache holds nothing of the file before here (this process dropped it).
    dropped: u64,
}

type Reopen<F> = Box<dyn Fn() -> io::Result<F> + Send>;

/// How often [`LogFile::check_in_place`] looks the active segment up by its path.
const PATH_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often it checks that the active segment is still linked and whole.
const FILE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Below this many reserved bytes, the helper tops the reserve up.
const TOP_UP_BELOW: u64 = RESERVE_BYTES / 2;

/// What [`RealFile`] needs of a file (a seam for tests of the reserve's failure path, which
/// takes a full disk to reach with a real file).
trait Positional: Send + Sync + 'static {
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    fn sync_all(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Drops `from..to` from the page cache (only a hint: pages still dirty stay).
    fn drop_cache(&self, from: u64, to: u64) -> io::Result<()>;
    /// Device, inode, link count and size, for [`LogFile::check_in_place`] (None: a file of
    /// the tests, with no path).
    fn identity(&self) -> io::Result<Option<Identity>> {
        Ok(None)
    }
    /// Where the file's first hole starts (its end when it has none; None: unknown).
    fn first_hole(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// What identifies a file in place: `(dev, ino)` at its path, still linked, its size.
#[derive(Clone, Copy, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    links: u64,
    size: u64,
}

impl Positional for File {
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, at)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn drop_cache(&self, from: u64, to: u64) -> io::Result<()> {
        let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) else {
            return Ok(());
        };
        rustix::fs::fadvise(self, from, Some(len), rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
    fn identity(&self) -> io::Result<Option<Identity>> {
        // A plain fstat, not std's statx (which asks for every field).
        let st = rustix::fs::fstat(self)?;
        Ok(Some(Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            links: st.st_nlink,
            size: u64::try_from(st.st_size).unwrap_or(0),
        }))
    }
    fn first_hole(&self) -> io::Result<Option<u64>> {
        // (Moves this descriptor's offset, which nothing uses: every write is positional.)
        Ok(Some(rustix::fs::seek(self, rustix::fs::SeekFrom::Hole(0))?))
    }
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Writes zeros over `from..to`.
fn write_zeros<F: Positional>(file: &F, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The thread that writes and syncs zeros past the reserve while the log thread goes on
/// writing batches into it. Writing the zeros (fresh page cache) and syncing them (a journal
/// commit) took ~1.8 ms per MiB inside a batch, which every append of that batch waited for.
/// One job at a time: `(from, to)`, answered with whether the zeros stand (on failure, a full
/// disk, the helper cuts what it wrote off again: nothing else writes past `from` meanwhile).
struct TopUp {
    jobs: Option<mpsc::Sender<(u64, u64)>>,
    done: mpsc::Receiver<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TopUp {
    fn start<F: Positional>(file: F) -> io::Result<TopUp> {
        let (jobs, rx) = mpsc::channel::<(u64, u64)>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("incidentlog-reserve".into())
            .spawn(move || {
                for (from, to) in rx {
                    let stands = match write_zeros(&file, from, to).and_then(|()| file.sync_data())
                    {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot reserve space past the end of the log");
                            let _ = file.set_len(from);
                            false
                        }
                    };
                    if tx.send(stands).is_err() {
                        return;
                    }
                }
            })?;
        Ok(TopUp {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for TopUp {
    /// Waits for the job in hand: no zeros may land after the file is given up (a reopen
    /// writes records there).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<F: Positional> RealFile<F> {
    fn new(file: F, reopen: Reopen<F>, len: u64, size: u64, cache: Option<u64>) -> RealFile<F> {
        RealFile {
            file,
            path: None,
            path_checked: None,
            file_checked: None,
            reopen,
            len,
            reserved: size,
            pending: None,
            helper: None,
            no_helper: false,
            top_up_failed: false,
            cache,
            dropped: 0,
        }
    }

    /// Gives the page cache back up to `to` (a hint: a failure only leaves the pages cached).
    fn drop_cache_to(&mut self, to: u64) {
        if to <= self.dropped {
            return;
        }
        if let Err(e) = self.file.drop_cache(self.dropped, to) {
            tracing::debug!(error = %e, "cannot drop the log from the page cache");
        }
        self.dropped = to;
    }

    /// Writes zeros from `reserved` to `len + RESERVE_BYTES`. A failure (a full disk) is not the
    /// batch's: what was written of the zeros is cut off again and appends go on without a
    /// reserve.
    fn extend_reserve(&mut self) {
        let target = self.len + RESERVE_BYTES;
        if let Err(e) = write_zeros(&self.file, self.reserved, target) {
            tracing::debug!(error = %e, "cannot reserve space past the end of the log");
            if self.file.set_len(self.len).is_ok() {
                self.reserved = self.len;
            }
            return;
        }
        self.reserved = target;
    }

    /// Takes the helper's answer, if it has one (`wait`: waits for it).
    fn settle(&mut self, wait: bool) {
        let (Some(end), Some(helper)) = (self.pending, &self.helper) else {
            return;
        };
        let answer = match wait {
            true => helper.done.recv().ok(),
            false => match helper.done.try_recv() {
                Ok(stands) => Some(stands),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => None,
            },
        };
        self.pending = None;
        match answer {
            Some(true) => self.reserved = end,
            Some(false) => self.top_up_failed = true,
            // The helper is gone (it cannot panic, but if it did): its zeros count for nothing.
            None => {
                self.helper = None;
                self.no_helper = true;
            }
        }
    }

    /// Hands the next [`RESERVE_BYTES`] of zeros past the reserve to the helper.
    fn top_up(&mut self) {
        if self.no_helper || self.top_up_failed {
            return;
        }
        if self.helper.is_none() {
            match (self.reopen)().and_then(TopUp::start) {
                Ok(h) => self.helper = Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the helper that reserves space ahead of the log: batches write their zeros themselves");
                    self.no_helper = true;
                    return;
                }
            }
        }
        let end = self.reserved + RESERVE_BYTES;
        let sent = self
            .helper
            .as_ref()
            .and_then(|h| h.jobs.as_ref())
            .is_some_and(|jobs| jobs.send((self.reserved, end)).is_ok());
        if sent {
            self.pending = Some(end);
        }
    }
}

impl<F: Positional> LogFile for RealFile<F> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let end = self.len + buf.len() as u64;
        // A batch that would reach the helper's zeros waits for them.
        self.settle(end > self.reserved);
        self.file.write_all_at(buf, self.len)?;
        self.len = end;
        // Not for the first write of a new segment (its header, synced alone): a header
        // torn by a crash is only recognised in a file no longer than a header.
        let small = buf.len() as u64 <= RESERVE_BYTES && self.len > buf.len() as u64;
        if self.len > self.reserved {
            self.reserved = self.len;
            if small {
                self.extend_reserve();
                // The batches used the reserve up: the helper may try again.
                self.top_up_failed = false;
            }
        } else if small && self.pending.is_none() && self.reserved - self.len < TOP_UP_BELOW {
            self.top_up();
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        // Synced pages are clean: dropping them frees them at once, and the memory goes to
        // whatever grows next (the views, mostly) instead of fresh pages, which cost this
        // process ~3 ms per MiB on a VM whose host takes freed memory back.
        if let Some(keep) = self.cache {
            let behind = self.len.saturating_sub(keep);
            if behind >= self.dropped + DROP_STEP {
                self.drop_cache_to(behind);
            }
        }
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.settle(true);
        self.file.set_len(len)?;
        self.len = len;
        self.reserved = len;
        Ok(())
    }
    fn trim_reserve(&mut self) -> io::Result<()> {
        self.settle(true);
        // The file's own length, not `reserved`: zeros a failed reserve left behind count too
        // (a sealed segment must end with its last record, or the next open refuses it).
        if self.file.len()? > self.len {
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
        }
        self.reserved = self.len;
        Ok(())
    }
    fn check_in_place(&mut self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Not before every batch: a `statx` on the I/O thread per batch cost the store bench
        // 13% of its appends (64 appenders, proto-docs/benchmarks.md, twenty-third session).
        let now = std::time::Instant::now();
        if self
            .file_checked
            .is_some_and(|at| now.duration_since(at) < FILE_CHECK_EVERY)
        {
            return Ok(());
        }
        self.file_checked = Some(now);
        let here = match self.file.identity() {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot check {}: {e}", path.display())),
        };
        if here.links == 0 {
            return Err(format!(
                "{} was deleted under the running store",
                path.display()
            ));
        }
        if here.size < self.len {
            return Err(format!(
                "{} was cut to {} bytes under the running store (its records reach {})",
                path.display(),
                here.size,
                self.len
            ));
        }
        // Cut short and then written past (a batch between two checks grows the file back):
        // a hole where records were. Every byte of a segment is written, records or the
        // reserve's zeros, so a healthy one has none before its end. (A file system that
        // cannot tell holes reports none: no false alarm, only no check.)
        if let Ok(Some(hole)) = self.file.first_hole() {
            if hole < self.len {
                return Err(format!(
                    "{} was cut short under the running store (a hole at offset {hole} where \
                     records were)",
                    path.display()
                ));
            }
        }
        if self
            .path_checked
            .is_some_and(|at| at.elapsed() < PATH_CHECK_EVERY)
        {
            return Ok(());
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                if (m.dev(), m.ino()) != (here.dev, here.ino) {
                    return Err(format!(
                        "{} was replaced under the running store (the data directory moved \
                         or a file was put in its place)",
                        path.display()
                    ));
                }
            }
            Err(e) => {
                return Err(format!(
                    "{} cannot be found under the running store ({e}): the data directory \
                     was moved or changed",
                    path.display()
                ))
            }
        }
        self.path_checked = Some(std::time::Instant::now());
        Ok(())
    }
    fn sealed(&mut self) {
        // Its newest records are still the log's newest for a moment, but sealed segments
        // would otherwise each keep `cache` bytes cached for good.
        if self.cache.is_some() {
            self.drop_cache_to(self.len);
        }
    }
}

/// Opens `path` for writing again, as a new open file description (not a `dup`).
fn reopener(path: &Path) -> Reopen<File> {
    let path = path.to_path_buf();
    Box::new(move || open_by_name(OpenOptions::new().write(true), &path))
}

impl LogIo for RealIo {
    fn open_append(&self, path: &Path, create: bool, len: u64) -> io::Result<Box<dyn LogFile>> {
        let dir = dir_of(path);
        let file = open_by_name(new_file_options(dir).write(true).create_new(create), path)?;
        if create {
            adopt_dir_owner(&file, dir);
        }
        let size = file.metadata()?.len();
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {size} bytes, shorter than the {len} bytes recovered from it",
                    path.display()
                ),
            ));
        }
        let mut segment = RealFile::new(file, reopener(path), len, size, self.log_cache);
        segment.path = Some(path.to_path_buf());
        Ok(Box::new(segment))
    }
}

/// Options for a file the store creates in `dir`: the directory's read and write bits, as far
/// as the umask lets them through. A data directory the store created is 0700, so its files
/// are 0600: the log holds what investigators recorded, and `tokens.json` the token hashes.
/// A directory an operator opened to a group (0750) gives 0640, so a backup group keeps
/// reading new segments too; an older deployment's 0755 keeps giving 0644.
pub(crate) fn new_file_options(dir: &Path) -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Read bits as the directory has them, write for the owner only (in a sticky 1777
        // directory a group- or world-writable file could be edited in place by others).
        let mode = std::fs::metadata(dir).map_or(0o600, |m| m.permissions().mode() & 0o644);
        options.mode(mode);
    }
    options
}

/// Opens a file of the data directory by name with `options`: no symlink is followed (root
/// run on a directory someone else controls must not create, truncate or write through a link
/// planted there), no wait on a FIFO put in its place, and only a regular file is taken.
/// The whole of a small file of the data directory read by name (`log/SYNCED`,
/// `tokens.json`): no symlink followed, only a regular file (a FIFO put there would block the
/// read forever), at most `max` bytes (a link to `/dev/zero` or a runaway file must not fill
/// the memory).
pub(crate) fn read_small_by_name(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_by_name(OpenOptions::new().read(true), path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

pub(crate) fn open_by_name(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(options, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = match options.open(path) {
        Ok(f) => f,
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link: files of the data directory must be regular files",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ))
    }
}

/// A file created by another user than the directory's owner (`sudo incidentlog token create`
/// on a service's data directory) is handed to the directory's owner and group, so that the
/// service can still read it. Best effort: only root can, and for the owner it is a no-op.
/// Only for a file this process created exclusively (`create_new`, which follows no symlink):
/// on a file opened by name, a symlink planted in the directory could hand any file over.
pub(crate) fn adopt_dir_owner(file: &File, dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(d), Ok(f)) = (std::fs::metadata(dir), file.metadata()) else {
            return;
        };
        if (d.uid(), d.gid()) != (f.uid(), f.gid()) {
            let _ = std::os::unix::fs::fchown(file, Some(d.uid()), Some(d.gid()));
        }
    }
}

/// The directory a file path is in (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates the data directory `dir` and any missing parents, owner-only (0700 on Unix) like
/// the files in them. Directories that exist keep their mode (the operator's choice).
pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
        .collect();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    // Each new directory's entry in its parent must survive a crash as well, or a crash
    // before the next start could take the whole new log with it (its SYNCED mark included).
    for created in missing.iter().rev() {
        sync_new_entry(created)?;
    }
    Ok(())
}

/// fsync of the directory holding the new entry `path`. A directory this user may write in
/// but not read (`-wx`) cannot be opened to sync it: left to the file system then.
fn sync_new_entry(path: &Path) -> io::Result<()> {
    match sync_dir(dir_of(path)) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        r => r,
    }
}

/// Creates `dir` (if missing) with the mode and, as far as allowed, the owner of the directory
/// it is in: `log/` of a data directory an operator opened to a group is open to that group
/// too, and belongs to the service even when root made it.
pub(crate) fn create_dir_like_parent(dir: &Path) -> io::Result<()> {
    let parent = std::fs::metadata(dir_of(dir));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mode = parent
            .as_ref()
            .map_or(0o700, |m| m.permissions().mode() & 0o777);
        builder.mode(mode);
    }
    match builder.create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        r => r?,
    }
    sync_new_entry(dir)?;
    #[cfg(unix)]
    if let Ok(p) = parent {
        use std::os::unix::fs::MetadataExt;
        if let Ok(d) = std::fs::metadata(dir) {
            if (d.uid(), d.gid()) != (p.uid(), p.gid()) {
                // Best effort, as for files (only root can); `lchown` so that a symlink put
                // in its place meanwhile is not followed.
                let _ = std::os::unix::fs::lchown(dir, Some(p.uid()), Some(p.gid()));
            }
        }
    }
    Ok(())
}

/// fsync of a directory, so a created or renamed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A file on a disk that holds at most `cap` bytes: writes past it fail with ENOSPC after
    /// writing what fits, like a full file system.
    /// Handles to one disk share it (as opening a file again does).
    #[derive(Clone)]
    struct SmallDisk(Arc<Disk>);

    struct Disk {
        bytes: Mutex<Vec<u8>>,
        cap: usize,
        /// How long each write of zeros waits before it lands (a slow disk, for races).
        zeros_delay: Duration,
        /// The ranges dropped from the page cache, in order.
        dropped: Mutex<Vec<(u64, u64)>>,
    }

    impl std::ops::Deref for SmallDisk {
        type Target = Disk;
        fn deref(&self) -> &Disk {
            &self.0
        }
    }

    impl SmallDisk {
        fn new(cap: usize) -> SmallDisk {
            SmallDisk::slow(cap, Duration::ZERO)
        }
        fn slow(cap: usize, zeros_delay: Duration) -> SmallDisk {
            SmallDisk(Arc::new(Disk {
                bytes: Mutex::new(Vec::new()),
                cap,
                zeros_delay,
                dropped: Mutex::new(Vec::new()),
            }))
        }
        fn bytes(&self) -> Vec<u8> {
            self.bytes.lock().unwrap().clone()
        }
    }

    impl Positional for SmallDisk {
        fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
            if buf.iter().all(|&b| b == 0) {
                std::thread::sleep(self.zeros_delay);
            }
            let mut bytes = self.bytes.lock().unwrap();
            let at = at as usize;
            let end = (at + buf.len()).min(self.cap.max(at));
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[at..end].copy_from_slice(&buf[..end - at]);
            if end < at + buf.len() {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.bytes.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn sync_all(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.bytes.lock().unwrap().len() as u64)
        }
        fn drop_cache(&self, from: u64, to: u64) -> io::Result<()> {
            self.dropped.lock().unwrap().push((from, to));
            Ok(())
        }
    }

    fn on(disk: SmallDisk) -> RealFile<SmallDisk> {
        let again = disk.clone();
        RealFile::new(disk, Box::new(move || Ok(again.clone())), 0, 0, None)
    }

    fn segment(cap: usize) -> RealFile<SmallDisk> {
        on(SmallDisk::new(cap))
    }

    /// What a sequence of writes should leave: the records, back to back.
    fn records(writes: &[&[u8]]) -> Vec<u8> {
        writes.concat()
    }

    /// Synced records more than `cache` behind the end leave the page cache, in steps of at
    /// least `DROP_STEP`, never before their sync; a sealed segment leaves it whole.
    #[test]
    fn synced_records_behind_the_cache_leave_the_page_cache_and_a_sealed_segment_whole() {
        let disk = SmallDisk::new(64 << 20);
        let again = disk.clone();
        let keep = 3 << 19; // 1.5 MiB
        let mut f = RealFile::new(
            disk.clone(),
            Box::new(move || Ok(again.clone())),
            0,
            0,
            Some(keep),
        );
        f.write_all(&[7u8; 64]).unwrap();
        f.sync_data().unwrap();
        let batch = vec![1u8; 100 << 10];
        let mut checked = 0;
        for _ in 0..60 {
            f.write_all(&batch).unwrap();
            let before_sync = disk.dropped.lock().unwrap().len();
            assert_eq!(before_sync, checked, "nothing is dropped before its sync");
            f.sync_data().unwrap();
            let dropped = disk.dropped.lock().unwrap().clone();
            if let Some(&(from, to)) = dropped.last().filter(|_| dropped.len() > checked) {
                assert!(to <= f.len - keep, "the newest {keep} bytes stay cached");
                assert!(to - from >= DROP_STEP, "steps of at least DROP_STEP");
                checked = dropped.len();
            }
        }
        let dropped = disk.dropped.lock().unwrap().clone();
        assert!(dropped.len() >= 3, "{dropped:?}");
        assert_eq!(dropped[0].0, 0);
        assert!(
            dropped.windows(2).all(|w| w[0].1 == w[1].0),
            "contiguous, each range once: {dropped:?}"
        );
        let last = dropped.last().map_or(0, |r| r.1);
        assert!(f.len - last < keep + DROP_STEP + batch.len() as u64);
        f.trim_reserve().unwrap();
        f.sealed();
        assert_eq!(
            disk.dropped.lock().unwrap().last(),
            Some(&(last, f.len)),
            "sealed: the rest goes"
        );
        // The file itself is untouched.
        assert_eq!(disk.bytes().len() as u64, f.len);
        assert!(disk.bytes()[64..].iter().all(|&b| b == 1));
    }

    /// Without a cache limit nothing is ever dropped.
    #[test]
    fn without_a_cache_limit_the_page_cache_is_left_to_the_kernel() {
        let disk = SmallDisk::new(64 << 20);
        let mut f = on(disk.clone());
        f.write_all(&[7u8; 64]).unwrap();
        for _ in 0..40 {
            f.write_all(&[1u8; 100 << 10]).unwrap();
            f.sync_data().unwrap();
        }
        f.trim_reserve().unwrap();
        f.sealed();
        assert!(disk.dropped.lock().unwrap().is_empty());
    }

    #[test]
    fn a_small_batch_reserves_zeros_after_it_and_later_batches_overwrite_them() {
        let mut f = segment(8 << 20);
        let header = [7u8; 64];
        f.write_all(&header).unwrap();
        assert_eq!(
            f.file.bytes(),
            header,
            "the segment's first write reserves nothing"
        );
        let batch = [1u8; 300];
        f.write_all(&batch).unwrap();
        let bytes = f.file.bytes();
        assert_eq!(bytes.len() as u64, 364 + RESERVE_BYTES);
        assert_eq!(&bytes[..364], &records(&[&header, &batch])[..]);
        assert!(bytes[364..].iter().all(|&b| b == 0));
        // The next batch goes over the zeros: the file does not grow.
        f.write_all(&[2u8; 100]).unwrap();
        assert_eq!(f.file.bytes().len() as u64, 364 + RESERVE_BYTES);
        f.trim_reserve().unwrap();
        assert_eq!(
            f.file.bytes(),
            records(&[&header, &batch, &[2u8; 100]]),
            "trimmed to the last record"
        );
    }

    /// A full disk fails the zeros, not the batch: the batch is written, the zeros that fit
    /// are cut off again, and appends go on without a reserve.
    #[test]
    fn a_reserve_the_disk_cannot_hold_is_cut_off_and_the_batch_stands() {
        let cap = 4096;
        let mut f = segment(cap);
        let header = [7u8; 64];
        let one = [1u8; 300];
        let two = [2u8; 500];
        f.write_all(&header).unwrap();
        f.write_all(&one).unwrap();
        assert_eq!(
            f.file.bytes(),
            records(&[&header, &one]),
            "no partial zeros left behind"
        );
        assert_eq!((f.len, f.reserved), (364, 364));
        f.write_all(&two).unwrap();
        assert_eq!(f.file.bytes(), records(&[&header, &one, &two]));
        // A batch that does not fit itself fails (the writer cuts it off and reports it).
        let too_big = vec![3u8; cap];
        assert_eq!(f.write_all(&too_big).unwrap_err().raw_os_error(), Some(28));
        f.set_len(864).unwrap();
        assert_eq!(f.file.bytes(), records(&[&header, &one, &two]));
        f.trim_reserve().unwrap();
        assert_eq!(f.file.bytes(), records(&[&header, &one, &two]));
    }

    /// Header and a first small batch (which reserves `RESERVE_BYTES`), then a batch that
    /// leaves less than `TOP_UP_BELOW` of the reserve: the helper is at work past it.
    fn topping_up(disk: SmallDisk) -> (RealFile<SmallDisk>, Vec<u8>) {
        let mut f = on(disk);
        let header = [7u8; 64];
        let one = [1u8; 300];
        let two = vec![2u8; (RESERVE_BYTES - TOP_UP_BELOW + 1) as usize];
        for b in [&header[..], &one, &two] {
            f.write_all(b).unwrap();
        }
        assert_eq!(f.reserved, 364 + RESERVE_BYTES);
        assert_eq!(
            f.pending,
            Some(364 + 2 * RESERVE_BYTES),
            "no top-up started"
        );
        (f, records(&[&header, &one, &two]))
    }

    #[test]
    fn the_helper_tops_the_reserve_up_before_the_batches_use_it_up() {
        let (mut f, mut written) = topping_up(SmallDisk::new(8 << 20));
        f.settle(true);
        assert_eq!((f.pending, f.reserved), (None, 364 + 2 * RESERVE_BYTES));
        let bytes = f.file.bytes();
        assert_eq!(bytes.len() as u64, f.reserved);
        assert_eq!(&bytes[..written.len()], &written[..]);
        assert!(bytes[written.len()..].iter().all(|&b| b == 0));
        // Batches past the first reserve go over the helper's zeros: the file does not grow.
        let three = vec![3u8; RESERVE_BYTES as usize / 2];
        f.write_all(&three).unwrap();
        written.extend_from_slice(&three);
        assert_eq!(f.file.bytes().len() as u64, 364 + 2 * RESERVE_BYTES);
        f.trim_reserve().unwrap();
        assert_eq!(f.file.bytes(), written);
    }

    /// A batch that reaches past the reserve while the helper writes zeros there waits for
    /// them: zeros landing after it would overwrite acknowledged records.
    #[test]
    fn a_batch_that_reaches_the_helpers_zeros_waits_for_them() {
        let disk = SmallDisk::slow(8 << 20, Duration::from_millis(5));
        let (mut f, mut written) = topping_up(disk);
        let three = vec![3u8; (RESERVE_BYTES / 2) as usize];
        assert!(f.len + three.len() as u64 > 364 + RESERVE_BYTES);
        f.write_all(&three).unwrap();
        written.extend_from_slice(&three);
        assert_eq!(f.pending, None);
        let disk = f.file.clone();
        drop(f);
        let bytes = disk.bytes();
        assert_eq!(bytes.len() as u64, 364 + 2 * RESERVE_BYTES);
        assert_eq!(&bytes[..written.len()], &written[..], "zeros over records");
        assert!(bytes[written.len()..].iter().all(|&b| b == 0));
    }

    /// Giving the reserve back waits for the helper: no zeros may follow a sealed segment's
    /// last record.
    #[test]
    fn trimming_waits_for_the_helper() {
        let disk = SmallDisk::slow(8 << 20, Duration::from_millis(5));
        let (mut f, written) = topping_up(disk);
        f.trim_reserve().unwrap();
        let disk = f.file.clone();
        drop(f);
        assert_eq!(disk.bytes(), written);
    }

    /// So does cutting a failed batch off (the writer's `set_len`).
    #[test]
    fn cutting_a_batch_off_waits_for_the_helper() {
        let disk = SmallDisk::slow(8 << 20, Duration::from_millis(5));
        let (mut f, written) = topping_up(disk);
        f.set_len(364).unwrap();
        let disk = f.file.clone();
        drop(f);
        assert_eq!(disk.bytes(), &written[..364]);
    }

    /// A full disk fails the helper's zeros, not a batch: they are cut off again, the reserve
    /// stays what it was, and appends go on.
    #[test]
    fn a_top_up_the_disk_cannot_hold_is_cut_off_and_appends_go_on() {
        let cap = 364 + RESERVE_BYTES as usize + 1000;
        let (mut f, mut written) = topping_up(SmallDisk::new(cap));
        f.settle(true);
        assert_eq!((f.pending, f.reserved), (None, 364 + RESERVE_BYTES));
        assert_eq!(f.file.bytes().len() as u64, 364 + RESERVE_BYTES);
        let four = [4u8; 300];
        f.write_all(&four).unwrap();
        written.extend_from_slice(&four);
        assert_eq!(
            f.pending, None,
            "a failed top-up is not tried again at once"
        );
        f.trim_reserve().unwrap();
        assert_eq!(f.file.bytes(), written);
    }

    /// Without a helper (it could not be started), batches write their zeros themselves.
    #[test]
    fn without_a_helper_batches_reserve_their_zeros_themselves() {
        let disk = SmallDisk::new(8 << 20);
        let mut f = RealFile::new(disk, Box::new(|| Err(io::Error::other("no"))), 0, 0, None);
        let header = [7u8; 64];
        let one = [1u8; 300];
        let two = vec![2u8; (RESERVE_BYTES - TOP_UP_BELOW + 1) as usize];
        let three = vec![3u8; (RESERVE_BYTES / 2) as usize];
        for b in [&header[..], &one, &two, &three] {
            f.write_all(b).unwrap();
            assert_eq!(f.pending, None);
        }
        assert!(f.no_helper && f.helper.is_none());
        let written = records(&[&header, &one, &two, &three]);
        assert_eq!(f.reserved, written.len() as u64 + RESERVE_BYTES);
        let bytes = f.file.bytes();
        assert_eq!(&bytes[..written.len()], &written[..]);
        assert!(bytes[written.len()..].iter().all(|&b| b == 0));
    }

    /// The helper's handle is an open file description of its own, not a `dup` (which shares
    /// the offset, and the one report of a failed writeback, with the log thread's).
    #[test]
    fn the_helper_opens_the_segment_again() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let mut log = open_by_name(OpenOptions::new().write(true), &path).unwrap();
        let mut helper = reopener(&path)().unwrap();
        log.seek(SeekFrom::Start(100)).unwrap();
        assert_eq!(
            helper.stream_position().unwrap(),
            0,
            "a shared file description"
        );
        helper.seek(SeekFrom::Start(7)).unwrap();
        assert_eq!(log.stream_position().unwrap(), 100);
    }

    /// Zeros a failed cut left behind (the file longer than `reserved` says) are trimmed too:
    /// a sealed segment must end with its last record.
    #[test]
    fn trimming_goes_by_the_files_own_length() {
        let mut f = segment(8 << 20);
        f.write_all(&[7u8; 64]).unwrap();
        f.file.set_len(64 + 4096).unwrap();
        f.trim_reserve().unwrap();
        assert_eq!(f.file.bytes(), [7u8; 64]);
    }

    #[test]
    fn opening_a_segment_shorter_than_what_recovery_found_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let err = match RealIo::default().open_append(&path, false, 20) {
            Ok(_) => panic!("a 10-byte file opened for appending after byte 20"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(
            msg.contains("10 bytes") && msg.contains("20 bytes"),
            "{msg}"
        );
        assert!(RealIo::default().open_append(&path, false, 10).is_ok());
    }
}
