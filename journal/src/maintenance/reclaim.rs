//! Reclaim: deletes the oldest segments once nothing in them matters (the rule and why it is safe:
//! `crate::index`).
//!
//! # Crash safety
//! - The deaths that make a segment reclaimable are made durable first (an fdatasync of the active segment
//!   under the writer's lock), so a crash can never bring back a state in which a deleted segment was
//!   still needed.
//! - Segments are deleted oldest first with a directory fsync after each, so whatever a crash leaves is
//!   still a contiguous run of segments, and every segment it lost was dead.
//! - The newest segment that holds frames is never deleted: it carries the LSN the journal resumes from.

use crate::error::AppendError;
use crate::journal::Core;
use crate::sync_util::lock;

/// What a reclaim pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Sequence numbers of the deleted segments.
    pub segments: Vec<u64>,
}

pub(crate) fn reclaim(core: &Core) -> Result<ReclaimReport, AppendError> {
    let (from, to) = {
        let mut w = lock(core.shared.writer_mutex());
        if let Some(p) = core.shared.poisoned() {
            return Err(p);
        }
        let newest_written = match &w.active {
            Some(a) if a.header.is_some() => w.last_seq - 1,
            _ => w.last_seq,
        };
        if cfg!(debug_assertions) {
            w.model.index.check();
        }
        let open_tx_first = w.model.open_tx_first_seq();
        let Some(to) = w.model.index.reclaim_bound(w.oldest_seq, newest_written, open_tx_first) else {
            return Ok(ReclaimReport::default());
        };
        w.flush()?;
        let from = w.oldest_seq;
        w.model.index.prune_spans(to);
        w.oldest_seq = to + 1;
        (from, to)
    };
    let mut report = ReclaimReport::default();
    for seq in from..=to {
        let path = core.dir.join(crate::segment::file_name(seq));
        core.reader.forget(seq);
        match core.vfs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(AppendError::Io { path, op: "delete reclaimed segment", source: std::sync::Arc::new(e) })
            }
        }
        crate::testing::hook("reclaim-deleted");
        if let Err(e) = core.vfs.sync_dir(&core.dir) {
            // The directory's durable state is unknown: stop, as after any failed fsync.
            let err = AppendError::Poisoned { path: core.dir.clone(), op: "fsync directory", source: e.into() };
            core.shared.poison(err.clone());
            return Err(err);
        }
        report.segments.push(seq);
        tracing::debug!(seq, "reclaimed segment");
    }
    Ok(report)
}
