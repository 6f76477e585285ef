//! Reclaim: deletes the oldest segments once nothing in them matters (the rule and why it is safe:
//! `crate::index`).
//!
//! # Crash safety
//! - The deaths that make a segment reclaimable are made durable first (an fdatasync of the active segment
//!   under the writer's lock), so a crash can never bring back a state in which a deleted segment was
//!   still needed.
//! - A reclaim removes a run of segments at once, and only its end is a safe cut (a transaction may span
//!   its middle), so the removal is made atomic: the new horizon ("every segment up to N is gone") is
//!   written durably first, and only then are the files shrunk and deleted. Recovery ignores, and
//!   deletes, any segment at or below the horizon that a crash left behind.
//! - The newest segment that holds frames is never deleted: it carries the LSN the journal resumes from.

use crate::error::AppendError;
use crate::journal::Core;
use crate::sync_util::lock;
use crate::vfs::OpenMode;

/// What a reclaim pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Sequence numbers of the deleted segments.
    pub segments: Vec<u64>,
}

/// How fast a reclaim may give blocks back to the filesystem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrimPace {
    pub bytes_per_sec: u64,
}

/// Bytes a paced removal frees per step.
const TRIM_STEP_BYTES: u64 = 1 << 20;

/// Reclaims what it can. With `pace`, each dead segment is shrunk a step at a time before it is deleted:
/// on a filesystem mounted with `discard`, freeing a whole segment at once issues one large TRIM that
/// stalls every fdatasync behind it for milliseconds (measured: 15 ms for 16 MiB on this class of disk).
pub(crate) fn reclaim(core: &Core, pace: Option<TrimPace>) -> Result<ReclaimReport, AppendError> {
    // Held from the bound's computation to the last delete: two reclaims at once would share the
    // horizon's temporary file, and the one with the lower bound could write its horizon last.
    let _one_at_a_time = lock(&core.reclaiming);
    let (from, to, next_lsn) = {
        let mut w = lock(core.shared.writer_mutex());
        if let Some(p) = core.shared.poisoned() {
            return Err(p);
        }
        if cfg!(debug_assertions) {
            w.model.index.check();
        }
        let Some(to) = w.reclaim_bound() else {
            return Ok(ReclaimReport::default());
        };
        w.flush()?;
        let from = w.oldest_seq;
        w.model.index.prune_spans(to);
        w.oldest_seq = to + 1;
        (from, to, w.next_lsn)
    };
    write_horizon(core, to, next_lsn)?;
    keel_crashpoint::hook("reclaim-horizon");
    let mut report = ReclaimReport::default();
    for seq in from..=to {
        core.reader.forget(seq);
        if remove_segment(core, seq, pace)? {
            report.segments.push(seq);
            tracing::debug!(seq, "reclaimed segment");
        }
    }
    // Not needed for correctness (the horizon already says they are gone): tidiness after a power loss.
    sync_dir_or_poison(core)?;
    Ok(report)
}

/// Makes "every segment up to `to` is gone" durable: the horizon file, written aside, fsynced, renamed
/// over the old one, and the directory fsynced. Only after this are the segments' files touched.
fn write_horizon(core: &Core, to: u64, next_lsn: crate::types::Lsn) -> Result<(), AppendError> {
    use crate::format::horizon::{Horizon, FILE_NAME, TMP_NAME};
    let tmp = core.dir.join(TMP_NAME);
    let path = core.dir.join(FILE_NAME);
    let io = |path: &std::path::Path, op| {
        let path = path.to_path_buf();
        move |e| AppendError::Io { path, op, source: std::sync::Arc::new(e) }
    };
    let _ = core.vfs.remove_file(&tmp);
    let bytes = Horizon { journal_id: core.journal_id, horizon: to, next_lsn }.encode();
    let file = core.vfs.open(&tmp, OpenMode::CreateNew).map_err(io(&tmp, "create reclaim horizon"))?;
    file.write_all_at(&[std::io::IoSlice::new(&bytes)], 0).map_err(io(&tmp, "write reclaim horizon"))?;
    if let Err(e) = file.sync_all() {
        let err = AppendError::Poisoned { path: tmp, op: "fsync reclaim horizon", source: e.into() };
        core.shared.poison(err.clone());
        return Err(err);
    }
    drop(file);
    core.vfs.rename(&tmp, &path).map_err(io(&tmp, "rename reclaim horizon"))?;
    sync_dir_or_poison(core)
}

/// Deletes the file of a reclaimed segment (already gone from the journal by the horizon); if paced,
/// shrinks it step by step first. Returns false if it was already gone.
fn remove_segment(core: &Core, seq: u64, pace: Option<TrimPace>) -> Result<bool, AppendError> {
    let io = |path: &std::path::Path, op| {
        let path = path.to_path_buf();
        move |e| AppendError::Io { path, op, source: std::sync::Arc::new(e) }
    };
    let path = core.dir.join(crate::segment::file_name(seq));
    if let Some(p) = pace {
        let file = match core.vfs.open(&path, OpenMode::ReadWrite) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path, "open")(e)),
        };
        let mut len = file.size().map_err(io(&path, "stat"))?;
        let step_time = std::time::Duration::from_secs_f64(TRIM_STEP_BYTES as f64 / p.bytes_per_sec.max(1) as f64);
        while len > 0 {
            let t = std::time::Instant::now();
            len = len.saturating_sub(TRIM_STEP_BYTES);
            file.set_len(len).map_err(io(&path, "shrink reclaimed segment"))?;
            // Commits the freed blocks (and their TRIM) now, a step at a time. The segment is already out
            // of the journal (the horizon says so), so a failure here loses nothing.
            file.sync_all().map_err(io(&path, "fsync reclaimed segment"))?;
            keel_crashpoint::hook("reclaim-shrunk");
            if let Some(rest) = step_time.checked_sub(t.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    match core.vfs.remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(&path, "delete reclaimed segment")(e)),
    }
    keel_crashpoint::hook("reclaim-deleted");
    Ok(true)
}

fn sync_dir_or_poison(core: &Core) -> Result<(), AppendError> {
    core.vfs.sync_dir(&core.dir).map_err(|e| {
        // The directory's durable state is unknown: stop, as after any failed fsync.
        let err = AppendError::Poisoned { path: core.dir.clone(), op: "fsync directory", source: e.into() };
        core.shared.poison(err.clone());
        err
    })
}
