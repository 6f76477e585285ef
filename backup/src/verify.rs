//! Checking a repository: every manifest and archive entry authenticates, every chunk they name exists
//! with a plausible size, and — with `read_data` — every chunk's bytes match its id. Each chunk is checked
//! once however many snapshots share it; a cache of chunks already read lets a nightly run read only the
//! new ones.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use keel_s3::{ObjectStore, StoreError};

use keel_s3::PutCondition;

use crate::error::BackupError;
use crate::manifest::ChunkRef;
use crate::progress::Progress;
use crate::repo::Repo;

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Read every chunk and check it against its id (otherwise only existence and size).
    pub read_data: bool,
    /// A file listing chunk ids already read and verified: they are skipped, and new ones are added.
    pub cache: Option<PathBuf>,
    pub parallel: usize,
    /// With `read_data`: delete chunks whose bytes are damaged (under the lease), so that a later
    /// `create` with `check_all` stores them again from the data, healing every snapshot that uses them.
    pub remove_damaged: bool,
    pub lease: crate::lease::LeaseOptions,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub archive_entries: usize,
    pub chunks: usize,
    pub chunks_read: usize,
    pub chunks_cached: usize,
    pub bytes_read: u64,
    /// Every problem found, each naming the object and what needs it. Empty: the repository is sound.
    pub problems: Vec<String>,
    /// Damaged chunks deleted (`remove_damaged`).
    pub removed: Vec<String>,
}

/// One chunk's check: its id; bytes read, or the problem and whether its bytes are damaged; whether the
/// cache let it skip the read.
type Checked = (String, Result<u64, (String, bool)>, bool);

impl Repo {
    pub fn verify(&self, opts: &VerifyOptions, progress: &Progress) -> Result<VerifyReport, BackupError> {
        let mut report = VerifyReport::default();
        // chunk name -> (reference, first thing that needs it)
        let mut chunks: BTreeMap<String, (ChunkRef, String)> = BTreeMap::new();
        let mut add = |needed_by: &str, refs: &[ChunkRef]| {
            for r in refs {
                if let Some(name) = r.object_name() {
                    chunks.entry(name).or_insert_with(|| (r.clone(), needed_by.to_owned()));
                }
            }
        };
        for l in self.snapshot_names()? {
            report.snapshots += 1;
            match self.snapshot(&l.name) {
                Ok(s) => {
                    for f in &s.files {
                        add(&format!("snapshot {} file {}", s.id, f.path), &f.chunks);
                    }
                }
                Err(e) => report.problems.push(e.to_string()),
            }
        }
        let names = self.block_on(self.list("archive/"))?;
        for (name, _) in names {
            report.archive_entries += 1;
            match self.archive_entry(&name) {
                Ok(e) => add(&format!("archive entry {name}"), &e.chunks),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
        report.chunks = chunks.len();
        let cached: HashSet<String> = match &opts.cache {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(s) => s.lines().map(str::to_owned).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
                Err(e) => return Err(BackupError::io(p, "read")(e)),
            },
            None => HashSet::new(),
        };
        let total: u64 = chunks.values().map(|(r, _)| u64::from(r.len)).sum();
        progress.start(if opts.read_data { "reading" } else { "checking" }, total);
        let results: Vec<Checked> = self.block_on(
            futures::stream::iter(chunks)
                .map(|(name, (r, needed_by))| {
                    let key = self.key(&name);
                    let id = r.id.clone().expect("named chunks have ids");
                    let skip_read = cached.contains(&id);
                    async move {
                        let checked = self.check_chunk(&name, &key, &r, opts.read_data && !skip_read, &needed_by).await;
                        progress.advance(u64::from(r.len));
                        let checked = checked.map_err(|e| match e {
                            BackupError::Missing { .. } => (e.to_string(), false),
                            e => {
                                let damaged = is_damage(&e);
                                (format!("{e} (needed by {needed_by})"), damaged)
                            }
                        });
                        Ok::<_, BackupError>((id, checked, skip_read))
                    }
                })
                .buffer_unordered(opts.parallel.max(1))
                .try_collect(),
        )?;
        let mut newly = Vec::new();
        let mut damaged = Vec::new();
        for (id, r, skipped) in results {
            match r {
                Ok(n) => {
                    if opts.read_data && !skipped {
                        report.chunks_read += 1;
                        report.bytes_read += n;
                        newly.push(id);
                    } else if skipped && opts.read_data {
                        report.chunks_cached += 1;
                    }
                }
                Err((p, is_damaged)) => {
                    report.problems.push(p);
                    if is_damaged {
                        damaged.push(crate::manifest::chunk_name(&id));
                    }
                }
            }
        }
        report.problems.sort();
        if opts.remove_damaged && opts.read_data && !damaged.is_empty() {
            let lease = self.lease("verify --remove-damaged", opts.lease)?;
            lease.confirm()?;
            // Before the deletes: from now on no create or archive trusts a chunk list made before them.
            let now = crate::now_ms().to_string();
            self.block_on(self.put_sealed(crate::repo::CHUNKS_REMOVED, now.as_bytes(), PutCondition::None))?;
            let keys: Vec<String> = damaged.iter().map(|n| self.key(n)).collect();
            self.block_on(self.store.delete_many(&keys))?;
            lease.release()?;
            report.removed = keys;
        }
        if let (Some(p), false) = (&opts.cache, newly.is_empty()) {
            let mut f =
                std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(BackupError::io(p, "open"))?;
            let mut text = newly.join("\n");
            text.push('\n');
            f.write_all(text.as_bytes()).map_err(BackupError::io(p, "write"))?;
            f.sync_data().map_err(BackupError::io(p, "fsync"))?;
        }
        Ok(report)
    }

    /// Checks one chunk: exists with the size its mode implies; with `read`, its bytes match its id.
    /// Returns the bytes read.
    async fn check_chunk(
        &self,
        name: &str,
        key: &str,
        r: &ChunkRef,
        read: bool,
        needed_by: &str,
    ) -> Result<u64, BackupError> {
        let missing = |e: StoreError| match e {
            StoreError::NotFound { .. } => {
                BackupError::Missing { key: key.to_owned(), needed_by: needed_by.to_owned() }
            }
            e => e.into(),
        };
        let stored_len = r.stored_len();
        if !read {
            let meta = self.store.head(key).await.map_err(missing)?;
            if meta.size != stored_len {
                return Err(BackupError::damaged(key, format!("{} bytes stored, expected {stored_len}", meta.size)));
            }
            return Ok(0);
        }
        let mut got = self.store.get_all(key).await.map_err(missing)?.1;
        let (keys, name, key, r) = (self.keys.clone(), name.to_owned(), key.to_owned(), r.clone());
        let n = got.len() as u64;
        tokio::task::spawn_blocking(move || crate::restore::open_chunk(&keys, &name, &key, &r, &mut got))
            .await
            .expect("chunk checking does not panic")?;
        Ok(n)
    }
}

/// Whether a chunk's check failed because its bytes are wrong (rather than absent or unreachable).
fn is_damage(e: &BackupError) -> bool {
    matches!(
        e,
        BackupError::Damaged { .. }
            | BackupError::Store(StoreError::ChecksumMismatch { .. } | StoreError::Corrupt { .. })
    )
}
