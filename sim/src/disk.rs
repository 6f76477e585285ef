//! A simulated disk behind keel-journal's [`Vfs`] seam, with the page cache a crash can betray.
//!
//! Each file has two images: what the page cache holds (`current`, what reads see) and what the device
//! holds (`durable`). A write dirties its pages; fdatasync or fsync makes the file's dirty pages and length
//! durable. Each directory likewise has its current entries and its durable ones, with the creates, renames
//! and deletes made since its last fsync kept in order. [`SimDisk::crash`] is a power loss: every dirty page
//! is, independently, lost, kept, or torn at sector granularity; a file whose length changed keeps the old
//! or the new one; each directory keeps a random prefix of its unsynced entry operations (a journalling
//! filesystem commits them in order). Synced data survives unless a fault is injected: a bit flip in
//! durable bytes ([`SimDisk::flip_bit`]), EIO on a read or an fsync, ENOSPC on a write that needs blocks,
//! or a crash in the middle of an operation ([`Faults::crash_in`]).
//!
//! A handle ([`SimDisk::vfs`]) belongs to one generation of the disk: after a crash, every file and handle
//! of the journal that was running fails with EIO, so a journal abandoned by a crash can touch the new
//! image no more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_journal::vfs::{OpenMode, Vfs, VfsFile};
use rand::Rng;

pub const PAGE: usize = 4096;
pub const SECTOR: usize = 512;

/// Faults armed by the driver; each is consumed or cleared by it.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every sync (file or directory) fails with EIO after this many more succeed.
    pub syncs_fail_after: Option<u64>,
    /// Writes that extend a file fail with ENOSPC, writing nothing.
    pub disk_full: bool,
    /// The disk freezes (every operation fails with EIO until [`SimDisk::crash`]) after this many more
    /// operations: a power loss in the middle of whatever the journal was doing.
    pub crash_in: Option<u64>,
    /// The next read of this file name fails with EIO.
    pub read_eio: Option<String>,
    /// For files whose names (when opened) contain this (`""`: every file), a failed sync forgets the file's dirty pages, as
    /// Linux does after a writeback error: the page cache keeps showing them, no later sync writes them,
    /// and a power loss takes them. Otherwise they stay dirty, and a later sync may still save them.
    pub sync_failure_forgets: Option<&'static str>,
    /// In a thousand, the chance that a rename or fsync sleeps 1-3 ms, to widen the races between the
    /// journal's threads.
    pub delay_per_mille: u32,
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Pages whose cached bytes may differ from the device's.
    dirty: BTreeSet<usize>,
    /// Every range written (and shrunk away), in order: a flip is undone only if nothing rewrote its byte.
    writes: Vec<(usize, usize)>,
}

impl Inode {
    fn touched(&mut self, from: usize, to: usize) {
        if to > from {
            self.dirty.extend(from / PAGE..=(to - 1) / PAGE);
            self.writes.push((from, to));
        }
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename { from: String, to: String, ino: u64 },
}

#[derive(Debug, Default)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    frozen: bool,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    faults: Faults,
    ops: u64,
    delay_rng: u64,
}

/// One flipped bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub name: String,
    pub offset: u64,
    pub bit: u8,
    ino: u64,
    writes_before: usize,
    flipped: u8,
}

/// What a crash did, for the driver's log.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrashReport {
    pub pages_lost: u64,
    pub pages_kept: u64,
    pub pages_torn: u64,
    pub dir_ops_lost: u64,
}

#[derive(Debug, Default)]
pub struct SimDisk {
    state: Mutex<State>,
}

impl SimDisk {
    pub fn new(seed: u64) -> Arc<SimDisk> {
        let d = SimDisk::default();
        d.lock().delay_rng = seed | 1;
        Arc::new(d)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A filesystem handle for the current generation.
    pub fn vfs(self: &Arc<SimDisk>) -> Arc<dyn Vfs> {
        Arc::new(SimVfs { disk: self.clone(), generation: self.lock().generation })
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Whether an armed mid-operation crash has frozen the disk.
    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Operations served so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Power loss: decides what of the cache reached the device, makes that the new image, and retires
    /// every handle. Faults are cleared.
    pub fn crash(&self, rng: &mut impl Rng) -> CrashReport {
        let mut st = self.lock();
        let mut report = CrashReport::default();
        // How this crash treats dirty pages: from all kept to all lost, or a mix.
        let keep_bias: f64 = [0.0, 0.5, 1.0, rng.random::<f64>()][rng.random_range(0..4)];
        let torn_chance = [0.0, 0.1, 0.3][rng.random_range(0..3)];
        let mut inos: Vec<u64> = st.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let node = st.inodes.get_mut(&ino).expect("listed");
            crash_file(node, rng, keep_bias, torn_chance, &mut report);
        }
        for dir in st.dirs.values_mut() {
            let keep = rng.random_range(0..=dir.pending.len());
            report.dir_ops_lost += (dir.pending.len() - keep) as u64;
            for op in dir.pending.drain(..).take(keep) {
                apply(&mut dir.durable, &op);
            }
            dir.current = dir.durable.clone();
        }
        st.power_on();
        report
    }

    /// Arms a power loss after `n` more disk operations (of any thread), with small delays on renames and
    /// fsyncs meanwhile to widen the races between threads.
    pub fn arm_crash_in(&self, n: u64) {
        let mut f = self.faults();
        f.crash_in = Some(n);
        f.delay_per_mille = 30;
        self.set_faults(f);
    }

    /// Arms every sync to fail after `n` more succeed; for files whose names contain `forgets`, a failed
    /// sync also forgets their dirty pages (see [`Faults::sync_failure_forgets`]).
    pub fn arm_sync_failure(&self, n: u64, forgets: Option<&'static str>) {
        let mut f = self.faults();
        f.syncs_fail_after = Some(n);
        f.sync_failure_forgets = forgets;
        self.set_faults(f);
    }

    /// Fills the disk, or frees it; returns the faults now armed.
    pub fn toggle_full(&self) -> Faults {
        let mut f = self.faults();
        f.disk_full = !f.disk_full;
        self.set_faults(f.clone());
        f
    }

    /// The harshest power loss, for deterministic tests: every dirty page and every unsynced directory
    /// operation is lost.
    pub fn crash_dropping_unsynced(&self) {
        let mut st = self.lock();
        for node in st.inodes.values_mut() {
            node.current = node.durable.clone();
            node.dirty.clear();
        }
        for dir in st.dirs.values_mut() {
            dir.pending.clear();
            dir.current = dir.durable.clone();
        }
        st.power_on();
    }

    /// Flips one bit of a file's durable bytes while no journal runs (call after [`SimDisk::crash`]):
    /// damage to data that was synced. Picks among the files of `dir` whose names pass `pick`, mostly
    /// within their non-zero prefix. `None` if no file qualifies.
    pub fn flip_bit(&self, rng: &mut impl Rng, dir: &Path, pick: &dyn Fn(&str) -> bool) -> Option<Flip> {
        let mut st = self.lock();
        let entries: Vec<(String, u64)> =
            st.dirs.get(dir)?.current.iter().filter(|(n, _)| pick(n)).map(|(n, i)| (n.clone(), *i)).collect();
        let candidates: Vec<(String, u64)> =
            entries.into_iter().filter(|(_, ino)| st.inodes.get(ino).is_some_and(|n| !n.durable.is_empty())).collect();
        if candidates.is_empty() {
            return None;
        }
        let (name, ino) = candidates[rng.random_range(0..candidates.len())].clone();
        let node = st.inodes.get_mut(&ino).expect("listed");
        debug_assert!(node.dirty.is_empty() && node.current == node.durable, "flip_bit runs on a crashed image");
        let used = node.durable.iter().rposition(|b| *b != 0).map_or(node.durable.len(), |p| p + 1);
        let span = if rng.random_bool(0.8) && used > 0 { used } else { node.durable.len() };
        let offset = rng.random_range(0..span);
        let bit = 1u8 << rng.random_range(0..8);
        node.durable[offset] ^= bit;
        node.current[offset] ^= bit;
        let writes_before = node.writes.len();
        Some(Flip { name, offset: offset as u64, bit, ino, writes_before, flipped: node.current[offset] })
    }

    /// Undoes a [`SimDisk::flip_bit`] (while no journal runs): the damage was found and reported, and the
    /// run goes on from the undamaged image. Where the journal rewrote the byte since, the damage is gone
    /// already; where it copied the file (rekey), the copy's byte is undone. False if nothing was undone.
    pub fn unflip(&self, dir: &Path, flip: &Flip) -> bool {
        let mut st = self.lock();
        let Some(ino) = st.dirs.get(dir).and_then(|d| d.current.get(&flip.name)).copied() else { return false };
        let Some(node) = st.inodes.get_mut(&ino) else { return false };
        let at = flip.offset as usize;
        if at >= node.current.len() || at >= node.durable.len() || node.current[at] != flip.flipped {
            return false;
        }
        let rewritten =
            || node.writes.get(flip.writes_before..).unwrap_or(&[]).iter().any(|(s, e)| (*s..*e).contains(&at));
        if ino == flip.ino && rewritten() {
            return false;
        }
        node.current[at] ^= flip.bit;
        node.durable[at] ^= flip.bit;
        true
    }

    /// Drops files no directory names any more, now or after a crash; call only while no journal runs
    /// (an open handle may still read an unlinked file).
    pub fn collect_garbage(&self) {
        let mut st = self.lock();
        let live: BTreeSet<u64> = st
            .dirs
            .values()
            .flat_map(|d| {
                let pending = d.pending.iter().filter_map(|op| match op {
                    DirOp::Link(_, ino) | DirOp::Rename { ino, .. } => Some(*ino),
                    DirOp::Unlink(_) => None,
                });
                d.current.values().chain(d.durable.values()).copied().chain(pending).collect::<Vec<_>>()
            })
            .collect();
        st.inodes.retain(|ino, _| live.contains(ino));
    }
}

fn crash_file(node: &mut Inode, rng: &mut impl Rng, keep_bias: f64, torn_chance: f64, report: &mut CrashReport) {
    let new_len = if node.current.len() != node.durable.len() && rng.random_bool(keep_bias.clamp(0.0, 1.0)) {
        node.current.len()
    } else {
        node.durable.len()
    };
    let mut image = node.durable.clone();
    image.resize(new_len, 0);
    for &page in &node.dirty {
        let start = page * PAGE;
        if start >= new_len {
            continue;
        }
        let end = (start + PAGE).min(new_len);
        if rng.random_bool(torn_chance) {
            report.pages_torn += 1;
            for s in (start..end).step_by(SECTOR) {
                let e = (s + SECTOR).min(end);
                if rng.random_bool(0.5) {
                    copy_current(&mut image, &node.current, s, e);
                }
            }
        } else if rng.random_bool(keep_bias.clamp(0.0, 1.0)) {
            report.pages_kept += 1;
            copy_current(&mut image, &node.current, start, end);
        } else {
            report.pages_lost += 1;
        }
    }
    node.durable = image.clone();
    node.current = image;
    node.dirty.clear();
}

/// Copies `current[s..e]` over `image`; bytes past the cached file's end are zeros.
fn copy_current(image: &mut [u8], current: &[u8], s: usize, e: usize) {
    for (i, b) in image[s..e].iter_mut().enumerate() {
        *b = current.get(s + i).copied().unwrap_or(0);
    }
}

fn apply(entries: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            entries.remove(name);
        }
        DirOp::Rename { from, to, ino } => {
            entries.remove(from);
            entries.insert(to.clone(), *ino);
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let dir = path.parent().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((dir.to_path_buf(), name.to_owned()))
}

impl State {
    /// After a power loss, once the device image is decided: drops files no directory names, retires
    /// every handle of the journal that was running, and clears the faults.
    fn power_on(&mut self) {
        let live: BTreeSet<u64> = self.dirs.values().flat_map(|d| d.durable.values().copied()).collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        self.generation += 1;
        self.frozen = false;
        self.faults = Faults::default();
    }

    /// Admits one operation of a handle of `generation`.
    fn enter(&mut self, generation: u64) -> io::Result<()> {
        if generation != self.generation || self.frozen {
            return Err(eio());
        }
        self.ops += 1;
        if let Some(n) = self.faults.crash_in.as_mut() {
            if *n == 0 {
                self.frozen = true;
                return Err(eio());
            }
            *n -= 1;
        }
        Ok(())
    }

    fn check_sync(&mut self) -> io::Result<()> {
        match self.faults.syncs_fail_after.as_mut() {
            Some(0) => Err(eio()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A delay to take outside the lock, sometimes.
    fn delay(&mut self) -> Option<Duration> {
        if self.faults.delay_per_mille == 0 {
            return None;
        }
        // xorshift: the delays need no quality, only not to share the driver's random stream.
        let mut x = self.delay_rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.delay_rng = x;
        ((x % 1000) < u64::from(self.faults.delay_per_mille)).then(|| Duration::from_micros(1000 + (x >> 32) % 2000))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

#[derive(Debug)]
struct SimVfs {
    disk: Arc<SimDisk>,
    generation: u64,
}

#[derive(Debug)]
struct SimFile {
    disk: Arc<SimDisk>,
    generation: u64,
    ino: u64,
    name: String,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.disk.lock();
        st.enter(self.generation)?;
        f(&mut st, self.ino)
    }

    fn sync(&self) -> io::Result<()> {
        let delay = self.with(|st, ino| {
            if let Err(e) = st.check_sync() {
                if st.faults.sync_failure_forgets.is_some_and(|part| self.name.contains(part)) {
                    st.inodes.get_mut(&ino).ok_or_else(eio)?.dirty.clear();
                }
                return Err(e);
            }
            let node = st.inodes.get_mut(&ino).ok_or_else(eio)?;
            node.durable.resize(node.current.len(), 0);
            for &page in &node.dirty {
                let start = page * PAGE;
                let end = (start + PAGE).min(node.current.len());
                if start < end {
                    node.durable[start..end].copy_from_slice(&node.current[start..end]);
                }
            }
            node.dirty.clear();
            Ok(st.delay())
        })?;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(())
    }
}

impl VfsFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|st, ino| {
            if st.faults.read_eio.as_deref() == Some(self.name.as_str()) {
                st.faults.read_eio = None;
                return Err(eio());
            }
            let node = st.inodes.get(&ino).ok_or_else(eio)?;
            let start = offset as usize;
            let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let src = node.current.get(start..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.with(|st, ino| {
            let len: usize = bufs.iter().map(|b| b.len()).sum();
            let start = offset as usize;
            let end = start + len;
            let disk_full = st.faults.disk_full;
            let node = st.inodes.get_mut(&ino).ok_or_else(eio)?;
            if end > node.current.len() && disk_full {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            if end > node.current.len() {
                node.current.resize(end, 0);
            }
            let mut at = start;
            for b in bufs {
                node.current[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            node.touched(start, end);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|st, ino| Ok(st.inodes.get(&ino).ok_or_else(eio)?.current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st, ino| {
            let node = st.inodes.get_mut(&ino).ok_or_else(eio)?;
            let old = node.current.len();
            node.current.resize(len as usize, 0);
            node.touched(old.min(len as usize), old.max(len as usize));
            Ok(())
        })
    }
}

impl SimVfs {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.disk.lock();
        st.enter(self.generation)?;
        f(&mut st)
    }
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let (dir, name) = split(path)?;
        let ino = self.with(|st| {
            let exists = st.dir_mut(&dir)?.current.get(&name).copied();
            match (mode, exists) {
                (OpenMode::CreateNew, Some(_)) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                (OpenMode::CreateNew, None) => {
                    st.next_ino += 1;
                    let ino = st.next_ino;
                    st.inodes.insert(ino, Inode::default());
                    let d = st.dir_mut(&dir)?;
                    d.current.insert(name.clone(), ino);
                    d.pending.push(DirOp::Link(name.clone(), ino));
                    Ok(ino)
                }
                (_, Some(ino)) => Ok(ino),
                (_, None) => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        })?;
        Ok(Box::new(SimFile { disk: self.disk.clone(), generation: self.generation, ino, name }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if dir != to_dir {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let delay = self.with(|st| {
            let d = st.dir_mut(&dir)?;
            let ino = d.current.remove(&from_name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            d.current.insert(to_name.clone(), ino);
            d.pending.push(DirOp::Rename { from: from_name, to: to_name, ino });
            Ok(st.delay())
        })?;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = split(path)?;
        self.with(|st| {
            let d = st.dir_mut(&dir)?;
            d.current.remove(&name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            d.pending.push(DirOp::Unlink(name));
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let delay = self.with(|st| {
            st.check_sync()?;
            let d = st.dir_mut(dir)?;
            for op in std::mem::take(&mut d.pending) {
                apply(&mut d.durable, &op);
            }
            debug_assert_eq!(d.durable, d.current);
            Ok(st.delay())
        })?;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.with(|st| Ok(st.dir_mut(dir)?.current.keys().cloned().collect()))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.with(|st| {
            // Directories themselves are durable at once: the journal's own directory is made once, and
            // its entries are what this disk models.
            for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
                st.dirs.entry(d.to_path_buf()).or_default();
            }
            Ok(())
        })
    }
}
