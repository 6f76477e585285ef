//! Reads single records from segments on demand, by [`Location`]: the journal keeps only where each live
//! version lies, and the broker pages payloads in through here. Every read is checked again — the frame's
//! CRC (plaintext) or the unit's authentication tag (encrypted), plus the LSN the index expects — because
//! bytes that were valid at recovery may have rotted since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::crypto::keys::KeyRing;
use crate::crypto::{unit, SegmentCipher};
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::format::frame::{decode_frame, FrameHeader, FrameType, RELOCATE_PREFIX_BYTES};
use crate::format::segment_header::SegmentHeader;
use crate::format::Binding;
use crate::index::{Location, RecordRef};
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::sync_util::lock;
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("record {0} is not live")]
    NoSuchRecord(u64),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("{}: the frame at byte {offset} has LSN {found}, the index expects {expected}", path.display())]
    Mismatch { path: PathBuf, offset: u64, expected: u64, found: u64 },
}

#[derive(Debug)]
struct OpenSegment {
    path: PathBuf,
    file: Box<dyn VfsFile>,
    binding: Binding,
    cipher: Option<SegmentCipher>,
}

/// Positioned reads of records, with the segments it has opened cached.
#[derive(Debug)]
pub struct Reader {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    journal_id: [u8; 16],
    keys: Option<KeyRing>,
    open: Mutex<HashMap<u64, Arc<OpenSegment>>>,
    /// The last unit decrypted (segment, offset, plaintext): records written together are often read
    /// together, and a unit can hold a whole group-commit batch.
    last_unit: Mutex<Option<CachedUnit>>,
}

/// A decrypted unit: segment, unit offset, plaintext.
type CachedUnit = (u64, u64, Arc<Vec<u8>>);

impl Reader {
    pub(crate) fn new(vfs: Arc<dyn Vfs>, dir: &Path, journal_id: [u8; 16], keys: Option<KeyRing>) -> Reader {
        Reader {
            vfs,
            dir: dir.to_path_buf(),
            journal_id,
            keys,
            open: Mutex::new(HashMap::new()),
            last_unit: Mutex::new(None),
        }
    }

    /// Forgets a segment's open file (it was reclaimed).
    pub(crate) fn forget(&self, seq: u64) {
        lock(&self.open).remove(&seq);
        let mut last = lock(&self.last_unit);
        if last.as_ref().is_some_and(|(s, _, _)| *s == seq) {
            *last = None;
        }
    }

    /// The payload of the record version `r`.
    pub fn read(&self, r: &RecordRef) -> Result<Vec<u8>, ReadError> {
        let (h, mut payload) = self.read_frame(&r.location)?;
        if h.frame_type == FrameType::Relocate {
            let lsn = crate::recovery::replay::relocated_lsn(&payload);
            if lsn != r.lsn {
                return Err(self.mismatch(&r.location, r.lsn.0, lsn.0));
            }
            payload.drain(..RELOCATE_PREFIX_BYTES);
        } else if h.lsn != r.lsn {
            return Err(self.mismatch(&r.location, r.lsn.0, h.lsn.0));
        }
        Ok(payload)
    }

    fn mismatch(&self, at: &Location, expected: u64, found: u64) -> ReadError {
        let path = self.dir.join(crate::segment::file_name(at.seq));
        ReadError::Mismatch { path, offset: at.offset, expected, found }
    }

    /// The frame at `at`: header and payload, checked.
    pub fn read_frame(&self, at: &Location) -> Result<(FrameHeader, Vec<u8>), ReadError> {
        let seg = self.segment(at.seq)?;
        let corrupt = |what| Corruption { path: seg.path.clone(), offset: at.offset, what };
        let io = |op| OpenError::io(&seg.path, op);
        let frame = match &seg.cipher {
            None => {
                let mut buf = vec![0u8; at.frame_bytes as usize];
                seg.file.read_exact_at(&mut buf, at.offset).map_err(io("read record"))?;
                buf
            }
            Some(cipher) => {
                let cached = lock(&self.last_unit)
                    .as_ref()
                    .filter(|(s, o, _)| *s == at.seq && *o == at.offset)
                    .map(|(_, _, p)| p.clone());
                let plain = match cached {
                    Some(p) => p,
                    None => {
                        let p = Arc::new(self.read_unit(&seg, cipher, at)?);
                        *lock(&self.last_unit) = Some((at.seq, at.offset, p.clone()));
                        p
                    }
                };
                let start = at.inner as usize;
                match plain.get(start..start + at.frame_bytes as usize) {
                    Some(f) => f.to_vec(),
                    None => {
                        let e = crate::format::frame::FrameError::TruncatedHeader { available: 0 };
                        return Err(corrupt(CorruptionKind::Frame(e)).into());
                    }
                }
            }
        };
        let (h, payload) = decode_frame(&seg.binding, &frame).map_err(|e| corrupt(CorruptionKind::Frame(e)))?;
        Ok((h, payload.to_vec()))
    }

    fn read_unit(&self, seg: &OpenSegment, cipher: &SegmentCipher, at: &Location) -> Result<Vec<u8>, ReadError> {
        let corrupt = |what| Corruption { path: seg.path.clone(), offset: at.offset, what };
        let io = |op| OpenError::io(&seg.path, op);
        let mut header = [0u8; unit::UNIT_HEADER_BYTES];
        seg.file.read_exact_at(&mut header, at.offset).map_err(io("read unit header"))?;
        let ct_len = crate::format::u32_at(&header, 0) as u64;
        let total = unit::UNIT_OVERHEAD_BYTES + ct_len;
        if total > crate::limits::SEGMENT_BYTES_MAX {
            return Err(corrupt(CorruptionKind::Unit(unit::UnitError::TooLong(ct_len as u32))).into());
        }
        let mut buf = vec![0u8; total as usize];
        seg.file.read_exact_at(&mut buf, at.offset).map_err(io("read unit"))?;
        unit::open_one(cipher, &seg.binding, &buf, at.offset).map_err(|e| corrupt(CorruptionKind::Unit(e)).into())
    }

    fn segment(&self, seq: u64) -> Result<Arc<OpenSegment>, ReadError> {
        if let Some(s) = lock(&self.open).get(&seq) {
            return Ok(s.clone());
        }
        let path = self.dir.join(crate::segment::file_name(seq));
        let file = self.vfs.open(&path, OpenMode::Read).map_err(OpenError::io(&path, "open"))?;
        let mut buf = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut buf, 0).map_err(OpenError::io(&path, "read header"))?;
        let corrupt = |offset, what| Corruption { path: path.clone(), offset, what };
        let header = SegmentHeader::decode(&buf).map_err(|e| corrupt(0, CorruptionKind::Header(e)))?;
        if header.journal_id != self.journal_id || header.segment_seq != seq {
            let what = CorruptionKind::SequenceMismatch { in_name: seq, in_header: header.segment_seq };
            return Err(corrupt(32, what).into());
        }
        let binding = Binding { journal_id: self.journal_id, segment_seq: seq };
        let cipher = crate::recovery::segment_cipher(self.keys.as_ref(), &path, &header, &binding)?;
        let seg = Arc::new(OpenSegment { path, file, binding, cipher });
        lock(&self.open).insert(seq, seg.clone());
        Ok(seg)
    }
}
