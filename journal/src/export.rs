//! The journal's files as a backup sees them: [`capture`] takes a consistent cut of a journal that another
//! process may be writing, and [`truncate_after`] makes a (restored, closed) journal end at a chosen LSN.
//!
//! Both work on the files alone, never through a [`crate::Journal`], because the writer is usually another
//! process: a broker keeps writing while `keel backup create` reads. What makes that safe
//! (docs/BACKUP-FORMAT.md, "The cut"):
//! - a segment followed by a newer one is sealed and never written again; it is read through a handle opened
//!   before anything is decided, which keeps its bytes readable even if reclaim deletes the file meanwhile;
//! - the newest segment is read into memory once and scanned there with recovery's own rules: the cut is
//!   the end of the last whole frame (or sealed unit) in that copy, so a write caught half-done is left out,
//!   exactly as recovery would discard a torn tail. Everything acknowledged before the read began is
//!   durable, hence in the copy, hence before the cut;
//! - the reclaim horizon is read before the segments are listed, and the capture retried if a reclaim
//!   moved it in between, so the captured head is a safe place for replay to start.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::crypto::keys::KeyRing;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::format::segment_header::{HeaderError, SegmentHeader};
use crate::format::Binding;
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::recovery::scan::{scan_segment, ScanInput, SegmentEnd};
use crate::recovery::units::{self, UnitEnd, UnitInput};
use crate::recovery::{check_segment_identity, read_horizon, read_identity, segment_cipher};
use crate::types::{Lsn, RecoveryMode};
use crate::vfs::{StdVfs, Vfs};

/// A consistent cut of a journal: replaying `segments` in order (with `horizon` in place) yields exactly the
/// frames with LSN below `next_lsn`.
#[derive(Debug)]
pub struct Capture {
    pub journal_id: [u8; 16],
    /// The bytes of `KEEL-JOURNAL`.
    pub identity: Vec<u8>,
    /// The bytes of `RECLAIMED`, when the oldest segment is not the journal's first.
    pub horizon: Option<Vec<u8>>,
    /// Ascending, contiguous, non-empty unless the journal has never been written.
    pub segments: Vec<CapturedSegment>,
    /// The first LSN not in the capture.
    pub next_lsn: Lsn,
}

/// One segment of a [`Capture`].
#[derive(Debug)]
pub struct CapturedSegment {
    pub seq: u64,
    pub first_lsn: Lsn,
    /// The file's size (`segment_bytes`); a restore recreates the file at this size.
    pub segment_bytes: u64,
    /// The master key id that protects it; 0 when plaintext.
    pub key_id: u32,
    pub source: SegmentSource,
}

/// Where a captured segment's bytes are.
#[derive(Debug)]
pub enum SegmentSource {
    /// A sealed segment: the whole file, read through this handle.
    Sealed(File),
    /// The newest segment: its bytes up to the cut, read once; the rest of the file is zeros in a restore.
    Tail(Vec<u8>),
}

impl CapturedSegment {
    /// Bytes to copy (after which the segment is zeros).
    pub fn copy_bytes(&self) -> u64 {
        match &self.source {
            SegmentSource::Sealed(_) => self.segment_bytes,
            SegmentSource::Tail(b) => b.len() as u64,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (within `copy_bytes`).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &self.source {
            SegmentSource::Sealed(f) => f.read_exact_at(buf, offset),
            SegmentSource::Tail(b) => {
                let at = offset as usize;
                let src = b.get(at..at + buf.len()).ok_or_else(|| std::io::Error::other("read past the cut"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// Why a capture or a truncation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{}: the segment files kept changing under {attempts} attempts to list them (reclaim running continuously?); try again", dir.display())]
    Unstable { dir: PathBuf, attempts: u32 },
    #[error("{}: LSN {lsn} is not in this journal, which holds LSNs {first} to {last}", dir.display())]
    LsnOutOfRange { dir: PathBuf, lsn: u64, first: u64, last: u64 },
    #[error("{}: the journal holds no frames", dir.display())]
    Empty { dir: PathBuf },
}

impl From<Corruption> for ExportError {
    fn from(c: Corruption) -> ExportError {
        ExportError::Open(OpenError::Corrupt(c))
    }
}

const CAPTURE_ATTEMPTS: u32 = 20;

/// Takes a consistent cut of the journal in `dir`, which may be open for writing in another process.
/// `keys` must hold the master key of an encrypted newest segment (its cut is found by authenticating
/// units); sealed segments are not decrypted.
pub fn capture(dir: &Path, keys: Option<&KeyRing>) -> Result<Capture, ExportError> {
    let mut last_damage = None;
    for attempt in 0..CAPTURE_ATTEMPTS {
        match try_capture(dir, keys)? {
            Attempt::Done(c) => return Ok(c),
            Attempt::Changed => {}
            Attempt::Damaged(e) => last_damage = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(2 * u64::from(attempt)));
    }
    // Damage seen on every attempt is damage, not a write in flight.
    Err(last_damage.unwrap_or(ExportError::Unstable { dir: dir.to_path_buf(), attempts: CAPTURE_ATTEMPTS }))
}

/// How one attempt at a capture ended.
enum Attempt {
    Done(Capture),
    /// A reclaim changed the files under it.
    Changed,
    /// The newest segment did not read as a valid prefix. Usually a write in flight: the copy of the
    /// segment is one long read, and while it moves forward the writer can complete a group behind it and
    /// the next one ahead of it, so the copy shows a hole followed by a later sync group — which a scan
    /// rightly calls damage. The next attempt sees the hole filled; only damage that persists is real.
    /// (An activation in flight — a header half written — looks the same.)
    Damaged(ExportError),
}

/// One attempt.
fn try_capture(dir: &Path, keys: Option<&KeyRing>) -> Result<Attempt, ExportError> {
    let identity = read_identity(&StdVfs, dir)?.ok_or_else(|| OpenError::NotAJournal { dir: dir.to_path_buf() })?;
    let read_horizon = || read_horizon(&StdVfs, dir, &identity, RecoveryMode::Strict);
    let first_horizon = read_horizon()?;
    let horizon = first_horizon.map_or(0, |h| h.horizon);
    let mut seqs = crate::segment::list(&StdVfs, dir).map_err(OpenError::io(dir, "list directory"))?.segments;
    seqs.retain(|s| *s > horizon);
    // Open every segment first: from here on a reclaim cannot take their bytes away.
    let mut opened = Vec::with_capacity(seqs.len());
    for (i, seq) in seqs.iter().enumerate() {
        if *seq != horizon + 1 + i as u64 {
            return Ok(Attempt::Changed); // a reclaim between reading the horizon and listing
        }
        let path = dir.join(crate::segment::file_name(*seq));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Attempt::Changed),
            Err(e) => return Err(OpenError::io(&path, "open")(e).into()),
        };
        let size = file.metadata().map_err(OpenError::io(&path, "stat"))?.len();
        let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut head, 0).map_err(OpenError::io(&path, "read header"))?;
        match SegmentHeader::decode(&head) {
            // A spare, and every file after it is one too (or an activation in flight, not yet ours).
            Err(HeaderError::Zero) => break,
            Err(e) => {
                let damage = Corruption { path, offset: 0, what: CorruptionKind::Header(e) };
                return Ok(Attempt::Damaged(damage.into()));
            }
            Ok(h) => {
                if let Err((offset, what)) = check_segment_identity(&h, *seq, size, &identity) {
                    return Err(Corruption { path, offset, what }.into());
                }
                opened.push((path, file, h));
            }
        }
    }
    if read_horizon()? != first_horizon {
        return Ok(Attempt::Changed);
    }
    // Both files are written once and never change; what a restore writes is their encoding.
    let identity_bytes = identity.encode().to_vec();
    let horizon_bytes = first_horizon.map(|h| h.encode().to_vec());
    let Some((newest_path, newest_file, newest_header)) = opened.pop() else {
        return Ok(Attempt::Done(Capture {
            journal_id: identity.journal_id,
            identity: identity_bytes,
            horizon: horizon_bytes,
            segments: Vec::new(),
            next_lsn: Lsn(1),
        }));
    };
    let mut segments: Vec<CapturedSegment> = opened
        .into_iter()
        .map(|(_, file, h)| CapturedSegment {
            seq: h.segment_seq,
            first_lsn: h.first_lsn,
            segment_bytes: h.segment_bytes,
            key_id: h.key_id,
            source: SegmentSource::Sealed(file),
        })
        .collect();
    let mut data = vec![0u8; newest_header.segment_bytes as usize];
    newest_file.read_exact_at(&mut data, 0).map_err(OpenError::io(&newest_path, "read"))?;
    let (copy, next_lsn) = match cut_of_newest(&newest_path, &data, &newest_header, identity.journal_id, keys) {
        Ok(cut) => cut,
        Err(e @ OpenError::Corrupt(_)) => return Ok(Attempt::Damaged(e.into())),
        Err(e) => return Err(e.into()),
    };
    data.truncate(copy as usize);
    segments.push(CapturedSegment {
        seq: newest_header.segment_seq,
        first_lsn: newest_header.first_lsn,
        segment_bytes: newest_header.segment_bytes,
        key_id: newest_header.key_id,
        source: SegmentSource::Tail(data),
    });
    Ok(Attempt::Done(Capture {
        journal_id: identity.journal_id,
        identity: identity_bytes,
        horizon: horizon_bytes,
        segments,
        next_lsn,
    }))
}

/// Where the newest segment's copy ends, and the LSN after its last frame: recovery's scan of the copy.
fn cut_of_newest(
    path: &Path,
    data: &[u8],
    header: &SegmentHeader,
    journal_id: [u8; 16],
    keys: Option<&KeyRing>,
) -> Result<(u64, Lsn), OpenError> {
    let binding = Binding { journal_id, segment_seq: header.segment_seq };
    let input = |data| whole_segment(path, data, header, binding);
    match segment_cipher(keys, path, header, &binding)? {
        None => {
            let scanned = scan_segment(&input(data), &mut |_, _, _| Ok(()))?;
            let copy = match scanned.end {
                SegmentEnd::Sealed { .. } => data.len() as u64,
                SegmentEnd::Open { offset } | SegmentEnd::Torn { offset, .. } | SegmentEnd::Unterminated { offset } => {
                    offset
                }
            };
            Ok((copy, scanned.next_lsn))
        }
        Some(cipher) => {
            let decrypted = units::decrypt(
                &UnitInput {
                    path,
                    data,
                    binding,
                    cipher: &cipher,
                    first_lsn: header.first_lsn,
                    newest: true,
                    mode: RecoveryMode::Strict,
                    start: SEGMENT_HEADER_BYTES,
                },
                Vec::new(),
            )?;
            let scanned = scan_segment(&input(&decrypted.stream), &mut |_, _, _| Ok(()))?;
            let copy = match (scanned.end, decrypted.end) {
                (SegmentEnd::Sealed { .. }, _) => data.len() as u64,
                (_, UnitEnd::Clean { offset } | UnitEnd::Torn { offset, .. }) => offset,
            };
            Ok((copy, scanned.next_lsn))
        }
    }
}

/// What [`truncate_after`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateReport {
    /// The segment that now ends the journal, and the offset its frames end at.
    pub segment_seq: u64,
    pub end_offset: u64,
    /// Later segment files deleted.
    pub segments_deleted: u32,
    /// Checkpoints deleted (they may describe state past the new end).
    pub checkpoints_deleted: u32,
}

/// Makes the closed journal in `dir` end with the frame whose LSN is `lsn`: the bytes after it in its
/// segment become zeros (in an encrypted segment, the unit holding it is sealed again with only the frames
/// up to it), later segments and all checkpoints are deleted. Transactions left unfinished by the cut are
/// rolled back or reported prepared by the next `open`, as after a crash. For point-in-time restore.
pub fn truncate_after(dir: &Path, lsn: Lsn, keys: Option<&KeyRing>) -> Result<TruncateReport, ExportError> {
    let _lock = crate::inspect::lock(dir, crate::inspect::LockMode::Exclusive)?;
    let c = capture(dir, keys)?;
    let (Some(first), last) = (c.segments.first(), c.next_lsn.0.saturating_sub(1)) else {
        return Err(ExportError::Empty { dir: dir.to_path_buf() });
    };
    if lsn.0 < first.first_lsn.0 || lsn.0 > last {
        return Err(ExportError::LsnOutOfRange { dir: dir.to_path_buf(), lsn: lsn.0, first: first.first_lsn.0, last });
    }
    let target = c.segments.iter().rposition(|s| s.first_lsn.0 <= lsn.0).expect("lsn ≥ the first segment's first LSN");
    let seg = &c.segments[target];
    let path = dir.join(crate::segment::file_name(seg.seq));
    let mut data = vec![0u8; seg.segment_bytes as usize];
    let copy = seg.copy_bytes() as usize;
    seg.read_at(&mut data[..copy], 0).map_err(OpenError::io(&path, "read"))?;
    let header = SegmentHeader::decode(&data).map_err(|e| Corruption {
        path: path.clone(),
        offset: 0,
        what: CorruptionKind::Header(e),
    })?;
    let binding = Binding { journal_id: c.journal_id, segment_seq: seg.seq };
    let cipher = segment_cipher(keys, &path, &header, &binding)?;
    // The new contents from `start` on: `replacement`, then zeros.
    let (start, replacement) = match &cipher {
        None => (frame_end(&path, &data, &header, binding, lsn)?, Vec::new()),
        Some(cipher) => {
            let decrypted = units::decrypt(
                &UnitInput {
                    path: &path,
                    data: &data,
                    binding,
                    cipher,
                    first_lsn: header.first_lsn,
                    newest: target + 1 == c.segments.len(),
                    mode: RecoveryMode::Strict,
                    start: SEGMENT_HEADER_BYTES,
                },
                Vec::new(),
            )?;
            let end = frame_end(&path, &decrypted.stream, &header, binding, lsn)?;
            let (unit_offset, inner) = decrypted.locate(end - 1);
            let unit_start = end - 1 - u64::from(inner);
            let mut frames = decrypted.stream[unit_start as usize..end as usize].to_vec();
            let (unit_header, tag) = crate::crypto::unit::seal(cipher, &binding, unit_offset, &mut frames);
            let mut unit = unit_header.to_vec();
            unit.extend_from_slice(&frames);
            unit.extend_from_slice(&tag);
            (unit_offset, unit)
        }
    };
    // Later segments and checkpoints go first, newest first, and durably: a crash in between leaves a
    // journal that still opens (it ends at `seg`'s old end, and a prefix of segments is always
    // contiguous), and running this again finishes the cut. Zeroing the tail first would leave a segment
    // without its seal followed by later ones, which recovery rightly calls corruption.
    let listing = crate::segment::list(&StdVfs, dir).map_err(OpenError::io(dir, "list directory"))?;
    let mut report =
        TruncateReport { segment_seq: seg.seq, end_offset: 0, segments_deleted: 0, checkpoints_deleted: 0 };
    for later in listing.segments.iter().rev().filter(|s| **s > seg.seq) {
        let p = dir.join(crate::segment::file_name(*later));
        std::fs::remove_file(&p).map_err(OpenError::io(&p, "delete"))?;
        report.segments_deleted += 1;
    }
    for next in &listing.checkpoints {
        let p = dir.join(crate::format::checkpoint::file_name(Lsn(*next)));
        std::fs::remove_file(&p).map_err(OpenError::io(&p, "delete"))?;
        report.checkpoints_deleted += 1;
    }
    StdVfs.sync_dir(dir).map_err(OpenError::io(dir, "fsync directory"))?;
    keel_crashpoint::hook("export-truncate-later-deleted");
    let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(OpenError::io(&path, "open"))?;
    report.end_offset = start + replacement.len() as u64;
    let mut tail = replacement;
    tail.resize((seg.segment_bytes - start) as usize, 0);
    file.write_all_at(&tail, start).map_err(OpenError::io(&path, "write"))?;
    file.sync_data().map_err(OpenError::io(&path, "fdatasync"))?;
    Ok(report)
}

/// A strict scan of a whole segment (or its decrypted stream) as the newest one: a cut tail is a torn
/// tail, not damage.
fn whole_segment<'a>(path: &'a Path, data: &'a [u8], header: &SegmentHeader, binding: Binding) -> ScanInput<'a> {
    ScanInput {
        path,
        data,
        binding,
        first_lsn: header.first_lsn,
        newest: true,
        mode: RecoveryMode::Strict,
        start: SEGMENT_HEADER_BYTES,
        frames_before: 0,
        base: 0,
        partial: false,
    }
}

/// The offset (in `data`, a segment's frame stream) just past the frame with LSN `lsn`.
fn frame_end(path: &Path, data: &[u8], header: &SegmentHeader, binding: Binding, lsn: Lsn) -> Result<u64, OpenError> {
    let mut end = None;
    let scanned = scan_segment(&whole_segment(path, data, header, binding), &mut |offset, h, _| {
        if h.lsn == lsn {
            end = Some(offset + h.frame_bytes());
        }
        Ok(())
    })?;
    match (end, scanned.end) {
        (Some(e), _) => Ok(e),
        // The LSN is this segment's seal: the segment stays whole.
        (None, SegmentEnd::Sealed { lsn: seal, .. }) if seal == lsn => Ok(data.len() as u64),
        _ => Err(Corruption {
            path: path.to_path_buf(),
            offset: 0,
            what: CorruptionKind::LsnGap { expected: lsn, found: scanned.next_lsn },
        }
        .into()),
    }
}
