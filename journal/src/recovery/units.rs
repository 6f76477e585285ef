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
use crate::sync_util::map_scoped;
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

/// Decrypts the segment's units into a frame stream. `reuse` is a buffer from an earlier segment, whose
/// contents do not matter: a recovery that reads many segments allocates, and page-faults, one stream
/// rather than one per segment.
pub fn decrypt(input: &UnitInput<'_>, reuse: Vec<u8>) -> Result<Decrypted, Corruption> {
    let data = input.data;
    let len = data.len() as u64;
    let mut out = Decrypted {
        stream: reuse,
        units: Vec::new(),
        end: UnitEnd::Clean { offset: input.start },
        skipped: Vec::new(),
    };
    let mut offset = input.start.max(SEGMENT_HEADER_BYTES);
    let mut expected = input.first_lsn;
    // Fast path: the chain of units whose headers validate, decrypted on every core straight into the
    // stream; the loop below takes over at the first unit that does not authenticate (or at the end).
    for u in decrypt_chain_parallel(input, &mut out.stream) {
        let end = u.stream_at + u.len;
        let last = last_frame(&out.stream[u.stream_at as usize..end as usize]);
        expected = last.map_or(expected, |(l, _)| Lsn(l.0 + 1));
        out.units.push((u.stream_at, u.offset));
        offset = u.offset + unit::UNIT_OVERHEAD_BYTES + u.len;
        if last.is_some_and(|(_, t)| t == FrameType::Seal) {
            // Nothing after a seal is ever read (a sealed-over torn tail may follow it).
            out.stream.truncate(end as usize);
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
                    out.end = UnitEnd::Clean { offset };
                    return Ok(out);
                }
                continue;
            }
            Err(e) => e,
        };
        let next = find_next_unit(input, offset + 1, expected);
        // Torn only if no later unit starts a later sync group (see `scan::later_group_frame`).
        let later_group = match (&next, input.newest) {
            (Some((at, _)), true) => later_group_unit(input, *at, expected),
            _ => None,
        };
        if input.newest && later_group.is_none() {
            let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(offset, |p| p as u64 + 1);
            out.end = UnitEnd::Torn { offset, bytes: last_nonzero.saturating_sub(offset) };
            return Ok(out);
        }
        let what = match (input.newest, &later_group) {
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

/// Below this many bytes of ciphertext a segment is decrypted on the calling thread: spawning costs more.
const PARALLEL_DECRYPT_MIN_BYTES: u64 = 256 * 1024;

/// A unit of a segment's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChainUnit {
    /// Where its plaintext starts in the stream.
    stream_at: u64,
    /// Where it starts in the file.
    offset: u64,
    /// Its plaintext (= ciphertext) bytes.
    len: u64,
}

/// The longest prefix of the segment's unit chain that authenticates, decrypted on all available cores
/// into `stream` after a zeroed segment header, which is all `stream` then holds; stops before the first
/// unit whose header or tag fails. Each unit's ciphertext is copied once, into its place in the stream,
/// and decrypted there.
fn decrypt_chain_parallel(input: &UnitInput<'_>, stream: &mut Vec<u8>) -> Vec<ChainUnit> {
    const HEADER: usize = SEGMENT_HEADER_BYTES as usize;
    let mut chain = Vec::new();
    let mut offset = input.start.max(SEGMENT_HEADER_BYTES);
    let mut stream_at = SEGMENT_HEADER_BYTES;
    while let Ok(total) = unit::peek(&input.binding, input.data, offset) {
        let len = total - unit::UNIT_OVERHEAD_BYTES;
        chain.push(ChainUnit { stream_at, offset, len });
        offset += total;
        stream_at += len;
    }
    // Neither shrinking nor growing rewrites the bytes that stay: only new capacity is zeroed.
    stream.truncate(stream_at as usize);
    stream.resize(stream_at as usize, 0);
    stream[..HEADER].fill(0);
    let total = stream_at - SEGMENT_HEADER_BYTES;
    let threads = match total < PARALLEL_DECRYPT_MIN_BYTES {
        true => 1,
        false => std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8) as u64,
    };
    // Contiguous groups of about equal bytes, at most one per thread, each with its own part of the stream.
    let share = total.div_ceil(threads).max(1);
    let group_of = |u: &ChainUnit| (u.stream_at - SEGMENT_HEADER_BYTES) / share;
    let mut groups: Vec<(&[ChainUnit], &mut [u8])> = Vec::new();
    let mut rest = &mut stream[HEADER..];
    for units in chain.chunk_by(|a, b| group_of(a) == group_of(b)) {
        let bytes: u64 = units.iter().map(|u| u.len).sum();
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(bytes as usize);
        groups.push((units, part));
        rest = tail;
    }
    // How many of a group's units authenticate before the first that does not.
    let decrypt_group = |(units, part): (&[ChainUnit], &mut [u8])| -> usize {
        let base = units.first().map_or(0, |u| u.stream_at);
        units
            .iter()
            .position(|u| {
                let dst = &mut part[(u.stream_at - base) as usize..(u.stream_at - base + u.len) as usize];
                unit::open_to(input.cipher, &input.binding, input.data, u.offset, dst).is_err()
            })
            .unwrap_or(units.len())
    };
    let lens: Vec<usize> = groups.iter().map(|g| g.0.len()).collect();
    // A group whose worker panicked authenticated nothing; the sequential path re-reads its units.
    let authentic: Vec<usize> =
        map_scoped("keel-decrypt", groups, decrypt_group).into_iter().map(|r| r.unwrap_or(0)).collect();
    let mut good = 0;
    for (n, ok) in lens.into_iter().zip(authentic) {
        good += ok;
        if ok < n {
            break;
        }
    }
    chain.truncate(good);
    stream.truncate(chain.last().map_or(HEADER, |u| (u.stream_at + u.len) as usize));
    chain
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

/// The first unit at or after `from` that authenticates and whose first frame began a sync group after
/// `expected`, with that frame's (LSN, since_sync).
fn later_group_unit(input: &UnitInput<'_>, from: u64, expected: Lsn) -> Option<(u64, (u64, u64))> {
    let mut at = from;
    while let Some((offset, first)) = find_next_unit(input, at, expected) {
        if first.0.saturating_sub(first.1) > expected.0 {
            return Some((offset, first));
        }
        at = offset + unit::peek(&input.binding, input.data, offset).map_or(1, |total| total.max(1));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::unit::tests::setup;

    /// A segment of `sizes.len()` units after the header; unit `i` holds `sizes[i]` bytes of `i as u8 + 1`.
    fn segment(cipher: &SegmentCipher, binding: &Binding, sizes: &[usize]) -> (Vec<u8>, Vec<u64>) {
        let mut data = vec![0xEE; SEGMENT_HEADER_BYTES as usize];
        let mut offsets = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let offset = data.len() as u64;
            let mut body = vec![i as u8 + 1; n];
            let (h, t) = unit::seal(cipher, binding, offset, &mut body);
            data.extend_from_slice(&h);
            data.extend_from_slice(&body);
            data.extend_from_slice(&t);
            offsets.push(offset);
        }
        data.resize(data.len() + 4096, 0);
        (data, offsets)
    }

    fn input<'a>(cipher: &'a SegmentCipher, binding: Binding, data: &'a [u8]) -> UnitInput<'a> {
        UnitInput {
            path: Path::new("test.kseg"),
            data,
            binding,
            cipher,
            first_lsn: Lsn(1),
            newest: true,
            mode: RecoveryMode::Strict,
            start: SEGMENT_HEADER_BYTES,
        }
    }

    /// The parallel chain (sizes past the threshold, uneven units, so groups split mid-segment) decrypts
    /// every unit into its place, into a reused buffer of any size and contents, and stops exactly before
    /// a damaged unit wherever that unit falls: first, in either thread's share, or last.
    #[test]
    fn parallel_chain_stops_before_the_first_damaged_unit() {
        let (cipher, binding) = setup();
        let sizes: Vec<usize> = (0..200).map(|i| 512 + (i * 977) % 4000).collect();
        assert!(sizes.iter().sum::<usize>() as u64 > PARALLEL_DECRYPT_MIN_BYTES);
        let (data, offsets) = segment(&cipher, &binding, &sizes);
        let expected_stream = |n: usize| {
            let mut s = vec![0u8; SEGMENT_HEADER_BYTES as usize];
            for (i, &len) in sizes[..n].iter().enumerate() {
                s.extend(std::iter::repeat_n(i as u8 + 1, len));
            }
            s
        };
        for reuse in [Vec::new(), vec![0xAB; 100], vec![0xCD; data.len() * 2]] {
            let mut stream = reuse;
            let chain = decrypt_chain_parallel(&input(&cipher, binding, &data), &mut stream);
            assert_eq!(chain.len(), sizes.len());
            assert_eq!(stream, expected_stream(sizes.len()));
            for (u, (&o, &n)) in chain.iter().zip(offsets.iter().zip(&sizes)) {
                assert_eq!((u.offset, u.len), (o, n as u64));
            }
        }
        for damaged in [0, 1, 57, 99, 100, 101, 150, 199] {
            let mut bad = data.clone();
            // A ciphertext byte: the header still validates, so the chain reaches it and authentication fails.
            bad[(offsets[damaged] + unit::UNIT_HEADER_BYTES as u64 + 3) as usize] ^= 0x40;
            let mut stream = vec![0x11; 7];
            let chain = decrypt_chain_parallel(&input(&cipher, binding, &bad), &mut stream);
            assert_eq!(chain.len(), damaged, "damage in unit {damaged}");
            assert_eq!(stream, expected_stream(damaged), "damage in unit {damaged}");
        }
    }

    #[test]
    fn small_chains_decrypt_on_the_calling_thread_alike() {
        let (cipher, binding) = setup();
        let (data, _) = segment(&cipher, &binding, &[10, 0, 300]);
        let mut stream = vec![0xFF; 50_000];
        let chain = decrypt_chain_parallel(&input(&cipher, binding, &data), &mut stream);
        assert_eq!(chain.len(), 3);
        let mut expected = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        expected.extend([1u8; 10]);
        expected.extend([3u8; 300]);
        assert_eq!(stream, expected);
    }
}
