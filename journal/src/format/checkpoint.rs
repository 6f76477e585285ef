//! Checkpoint files (docs/FORMAT.md, "Checkpoints"): the live-record index and the open transactions as
//! of a resume point, so that `open` reads the checkpoint plus only what was written after it.
//!
//! ```text
//! offset 0    magic        8 B   "KEELCKPT"
//!        8    version      u32   1
//!       12    key_id       u32   0: body in plaintext; else the master key wrapping the body's data key
//!       16    journal_id   16 B
//!       32    resume_seq   u64   segment where replay resumes
//!       40    resume_off   u64   byte offset in that segment (a frame or unit boundary)
//!       48    resume_frames u64  frames already in that segment before resume_off
//!       56    next_lsn     u64   LSN of the first frame not covered
//!       64    body_len     u64
//!       72    body_crc     u32   CRC32 of the body bytes as stored
//!       76    header_crc   u32   CRC32 of bytes 0..76 and 80..152
//!       80    wrapped_key  72 B  zero if plaintext
//!      152    body         (a sealed unit at offset 152 if encrypted; see below)
//! ```
//! Body (little-endian): record count u64, then per record id u64, kind u8, lsn u64, seq u64, offset u64,
//! inner u32, frame_bytes u32; span count u64, then (first u64, last u64); open-transaction count u64, then
//! per transaction: tx u64, first_seq u64, prepared u8, prepare_lsn u64, data_len u32, data, record count
//! u32, then per record op u8 and the record fields above.

use crate::format::{u32_at, u64_at};
use crate::index::{run_is_dense, same_region, LiveIndex, Location, RecordRef};
use crate::recovery::replay::{Staged, TxOp, TxRecord};
use crate::types::{Lsn, RecordId, TxId};

pub const MAGIC: &[u8; 8] = b"KEELCKPT";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 152;
pub const WRAPPED_KEY_BYTES: usize = crate::crypto::WRAPPED_KEY_BYTES;
const _: () = assert!(80 + WRAPPED_KEY_BYTES == HEADER_BYTES);
const SUFFIX: &str = ".kcp";
const TMP_SUFFIX: &str = ".kcp.tmp";

/// The checkpoint's file name: named by `next_lsn`, so names sort oldest first.
pub fn file_name(next_lsn: Lsn) -> String {
    format!("{:020}{SUFFIX}", next_lsn.0)
}

pub fn tmp_name(next_lsn: Lsn) -> String {
    format!("{:020}{TMP_SUFFIX}", next_lsn.0)
}

/// `Some(next_lsn)` for a checkpoint file name, `Some(Err(..))`-free: temporary names are told apart by
/// [`is_tmp_name`].
pub fn parse_name(name: &str) -> Option<u64> {
    let d = name.strip_suffix(SUFFIX)?;
    (d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok()).flatten()
}

pub fn is_tmp_name(name: &str) -> bool {
    name.strip_suffix(TMP_SUFFIX).is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Where replay resumes after a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub seq: u64,
    pub offset: u64,
    pub frames: u64,
    pub next_lsn: Lsn,
}

/// The header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub key_id: u32,
    pub journal_id: [u8; 16],
    pub resume: ResumePoint,
    pub body_len: u64,
    pub body_crc: u32,
    pub wrapped_key: [u8; WRAPPED_KEY_BYTES],
}

/// Why a checkpoint file was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("body checksum mismatch")]
    BodyChecksum,
    #[error("body length {declared} disagrees with the file ({actual} bytes after the header)")]
    BodyLength { declared: u64, actual: u64 },
    #[error("belongs to another journal")]
    Foreign,
    #[error("encrypted under master key id {0}, which is not available")]
    KeyUnavailable(u32),
    #[error("body failed authentication")]
    Authentication,
    #[error("body is malformed at byte {0}")]
    Malformed(usize),
    #[error("does not fit the segments: {0}")]
    Inconsistent(String),
    #[error("covers only segments reclaimed since")]
    Superseded,
}

impl CheckpointHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.key_id.to_le_bytes());
        b[16..32].copy_from_slice(&self.journal_id);
        b[32..40].copy_from_slice(&self.resume.seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.resume.offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.resume.frames.to_le_bytes());
        b[56..64].copy_from_slice(&self.resume.next_lsn.0.to_le_bytes());
        b[64..72].copy_from_slice(&self.body_len.to_le_bytes());
        b[72..76].copy_from_slice(&self.body_crc.to_le_bytes());
        b[80..].copy_from_slice(&self.wrapped_key);
        let crc = header_crc(&b);
        b[76..80].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<CheckpointHeader, CheckpointError> {
        if b.len() < HEADER_BYTES {
            return Err(CheckpointError::Truncated(b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err(CheckpointError::Magic);
        }
        if u32_at(b, 76) != header_crc(b) {
            return Err(CheckpointError::HeaderChecksum);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(CheckpointError::Version(version));
        }
        let mut journal_id = [0u8; 16];
        journal_id.copy_from_slice(&b[16..32]);
        let mut wrapped_key = [0u8; WRAPPED_KEY_BYTES];
        wrapped_key.copy_from_slice(&b[80..HEADER_BYTES]);
        Ok(CheckpointHeader {
            key_id: u32_at(b, 12),
            journal_id,
            resume: ResumePoint {
                seq: u64_at(b, 32),
                offset: u64_at(b, 40),
                frames: u64_at(b, 48),
                next_lsn: Lsn(u64_at(b, 56)),
            },
            body_len: u64_at(b, 64),
            body_crc: u32_at(b, 72),
            wrapped_key,
        })
    }
}

fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..76]);
    h.update(&b[80..HEADER_BYTES]);
    h.finalize()
}

/// The state a checkpoint holds.
#[derive(Debug, Default)]
pub struct CheckpointBody {
    pub index: LiveIndex,
    pub open_txs: Vec<(TxId, Staged)>,
}

const RECORD_BYTES: usize = 8 + 1 + 8 + 8 + 8 + 4 + 4;

fn put_ref(out: &mut Vec<u8>, r: &RecordRef) {
    out.push(r.kind);
    out.extend_from_slice(&r.lsn.0.to_le_bytes());
    out.extend_from_slice(&r.location.seq.to_le_bytes());
    out.extend_from_slice(&r.location.offset.to_le_bytes());
    out.extend_from_slice(&r.location.inner.to_le_bytes());
    out.extend_from_slice(&r.location.frame_bytes.to_le_bytes());
}

/// Serializes a copy of the writer's state (allocates once for the records).
pub fn encode_body(index: &LiveIndex, txs: &std::collections::HashMap<u64, Staged>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + index.records.len() * RECORD_BYTES + 64);
    out.extend_from_slice(&(index.records.len() as u64).to_le_bytes());
    for (id, r) in index.records.iter() {
        out.extend_from_slice(&id.to_le_bytes());
        put_ref(&mut out, r);
    }
    out.extend_from_slice(&(index.spans.len() as u64).to_le_bytes());
    for (first, last) in &index.spans {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
    }
    out.extend_from_slice(&(txs.len() as u64).to_le_bytes());
    let mut ids: Vec<&u64> = txs.keys().collect();
    ids.sort();
    for tx in ids {
        let s = &txs[tx];
        out.extend_from_slice(&tx.to_le_bytes());
        out.extend_from_slice(&s.first_seq.to_le_bytes());
        let (prepared, lsn, data) = match &s.prepared {
            Some((d, l)) => (1u8, l.0, &d[..]),
            None => (0u8, 0, &[][..]),
        };
        out.push(prepared);
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&(s.records.len() as u32).to_le_bytes());
        for r in &s.records {
            out.push(match r.op {
                TxOp::Add => 1,
                TxOp::Update => 2,
                TxOp::Delete => 3,
            });
            out.extend_from_slice(&r.id.to_le_bytes());
            put_ref(&mut out, &r.record);
        }
    }
    out
}

/// Where a body's bytes come from: a slice, or a file read a block at a time (so that loading a checkpoint
/// does not hold the whole file beside the index it builds).
pub trait BodySource {
    /// The next `n` bytes, or `Malformed` if the body ends first.
    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError>;
    /// Bytes consumed so far.
    fn position(&self) -> u64;
    /// Bytes left.
    fn remaining(&self) -> u64;
}

/// A body in memory.
pub struct SliceSource<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl BodySource for SliceSource<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        let end =
            self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(CheckpointError::Malformed(self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn position(&self) -> u64 {
        self.at as u64
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }
}

/// A body in a file, from `offset` for `len` bytes, read in blocks; its CRC32 is computed on the way.
pub struct FileSource<'a> {
    file: &'a dyn crate::vfs::VfsFile,
    offset: u64,
    len: u64,
    /// Bytes of the body read from the file so far.
    read: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub crc: crc32fast::Hasher,
}

const BLOCK_BYTES: usize = 256 * 1024;

impl<'a> FileSource<'a> {
    pub fn new(file: &'a dyn crate::vfs::VfsFile, offset: u64, len: u64) -> FileSource<'a> {
        FileSource { file, offset, len, read: 0, buf: Vec::new(), start: 0, end: 0, crc: crc32fast::Hasher::new() }
    }

    /// Reads and checksums whatever of the body has not been consumed (to check the CRC of a body whose
    /// decoding stopped early).
    pub fn drain(&mut self) -> Result<(), CheckpointError> {
        while self.remaining() > 0 {
            let n = (self.remaining() as usize).min(BLOCK_BYTES);
            self.take(n)?;
        }
        Ok(())
    }
}

impl BodySource for FileSource<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        let malformed = CheckpointError::Malformed(self.position() as usize);
        if n as u64 > self.remaining() {
            return Err(malformed);
        }
        if self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let want = n.max(BLOCK_BYTES);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let more = ((self.buf.len() - self.end) as u64).min(self.len - self.read) as usize;
            let dst = &mut self.buf[self.end..self.end + more];
            self.file
                .read_exact_at(dst, self.offset + self.read)
                .map_err(|e| CheckpointError::Inconsistent(format!("read: {e}")))?;
            self.crc.update(dst);
            self.read += more as u64;
            self.end += more;
            if self.end - self.start < n {
                return Err(malformed);
            }
        }
        let s = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(s)
    }
    fn position(&self) -> u64 {
        self.read - (self.end - self.start) as u64
    }
    fn remaining(&self) -> u64 {
        self.len - self.position()
    }
}

fn u8_of(s: &mut dyn BodySource) -> Result<u8, CheckpointError> {
    Ok(s.take(1)?[0])
}
fn u32_of(s: &mut dyn BodySource) -> Result<u32, CheckpointError> {
    Ok(u32_at(s.take(4)?, 0))
}
fn u64_of(s: &mut dyn BodySource) -> Result<u64, CheckpointError> {
    Ok(u64_at(s.take(8)?, 0))
}
/// A count of items of at least `min_bytes` each, refused if the rest of the body cannot hold them (so a
/// corrupt count cannot make us allocate without bound).
fn count_of(s: &mut dyn BodySource, min_bytes: usize) -> Result<usize, CheckpointError> {
    let at = s.position() as usize;
    let n = u64_of(s)?;
    let room = s.remaining() / min_bytes.max(1) as u64;
    usize::try_from(n).ok().filter(|n| *n as u64 <= room).ok_or(CheckpointError::Malformed(at))
}
fn record_ref_of(s: &mut dyn BodySource) -> Result<RecordRef, CheckpointError> {
    let b = s.take(RECORD_BYTES - 8)?;
    Ok(RecordRef {
        kind: b[0],
        lsn: Lsn(u64_at(b, 1)),
        location: Location {
            seq: u64_at(b, 9),
            offset: u64_at(b, 17),
            inner: u32_at(b, 25),
            frame_bytes: u32_at(b, 29),
        },
    })
}

/// Decodes a body from `s`, to its end. Never panics, whatever the bytes.
pub fn decode_body(s: &mut dyn BodySource) -> Result<CheckpointBody, CheckpointError> {
    let mut body = CheckpointBody::default();
    let n = count_of(s, RECORD_BYTES)?;
    // A dense region's records come together (`RecordTable::iter`): loaded a region at a time, they go
    // straight into a dense region.
    // Records are RECORD_BYTES each, so a run's first offset places every one of them.
    let mut run: Vec<(RecordId, RecordRef)> = Vec::with_capacity(64);
    let mut run_at = 0;
    fn load(index: &mut LiveIndex, run: &mut Vec<(RecordId, RecordRef)>, at: usize) -> Result<(), CheckpointError> {
        let loaded = index.load_region(run).map_err(|i| CheckpointError::Malformed(at + i * RECORD_BYTES));
        run.clear();
        loaded
    }
    // The sparse map's records come after them: room for all that are left, at the first short run, saves
    // growing the map step by step.
    let mut reserved = false;
    for i in 0..n {
        let at = s.position() as usize;
        let id = u64_of(s)?;
        let r = record_ref_of(s)?;
        if run.last().is_some_and(|(last, _)| !same_region(*last, id)) {
            if !reserved && !run_is_dense(run.len()) {
                body.index.records.reserve_sparse(n - (i - run.len()));
                reserved = true;
            }
            load(&mut body.index, &mut run, run_at)?;
        }
        if run.is_empty() {
            run_at = at;
        }
        run.push((id, r));
    }
    load(&mut body.index, &mut run, run_at)?;
    for _ in 0..count_of(s, 16)? {
        let (first, last) = (u64_of(s)?, u64_of(s)?);
        body.index.note_span(first, last);
    }
    for _ in 0..count_of(s, 8 + 8 + 1 + 8 + 4 + 4)? {
        let at = s.position() as usize;
        let tx = TxId::new(u64_of(s)?).ok_or(CheckpointError::Malformed(at))?;
        let first_seq = u64_of(s)?;
        let prepared = u8_of(s)?;
        let lsn = Lsn(u64_of(s)?);
        let len = u32_of(s)? as usize;
        let data = s.take(len)?.to_vec();
        let mut staged = Staged {
            first_seq,
            prepared: match prepared {
                0 => None,
                1 => Some((data, lsn)),
                _ => return Err(CheckpointError::Malformed(at)),
            },
            records: Vec::new(),
        };
        let count = u32_of(s)? as usize;
        if count as u64 > s.remaining() / (RECORD_BYTES as u64 + 1) {
            return Err(CheckpointError::Malformed(s.position() as usize));
        }
        for _ in 0..count {
            let at = s.position() as usize;
            let op = match u8_of(s)? {
                1 => TxOp::Add,
                2 => TxOp::Update,
                3 => TxOp::Delete,
                _ => return Err(CheckpointError::Malformed(at)),
            };
            let id = u64_of(s)?;
            staged.records.push(TxRecord { op, id, record: record_ref_of(s)? });
        }
        body.open_txs.push((tx, staged));
    }
    if s.remaining() != 0 {
        return Err(CheckpointError::Malformed(s.position() as usize));
    }
    Ok(body)
}

/// Decodes a body held in memory.
pub fn decode_body_bytes(b: &[u8]) -> Result<CheckpointBody, CheckpointError> {
    decode_body(&mut SliceSource { bytes: b, at: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (LiveIndex, std::collections::HashMap<u64, Staged>) {
        let mut index = LiveIndex::default();
        for id in 0..50u64 {
            let location = Location { seq: 1 + id % 3, offset: 256 + id * 100, inner: 0, frame_bytes: 90 };
            index.insert(id, RecordRef { kind: id as u8, lsn: Lsn(id + 1), location });
        }
        index.note_span(1, 3);
        let mut txs = std::collections::HashMap::new();
        let record =
            RecordRef { kind: 1, lsn: Lsn(77), location: Location { seq: 3, offset: 9, inner: 4, frame_bytes: 41 } };
        txs.insert(
            9,
            Staged {
                records: vec![TxRecord { op: TxOp::Update, id: 3, record }],
                prepared: Some((b"xid".to_vec(), Lsn(78))),
                first_seq: 3,
            },
        );
        txs.insert(4, Staged { records: vec![], prepared: None, first_seq: 2 });
        (index, txs)
    }

    #[test]
    fn body_round_trips() {
        let (index, txs) = sample();
        let b = decode_body_bytes(&encode_body(&index, &txs)).unwrap();
        assert_eq!(b.index.records, index.records);
        assert_eq!(b.index.segments, index.segments);
        assert_eq!(b.index.spans, index.spans);
        let got: std::collections::HashMap<u64, Staged> = b.open_txs.into_iter().map(|(t, s)| (t.get(), s)).collect();
        assert_eq!(got, txs);
    }

    #[test]
    fn a_record_listed_twice_is_malformed_where_it_repeats() {
        let r = |n: u64| RecordRef {
            kind: 0,
            lsn: Lsn(n),
            location: Location { seq: 1, offset: n, inner: 0, frame_bytes: 40 },
        };
        // Id 7 again inside region 0's run, or after region 0 was loaded dense; 100 again among sparse ids.
        let dense_then_again = (0..40u64).chain([100, 7]).collect::<Vec<_>>();
        for ids in [(0..40u64).chain([7]).collect::<Vec<_>>(), dense_then_again, vec![100, 101, 100]] {
            let mut body = (ids.len() as u64).to_le_bytes().to_vec();
            for id in &ids {
                body.extend_from_slice(&id.to_le_bytes());
                put_ref(&mut body, &r(*id + 1));
            }
            body.extend_from_slice(&[0; 16]); // no spans, no transactions
            let repeat_at = 8 + (ids.len() - 1) * RECORD_BYTES;
            assert!(
                matches!(decode_body_bytes(&body), Err(CheckpointError::Malformed(at)) if at == repeat_at),
                "{ids:?}"
            );
        }
    }

    #[test]
    fn every_truncation_and_many_flips_are_refused_or_harmless() {
        let (index, txs) = sample();
        let bytes = encode_body(&index, &txs);
        for len in 0..bytes.len() {
            assert!(decode_body_bytes(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode_body_bytes(&b);
        }
    }

    #[test]
    fn header_round_trips_and_detects_flips() {
        let h = CheckpointHeader {
            key_id: 0,
            journal_id: [3; 16],
            resume: ResumePoint { seq: 4, offset: 1000, frames: 7, next_lsn: Lsn(99) },
            body_len: 10,
            body_crc: 5,
            wrapped_key: [0; WRAPPED_KEY_BYTES],
        };
        let b = h.encode();
        assert_eq!(CheckpointHeader::decode(&b).unwrap(), h);
        for i in 0..HEADER_BYTES {
            let mut c = b;
            c[i] ^= 1;
            assert!(CheckpointHeader::decode(&c).is_err(), "flip at {i}");
        }
    }
}
