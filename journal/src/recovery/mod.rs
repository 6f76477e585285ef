//! Recovery: reads a journal directory, in segment order, into the live records, the prepared transactions
//! and a report of everything discarded, and says where the writer must resume. Read-only: the fix-ups it
//! asks for (seal a torn tail, delete a torn activation) are carried out by `Journal::open`.

pub mod replay;
pub mod scan;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::crypto::keys::KeyRing;
use crate::crypto::SegmentCipher;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::format::checkpoint::{self, BodySource, CheckpointBody, CheckpointError, CheckpointHeader, ResumePoint};
use crate::format::frame::FrameHeader;
use crate::format::horizon::{self, Horizon};
use crate::format::identity::{self, Identity};
use crate::format::segment_header::{HeaderError, SegmentHeader};
use crate::format::Binding;
use crate::index::{LiveIndex, Location, RecordRef};
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::segment;
use crate::types::{Lsn, RecordId, RecoveryMode, TxId};
use crate::vfs::{OpenMode, Vfs};
use replay::{PreparedTx, Replay, Staged};
use scan::{ScanInput, SegmentEnd, SkippedRange};

/// What `open` recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Where the latest version of every live record lies; read payloads with `Journal::read`. Empty if
    /// the journal was opened with `Options::return_records` off (then see `Journal::for_each_record`).
    pub records: BTreeMap<RecordId, RecordRef>,
    /// Transactions prepared and not yet resolved, in prepare order. The caller commits or rolls them back.
    pub prepared: Vec<PreparedTx>,
    pub report: RecoveryReport,
}

/// Everything recovery read, discarded or skipped.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments_read: u32,
    pub spare_segments: u32,
    pub frames: u64,
    /// Bytes of segment files read (headers and frames up to each segment's end).
    pub bytes_read: u64,
    pub last_lsn: Option<Lsn>,
    /// The newest segment's damaged last sync group, discarded.
    pub torn_tail: Option<TornTail>,
    /// A newest segment whose header never became durable; it held no acknowledged frame and is removed.
    pub torn_activation: Option<PathBuf>,
    /// Ranges skipped in salvage mode. Empty in strict mode.
    pub skipped: Vec<SkippedRange>,
    pub committed_txs: u64,
    /// Transactions with a rollback frame in the log.
    pub rolled_back_txs: u64,
    /// Transactions neither committed, rolled back nor prepared when the log ended; rolled back now.
    pub incomplete_txs: Vec<TxId>,
    /// The checkpoint recovery started from, if any: segments before its resume point were not read.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoints found but not used, and why (recovery then fell back to an older one or a full scan).
    pub checkpoints_rejected: Vec<(PathBuf, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// A frame as the data tools see it.
pub struct FrameEvent<'a> {
    pub path: &'a Path,
    pub segment_seq: u64,
    pub offset: u64,
    pub header: &'a FrameHeader,
    pub payload: &'a [u8],
}

/// One segment as recovery found it.
#[derive(Clone, Debug)]
pub struct SegmentSummary {
    pub seq: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub first_lsn: Lsn,
    pub frames: u64,
    /// Where its frames end (the seal frame's offset, the write position, or the torn offset).
    pub end_offset: u64,
    pub end: SegmentEnd,
}

/// Where the writer resumes.
#[derive(Debug)]
pub(crate) enum Resume {
    /// Append to the newest segment.
    InPlace { seq: u64, path: PathBuf, offset: u64, frames: u64, next_lsn: Lsn, cipher: Option<SegmentCipher> },
    /// Seal the newest segment at `offset` (writing over a torn tail), then start a new segment.
    SealThenNew {
        path: PathBuf,
        segment_seq: u64,
        offset: u64,
        frames: u64,
        seal_lsn: Lsn,
        cipher: Option<SegmentCipher>,
    },
    /// Start a new segment.
    New { next_lsn: Lsn },
}

/// The full result of reading a directory.
pub(crate) struct DirRecovery {
    pub identity: Identity,
    /// The live-record index (the writer's copy; `recovered.records` is the caller's).
    pub index: LiveIndex,
    /// Transactions still open, prepared or not.
    pub open_txs: Vec<(TxId, Staged)>,
    pub recovered: Recovered,
    pub segments: Vec<SegmentSummary>,
    pub resume: Resume,
    /// Spare segments, in sequence order, ready to be used as they are.
    pub spares: Vec<(u64, PathBuf)>,
    /// Files to delete before writing: temporary spares, a torn activation and the spares after it.
    pub delete: Vec<PathBuf>,
    /// The sequence number the next newly created segment gets.
    pub next_seq: u64,
    /// The oldest segment in use (not a spare), if any.
    pub oldest_seq: Option<u64>,
    /// Every segment in use, whether read or covered by a checkpoint.
    pub present: Vec<u64>,
    /// The checkpoint recovery started from, if any.
    pub checkpoint_used: Option<CheckpointUsed>,
}

/// What the maintenance thread needs to know of the checkpoint an open started from, to pace the next one
/// as if it had written it (`maintenance::CheckpointPace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointUsed {
    /// The segment a replay on top of it starts from.
    pub resume_seq: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The contents (at most 1 MiB) of one of the journal's small fixed files, or `None` if it does not exist.
fn read_small_file(vfs: &dyn Vfs, path: &Path) -> Result<Option<Vec<u8>>, OpenError> {
    let file = match vfs.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::io(path, "open")(e)),
    };
    let len = file.size().map_err(OpenError::io(path, "stat"))?;
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    file.read_exact_at(&mut buf, 0).map_err(OpenError::io(path, "read"))?;
    Ok(Some(buf))
}

pub(crate) fn read_identity(vfs: &dyn Vfs, dir: &Path) -> Result<Option<Identity>, OpenError> {
    let path = dir.join(identity::FILE_NAME);
    let Some(buf) = read_small_file(vfs, &path)? else { return Ok(None) };
    Identity::decode(&buf).map(Some).map_err(|source| OpenError::Identity { path, source })
}

/// Reads the directory. `visit` sees every valid frame in LSN order, seal frames excluded.
pub(crate) fn recover_dir(
    vfs: &dyn Vfs,
    dir: &Path,
    mode: RecoveryMode,
    keys: Option<&KeyRing>,
    use_checkpoints: bool,
    visit: &mut dyn FnMut(&FrameEvent<'_>),
) -> Result<DirRecovery, OpenError> {
    let segment::Listing { segments: mut seqs, mut tmps, checkpoints } =
        segment::list(vfs, dir).map_err(OpenError::io(dir, "list directory"))?;
    let identity = match read_identity(vfs, dir)? {
        Some(id) => id,
        None if seqs.is_empty() => return Err(OpenError::NotAJournal { dir: dir.to_path_buf() }),
        None => return Err(OpenError::MissingIdentity { dir: dir.to_path_buf() }),
    };
    // Segments at or below the reclaim horizon are gone, whatever a crash left of their files.
    let horizon = read_horizon(vfs, dir, &identity, mode)?;
    if let Some(h) = &horizon {
        for seq in seqs.iter().filter(|s| **s <= h.horizon) {
            tmps.push(dir.join(segment::file_name(*seq)));
        }
        seqs.retain(|s| *s > h.horizon);
    }
    // Read every header; spares (all-zero headers) may only trail the active segments.
    let mut headers = Vec::with_capacity(seqs.len());
    for &seq in &seqs {
        let path = dir.join(segment::file_name(seq));
        let file = vfs.open(&path, OpenMode::Read).map_err(OpenError::io(&path, "open"))?;
        let file_bytes = file.size().map_err(OpenError::io(&path, "stat"))?;
        let mut buf = vec![0u8; SEGMENT_HEADER_BYTES.min(file_bytes) as usize];
        file.read_exact_at(&mut buf, 0).map_err(OpenError::io(&path, "read"))?;
        headers.push((seq, path, file_bytes, SegmentHeader::decode(&buf)));
    }
    let active_count = headers.iter().rposition(|h| !matches!(h.3, Err(HeaderError::Zero))).map_or(0, |i| i + 1);
    let ctx = Ctx { vfs, mode, keys, identity: &identity, headers: &headers, active_count, tmps: &tmps, horizon };

    let mut rejected = Vec::new();
    if use_checkpoints {
        let oldest = headers.first().filter(|_| active_count > 0).map(|h| h.0);
        for &next_lsn in checkpoints.iter().rev() {
            let path = dir.join(checkpoint::file_name(Lsn(next_lsn)));
            let attempt = load_checkpoint(vfs, &path, &identity, keys).and_then(|(resume, body, bytes)| {
                if oldest.is_none_or(|o| resume.seq < o) {
                    // Reclaim deleted segments after this checkpoint was taken. Everything it covered is
                    // dead then (reclaim deletes nothing live), so a full scan of what is left is exactly
                    // as fast and as right: not an error.
                    return Err(CheckpointError::Superseded);
                }
                let used = CheckpointUsed { resume_seq: resume.seq, bytes };
                let start = Start { resume, body };
                replay_segments(&ctx, Some(start), &mut |_| {})
                    .map_err(|e| CheckpointError::Inconsistent(e.to_string()))
                    .and_then(check_locations)
                    .map(|dr| DirRecovery { checkpoint_used: Some(used), ..dr })
            });
            match attempt {
                Ok(mut dr) => {
                    dr.recovered.report.checkpoint = Some(path);
                    dr.recovered.report.checkpoints_rejected = rejected;
                    return Ok(dr);
                }
                Err(CheckpointError::Superseded) => {}
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), error = %e, "checkpoint not used");
                    rejected.push((path, e.to_string()));
                }
            }
        }
    }
    let mut dr = replay_segments(&ctx, None, visit)?;
    dr.recovered.report.checkpoints_rejected = rejected;
    Ok(dr)
}

/// What every replay of one directory shares.
struct Ctx<'a> {
    vfs: &'a dyn Vfs,
    mode: RecoveryMode,
    keys: Option<&'a KeyRing>,
    identity: &'a Identity,
    /// (seq, path, file bytes, decoded header) of every segment file, in order.
    headers: &'a [(u64, PathBuf, u64, Result<SegmentHeader, HeaderError>)],
    /// Segments before this index are in use; the rest are spares (but see `replay_segments` on the
    /// first spare).
    active_count: usize,
    tmps: &'a [PathBuf],
    horizon: Option<Horizon>,
}

/// The reclaim horizon, if any reclaim ever ran.
pub(crate) fn read_horizon(
    vfs: &dyn Vfs,
    dir: &Path,
    identity: &Identity,
    mode: RecoveryMode,
) -> Result<Option<Horizon>, OpenError> {
    let path = dir.join(horizon::FILE_NAME);
    let Some(buf) = read_small_file(vfs, &path)? else { return Ok(None) };
    let decoded = Horizon::decode(&buf).and_then(|h| {
        if h.journal_id == identity.journal_id {
            Ok(h)
        } else {
            Err(horizon::HorizonError::Foreign)
        }
    });
    match (decoded, mode) {
        (Ok(h), _) => Ok(Some(h)),
        // Salvage reads whatever segments are there; a half-reclaimed head then shows as skipped damage.
        (Err(e), RecoveryMode::Salvage) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged reclaim horizon (salvage)");
            Ok(None)
        }
        (Err(source), RecoveryMode::Strict) => Err(OpenError::Horizon { path, source }),
    }
}

/// A checkpoint to replay on top of.
struct Start {
    resume: ResumePoint,
    body: CheckpointBody,
}

/// Reads and authenticates one checkpoint file.
fn load_checkpoint(
    vfs: &dyn Vfs,
    path: &Path,
    identity: &Identity,
    keys: Option<&KeyRing>,
) -> Result<(ResumePoint, CheckpointBody, u64), CheckpointError> {
    let io = |e: std::io::Error| CheckpointError::Inconsistent(format!("read: {e}"));
    let file = vfs.open(path, OpenMode::Read).map_err(io)?;
    let len = file.size().map_err(io)?;
    let mut head = vec![0u8; (checkpoint::HEADER_BYTES as u64).min(len) as usize];
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let header = CheckpointHeader::decode(&head)?;
    if header.journal_id != identity.journal_id {
        return Err(CheckpointError::Foreign);
    }
    let stored = len - checkpoint::HEADER_BYTES as u64;
    if header.body_len != stored {
        return Err(CheckpointError::BodyLength { declared: header.body_len, actual: stored });
    }
    let mut source = checkpoint::FileSource::new(file.as_ref(), checkpoint::HEADER_BYTES as u64, stored);
    let body = if header.key_id == 0 {
        // Streamed: decoded block by block, the CRC checked at the end, before anything is used.
        let body = checkpoint::decode_body(&mut source);
        source.drain()?;
        if source.crc.clone().finalize() != header.body_crc {
            return Err(CheckpointError::BodyChecksum);
        }
        body?
    } else {
        // An encrypted body is authenticated as a whole before any of it is decoded.
        let sealed = source.take(stored as usize)?.to_vec();
        if crc32fast::hash(&sealed) != header.body_crc {
            return Err(CheckpointError::BodyChecksum);
        }
        let binding = checkpoint_binding(identity.journal_id, header.resume.next_lsn);
        let master = keys.and_then(|k| k.get(header.key_id)).ok_or(CheckpointError::KeyUnavailable(header.key_id))?;
        let cipher = SegmentCipher::open(master, header.key_id, &binding, &header.wrapped_key)
            .ok_or(CheckpointError::KeyUnavailable(header.key_id))?;
        let plain = crate::crypto::unit::open_one(&cipher, &binding, &sealed, checkpoint::HEADER_BYTES as u64)
            .map_err(|_| CheckpointError::Authentication)?;
        drop(sealed);
        checkpoint::decode_body_bytes(&plain)?
    };
    Ok((header.resume, body, len))
}

/// The binding of a checkpoint's data key and sealed body: its own domain (the top bit of the sequence
/// field, which segment numbers never reach), so nothing from a segment authenticates as a checkpoint.
pub(crate) fn checkpoint_binding(journal_id: [u8; 16], next_lsn: Lsn) -> Binding {
    Binding { journal_id, segment_seq: next_lsn.0 | 1 << 63 }
}

/// A replay on top of a checkpoint is only trusted if every live record it ends with lies in a segment
/// that exists.
fn check_locations(dr: DirRecovery) -> Result<DirRecovery, CheckpointError> {
    let present: std::collections::HashSet<u64> = dr.present.iter().copied().collect();
    if let Some(seq) = dr.index.segments.keys().find(|s| !present.contains(s)) {
        return Err(CheckpointError::Inconsistent(format!("a live record lies in segment {seq}, which is gone")));
    }
    for (_, s) in &dr.open_txs {
        if let Some(r) = s.records.iter().find(|r| !present.contains(&r.record.location.seq)) {
            let why = format!("an open transaction's record lies in segment {}, which is gone", r.record.location.seq);
            return Err(CheckpointError::Inconsistent(why));
        }
    }
    Ok(dr)
}

/// Replays the directory's segments, from the start or on top of a checkpoint.
fn replay_segments(
    ctx: &Ctx<'_>,
    start: Option<Start>,
    visit: &mut dyn FnMut(&FrameEvent<'_>),
) -> Result<DirRecovery, OpenError> {
    let Ctx { vfs, mode, keys, identity, headers, mut active_count, horizon, .. } = *ctx;
    let corrupt = |path: &Path, offset: u64, what| Corruption { path: path.to_path_buf(), offset, what };
    let mut report = RecoveryReport::default();
    let mut delete: Vec<PathBuf> = ctx.tmps.to_vec();
    let mut spares = Vec::new();
    for (seq, path, _, _) in headers.iter().skip(active_count) {
        spares.push((*seq, path.clone()));
    }
    report.spare_segments = spares.len() as u32;
    // Reclaim never removes the newest segment that holds frames, so the oldest one left must follow the
    // horizon directly; anything else means a segment was lost, not reclaimed.
    if let (Some(h), Some(first)) = (&horizon, headers.first().filter(|_| active_count > 0)) {
        if first.0 != h.horizon + 1 {
            let what = CorruptionKind::MissingSegment { expected: h.horizon + 1, found: first.0 };
            salvage_or_fail(mode, &mut report, corrupt(&first.1, 0, what))?;
        }
    }
    let (resume_point, mut replay) = match start {
        Some(s) => (
            Some(s.resume),
            Replay {
                index: s.body.index,
                txs: s.body.open_txs.into_iter().map(|(t, s)| (t.get(), s)).collect(),
                ..Replay::default()
            },
        ),
        None => (None, Replay::default()),
    };
    let lenient = mode == RecoveryMode::Salvage;
    let mut segments: Vec<SegmentSummary> = Vec::new();
    let mut expected: Option<Lsn> = None;
    let mut resume = Resume::New { next_lsn: Lsn(1) };
    let mut prev_seq: Option<u64> = None;
    // (a segment's bytes, its decrypted stream): see below.
    let mut reused: (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());

    let mut index = 0;
    loop {
        if index == active_count {
            // The spare right after the active segments is the one the next activation went into. An
            // activation is one write of header and first frames, and a power loss can land its later
            // sectors without the header's: the file then looks like a spare but holds frames bound to its
            // sequence number, which the next activation reuses, so they could line up behind new frames
            // and come back. Such a file is judged below like any damaged header of the newest segment
            // (torn activation, or corruption if it had been durable). Only when the activation can have
            // happened is the spare read (whole): the writer seals a segment durably before it activates
            // the next, so after a newest segment that is not sealed the spare was never written.
            let newest_unsealed = segments
                .last()
                .filter(|l| active_count > 0 && l.seq == headers[active_count - 1].0)
                .is_some_and(|l| !matches!(l.end, SegmentEnd::Sealed { .. }));
            match headers.get(active_count) {
                Some((_, path, bytes, _)) if !newest_unsealed && !spare_is_zero(vfs, path, *bytes)? => {
                    spares.remove(0);
                    report.spare_segments -= 1;
                    active_count += 1;
                }
                _ => break,
            }
        }
        let (seq, path, file_bytes, header) = &headers[index];
        let header = match header {
            Err(HeaderError::Zero) if index >= ctx.active_count => &Err(HeaderError::ZeroButWritten),
            h => h,
        };
        let newest = index + 1 == active_count;
        index += 1;
        if let Some(p) = prev_seq {
            if *seq != p + 1 {
                let what = CorruptionKind::MissingSegment { expected: p + 1, found: *seq };
                salvage_or_fail(mode, &mut report, corrupt(path, 0, what))?;
                expected = None;
            }
        }
        prev_seq = Some(*seq);
        let binding = Binding { journal_id: identity.journal_id, segment_seq: *seq };
        let header = match header {
            Ok(h) => *h,
            Err(HeaderError::Zero) => {
                let what = CorruptionKind::SpareBeforeActive { later: headers[active_count - 1].0 };
                salvage_or_fail(mode, &mut report, corrupt(path, 0, what))?;
                continue;
            }
            Err(e) => {
                // A torn activation leaves a full-size, pre-allocated file; a shorter one was cut by something
                // else and may hold acknowledged frames, so it is never deleted as torn.
                let full_size = *file_bytes >= crate::limits::SEGMENT_BYTES_MIN
                    && file_bytes.is_multiple_of(crate::limits::PAGE_BYTES);
                if newest && full_size {
                    let data = read_whole(vfs, path, *file_bytes)?;
                    let min = expected.unwrap_or(Lsn(1));
                    let torn = match scan::find_next_valid(&binding, &data, SEGMENT_HEADER_BYTES, min) {
                        None => !units::later_unit_exists(&binding, &data),
                        Some(_) => !scan::later_sync_group_exists(&binding, &data, min),
                    };
                    if torn {
                        // Header and first batch went down in one write that never completed: nothing in it
                        // was acknowledged. Spares after it would leave a gap once it is gone, so they go too.
                        report.torn_activation = Some(path.clone());
                        delete.push(path.clone());
                        for (_, p) in spares.drain(..) {
                            delete.push(p);
                        }
                        report.spare_segments = 0;
                        resume = Resume::New { next_lsn: min };
                        break;
                    }
                }
                salvage_or_fail(mode, &mut report, corrupt(path, 0, CorruptionKind::Header(e.clone())))?;
                expected = None;
                continue;
            }
        };
        if let Err((offset, what)) = check_segment_identity(&header, *seq, *file_bytes, identity) {
            salvage_or_fail(mode, &mut report, corrupt(path, offset, what))?;
            expected = None;
            continue;
        }
        // On top of a checkpoint: segments before its resume point are covered by it; the resume segment
        // is read from the resume offset on.
        let mut scan_from = (SEGMENT_HEADER_BYTES, header.first_lsn, 0u64);
        if let Some(r) = &resume_point {
            if *seq < r.seq {
                // Not read, but a key it needs must still be there: refuse now, not at some later read.
                segment_cipher(keys, path, &header, &binding)?;
                continue;
            }
            if *seq == r.seq {
                if header.first_lsn > r.next_lsn || r.offset < SEGMENT_HEADER_BYTES || r.offset > *file_bytes {
                    let what = CorruptionKind::LsnGap { expected: r.next_lsn, found: header.first_lsn };
                    return Err(corrupt(path, 40, what).into());
                }
                scan_from = (r.offset, r.next_lsn, r.frames);
            } else if expected.is_none() {
                expected = Some(r.next_lsn);
            }
        }
        if let Some(e) = expected.filter(|_| scan_from.0 == SEGMENT_HEADER_BYTES) {
            if header.first_lsn != e {
                let what = CorruptionKind::LsnGap { expected: e, found: header.first_lsn };
                salvage_or_fail(mode, &mut report, corrupt(path, 40, what))?;
            }
        }
        if let Some(last) = segments.last() {
            if !matches!(last.end, SegmentEnd::Sealed { .. } | SegmentEnd::Unterminated { .. }) {
                let what = CorruptionKind::NotSealed { later: *seq };
                salvage_or_fail(mode, &mut report, corrupt(&last.path, last.end_offset, what))?;
            }
        }

        let cipher = segment_cipher(keys, path, &header, &binding)?;
        // Plaintext segments are read window by window (see `scan_windowed`); an encrypted one whole, since
        // its units are decrypted in parallel.
        // The buffers are reused from segment to segment: fresh ones of a segment's size cost more in page
        // faults than decryption does.
        let mut data = std::mem::take(&mut reused.0);
        if cipher.is_some() {
            read_whole_into(vfs, path, *file_bytes, &mut data)?;
        }
        let decrypted = match &cipher {
            None => None,
            Some(c) => Some(units::decrypt(
                &units::UnitInput {
                    path,
                    data: &data,
                    binding,
                    cipher: c,
                    first_lsn: scan_from.1,
                    newest,
                    mode,
                    start: scan_from.0,
                },
                std::mem::take(&mut reused.1),
            )?),
        };
        let to_file = |at: u64| decrypted.as_ref().map_or(at, |d| d.file_offset(at));
        let frames_data = decrypted.as_ref().map_or(&data[..], |d| &d.stream[..]);
        let input = ScanInput {
            path,
            data: frames_data,
            binding,
            first_lsn: scan_from.1,
            newest,
            mode,
            // The decrypted stream starts its frames right after a zero header, whatever the unit offset.
            start: if decrypted.is_some() { SEGMENT_HEADER_BYTES } else { scan_from.0 },
            frames_before: scan_from.2,
            base: 0,
            partial: false,
        };
        let mut on_frame = |offset: u64, h: &FrameHeader, payload: &[u8]| {
            let frame_bytes = h.frame_bytes() as u32;
            let at = match &decrypted {
                None => Location { seq: *seq, offset, inner: 0, frame_bytes },
                Some(d) => {
                    let (unit, inner) = d.locate(offset);
                    Location { seq: *seq, offset: unit, inner, frame_bytes }
                }
            };
            let offset = to_file(offset);
            replay.apply(h, payload, at, lenient).map_err(|what| corrupt(path, offset, what))?;
            visit(&FrameEvent { path, segment_seq: *seq, offset, header: h, payload });
            Ok(())
        };
        let mut scanned = match &decrypted {
            Some(_) => scan::scan_segment(&input, &mut on_frame).map_err(|mut c| {
                c.offset = to_file(c.offset);
                c
            })?,
            None => scan_windowed(vfs, *file_bytes, &input, &mut on_frame)?,
        };
        for s in &mut scanned.skipped {
            s.offset = to_file(s.offset);
        }
        if let Some(d) = &decrypted {
            scanned.skipped.extend(d.skipped.iter().cloned());
            scanned.end = match (d.end, scanned.end) {
                (units::UnitEnd::Torn { offset, bytes }, _) => SegmentEnd::Torn { offset, bytes },
                (units::UnitEnd::Clean { offset }, SegmentEnd::Open { .. }) => SegmentEnd::Open { offset },
                (_, SegmentEnd::Sealed { offset, lsn }) => SegmentEnd::Sealed { offset: to_file(offset), lsn },
                (_, SegmentEnd::Torn { offset, bytes }) => SegmentEnd::Torn { offset: to_file(offset), bytes },
                (_, SegmentEnd::Unterminated { offset }) => SegmentEnd::Unterminated { offset: to_file(offset) },
            };
        }
        let end_offset = match scanned.end {
            SegmentEnd::Sealed { offset, .. }
            | SegmentEnd::Open { offset }
            | SegmentEnd::Torn { offset, .. }
            | SegmentEnd::Unterminated { offset } => offset,
        };
        assert!(end_offset <= *file_bytes, "a scan never ends past its segment");
        assert!(scanned.next_lsn.0 >= scan_from.1 .0, "LSNs never go back within a segment");
        report.segments_read += 1;
        report.frames += scanned.frames;
        report.bytes_read += end_offset;
        report.skipped.extend(scanned.skipped.iter().cloned());
        if scanned.next_lsn.0 > 1 {
            report.last_lsn = Some(Lsn(scanned.next_lsn.0 - 1));
        }
        expected = Some(scanned.next_lsn);
        resume = match scanned.end {
            SegmentEnd::Sealed { .. } => Resume::New { next_lsn: scanned.next_lsn },
            SegmentEnd::Open { offset } => Resume::InPlace {
                seq: *seq,
                path: path.clone(),
                offset,
                frames: scanned.frames,
                next_lsn: scanned.next_lsn,
                cipher: cipher.clone(),
            },
            SegmentEnd::Torn { offset, bytes } => {
                report.torn_tail = Some(TornTail { path: path.clone(), offset, bytes });
                seal_then_new(path, *seq, offset, &scanned, cipher.clone())
            }
            SegmentEnd::Unterminated { offset } => seal_then_new(path, *seq, offset, &scanned, cipher.clone()),
        };
        segments.push(SegmentSummary {
            seq: *seq,
            path: path.clone(),
            file_bytes: *file_bytes,
            first_lsn: header.first_lsn,
            frames: scanned.frames,
            end_offset,
            end: scanned.end,
        });
        reused = (data, decrypted.map_or_else(Vec::new, |d| d.stream));
    }

    // Spares must continue the segments in use without a gap. An open that drops spares of another size
    // deletes them one by one, and a crash in between can leave a later one behind an earlier one's
    // deletion. Activation goes strictly in order, so a spare past a gap never held a frame: delete it.
    let mut follows = headers.get(active_count.wrapping_sub(1)).map(|h| h.0);
    let mut contiguous = spares.len();
    for (i, (seq, _)) in spares.iter().enumerate() {
        if follows.is_some_and(|f| *seq != f + 1) {
            contiguous = i;
            break;
        }
        follows = Some(*seq);
    }
    for (_, path) in spares.drain(contiguous..) {
        delete.push(path);
    }
    report.spare_segments = spares.len() as u32;
    let oldest_seq = headers.first().filter(|_| active_count > 0).map(|h| h.0);
    let end = replay.finish();
    report.committed_txs = end.committed;
    report.rolled_back_txs = end.rolled_back;
    report.incomplete_txs = end.incomplete();
    let prepared = end.prepared();
    // From the last segment in use, read or not (a checkpoint covers some; salvage skips damaged ones).
    let in_use_last = headers.get(active_count.wrapping_sub(1)).map(|h| h.0);
    let next_seq = match (spares.last(), in_use_last, report.torn_activation.is_some()) {
        (_, _, true) => headers[active_count - 1].0,
        (Some((s, _)), _, _) => s + 1,
        (None, Some(last), _) => last + 1,
        (None, None, _) => headers.last().map_or(1, |s| s.0 + 1),
    };
    // Never at or below the reclaim horizon: recovery would take a segment there for a reclaimed one.
    let next_seq = next_seq.max(horizon.as_ref().map_or(1, |h| h.horizon + 1));
    // LSNs never go back, even if every segment that held frames is gone.
    if let (Some(h), Resume::New { next_lsn }) = (&horizon, &mut resume) {
        if *next_lsn < h.next_lsn {
            *next_lsn = h.next_lsn;
        }
    }
    // On top of a checkpoint whose resume segment was never written, the journal resumes from it.
    if let (Some(r), Resume::New { next_lsn }) = (&resume_point, &mut resume) {
        if segments.is_empty() {
            *next_lsn = r.next_lsn;
            report.last_lsn = Some(Lsn(r.next_lsn.0 - 1)).filter(|l| l.0 > 0);
        }
    }
    let present = headers.iter().take(active_count).map(|h| h.0).collect();
    Ok(DirRecovery {
        identity: *identity,
        // Filled by the caller if it wants a copy (see `Options::return_records`).
        recovered: Recovered { records: BTreeMap::new(), prepared, report },
        index: end.index,
        open_txs: end.open,
        segments,
        resume,
        spares,
        delete,
        next_seq,
        oldest_seq,
        present,
        checkpoint_used: None,
    })
}

fn seal_then_new(path: &Path, seq: u64, offset: u64, scanned: &scan::Scanned, cipher: Option<SegmentCipher>) -> Resume {
    Resume::SealThenNew {
        path: path.to_path_buf(),
        segment_seq: seq,
        offset,
        frames: scanned.frames,
        seal_lsn: scanned.next_lsn,
        cipher,
    }
}

/// The data key of an encrypted segment (`None` for plaintext), or why it cannot be had.
pub(crate) fn segment_cipher(
    keys: Option<&KeyRing>,
    path: &Path,
    header: &SegmentHeader,
    binding: &Binding,
) -> Result<Option<SegmentCipher>, OpenError> {
    if header.key_id == 0 {
        return Ok(None);
    }
    let unavailable = |why| OpenError::KeyUnavailable { path: path.to_path_buf(), key_id: header.key_id, why };
    let keys = keys.ok_or_else(|| unavailable("and no key was given (--key-file, KEEL_KEY_FILE or KEEL_KEY)"))?;
    let master = keys.get(header.key_id).ok_or_else(|| unavailable("which is not in the key ring"))?;
    SegmentCipher::open(master, header.key_id, binding, &header.wrapped_key)
        .map(Some)
        .ok_or_else(|| unavailable("and the key listed under that id does not unwrap its data key (wrong key)"))
}

/// Whether a decoded segment header belongs where it is: to this journal, under this file name, at this
/// size. On a mismatch, the offset of the offending header field and what is wrong.
pub(crate) fn check_segment_identity(
    header: &SegmentHeader,
    seq: u64,
    file_bytes: u64,
    identity: &Identity,
) -> Result<(), (u64, CorruptionKind)> {
    if header.journal_id != identity.journal_id {
        let what = CorruptionKind::ForeignSegment {
            expected: identity::id_hex(&identity.journal_id),
            found: identity::id_hex(&header.journal_id),
        };
        return Err((16, what));
    }
    if header.segment_seq != seq {
        return Err((32, CorruptionKind::SequenceMismatch { in_name: seq, in_header: header.segment_seq }));
    }
    if header.segment_bytes != file_bytes {
        return Err((56, CorruptionKind::SizeMismatch { declared: header.segment_bytes, actual: file_bytes }));
    }
    Ok(())
}

fn salvage_or_fail(mode: RecoveryMode, report: &mut RecoveryReport, c: Corruption) -> Result<(), OpenError> {
    match mode {
        RecoveryMode::Strict => Err(OpenError::Corrupt(c)),
        RecoveryMode::Salvage => {
            report.skipped.push(SkippedRange {
                path: c.path.clone(),
                offset: c.offset,
                bytes: 0,
                reason: c.what.to_string(),
                lsns: (Lsn(0), Lsn(0)),
            });
            Ok(())
        }
    }
}

/// Bytes of a plaintext segment held in memory at a time during a scan.
const SCAN_WINDOW_BYTES: u64 = 1 << 20;

/// Scans a plaintext segment through a window of `SCAN_WINDOW_BYTES`, so that recovery's memory does not
/// grow with the segment size. The window moves on at each frame boundary; only where frames stop decoding
/// is more needed: the rest of the segment is checked for zeros (a clean end) window by window, and only
/// damage — rare — is judged with the whole segment in hand, exactly as `scan_segment` always did.
fn scan_windowed(
    vfs: &dyn Vfs,
    file_bytes: u64,
    template: &ScanInput<'_>,
    visit: &mut scan::FrameVisitor<'_>,
) -> Result<scan::Scanned, OpenError> {
    let path = template.path;
    let file = vfs.open(path, OpenMode::Read).map_err(OpenError::io(path, "open"))?;
    let mut pos = template.start.max(SEGMENT_HEADER_BYTES);
    let (mut frames, mut next_lsn) = (template.frames_before, template.first_lsn);
    let mut window = SCAN_WINDOW_BYTES;
    let mut buf = Vec::new();
    loop {
        let end = pos.saturating_add(window).min(file_bytes);
        buf.resize(end.saturating_sub(pos) as usize, 0);
        file.read_exact_at(&mut buf, pos).map_err(OpenError::io(path, "read"))?;
        let input = ScanInput {
            data: &buf,
            base: pos,
            // Even the last window stops at damage rather than judge it: judging needs the whole segment.
            partial: true,
            start: pos,
            first_lsn: next_lsn,
            frames_before: frames,
            ..*template
        };
        let s = scan::scan_segment(&input, visit)?;
        if !s.stopped_early {
            return Ok(s);
        }
        let at = match s.end {
            SegmentEnd::Open { offset } => offset,
            _ => unreachable!("a partial scan stops only as Open"),
        };
        (frames, next_lsn) = (s.frames, s.next_lsn);
        if at > pos {
            pos = at;
            window = SCAN_WINDOW_BYTES;
            continue;
        }
        // No progress. A frame longer than the window: widen it to that frame.
        let declared = buf.get(4..8).map_or(0, |b| u64::from(crate::format::u32_at(b, 0)));
        let frame = crate::limits::FRAME_HEADER_BYTES + declared;
        if frame > window && declared <= crate::limits::PAYLOAD_BYTES_MAX && pos + frame <= file_bytes {
            window = frame;
            continue;
        }
        if template.newest && zeros_to_end(file.as_ref(), path, pos, file_bytes, &mut buf)? {
            let end = SegmentEnd::Open { offset: pos };
            return Ok(scan::Scanned { end, frames, next_lsn, skipped: Vec::new(), stopped_early: false });
        }
        let data = read_whole(vfs, path, file_bytes)?;
        let input = ScanInput {
            data: &data,
            base: 0,
            partial: false,
            start: pos,
            first_lsn: next_lsn,
            frames_before: frames,
            ..*template
        };
        return Ok(scan::scan_segment(&input, visit)?);
    }
}

/// Whether everything past a spare's (all-zero) header is zero too.
fn spare_is_zero(vfs: &dyn Vfs, path: &Path, bytes: u64) -> Result<bool, OpenError> {
    let file = vfs.open(path, OpenMode::Read).map_err(OpenError::io(path, "open"))?;
    zeros_to_end(file.as_ref(), path, SEGMENT_HEADER_BYTES, bytes, &mut Vec::new())
}

/// Whether `from..end` of the file holds only zeros, read a window at a time.
fn zeros_to_end(
    file: &dyn crate::vfs::VfsFile,
    path: &Path,
    from: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> Result<bool, OpenError> {
    buf.resize(SCAN_WINDOW_BYTES.min(end.saturating_sub(from)) as usize, 0);
    let mut at = from;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).map_err(OpenError::io(path, "read"))?;
        if !crate::format::all_zero(&buf[..n]) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn read_whole(vfs: &dyn Vfs, path: &Path, bytes: u64) -> Result<Vec<u8>, OpenError> {
    let mut data = Vec::new();
    read_whole_into(vfs, path, bytes, &mut data)?;
    Ok(data)
}

/// Reads the first `bytes` of the file into `data`, reusing its allocation (its old contents are
/// overwritten, so only newly grown capacity is zeroed first).
fn read_whole_into(vfs: &dyn Vfs, path: &Path, bytes: u64, data: &mut Vec<u8>) -> Result<(), OpenError> {
    let file = vfs.open(path, OpenMode::Read).map_err(OpenError::io(path, "open"))?;
    data.truncate(bytes as usize);
    data.resize(bytes as usize, 0);
    file.read_exact_at(data, 0).map_err(OpenError::io(path, "read"))
}
