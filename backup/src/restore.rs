//! Restoring a snapshot, or a point in time from a snapshot and the archive, into a directory: chunks
//! fetched in parallel, each verified against its id before it is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::export::TruncateReport;
use keel_journal::Lsn;
use keel_s3::ObjectStore;

use crate::error::BackupError;
use crate::manifest::{ChunkRef, FileEntry, Snapshot};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::{hex, ChunkMode};

/// What to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestorePoint {
    /// `latest`, a snapshot id or a snapshot object name.
    Snapshot(String),
    /// The journal exactly up to and including this LSN (from snapshots and the archive).
    Lsn(u64),
    /// The newest state archived at or before this time (unix ms).
    Time(u64),
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub parallel: usize,
    /// Restore into a directory that is not empty (files of the same names are overwritten).
    pub force: bool,
    /// The journal's master keys: needed to cut an encrypted segment at a point in time.
    pub journal_keys: Option<KeyRing>,
    /// For a point in time: which journal (32 hex digits); default that of the newest snapshot.
    pub journal_id: Option<String>,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions { parallel: 8, force: false, journal_keys: None, journal_id: None }
    }
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The snapshot the restore started from.
    pub snapshot: Snapshot,
    /// The journal directory inside the target.
    pub journal_dir: PathBuf,
    pub files: usize,
    /// Bytes written (chunks that are not zeros), and chunks fetched.
    pub bytes: u64,
    pub chunks: u64,
    pub secs: f64,
    /// The first LSN not in the restored journal.
    pub next_lsn: u64,
    /// The cut at a point in time, when there was one.
    pub truncated: Option<TruncateReport>,
}

impl Repo {
    /// Restores `point` into `target`.
    pub fn restore(
        &self,
        point: &RestorePoint,
        target: &Path,
        opts: &RestoreOptions,
        progress: &Progress,
    ) -> Result<RestoreReport, BackupError> {
        let start = Instant::now();
        // Into a non-empty target (--force), the old contents are first moved into one subdirectory of it
        // (a rename, so the target may be a volume's mount point) and deleted once the restore is complete:
        // restoring over them would leave the old journal's later segments, checkpoints and reclaim horizon
        // beside the restored ones, a journal that is neither.
        check_target(target, opts.force)?;
        let (snapshot, files, cut) = match point {
            RestorePoint::Snapshot(which) => {
                let s = self.find_snapshot(which)?;
                let files = s.files.clone();
                (s, files, None)
            }
            RestorePoint::Lsn(n) => {
                let jid = self.journal_of(opts)?;
                self.plan_lsn(&jid, *n)?
            }
            RestorePoint::Time(t) => {
                let jid = self.journal_of(opts)?;
                let n = self.lsn_at_time(&jid, *t)?;
                self.plan_lsn(&jid, n)?
            }
        };
        // Only once the restore point resolved: a mistyped snapshot or LSN must leave the target as it was.
        let replaced = prepare_target(target, opts.force)?;
        let (bytes, chunks) = self.write_files(target, &files, opts.parallel, progress)?;
        let journal_dir = match snapshot.journal_dir.as_str() {
            "" => target.to_path_buf(),
            d => target.join(d),
        };
        let mut next_lsn = snapshot.next_lsn;
        let truncated = match cut {
            Some(n) => {
                let r = keel_journal::export::truncate_after(&journal_dir, Lsn(n), opts.journal_keys.as_ref())?;
                next_lsn = n + 1;
                Some(r)
            }
            None => None,
        };
        if let Some(old) = replaced {
            std::fs::remove_dir_all(&old).map_err(BackupError::io(&old, "remove the replaced contents"))?;
        }
        Ok(RestoreReport {
            snapshot,
            journal_dir,
            files: files.len(),
            bytes,
            chunks,
            secs: start.elapsed().as_secs_f64(),
            next_lsn,
            truncated,
        })
    }

    fn journal_of(&self, opts: &RestoreOptions) -> Result<String, BackupError> {
        match &opts.journal_id {
            Some(j) => Ok(j.clone()),
            None => Ok(self.find_snapshot("latest")?.journal_id),
        }
    }

    /// The snapshots of one journal, oldest first.
    fn snapshots_of(&self, journal_id: &str) -> Result<Vec<Snapshot>, BackupError> {
        let mut out = Vec::new();
        for l in self.snapshot_names()? {
            let s = self.snapshot(&l.name)?;
            if s.journal_id == journal_id {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The base snapshot, the files, and the LSN to cut at, for restoring journal `jid` up to LSN `n`.
    fn plan_lsn(&self, jid: &str, n: u64) -> Result<(Snapshot, Vec<FileEntry>, Option<u64>), BackupError> {
        let what = || format!("LSN {n} of journal {jid}");
        let fail = |why: String| BackupError::PointInTime { what: what(), why };
        let snaps = self.snapshots_of(jid)?;
        if snaps.is_empty() {
            return Err(fail("the repository holds no snapshot of that journal".into()));
        }
        // The journal's files only: pages are restored from snapshots, whose pages match their cut.
        let journal_files = |s: &Snapshot| -> Vec<FileEntry> {
            let prefix = if s.journal_dir.is_empty() { String::new() } else { format!("{}/", s.journal_dir) };
            s.files.iter().filter(|f| f.path.starts_with(&prefix)).cloned().collect()
        };
        if let Some(s) = snaps.iter().rev().find(|s| s.first_lsn <= n && n < s.next_lsn) {
            return Ok((s.clone(), journal_files(s), Some(n)));
        }
        let Some(base) = snaps.iter().rev().find(|s| s.next_lsn <= n) else {
            let oldest = snaps.iter().map(|s| s.first_lsn).min().unwrap_or(0);
            return Err(fail(format!("it is older than every backup (the oldest starts at LSN {oldest})")));
        };
        let newest = base.newest_segment().ok_or_else(|| fail("its base snapshot holds no segment".into()))?;
        let archived = self.archive_index(jid)?;
        let mut files: Vec<FileEntry> =
            journal_files(base).into_iter().filter(|f| f.segment.is_none_or(|s| s.seq < newest.seq)).collect();
        let mut seq = newest.seq;
        let mut reached = base.next_lsn;
        loop {
            let Some(name) = archived.get(&seq) else {
                return Err(fail(format!(
                    "the archive has no segment {seq}: the archived window ends at LSN {}",
                    reached.saturating_sub(1)
                )));
            };
            let e = self.archive_entry(name)?;
            files.push(FileEntry {
                path: crate::source::join(&base.journal_dir, &format!("{seq:020}.kseg")),
                size: e.size,
                copy_bytes: e.copy_bytes,
                segment: Some(crate::manifest::SegmentInfo { seq, first_lsn: e.first_lsn, key_id: e.key_id }),
                stat: None,
                chunks: e.chunks,
            });
            reached = e.next_lsn;
            if n < e.next_lsn {
                return Ok((base.clone(), files, Some(n)));
            }
            if !e.sealed {
                return Err(fail(format!("the archived window ends at LSN {}", e.next_lsn.saturating_sub(1))));
            }
            seq += 1;
        }
    }

    /// The newest LSN recorded at or before time `t` by a snapshot or an archive point.
    fn lsn_at_time(&self, jid: &str, t: u64) -> Result<u64, BackupError> {
        let mut best: Option<u64> = None;
        for s in self.snapshots_of(jid)? {
            if s.cut_unix_ms <= t && s.next_lsn > s.first_lsn {
                best = best.max(Some(s.next_lsn - 1));
            }
        }
        for name in self.archive_index(jid)?.values() {
            for (at, next) in self.archive_entry(name)?.points {
                if at <= t && next > 1 {
                    best = best.max(Some(next - 1));
                }
            }
        }
        best.ok_or_else(|| BackupError::PointInTime {
            what: format!("time {t} (unix ms) of journal {jid}"),
            why: "no snapshot or archive point is that old".into(),
        })
    }

    /// Writes `files` under `target`: each created at its size, its stored chunks fetched, verified and
    /// written, everything fsynced. Returns bytes and chunks written.
    pub(crate) fn write_files(
        &self,
        target: &Path,
        files: &[FileEntry],
        parallel: usize,
        progress: &Progress,
    ) -> Result<(u64, u64), BackupError> {
        let chunk = self.chunk_bytes();
        let mut handles = Vec::with_capacity(files.len());
        let mut dirs = std::collections::BTreeSet::new();
        dirs.insert(target.to_path_buf());
        for f in files {
            let path = safe_join(target, &f.path)?;
            let parent = path.parent().expect("a joined path has a parent").to_path_buf();
            std::fs::create_dir_all(&parent).map_err(BackupError::io(&parent, "create directory"))?;
            let mut d = parent.as_path();
            while d.starts_with(target) && dirs.insert(d.to_path_buf()) {
                d = d.parent().unwrap_or(target);
            }
            let file = File::create(&path).map_err(BackupError::io(&path, "create"))?;
            allocate(&file, f.size).map_err(BackupError::io(&path, "allocate"))?;
            handles.push((path, Arc::new(file)));
        }
        let jobs: Vec<(usize, usize, ChunkRef)> = files
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                f.chunks.iter().enumerate().filter(|(_, c)| c.id.is_some()).map(move |(c, r)| (i, c, r.clone()))
            })
            .collect();
        progress.start("restoring", jobs.iter().map(|(_, _, r)| u64::from(r.len)).sum());
        let handles = Arc::new(handles);
        let written: Vec<u64> = self.block_on(
            futures::stream::iter(jobs)
                .map(|(i, c, r)| {
                    let (handles, keys) = (handles.clone(), self.keys.clone());
                    let name = r.object_name().expect("only stored chunks are fetched");
                    let key = self.key(&name);
                    async move {
                        let mut got = self.store.get_all(&key).await?.1;
                        let len = tokio::task::spawn_blocking(move || {
                            let range = open_chunk(&keys, &name, &key, &r, &mut got)?;
                            let plain = &got[range];
                            let (path, file) = &handles[i];
                            let offset = c as u64 * chunk;
                            file.write_all_at(plain, offset).map_err(BackupError::io(path, "write"))?;
                            start_writeback(file, offset, plain.len() as u64);
                            keel_crashpoint::hook("backup-restore-chunk-written");
                            Ok::<_, BackupError>(plain.len() as u64)
                        })
                        .await
                        .expect("chunk writing does not panic")?;
                        progress.advance(len);
                        Ok::<_, BackupError>(len)
                    }
                })
                .buffer_unordered(parallel.max(1))
                .try_collect(),
        )?;
        for (path, file) in handles.iter() {
            file.sync_all().map_err(BackupError::io(path, "fsync"))?;
        }
        for d in dirs.iter().rev() {
            File::open(d).and_then(|f| f.sync_all()).map_err(BackupError::io(d, "fsync directory"))?;
        }
        Ok((written.iter().sum(), written.len() as u64))
    }
}

/// Opens a fetched chunk (in place) and checks it against its id; returns where its bytes lie in `got`.
pub(crate) fn open_chunk(
    keys: &crate::seal::RepoKeys,
    name: &str,
    key: &str,
    r: &ChunkRef,
    got: &mut [u8],
) -> Result<std::ops::Range<usize>, BackupError> {
    let mode = r.mode.ok_or_else(|| BackupError::damaged(key, "manifest names a stored chunk without a mode"))?;
    let range = match mode {
        ChunkMode::Sealed => keys.open_in_place(name, got).map_err(|e| BackupError::damaged(key, e.to_string()))?,
        ChunkMode::Raw => 0..got.len(),
    };
    let plain = &got[range.clone()];
    if plain.len() != r.len as usize {
        return Err(BackupError::damaged(key, format!("{} bytes, the manifest says {}", plain.len(), r.len)));
    }
    let id = hex(&keys.chunk_id(mode, plain));
    if Some(&id) != r.id.as_ref() {
        return Err(BackupError::damaged(key, format!("content does not match its id (hashes to {id})")));
    }
    Ok(range)
}

/// `target/rel`, refusing a manifest path that would escape the target.
pub(crate) fn safe_join(target: &Path, rel: &str) -> Result<PathBuf, BackupError> {
    let ok = !rel.is_empty() && rel.split('/').all(|p| !p.is_empty() && p != "." && p != "..") && !rel.starts_with('/');
    if !ok {
        return Err(BackupError::Invalid {
            name: "manifest path",
            why: format!("{rel:?} is not a relative path inside the data directory"),
        });
    }
    Ok(target.join(rel))
}

/// The subdirectory a `--force` restore moves the target's old contents into, entry by entry...
const REPLACING_DIR: &str = ".keel-replacing";
/// ...and its name once every entry is in it (one rename: the mark that the move completed).
const REPLACED_DIR: &str = ".keel-replaced";

/// Refuses a non-empty target without `force`, before anything is fetched or moved.
fn check_target(target: &Path, force: bool) -> Result<(), BackupError> {
    match std::fs::read_dir(target) {
        Ok(mut d) => match d.next() {
            Some(_) if !force => Err(BackupError::TargetNotEmpty { path: target.to_path_buf() }),
            _ => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::io(target, "list")(e)),
    }
}

/// Makes `target` ready to restore into. An empty or new directory is used as it is; a non-empty one
/// (with `force`, checked before) has its contents moved into [`REPLACED_DIR`], returned so that it is
/// deleted once the restore is complete; if the restore fails, the old contents are still there.
fn prepare_target(target: &Path, force: bool) -> Result<Option<PathBuf>, BackupError> {
    let entries: Vec<std::ffi::OsString> = match std::fs::read_dir(target) {
        Ok(d) => {
            d.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>().map_err(BackupError::io(target, "list"))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir_all(target).map_err(BackupError::io(target, "create")).map(|()| None);
        }
        Err(e) => return Err(BackupError::io(target, "list")(e)),
    };
    if entries.is_empty() {
        return Ok(None);
    }
    if !force {
        return Err(BackupError::TargetNotEmpty { path: target.to_path_buf() });
    }
    let (moving, moved) = (target.join(REPLACING_DIR), target.join(REPLACED_DIR));
    let sync_dir = |d: &Path| File::open(d).and_then(|f| f.sync_all()).map_err(BackupError::io(d, "fsync directory"));
    if entries.iter().any(|e| e == REPLACED_DIR) {
        // An earlier --force restore moved the old contents completely, then failed: everything else in
        // the target is what it had written.
        for name in entries.iter().filter(|e| *e != REPLACED_DIR && *e != REPLACING_DIR) {
            remove_any(&target.join(name))?;
        }
        return Ok(Some(moved));
    }
    if !entries.iter().any(|e| e == REPLACING_DIR) {
        std::fs::create_dir(&moving).map_err(BackupError::io(&moving, "create"))?;
    }
    // Interrupted here, the next attempt moves what is left: nothing outside is deleted before the move is
    // complete.
    for name in entries.iter().filter(|e| *e != REPLACING_DIR) {
        let from = target.join(name);
        std::fs::rename(&from, moving.join(name)).map_err(BackupError::io(&from, "move aside"))?;
    }
    sync_dir(&moving)?;
    std::fs::rename(&moving, &moved).map_err(BackupError::io(&moving, "rename"))?;
    sync_dir(target)?;
    Ok(Some(moved))
}

fn remove_any(path: &Path) -> Result<(), BackupError> {
    let r = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    r.map_err(BackupError::io(path, "remove"))
}

/// Starts writing the range back to the disk now, without waiting, so that the disk works while later
/// chunks are fetched and the final fsync finds little left to do (a restore otherwise ends with every
/// byte still dirty in the page cache and one long flush). Only a hint: durability comes from the fsync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Gives the file its size with blocks allocated (so that the journal's later writes into a restored
/// segment do not allocate), falling back to a sparse size where the filesystem cannot.
fn allocate(file: &File, size: u64) -> std::io::Result<()> {
    file.set_len(0)?;
    if size > 0 && rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size).is_ok() {
        return Ok(());
    }
    file.set_len(size)
}

impl Repo {
    /// Segment number → name of its (newest) archive entry, for one journal.
    pub(crate) fn archive_index(&self, jid: &str) -> Result<BTreeMap<u64, String>, BackupError> {
        let mut out = BTreeMap::new();
        self.block_on(self.for_each(&crate::manifest::archive_prefix(jid), |name, _| {
            if let Some((_, seq, _)) = crate::manifest::parse_archive_name(name) {
                // Names sort by LSN within a segment: the last one wins.
                out.insert(seq, name.to_owned());
            }
            Ok(())
        }))?;
        Ok(out)
    }

    pub(crate) fn archive_entry(&self, name: &str) -> Result<crate::manifest::ArchiveEntry, BackupError> {
        let (plain, _) = self.block_on(self.get_sealed(name))?;
        let e: crate::manifest::ArchiveEntry = serde_json::from_slice(&plain)
            .map_err(|e| BackupError::damaged(&self.key(name), format!("archive entry is not valid: {e}")))?;
        if e.object_name() != name {
            return Err(BackupError::damaged(&self.key(name), "archive entry names another segment or LSN"));
        }
        Ok(e)
    }
}
