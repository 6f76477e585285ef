//! Continuous archiving (docs/BACKUP-FORMAT.md, "Archive entries"): each journal segment as it is sealed,
//! and the open one as it grows, so that a restore can reach any LSN in the archived window.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_s3::PutCondition;

use crate::error::BackupError;
use crate::manifest::{ArchiveEntry, VERSION};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::snapshots::CreateOptions;
use crate::source::capture_data;
use crate::upload::store_files;

#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    pub create: CreateOptions,
    /// How often the open segment is archived (sealed segments go at the next round after sealing).
    pub interval: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> ArchiveOptions {
        ArchiveOptions { create: CreateOptions::default(), interval: Duration::from_secs(10) }
    }
}

/// What one round archived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveRound {
    /// A base snapshot taken first (none existed, or the archive had a gap).
    pub snapshot: Option<String>,
    /// `(segment, next_lsn)` of each entry written.
    pub archived: Vec<(u64, u64)>,
    /// The first LSN not archived yet.
    pub next_lsn: u64,
    pub new_bytes: u64,
}

impl Repo {
    /// One round of archiving `data`'s journal, under the lease.
    pub fn archive_once(
        &self,
        data: &Path,
        opts: &ArchiveOptions,
        progress: &Progress,
    ) -> Result<ArchiveRound, BackupError> {
        let lease = self.lease("archive", opts.create.lease)?;
        let mut round = ArchiveRound::default();
        let source = capture_data(data, opts.create.journal_keys.as_ref())?;
        let jid = source.journal_id.clone();
        let index = self.archive_index(&jid)?;
        let base = self.latest_of(&jid)?;
        let start = base.as_ref().and_then(|b| b.newest_segment()).map(|s| s.seq);
        let oldest = source.files.iter().filter_map(|f| f.segment).map(|s| s.seq).min();
        // Segments from the base's newest on must all be archived; one reclaimed before it was is a gap.
        let gap = match (start, oldest) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(start), Some(oldest)) => (start..oldest).any(|seq| !index.contains_key(&seq)),
        };
        let (start, source) = if gap {
            drop(source);
            let snap = self.create_leased(data, &opts.create, progress, &lease)?;
            round.snapshot = Some(snap.id.clone());
            round.new_bytes += snap.new_bytes;
            let start = snap.newest_segment().map_or(u64::MAX, |s| s.seq);
            (start, capture_data(data, opts.create.journal_keys.as_ref())?)
        } else {
            (start.expect("no gap means a base"), source)
        };
        round.next_lsn = source.next_lsn;
        // Per segment to archive: what it holds now, and the entry it supersedes.
        let segs: Vec<_> = source.files.iter().filter_map(|f| f.segment.map(|s| (s, f.size, f.copy_bytes))).collect();
        let mut todo = Vec::new();
        for (i, (s, size, copy)) in segs.iter().enumerate() {
            if s.seq < start {
                continue;
            }
            let next_lsn = segs.get(i + 1).map_or(source.next_lsn, |n| n.0.first_lsn);
            let sealed = i + 1 < segs.len() || copy == size;
            let previous = match index.get(&s.seq) {
                Some(name) => Some(self.archive_entry(name)?),
                None => None,
            };
            if previous.as_ref().is_some_and(|p| p.sealed || p.next_lsn == next_lsn) {
                continue;
            }
            todo.push((s.seq, next_lsn, sealed, previous));
        }
        let wanted: HashSet<u64> = todo.iter().map(|t| t.0).collect();
        let files: Vec<_> =
            source.files.into_iter().filter(|f| f.segment.is_some_and(|s| wanted.contains(&s.seq))).collect();
        // Only entries archived after chunks were last removed are trusted to name chunks that exist.
        let removed = self.chunks_removed_unix_ms()?;
        let trusted = |p: &&ArchiveEntry| p.points.last().is_some_and(|&(at, _)| at > removed);
        let previous = crate::upload::Previous {
            chunks: todo
                .iter()
                .flat_map(|t| t.3.iter().filter(trusted).flat_map(|p| p.chunks.iter().filter_map(|c| c.id.clone())))
                .collect(),
            files: Default::default(),
        };
        let files = Arc::new(files);
        let stored = store_files(self, files.clone(), &previous, opts.create.parallel, progress, &lease)?;
        round.new_bytes += stored.new_bytes;
        let by_seq: BTreeMap<u64, _> =
            stored.entries.into_iter().map(|e| (e.segment.expect("only segments are archived").seq, e)).collect();
        let now = crate::now_ms();
        for (seq, next_lsn, sealed, previous) in todo {
            let f = &by_seq[&seq];
            let s = f.segment.expect("a segment");
            let mut points = previous.as_ref().map(|p| p.points.clone()).unwrap_or_default();
            points.push((now.max(source.cut_unix_ms), next_lsn));
            let entry = ArchiveEntry {
                version: VERSION,
                journal_id: jid.clone(),
                seq,
                first_lsn: s.first_lsn,
                size: f.size,
                key_id: s.key_id,
                copy_bytes: f.copy_bytes,
                sealed,
                next_lsn,
                points,
                chunks: f.chunks.clone(),
            };
            lease.confirm()?;
            let body = serde_json::to_vec(&entry).expect("an archive entry serialises");
            self.block_on(self.put_sealed(&entry.object_name(), &body, PutCondition::IfAbsent))?;
            keel_crashpoint::hook("backup-archive-entry-written");
            if let Some(p) = previous {
                self.block_on(self.delete(&p.object_name()))?;
            }
            round.archived.push((seq, next_lsn));
        }
        lease.release()?;
        Ok(round)
    }

    /// Archives `data`'s journal every `interval` until `stop` is set, reporting each round.
    pub fn archive(
        &self,
        data: &Path,
        opts: &ArchiveOptions,
        progress: &Progress,
        stop: &AtomicBool,
        mut on_round: impl FnMut(&ArchiveRound),
    ) -> Result<(), BackupError> {
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            let round = self.archive_once(data, opts, progress)?;
            on_round(&round);
            while began.elapsed() < opts.interval && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(opts.interval));
            }
        }
        Ok(())
    }
}
