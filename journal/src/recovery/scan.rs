//! Reads one segment's frames and decides where and how it ends (docs/FORMAT.md, "Recovery").
//! Pure: works on the segment's bytes, so it can be tested and fuzzed without files.

use std::path::Path;

use crate::error::{Corruption, CorruptionKind};
use crate::format::frame::{decode_frame, FrameHeader, FrameType, HEADER_BYTES};
use crate::format::Binding;
use crate::limits::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::types::{Lsn, RecoveryMode};

/// How a segment's frames end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// A seal frame at `offset` with LSN `lsn`.
    Sealed { offset: u64, lsn: Lsn },
    /// Only zeros after the last frame: the next write goes at `offset`.
    Open { offset: u64 },
    /// The newest segment's last sync group is damaged from `offset`; `bytes` non-zero bytes are discarded.
    Torn { offset: u64, bytes: u64 },
    /// Salvage ran off the end of a segment that should have been sealed.
    Unterminated { offset: u64 },
}

/// A range that salvage skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRange {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// Why the first skipped byte failed.
    pub reason: String,
    /// LSNs lost to the skip: from the one expected to the one found after it (exclusive).
    pub lsns: (Lsn, Lsn),
}

/// One segment's scan result.
#[derive(Debug)]
pub struct Scanned {
    pub end: SegmentEnd,
    /// Frames read, seal excluded.
    pub frames: u64,
    /// LSN the next frame after this segment must carry.
    pub next_lsn: Lsn,
    pub skipped: Vec<SkippedRange>,
    /// A partial scan stopped at `end`'s offset without judging what lies there.
    pub stopped_early: bool,
}

/// Where the frames start and what they must look like.
#[derive(Clone, Copy)]
pub struct ScanInput<'a> {
    pub path: &'a Path,
    pub data: &'a [u8],
    pub binding: Binding,
    /// LSN of the first frame at `start`.
    pub first_lsn: Lsn,
    pub newest: bool,
    pub mode: RecoveryMode,
    /// Where the scan begins: the end of the header, or a checkpoint's resume offset.
    pub start: u64,
    /// Frames the segment holds before `start` (for the seal's count).
    pub frames_before: u64,
    /// The segment offset of `data[0]`: 0 when `data` is the whole segment, else a window's start.
    pub base: u64,
    /// `data` is a window that ends before the segment does: at the first frame that does not decode, the
    /// scan stops (`Scanned::stopped_early`) instead of judging, since the judgement needs the rest.
    pub partial: bool,
}

/// Called for each valid frame: its offset, header and payload.
pub type FrameVisitor<'a> = dyn FnMut(u64, &FrameHeader, &[u8]) -> Result<(), Corruption> + 'a;

/// Scans frames from the end of the header, calling `visit` for each valid non-seal frame in order.
pub fn scan_segment(input: &ScanInput<'_>, visit: &mut FrameVisitor<'_>) -> Result<Scanned, Corruption> {
    let data = input.data;
    let len = data.len() as u64;
    let mut offset = input.start.max(SEGMENT_HEADER_BYTES);
    debug_assert!(offset >= input.base && (input.base == 0 || input.partial || offset - input.base <= len));
    let rel = |o: u64| o.saturating_sub(input.base) as usize;
    let mut expected = input.first_lsn;
    let mut frames = input.frames_before;
    let mut skipped = Vec::new();
    let corrupt = |offset: u64, what: CorruptionKind| Corruption { path: input.path.to_path_buf(), offset, what };
    // Every iteration advances `offset` by at least one frame header or ends the scan.
    loop {
        debug_assert!(offset >= SEGMENT_HEADER_BYTES);
        let rest = data.get(rel(offset)..).unwrap_or(&[]);
        let decoded = decode_frame(&input.binding, rest).map_err(CorruptionKind::Frame).and_then(|(h, p)| {
            if h.lsn == expected {
                Ok((h, p))
            } else {
                Err(CorruptionKind::LsnGap { expected, found: h.lsn })
            }
        });
        let fault = match decoded {
            Ok((h, payload)) if h.frame_type == FrameType::Seal => {
                if h.id != frames && input.mode == RecoveryMode::Strict {
                    return Err(corrupt(offset, CorruptionKind::SealCount { declared: h.id, actual: frames }));
                }
                return Ok(Scanned {
                    end: SegmentEnd::Sealed { offset, lsn: h.lsn },
                    frames,
                    next_lsn: Lsn(h.lsn.0 + 1),
                    skipped,
                    stopped_early: false,
                })
                .inspect(|_| debug_assert!(payload.is_empty()));
            }
            Ok((h, payload)) => {
                visit(offset, &h, payload)?;
                frames += 1;
                expected = Lsn(expected.0 + 1);
                offset += h.frame_bytes();
                continue;
            }
            Err(fault) => fault,
        };
        if input.partial {
            let end = SegmentEnd::Open { offset };
            return Ok(Scanned { end, frames, next_lsn: expected, skipped, stopped_early: true });
        }
        debug_assert_eq!(input.base, 0, "judging damage needs the whole segment");
        if input.newest && crate::format::all_zero(rest) {
            let end = SegmentEnd::Open { offset };
            return Ok(Scanned { end, frames, next_lsn: expected, skipped, stopped_early: false });
        }
        let next = find_next_valid(&input.binding, data, offset + 1, expected);
        let mut later_group = None;
        if input.newest {
            // Torn only if no later sync group follows: the first valid frame after the damage may share
            // its group while a later one, fdatasynced after it, proves the damaged bytes were durable.
            later_group = next.and_then(|(at, _)| later_group_frame(&input.binding, data, at, expected));
            if later_group.is_none() {
                let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(offset, |p| p as u64 + 1);
                let bytes = last_nonzero.saturating_sub(offset);
                let end = SegmentEnd::Torn { offset, bytes };
                return Ok(Scanned { end, frames, next_lsn: expected, skipped, stopped_early: false });
            }
        }
        let what = match (input.newest, later_group) {
            (true, Some((later_offset, h))) => {
                CorruptionKind::DamageBeforeSyncedData { later_offset, later_lsn: h.lsn }
            }
            _ => fault,
        };
        if input.mode == RecoveryMode::Strict {
            return Err(corrupt(offset, what));
        }
        match next {
            Some((next_offset, h)) => {
                skipped.push(SkippedRange {
                    path: input.path.to_path_buf(),
                    offset,
                    bytes: next_offset - offset,
                    reason: what.to_string(),
                    lsns: (expected, h.lsn),
                });
                offset = next_offset;
                expected = h.lsn;
            }
            None => {
                skipped.push(SkippedRange {
                    path: input.path.to_path_buf(),
                    offset,
                    bytes: len.saturating_sub(offset),
                    reason: what.to_string(),
                    lsns: (expected, expected),
                });
                let end = SegmentEnd::Unterminated { offset };
                return Ok(Scanned { end, frames, next_lsn: expected, skipped, stopped_early: false });
            }
        }
    }
}

/// The first frame at or after `from` that validates with an LSN of at least `expected` and belongs to a
/// sync group that began after `expected` (its `lsn - since_sync` is greater): proof that the frame
/// expected at `expected` had been fdatasynced before it was written.
pub fn later_group_frame(binding: &Binding, data: &[u8], from: u64, expected: Lsn) -> Option<(u64, FrameHeader)> {
    let mut at = from;
    while let Some((offset, h)) = find_next_valid(binding, data, at, expected) {
        if h.lsn.0.saturating_sub(u64::from(h.since_sync)) > expected.0 {
            return Some((offset, h));
        }
        at = offset + h.frame_bytes();
    }
    None
}

/// Whether a frame that validates past the segment header, with an LSN of at least `min_lsn`, belongs to a
/// sync group that began after `min_lsn`: proof that the segment's first write had been fdatasynced before
/// later frames were written, so that damage to it is not a torn activation.
pub fn later_sync_group_exists(binding: &Binding, data: &[u8], min_lsn: Lsn) -> bool {
    later_group_frame(binding, data, SEGMENT_HEADER_BYTES, min_lsn).is_some()
}

/// The first offset at or after `from` holding a frame that validates with an LSN of at least `min_lsn`.
/// Bounded by the segment: at most one decode attempt per byte, most rejected by cheap field checks.
pub fn find_next_valid(binding: &Binding, data: &[u8], from: u64, min_lsn: Lsn) -> Option<(u64, FrameHeader)> {
    let start = from.max(SEGMENT_HEADER_BYTES) as usize;
    let last = data.len().checked_sub(HEADER_BYTES)?;
    let lsn_max = min_lsn.0 + data.len() as u64 / FRAME_HEADER_BYTES;
    for at in start..=last {
        let b = &data[at..];
        if !(1..=FrameType::MAX_TAG).contains(&b[36]) || b[38] != 0 || b[39] != 0 {
            continue;
        }
        let lsn = crate::format::u64_at(b, 8);
        if lsn < min_lsn.0 || lsn > lsn_max {
            continue;
        }
        if let Ok((h, _)) = decode_frame(binding, b) {
            return Some((at as u64, h));
        }
    }
    None
}
