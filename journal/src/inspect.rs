//! Offline, read-only access for the data tools: every frame with its place, per-segment summaries, and a
//! recovery that changes nothing on disk. Takes a shared lock, so it refuses a journal open for writing.

use std::fs::File;
use std::path::Path;

use crate::crypto::keys::KeyRing;
use crate::error::OpenError;
use crate::format::identity;
use crate::reader::Reader;
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
    /// Reads the payloads of `recovered`'s records.
    pub reader: Reader,
    /// Per segment holding live records (or open transactions' records): count and frame bytes.
    pub live: std::collections::BTreeMap<u64, crate::index::SegmentLive>,
    /// The newest segment a reclaim would delete now (it and every older one), if any.
    pub reclaimable_through: Option<u64>,
}

/// Reads the journal in `dir` without modifying it, calling `visit` for each valid frame in LSN order.
pub fn inspect(
    dir: &Path,
    mode: RecoveryMode,
    keys: Option<&KeyRing>,
    visit: &mut dyn FnMut(&FrameEvent<'_>),
) -> Result<Inspection, OpenError> {
    let _lock = lock(dir, LockMode::Shared)?;
    let mut dr = recover_dir(&StdVfs, dir, mode, keys, false, visit)?;
    dr.recovered.records = dr.index.records.iter().map(|(id, r)| (id, *r)).collect();
    let reader = Reader::new(std::sync::Arc::new(StdVfs), dir, dr.identity.journal_id, keys.cloned());
    let open_tx_first = dr.open_txs.iter().map(|(_, s)| s.first_seq).min();
    // The newest segment with frames is never reclaimed: it carries the LSN the journal resumes from.
    let reclaimable_through = match (dr.present.first(), dr.present.last()) {
        (Some(oldest), Some(newest)) => dr.index.reclaim_bound(*oldest, *newest, open_tx_first),
        _ => None,
    };
    Ok(Inspection {
        reader,
        live: dr.index.segments.clone(),
        reclaimable_through,
        journal_id: identity::id_hex(&dr.identity.journal_id),
        created_unix_ms: dr.identity.created_unix_ms,
        spares: dr.spares.len() as u32,
        recovered: dr.recovered,
        segments: dr.segments,
    })
}

/// How a tool holds the journal's `LOCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// Readers: refuses a journal open for writing.
    Shared,
    /// A tool that changes files: refuses any other user.
    Exclusive,
}

/// Takes the journal's `LOCK` without waiting; `None` when the directory has no lock file (no journal
/// ever opened it).
pub(crate) fn lock(dir: &Path, mode: LockMode) -> Result<Option<File>, OpenError> {
    let path = dir.join("LOCK");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::io(&path, "open")(e)),
    };
    let taken = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match taken {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::io(&path, "lock")(e)),
    }
}

/// What a check without keys could establish.
#[derive(Debug, Default)]
pub struct StructureReport {
    pub segments: u32,
    pub encrypted_segments: u32,
    /// Sealed units whose header checksum and length validated.
    pub units: u64,
    /// Frames of plaintext segments, fully checked.
    pub plaintext_frames: u64,
    /// Master key ids the segments need.
    pub key_ids: std::collections::BTreeSet<u32>,
    /// Per encrypted segment, where its chain of unit headers stopped validating before the end (a torn or
    /// sealed-over tail and damage look alike without the key).
    pub unit_chain_stops: Vec<(std::path::PathBuf, u64)>,
}

/// Checks what can be checked without the master keys: identity, segment headers (journal id, sequence,
/// size), plaintext segments' frames, and encrypted segments' chains of unit headers. It does **not**
/// authenticate encrypted contents.
pub fn check_structure(dir: &Path) -> Result<StructureReport, OpenError> {
    use crate::error::{Corruption, CorruptionKind};
    use crate::format::segment_header::{HeaderError, SegmentHeader};
    use crate::format::Binding;
    use crate::recovery::check_segment_identity;
    use crate::recovery::scan::{scan_segment, ScanInput};
    use crate::vfs::{OpenMode, Vfs};

    let _lock = lock(dir, LockMode::Shared)?;
    let vfs = StdVfs;
    let identity =
        crate::recovery::read_identity(&vfs, dir)?.ok_or_else(|| OpenError::NotAJournal { dir: dir.to_path_buf() })?;
    let mut seqs = crate::segment::list(&vfs, dir).map_err(OpenError::io(dir, "list directory"))?.segments;
    if let Some(h) = crate::recovery::read_horizon(&vfs, dir, &identity, RecoveryMode::Strict)? {
        seqs.retain(|s| *s > h.horizon);
    }
    let mut report = StructureReport::default();
    let mut images = Vec::new();
    for seq in seqs {
        let path = dir.join(crate::segment::file_name(seq));
        let file = vfs.open(&path, OpenMode::Read).map_err(OpenError::io(&path, "open"))?;
        let mut data = vec![0u8; file.size().map_err(OpenError::io(&path, "stat"))? as usize];
        file.read_exact_at(&mut data, 0).map_err(OpenError::io(&path, "read"))?;
        match SegmentHeader::decode(&data) {
            Err(HeaderError::Zero) => continue,
            Err(e) => return Err(Corruption { path, offset: 0, what: CorruptionKind::Header(e) }.into()),
            Ok(h) => images.push((seq, path, data, h)),
        }
    }
    let count = images.len();
    for (index, (seq, path, data, h)) in images.into_iter().enumerate() {
        if let Err((offset, what)) = check_segment_identity(&h, seq, data.len() as u64, &identity) {
            return Err(Corruption { path, offset, what }.into());
        }
        let binding = Binding { journal_id: identity.journal_id, segment_seq: seq };
        report.segments += 1;
        if h.key_id == 0 {
            let input = ScanInput {
                path: &path,
                data: &data,
                binding,
                first_lsn: h.first_lsn,
                newest: index + 1 == count,
                mode: RecoveryMode::Strict,
                start: crate::limits::SEGMENT_HEADER_BYTES,
                frames_before: 0,
                base: 0,
                partial: false,
            };
            report.plaintext_frames += scan_segment(&input, &mut |_, _, _| Ok(()))?.frames;
            continue;
        }
        report.encrypted_segments += 1;
        report.key_ids.insert(h.key_id);
        let mut at = crate::limits::SEGMENT_HEADER_BYTES;
        loop {
            if data.get(at as usize..).is_none_or(crate::format::all_zero) {
                break;
            }
            match crate::crypto::unit::peek(&binding, &data, at) {
                Ok(total) => {
                    report.units += 1;
                    at += total;
                }
                Err(_) => {
                    report.unit_chain_stops.push((path.clone(), at));
                    break;
                }
            }
        }
    }
    Ok(report)
}
