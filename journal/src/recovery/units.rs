//! The unit layer of an encrypted segment's recovery: authenticates and decrypts its sealed units into the
//! frame stream that `scan` reads, and decides — at unit granularity, with the same rules as for frames
//! (docs/FORMAT.md, "Recovery") — whether damage is a torn tail or corruption.

use std::path::Path;

use crate::crypto::unit::{self, UnitError};
use crate::crypto::SegmentCipher;
use crate::error::{Corruption, CorruptionKind};
use crate::format::frame::{decode_frame, FrameType, HEADER_BYTES};
use crate::format::Binding;
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::types::{Lsn, RecoveryMode};

use super::scan::SkippedRange;

/// How the unit sequence of a segment ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitEnd {
    /// After the last unit, only zeros (or the end of the file): the next unit goes at `offset`.
    Clean { offset: u64 },
    /// The newest segment's last sync group is damaged from `offset`; `bytes` non-zero bytes discarded.
    Torn { offset: u64, bytes: u64 },
}

/// A segment's decrypted frames, laid out as a plaintext segment would be (a zero header, then frames), so
/// that `scan::scan_segment` reads them unchanged.
pub struct Decrypted {
    pub stream: Vec<u8>,
    /// (stream offset where a unit's frames start, the unit's offset in the file), in order.
    pub units: Vec<(u64, u64)>,
    pub end: UnitEnd,
    pub skipped: Vec<SkippedRange>,
}

impl Decrypted {
    /// The file offset of the unit holding the frame at stream offset `at`, and the frame's offset inside
    /// that unit's plaintext.
    pub fn locate(&self, at: u64) -> (u64, u32) {
        let i = self.units.partition_point(|(start, _)| *start <= at);
        assert!(i > 0, "a frame lies inside a unit");
        let (start, file) = self.units[i - 1];
        (file, (at - start) as u32)
    }

    /// The file offset of the unit holding stream offset `at` (for errors and tools).
    pub fn file_offset(&self, at: u64) -> u64 {
        let end = match self.end {
            UnitEnd::Clean { offset } | UnitEnd::Torn { offset, .. } => offset,
        };
        match self.units.partition_point(|(start, _)| *start <= at) {
            0 => end,
            _ if at >= self.stream.len() as u64 => end,
            i => self.units[i - 1].1,
        }
    }
}

pub struct UnitInput<'a> {
    pub path: &'a Path,
    pub data: &'a [u8],
    pub binding: Binding,
    pub cipher: &'a SegmentCipher,
    pub first_lsn: Lsn,
    pub newest: bool,
    pub mode: RecoveryMode,
    /// The unit where decryption begins: the end of the header, or a checkpoint's resume offset.
    pub start: u64,
}

pub fn decrypt(input: &UnitInput<'_>) -> Result<Decrypted, Corruption> {
    let data = input.data;
    let len = data.len() as u64;
    // Sized once: the plaintext is never longer than the segment, and growing a buffer of tens of MiB
    // step by step costs more in page faults and copies than the decryption saves.
    let mut stream = Vec::with_capacity(data.len());
    stream.resize(SEGMENT_HEADER_BYTES as usize, 0);
    let mut out =
        Decrypted { stream, units: Vec::new(), end: UnitEnd::Clean { offset: input.start }, skipped: Vec::new() };
    let mut offset = input.start.max(SEGMENT_HEADER_BYTES);
    let mut expected = input.first_lsn;
    // Fast path: decrypt the chain of units whose headers validate on every core, in order; the loop below
    // takes over at the first unit that does not authenticate (or at the end).
    for (unit_offset, plain) in decrypt_chain_parallel(input) {
        let start = out.stream.len();
        out.stream.extend_from_slice(&plain);
        let last = last_frame(&out.stream[start..]);
        expected = last.map_or(expected, |(l, _)| Lsn(l.0 + 1));
        out.units.push((start as u64, unit_offset));
        offset = unit_offset + unit::UNIT_OVERHEAD_BYTES + plain.len() as u64;
        if last.is_some_and(|(_, t)| t == FrameType::Seal) {
            out.end = UnitEnd::Clean { offset };
            return Ok(out);
        }
    }
    // Every iteration advances `offset` by a whole unit, jumps to a later unit, or ends.
    loop {
        let rest = data.get(offset as usize..).unwrap_or(&[]);
        if crate::format::all_zero(rest) {
            out.end = UnitEnd::Clean { offset };
            return Ok(out);
        }
        let start = out.stream.len();
        let fault = match unit::open_into(input.cipher, &input.binding, data, offset, &mut out.stream) {
            Ok(total) => {
                let last = last_frame(&out.stream[start..]);
                expected = last.map_or(expected, |(l, _)| Lsn(l.0 + 1));
                out.units.push((start as u64, offset));
                offset += total;
                if last.is_some_and(|(_, t)| t == FrameType::Seal) {
                    // Nothing after a seal is ever read (a sealed-over torn tail may follow it).
                    out.end = UnitEnd::Clean { offset };
                    return Ok(out);
                }
                continue;
            }
            Err(e) => e,
        };
        let next = find_next_unit(input, offset + 1, expected);
        if input.newest {
            let torn = match &next {
                None => true,
                Some((_, first)) => first.0.saturating_sub(first.1) <= expected.0,
            };
            if torn {
                let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(offset, |p| p as u64 + 1);
                out.end = UnitEnd::Torn { offset, bytes: last_nonzero.saturating_sub(offset) };
                return Ok(out);
            }
        }
        let what = match (input.newest, &next) {
            (true, Some((later_offset, (lsn, _)))) => {
                CorruptionKind::DamageBeforeSyncedData { later_offset: *later_offset, later_lsn: Lsn(*lsn) }
            }
            _ => CorruptionKind::Unit(fault),
        };
        if input.mode == RecoveryMode::Strict {
            return Err(Corruption { path: input.path.to_path_buf(), offset, what });
        }
        let resume_at = next.as_ref().map_or(len, |n| n.0);
        out.skipped.push(SkippedRange {
            path: input.path.to_path_buf(),
            offset,
            bytes: resume_at - offset,
            reason: what.to_string(),
            lsns: (expected, expected),
        });
        match next {
            Some((at, _)) => offset = at,
            None => {
                out.end = UnitEnd::Clean { offset: len };
                return Ok(out);
            }
        }
    }
}

/// The longest prefix of the segment's unit chain that authenticates, decrypted on all available cores:
/// (unit offset, plaintext) in order. Stops before the first unit whose header or tag fails.
fn decrypt_chain_parallel(input: &UnitInput<'_>) -> Vec<(u64, Vec<u8>)> {
    let mut offsets = Vec::new();
    let mut at = input.start.max(SEGMENT_HEADER_BYTES);
    while let Ok(total) = unit::peek(&input.binding, input.data, at) {
        offsets.push(at);
        at += total;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let chunk = offsets.len().div_ceil(threads).max(1);
    let results: Vec<Vec<Option<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = offsets
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&o| unit::open(input.cipher, &input.binding, input.data, o).ok().map(|(p, _)| p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    offsets.into_iter().zip(results.into_iter().flatten()).map_while(|(o, p)| p.map(|p| (o, p))).collect()
}

/// Whether a sealed unit's header validates anywhere after the unit at the start of the frames — proof,
/// without the key, that the segment's first write completed (a torn activation is a single write).
pub fn later_unit_exists(binding: &Binding, data: &[u8]) -> bool {
    let first_end =
        unit::peek(binding, data, SEGMENT_HEADER_BYTES).map_or(SEGMENT_HEADER_BYTES + 1, |t| SEGMENT_HEADER_BYTES + t);
    let Some(end) = (data.len() as u64).checked_sub(unit::UNIT_OVERHEAD_BYTES) else { return false };
    (first_end..=end).any(|at| unit::peek(binding, data, at).is_ok())
}

/// The LSN and type of the last frame in a unit's plaintext. The plaintext is authenticated, so frames are
/// walked by their length fields alone; the frame scan that follows checks every frame in full.
fn last_frame(plain: &[u8]) -> Option<(Lsn, FrameType)> {
    let mut at = 0usize;
    let mut last = None;
    while let Some(h) = plain.get(at..at + HEADER_BYTES) {
        let ty = FrameType::from_u8(h[36])?;
        last = Some((Lsn(crate::format::u64_at(h, 8)), ty));
        at += HEADER_BYTES + crate::format::u32_at(h, 4) as usize;
    }
    last
}

/// The first unit at or after `from` that authenticates, with its first frame's (LSN, since_sync); units
/// whose frames all precede `min_lsn` (stale) are passed over. One checksum per byte; a decryption only
/// where the unit header's checksum holds.
fn find_next_unit(input: &UnitInput<'_>, from: u64, min_lsn: Lsn) -> Option<(u64, (u64, u64))> {
    let end = (input.data.len() as u64).checked_sub(unit::UNIT_OVERHEAD_BYTES)?;
    for at in from..=end {
        if unit::peek(&input.binding, input.data, at).is_err() {
            continue;
        }
        let Ok((plain, _)) = unit::open(input.cipher, &input.binding, input.data, at) else { continue };
        let Ok((h, _)) = decode_frame(&input.binding, &plain) else { continue };
        if last_frame(&plain).is_some_and(|(l, _)| l >= min_lsn) {
            return Some((at, (h.lsn.0, u64::from(h.since_sync))));
        }
    }
    None
}

impl From<UnitError> for CorruptionKind {
    fn from(e: UnitError) -> CorruptionKind {
        CorruptionKind::Unit(e)
    }
}
