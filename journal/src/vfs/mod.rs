//! The one seam between the journal and the filesystem.
//!
//! Every file operation the journal performs goes through [`Vfs`] and [`VfsFile`], so that tests can fail an
//! fdatasync or fill the disk on demand ([`fault::FaultyVfs`]) and a later io_uring path can stand behind
//! the same calls. The traits are deliberately small: positional reads and vectored writes, data sync, full
//! sync, and the directory operations whose durability recovery relies on.

pub mod fault;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::limits::IOV_MAX;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    ReadWrite,
    /// Create; fail if it exists.
    CreateNew,
}

/// An open file.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Fills `buf` from `offset`; an `UnexpectedEof` error if the file is shorter.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs`, in order, starting at `offset`.
    fn write_all_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync.
    fn sync_all(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    /// ftruncate: shrinks a dead segment in steps before it is deleted; paging cuts a page back to its
    /// durable end.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// A hint that `len` bytes from `offset` will be read soon (posix_fadvise WILLNEED); may do nothing.
    fn will_need(&self, _offset: u64, _len: u64) {}
}

/// The filesystem.
pub trait Vfs: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsync of a directory, making creates, renames and deletes in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Where code outside this seam (keel-s3's streaming upload) may open the file itself: `Some` only when
    /// the files are the operating system's.
    fn os_path(&self, _path: &Path) -> Option<std::path::PathBuf> {
        None
    }
}

/// The real filesystem through std and rustix.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile(File);

impl VfsFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        write_all_vectored_at(&self.0, bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn will_need(&self, offset: u64, len: u64) {
        if let Some(len) = std::num::NonZeroU64::new(len) {
            let _ = rustix::fs::fadvise(&self.0, offset, Some(len), rustix::fs::Advice::WillNeed);
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// pwritev until everything is written, in IOV_MAX-sized groups, resuming after short writes.
fn write_all_vectored_at(file: &File, bufs: &[IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    for group in bufs.chunks(IOV_MAX) {
        let mut owned: Vec<IoSlice<'_>> = group.to_vec();
        let mut slices: &mut [IoSlice<'_>] = &mut owned;
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            match rustix::io::pwritev(file, slices, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote 0 bytes")),
                Ok(n) => {
                    offset += n as u64;
                    IoSlice::advance_slices(&mut slices, n);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

impl Vfs for StdVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Box::new(StdFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn os_path(&self, path: &Path) -> Option<std::path::PathBuf> {
        Some(path.to_path_buf())
    }
}
