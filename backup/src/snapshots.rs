//! Creating, listing and reading snapshots.

use std::path::Path;
use std::sync::Arc;

use keel_journal::crypto::keys::KeyRing;
use keel_s3::PutCondition;

use crate::error::BackupError;
use crate::lease::{Lease, LeaseOptions};
use crate::manifest::{parse_snapshot_name, Snapshot, VERSION};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::hex;
use crate::source::capture_data;
use crate::upload::{store_files, Previous};

/// Cuts `create` takes before giving up when the writer keeps reclaiming the segments it reads.
const CUT_ATTEMPTS: u32 = 3;

/// How `create` runs.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// The journal's master keys: needed when its newest segment is encrypted (to find the cut).
    pub journal_keys: Option<KeyRing>,
    /// Chunks read, sealed and stored at a time (each holds up to two chunk buffers).
    pub parallel: usize,
    pub lease: LeaseOptions,
    /// Check the existence of every chunk rather than trust that the previous snapshot's chunks are all
    /// there (after `verify --remove-damaged`, to store the removed ones again).
    pub check_all: bool,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions { journal_keys: None, parallel: 4, lease: LeaseOptions::default(), check_all: false }
    }
}

/// A snapshot's name and summary, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub created_unix_ms: u64,
    pub id: String,
}

impl Repo {
    /// Takes a consistent snapshot of the data directory `data` (a journal directory, or a directory with
    /// `journal/` and `pages/`) while its writer keeps writing, storing only chunks the repository lacks.
    pub fn create(&self, data: &Path, opts: &CreateOptions, progress: &Progress) -> Result<Snapshot, BackupError> {
        let lease = self.lease("create", opts.lease)?;
        let snapshot = self.create_leased(data, opts, progress, &lease)?;
        lease.release()?;
        Ok(snapshot)
    }

    pub(crate) fn create_leased(
        &self,
        data: &Path,
        opts: &CreateOptions,
        progress: &Progress,
        lease: &Lease,
    ) -> Result<Snapshot, BackupError> {
        let created_unix_ms = crate::now_ms();
        let mut attempt = 1;
        let (source, stored) = loop {
            let mut source = capture_data(data, opts.journal_keys.as_ref())?;
            #[cfg(test)]
            tests::after_capture();
            // The previous snapshot of the same journal names chunks certainly present: skip checking those,
            // and skip reading sealed segments it already read.
            // Not one made before chunks were last removed: it may name some of them.
            let removed = self.chunks_removed_unix_ms()?;
            let previous = match (opts.check_all, self.latest_of(&source.journal_id)?) {
                (false, Some(prev)) if prev.created_unix_ms > removed => Previous::of(&prev.files),
                _ => Previous::default(),
            };
            let files = Arc::new(std::mem::take(&mut source.files));
            match store_files(self, files, &previous, opts.parallel, progress, lease) {
                Ok(stored) => break (source, stored),
                // The writer reclaimed a segment of the cut while it was read: take a new cut (the chunks
                // stored so far are reused).
                Err(e @ BackupError::SourceChanged { .. }) if attempt < CUT_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "taking a new cut");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the OS random source works");
        let snapshot = Snapshot {
            version: VERSION,
            id: hex(&id),
            created_unix_ms,
            finished_unix_ms: crate::now_ms(),
            cut_unix_ms: source.cut_unix_ms,
            host: crate::lease::hostname(),
            journal_id: source.journal_id,
            journal_dir: source.journal_dir,
            first_lsn: source.first_lsn,
            next_lsn: source.next_lsn,
            frames: source.next_lsn - source.first_lsn,
            files: stored.entries,
            total_bytes: stored.total_bytes,
            new_bytes: stored.new_bytes,
        };
        keel_crashpoint::hook("backup-before-manifest");
        lease.confirm()?;
        let body = serde_json::to_vec(&snapshot).expect("a manifest serialises");
        self.block_on(self.put_sealed(&snapshot.object_name(), &body, PutCondition::IfAbsent))?;
        keel_crashpoint::hook("backup-manifest-written");
        Ok(snapshot)
    }

    /// Every snapshot's name, oldest first (the names alone: no manifest is read).
    pub fn snapshot_names(&self) -> Result<Vec<Listed>, BackupError> {
        let names = self.block_on(self.list("snapshots/"))?;
        Ok(names
            .into_iter()
            .filter_map(|(name, _)| {
                let (created_unix_ms, id) = parse_snapshot_name(&name)?;
                Some(Listed { name, created_unix_ms, id })
            })
            .collect())
    }

    /// Reads and authenticates a snapshot's manifest.
    pub fn snapshot(&self, name: &str) -> Result<Snapshot, BackupError> {
        let (plain, _) = self.block_on(self.get_sealed(name))?;
        let s: Snapshot = serde_json::from_slice(&plain)
            .map_err(|e| BackupError::damaged(&self.key(name), format!("manifest is not valid: {e}")))?;
        if s.version != VERSION {
            return Err(BackupError::damaged(
                &self.key(name),
                format!("manifest version {} (this build reads {VERSION})", s.version),
            ));
        }
        if s.object_name() != name {
            return Err(BackupError::damaged(&self.key(name), "manifest names another snapshot"));
        }
        Ok(s)
    }

    /// `latest`, a snapshot id, or an object name.
    pub fn find_snapshot(&self, which: &str) -> Result<Snapshot, BackupError> {
        let names = self.snapshot_names()?;
        let found = match which {
            "latest" => names.last(),
            w => names.iter().find(|l| l.id == w || l.name == w),
        };
        let l = found.ok_or_else(|| BackupError::NoSnapshot { what: which.to_owned() })?;
        self.snapshot(&l.name)
    }

    /// Every snapshot, read (one manifest at a time in memory besides the result).
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, BackupError> {
        self.snapshot_names()?.iter().map(|l| self.snapshot(&l.name)).collect()
    }

    /// The newest snapshot of a journal.
    pub(crate) fn latest_of(&self, journal_id: &str) -> Result<Option<Snapshot>, BackupError> {
        for l in self.snapshot_names()?.iter().rev() {
            let s = self.snapshot(&l.name)?;
            if s.journal_id == journal_id {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    thread_local! {
        static AFTER_CAPTURE: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
    }

    /// Runs between a cut and the reading of its files, on the thread that takes the cut.
    pub(super) fn after_capture() {
        AFTER_CAPTURE.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f();
            }
        });
    }

    /// Issue 24, defect 9: `backup create` on a live journal failed when a paced reclaim shrank a segment
    /// the cut had opened. Now it takes a new cut, and the snapshot restores every live record.
    #[test]
    fn a_segment_reclaimed_while_it_is_read_makes_create_take_a_new_cut() {
        use keel_journal::{Journal, Options};

        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let opts = Options { segment_bytes: 64 << 10, auto_maintenance: false, ..Options::default() };
        let (j, _) = Journal::open(&data, opts.clone()).unwrap();
        for id in 0..40u64 {
            j.add(id, 1, &vec![id as u8; 6000]).unwrap();
        }
        j.close().unwrap();
        // The reclaim's shrink, once, after the first cut: the oldest segment loses its second half.
        let oldest = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "kseg"))
            .min()
            .unwrap();
        // Once, right after the first cut: the writer deletes the oldest segment's records and reclaims it,
        // shrinking the file (as a paced reclaim does, through the inode the cut has open too).
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let (hook_calls, hook_data) = (calls.clone(), data.clone());
        AFTER_CAPTURE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                hook_calls.set(hook_calls.get() + 1);
                if hook_calls.get() > 1 {
                    return;
                }
                let inode = std::fs::OpenOptions::new().write(true).open(&oldest).unwrap();
                let (j, _) = Journal::open(&hook_data, opts.clone()).unwrap();
                for id in 0..12u64 {
                    j.delete(id).unwrap();
                }
                let reclaimed = j.reclaim().unwrap();
                assert!(!reclaimed.segments.is_empty(), "the oldest segment was reclaimed");
                j.close().unwrap();
                inode.set_len(inode.metadata().unwrap().len() / 2).unwrap();
            }))
        });
        let repo_dir = tmp.path().join("repo");
        let keys = keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}\n", "ab".repeat(32)), "test").unwrap();
        let repo = crate::repo::Repo::open(repo_dir.to_str().unwrap(), keys, crate::repo::Create::IfAbsent).unwrap();
        let created = repo.create(&data, &crate::CreateOptions::default(), &crate::progress::Progress::default());
        AFTER_CAPTURE.with(|h| *h.borrow_mut() = None);
        let snap = created.expect("a second cut after the reclaim");
        assert_eq!(calls.get(), 2, "a second cut was taken");
        assert!(snap.files.iter().any(|f| f.path.ends_with(".kseg")));
    }
}
