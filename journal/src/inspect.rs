//! Offline, read-only access for the data tools: every frame with its place, per-segment summaries, and a
//! recovery that changes nothing on disk. Takes a shared lock, so it refuses a journal open for writing.

use std::fs::File;
use std::path::Path;

use crate::crypto::keys::KeyRing;
use crate::error::OpenError;
use crate::format::identity;
use crate::recovery::{recover_dir, FrameEvent, Recovered, SegmentSummary};
use crate::types::RecoveryMode;
use crate::vfs::StdVfs;

pub use crate::recovery::FrameEvent as Frame;

/// What an inspection found.
#[derive(Debug)]
pub struct Inspection {
    pub journal_id: String,
    pub created_unix_ms: u64,
    pub recovered: Recovered,
    pub segments: Vec<SegmentSummary>,
    /// Spare segments found.
    pub spares: u32,
}

/// Reads the journal in `dir` without modifying it, calling `visit` for each valid frame in LSN order.
pub fn inspect(
    dir: &Path,
    mode: RecoveryMode,
    keys: Option<&KeyRing>,
    visit: &mut dyn FnMut(&FrameEvent<'_>),
) -> Result<Inspection, OpenError> {
    let _lock = shared_lock(dir)?;
    let dr = recover_dir(&StdVfs, dir, mode, keys, visit)?;
    Ok(Inspection {
        journal_id: identity::id_hex(&dr.identity.journal_id),
        created_unix_ms: dr.identity.created_unix_ms,
        spares: dr.spares.len() as u32,
        recovered: dr.recovered,
        segments: dr.segments,
    })
}

fn shared_lock(dir: &Path) -> Result<Option<File>, OpenError> {
    let path = dir.join("LOCK");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::io(&path, "open")(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::io(&path, "lock")(e)),
    }
}
