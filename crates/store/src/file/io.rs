//! The narrow file interface the writer uses, so tests can inject write and sync failures.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The active segment as the writer sees it.
#[doc(hidden)]
pub trait LogFile: Send + 'static {
    /// Appends `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (the bytes of a batch whose write or sync failed).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// Opens segment files for appending.
#[doc(hidden)]
pub trait LogIo: Send + Sync + 'static {
    /// Opens `path` for appending at its end, creating it (which must not exist) when `create`.
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn LogFile>>;
}

/// Real files.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RealIo;

struct RealFile(File);

impl LogFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl LogIo for RealIo {
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn LogFile>> {
        let file = private_options()
            .append(true)
            .create_new(create)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }
}

/// Options for a file the store creates: readable and writable by its owner only (0600 on
/// Unix, whatever the umask). The log holds what investigators recorded, and `tokens.json`
/// the token hashes: not for other local users.
pub(crate) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `dir` and any missing parents, owner-only (0700 on Unix) like the files in them.
/// Directories that exist keep their mode (the operator's choice).
pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// fsync of a directory, so a created or renamed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
