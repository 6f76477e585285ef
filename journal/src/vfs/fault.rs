//! A [`Vfs`] that fails on demand, for tests of the journal's failure handling.
//!
//! The fault model is what real disks and filesystems do to a journal: an fdatasync that fails (after which
//! the kernel may have dropped the dirty pages, so nothing can be trusted), and a full disk (ENOSPC) that
//! fails writes which need new blocks, until space is freed.

use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{OpenMode, StdVfs, Vfs, VfsFile};

/// Switches shared by a [`FaultyVfs`] and the test that drives it.
#[derive(Debug, Default)]
pub struct Faults {
    /// Syncs (data or full, files or directories) allowed to succeed before every later one fails with EIO.
    /// `u64::MAX` disables the fault.
    syncs_until_failure: AtomicU64,
    /// While set, a write that extends a file fails with ENOSPC (pre-allocation hits this).
    disk_full: AtomicBool,
    /// This many upcoming writes into space the file already has (appends into a pre-allocated segment)
    /// fail with ENOSPC. Writes that extend a file (a spare's zero-fill, which runs concurrently) are not
    /// counted, so the fault lands on the writer's path and nowhere else.
    in_place_writes_to_fail: AtomicU64,
    syncs: AtomicU64,
    /// Microseconds each write that extends a file sleeps first: a disk too slow to zero-fill spares in time.
    extend_delay_us: AtomicU64,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        let f = Faults::default();
        f.syncs_until_failure.store(u64::MAX, Ordering::SeqCst);
        Arc::new(f)
    }

    /// Every sync from now on fails with EIO.
    pub fn fail_syncs(&self) {
        self.syncs_until_failure.store(0, Ordering::SeqCst);
    }

    /// The next `n` syncs succeed; every one after fails with EIO.
    pub fn fail_syncs_after(&self, n: u64) {
        self.syncs_until_failure.store(n, Ordering::SeqCst);
    }

    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    /// The next `n` writes into space a file already has fail with ENOSPC (a thin-provisioned or
    /// copy-on-write volume can refuse even these).
    pub fn fail_next_in_place_writes(&self, n: u64) {
        self.in_place_writes_to_fail.store(n, Ordering::SeqCst);
    }

    /// Every write that extends a file (pre-allocation's zero-fill) sleeps `delay` first.
    pub fn delay_extending_writes(&self, delay: std::time::Duration) {
        self.extend_delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// How many syncs were attempted so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn check_sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let left = self.syncs_until_failure.load(Ordering::SeqCst);
        if left == u64::MAX {
            return Ok(());
        }
        if left == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.syncs_until_failure.store(left - 1, Ordering::SeqCst);
        Ok(())
    }

    fn check_write(&self, extends: bool) -> io::Result<()> {
        // One decrement per failed write even when writers race: a load-then-store would let two
        // concurrent writes both take the last failure.
        if !extends
            && self
                .in_place_writes_to_fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if extends && self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let delay = self.extend_delay_us.load(Ordering::SeqCst);
        if extends && delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        Ok(())
    }
}

/// The real filesystem with the faults of a shared [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultyVfs {
    inner: StdVfs,
    faults: Arc<Faults>,
}

impl FaultyVfs {
    pub fn new(faults: Arc<Faults>) -> FaultyVfs {
        FaultyVfs { inner: StdVfs, faults }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn VfsFile>,
    faults: Arc<Faults>,
}

impl VfsFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let bytes: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let extends = offset + bytes > self.inner.size()?;
        self.faults.check_write(extends)?;
        self.inner.write_all_at(bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.check_sync()?;
        self.inner.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.faults.check_sync()?;
        self.inner.sync_all()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check_sync()?;
        self.inner.set_len(len)
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.inner.will_need(offset, len)
    }
}

impl Vfs for FaultyVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let inner = self.inner.open(path, mode)?;
        Ok(Box::new(FaultyFile { inner, faults: self.faults.clone() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check_sync()?;
        self.inner.sync_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
}
