//! Writes checkpoints: the live-record index and open transactions as of a resume point, so that `open`
//! reads the checkpoint plus only what was written after it (docs/FORMAT.md, "Checkpoints").
//!
//! # Crash safety
//! - The state is taken under the writer's lock after an fdatasync of the active segment, so everything a
//!   checkpoint covers is durable before the checkpoint exists.
//! - The file is written under a temporary name, fsynced, renamed, and the directory fsynced; recovery
//!   deletes a leftover temporary file. A checkpoint that fails its checks is skipped for an older one or a
//!   full scan, never trusted.
//! - Older checkpoints are deleted only after the new one is durable; the newest two are kept.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::{unit, SegmentCipher};
use crate::error::AppendError;
use crate::format::checkpoint::{self, CheckpointHeader, ResumePoint};
use crate::journal::Core;
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::sync_util::lock;
use crate::types::Lsn;
use crate::vfs::OpenMode;

/// Checkpoints kept; older ones are deleted once a newer one is durable.
const KEEP: usize = 2;

/// What a checkpoint pass wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    pub path: PathBuf,
    /// The first LSN the checkpoint does not cover.
    pub next_lsn: Lsn,
    /// The segment a replay on top of it starts from.
    pub resume_seq: u64,
    pub records: u64,
    pub bytes: u64,
}

/// Writes a checkpoint; `None` if nothing was ever written (there is nothing to cover).
pub(crate) fn checkpoint(core: &Core) -> Result<Option<CheckpointReport>, AppendError> {
    let _one_at_a_time = lock(&core.checkpointing);
    let (resume, index, txs, pause) = {
        let mut w = lock(core.shared.writer_mutex());
        let held = std::time::Instant::now();
        if let Some(p) = core.shared.poisoned() {
            return Err(p);
        }
        if w.next_lsn == Lsn(1) {
            return Ok(None);
        }
        w.flush()?;
        let resume = match &w.active {
            Some(a) if a.header.is_none() => {
                ResumePoint { seq: a.binding.segment_seq, offset: a.offset, frames: a.frames, next_lsn: w.next_lsn }
            }
            Some(a) => ResumePoint {
                seq: a.binding.segment_seq,
                offset: SEGMENT_HEADER_BYTES,
                frames: 0,
                next_lsn: w.next_lsn,
            },
            None => ResumePoint { seq: w.last_seq + 1, offset: SEGMENT_HEADER_BYTES, frames: 0, next_lsn: w.next_lsn },
        };
        // A clone shares the record table's shards (copy-on-write): the writer is held only for this, and
        // copies what it changes while the body is serialized below.
        let (index, txs) = (w.model.index.clone(), w.model.txs.clone());
        (resume, index, txs, held.elapsed())
    };
    let records = index.records.len() as u64;
    let body = checkpoint::encode_body(&index, &txs);
    drop(index);
    let path = core.dir.join(checkpoint::file_name(resume.next_lsn));
    let io = |path: &PathBuf, op| {
        let path = path.clone();
        move |e| AppendError::Io { path, op, source: Arc::new(e) }
    };
    let (key_id, wrapped_key, stored) = match &core.keys {
        None => (0, [0u8; checkpoint::WRAPPED_KEY_BYTES], body),
        Some(keys) => {
            let (id, master) = keys.current();
            let binding = crate::recovery::checkpoint_binding(core.journal_id, resume.next_lsn);
            let (cipher, wrapped) = SegmentCipher::create(master, id, &binding);
            let mut ct = body;
            let (uh, tag) = unit::seal(&cipher, &binding, checkpoint::HEADER_BYTES as u64, &mut ct);
            (id, wrapped, [&uh[..], &ct, &tag[..]].concat())
        }
    };
    let header = CheckpointHeader {
        key_id,
        journal_id: core.journal_id,
        resume,
        body_len: stored.len() as u64,
        body_crc: crc32fast::hash(&stored),
        wrapped_key,
    }
    .encode();
    let tmp = core.dir.join(checkpoint::tmp_name(resume.next_lsn));
    let _ = core.vfs.remove_file(&tmp);
    let file = core.vfs.open(&tmp, OpenMode::CreateNew).map_err(io(&tmp, "create checkpoint"))?;
    file.write_all_at(&[IoSlice::new(&header), IoSlice::new(&stored)], 0).map_err(io(&tmp, "write checkpoint"))?;
    keel_crashpoint::hook("checkpoint-written");
    if let Err(e) = file.sync_all() {
        // Unlike the journal's own files, a checkpoint is optional: drop it and carry on without it.
        drop(file);
        let _ = core.vfs.remove_file(&tmp);
        return Err(io(&tmp, "fsync checkpoint")(e));
    }
    drop(file);
    core.vfs.rename(&tmp, &path).map_err(io(&tmp, "rename checkpoint"))?;
    keel_crashpoint::hook("checkpoint-renamed");
    sync_dir_or_poison(core)?;
    prune(core, resume.next_lsn)?;
    let bytes = (header.len() + stored.len()) as u64;
    core.maintenance.checkpoint_written(bytes, pause);
    Ok(Some(CheckpointReport { path, next_lsn: resume.next_lsn, resume_seq: resume.seq, records, bytes }))
}

/// Deletes all but the newest `KEEP` checkpoints.
fn prune(core: &Core, newest: Lsn) -> Result<(), AppendError> {
    let listing = crate::segment::list(core.vfs.as_ref(), &core.dir).map_err(|e| AppendError::Io {
        path: core.dir.clone(),
        op: "list directory",
        source: Arc::new(e),
    })?;
    let old: Vec<u64> = listing.checkpoints.iter().copied().filter(|l| *l <= newest.0).rev().skip(KEEP).collect();
    for lsn in &old {
        let p = core.dir.join(checkpoint::file_name(Lsn(*lsn)));
        if let Err(e) = core.vfs.remove_file(&p) {
            tracing::warn!(checkpoint = %p.display(), error = %e, "could not delete an old checkpoint");
        }
    }
    if !old.is_empty() {
        sync_dir_or_poison(core)?;
    }
    Ok(())
}

fn sync_dir_or_poison(core: &Core) -> Result<(), AppendError> {
    core.vfs.sync_dir(&core.dir).map_err(|e| {
        let err = AppendError::Poisoned { path: core.dir.clone(), op: "fsync directory", source: Arc::new(e) };
        core.shared.poison(err.clone());
        err
    })
}
