//! Removing snapshots a retention policy no longer keeps, archive entries nothing can restore any more,
//! and chunks nothing references (docs/BACKUP-FORMAT.md, "Prune").

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use keel_s3::ObjectStore;

use crate::error::BackupError;
use crate::lease::LeaseOptions;
use crate::manifest::{parse_archive_name, Snapshot};
use crate::progress::Progress;
use crate::repo::Repo;

/// Which snapshots to keep, per journal; a snapshot kept by any rule stays. The newest snapshot of each
/// journal always stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: Option<usize>,
    /// The newest snapshot of each of the last N days (UTC) that have one.
    pub keep_daily: Option<usize>,
    /// The newest snapshot of each of the last N weeks (Monday-based, UTC) that have one.
    pub keep_weekly: Option<usize>,
    /// Every snapshot younger than this.
    pub keep_within: Option<Duration>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }

    /// Of `created` (creation times, newest first), the indices to keep at time `now`.
    pub fn select(&self, created: &[u64], now: u64) -> BTreeSet<usize> {
        let mut keep = BTreeSet::new();
        if !created.is_empty() {
            keep.insert(0);
        }
        if let Some(n) = self.keep_last {
            keep.extend(0..n.min(created.len()));
        }
        let mut bucketed = |n: Option<usize>, bucket: &dyn Fn(u64) -> u64| {
            let Some(n) = n else { return };
            let mut seen = BTreeSet::new();
            for (i, t) in created.iter().enumerate() {
                if seen.len() == n {
                    break;
                }
                if seen.insert(bucket(*t)) {
                    keep.insert(i);
                }
            }
        };
        const DAY: u64 = 86_400_000;
        bucketed(self.keep_daily, &|t| t / DAY);
        // 1970-01-01 was a Thursday: shift by 3 days so that weeks start on Monday.
        bucketed(self.keep_weekly, &|t| (t / DAY + 3) / 7);
        if let Some(d) = self.keep_within {
            let since = now.saturating_sub(d.as_millis() as u64);
            keep.extend(created.iter().enumerate().filter(|(_, t)| **t >= since).map(|(i, _)| i));
        }
        keep
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed_snapshots: Vec<String>,
    pub removed_archive_entries: usize,
    pub removed_chunks: usize,
    pub removed_bytes: u64,
    pub dry_run: bool,
}

const DELETE_BATCH: usize = 500;

impl Repo {
    pub fn prune(
        &self,
        policy: &Retention,
        lease: LeaseOptions,
        dry_run: bool,
        progress: &Progress,
    ) -> Result<PruneReport, BackupError> {
        if policy.is_empty() {
            return Err(BackupError::Invalid {
                name: "retention",
                why: "give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-within".into(),
            });
        }
        let lease = self.lease("prune", lease)?;
        let mut report = PruneReport { dry_run, ..Default::default() };
        // Per journal, snapshots newest first.
        let mut by_journal: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
        for l in self.snapshot_names()?.iter().rev() {
            let s = self.snapshot(&l.name)?;
            by_journal.entry(s.journal_id.clone()).or_default().push(s);
        }
        let now = crate::now_ms();
        let mut referenced: HashSet<String> = HashSet::new();
        // Per journal, the first segment whose archive entries are still needed.
        let mut archive_from: BTreeMap<String, u64> = BTreeMap::new();
        let mut doomed = Vec::new();
        for (jid, snaps) in &by_journal {
            let created: Vec<u64> = snaps.iter().map(|s| s.created_unix_ms).collect();
            let keep = policy.select(&created, now);
            for (i, s) in snaps.iter().enumerate() {
                if keep.contains(&i) {
                    report.kept.push(s.id.clone());
                    referenced.extend(s.files.iter().flat_map(|f| f.chunks.iter().filter_map(|c| c.object_name())));
                    let newest = s.newest_segment().map_or(u64::MAX, |n| n.seq);
                    let from = archive_from.entry(jid.clone()).or_insert(newest);
                    *from = (*from).min(newest);
                } else {
                    report.removed_snapshots.push(s.id.clone());
                    doomed.push(s.object_name());
                }
            }
        }
        // Archive entries: kept from the oldest retained snapshot's newest segment on.
        let mut doomed_archive = Vec::new();
        for (name, _) in self.block_on(self.list("archive/"))? {
            let Some((jid, seq, _)) = parse_archive_name(&name) else { continue };
            match archive_from.get(&jid) {
                Some(from) if seq >= *from => {
                    let e = self.archive_entry(&name)?;
                    referenced.extend(e.chunks.iter().filter_map(|c| c.object_name()));
                }
                _ => doomed_archive.push(name),
            }
        }
        report.removed_archive_entries = doomed_archive.len();
        let mut doomed_chunks = Vec::new();
        self.block_on(self.for_each("data/", |name, size| {
            if !referenced.contains(name) {
                doomed_chunks.push(name.to_owned());
                report.removed_bytes += size;
            }
            Ok(())
        }))?;
        report.removed_chunks = doomed_chunks.len();
        if dry_run {
            lease.release()?;
            return Ok(report);
        }
        // Manifests first: a crash after leaves only unreferenced objects, never a snapshot missing data.
        let total = (doomed.len() + doomed_archive.len() + doomed_chunks.len()) as u64;
        progress.start("deleting", total);
        for batch in [doomed, doomed_archive, doomed_chunks] {
            for part in batch.chunks(DELETE_BATCH) {
                lease.confirm()?;
                let keys: Vec<String> = part.iter().map(|n| self.key(n)).collect();
                self.block_on(self.store.delete_many(&keys))?;
                progress.advance(part.len() as u64);
                keel_crashpoint::hook("backup-prune-batch-deleted");
            }
        }
        lease.release()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn retention_rules_select_per_bucket() {
        // Newest first: two today, one yesterday, one 8 days ago.
        let now = 100 * DAY + DAY / 2;
        let created = [now - 1000, now - 2000, now - DAY, now - 8 * DAY];
        let r = |p: Retention| p.select(&created, now).into_iter().collect::<Vec<_>>();
        assert_eq!(r(Retention { keep_last: Some(2), ..Default::default() }), vec![0, 1]);
        assert_eq!(r(Retention { keep_daily: Some(2), ..Default::default() }), vec![0, 2]);
        assert_eq!(r(Retention { keep_weekly: Some(5), ..Default::default() }), vec![0, 3]);
        assert_eq!(
            r(Retention { keep_within: Some(Duration::from_secs(2 * 86_400)), ..Default::default() }),
            vec![0, 1, 2]
        );
        // The newest always stays.
        assert_eq!(r(Retention { keep_last: Some(0), ..Default::default() }), vec![0]);
    }
}
