//! Frame header codec (docs/FORMAT.md, "Frames").

use super::{u32_at, u64_at, Binding};
use crate::limits::{FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX};
use crate::types::Lsn;

pub const HEADER_BYTES: usize = FRAME_HEADER_BYTES as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Add = 1,
    Update = 2,
    Delete = 3,
    AddTx = 4,
    UpdateTx = 5,
    DeleteTx = 6,
    Prepare = 7,
    Commit = 8,
    Rollback = 9,
    Seal = 10,
    /// Compaction's copy of a live record's latest version; the payload is the version's LSN (u64 LE)
    /// followed by its payload.
    Relocate = 11,
}

/// Bytes a relocate frame's payload carries before the record's payload: the LSN of the version it copies.
pub const RELOCATE_PREFIX_BYTES: usize = crate::limits::RELOCATE_PREFIX_BYTES as usize;

impl FrameType {
    /// The highest frame type tag.
    pub const MAX_TAG: u8 = 11;

    pub fn from_u8(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            1 => Add,
            2 => Update,
            3 => Delete,
            4 => AddTx,
            5 => UpdateTx,
            6 => DeleteTx,
            7 => Prepare,
            8 => Commit,
            9 => Rollback,
            10 => Seal,
            11 => Relocate,
            _ => return None,
        })
    }

    pub fn is_transactional(self) -> bool {
        use FrameType::*;
        matches!(self, AddTx | UpdateTx | DeleteTx | Prepare | Commit | Rollback)
    }

    /// The name the data tools print (transactional record frames print as their base operation with a tx).
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Add | AddTx => "add",
            Update | UpdateTx => "update",
            Delete | DeleteTx => "delete",
            Prepare => "prepare",
            Commit => "commit",
            Rollback => "rollback",
            Seal => "seal",
            Relocate => "relocate",
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub lsn: Lsn,
    pub id: u64,
    pub tx: u64,
    pub since_sync: u32,
    pub frame_type: FrameType,
    pub kind: u8,
}

/// Why bytes at some offset are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame header truncated: {available} of {HEADER_BYTES} bytes left")]
    TruncatedHeader { available: usize },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
    #[error("payload length {0} exceeds the maximum of {PAYLOAD_BYTES_MAX}")]
    PayloadTooLong(u32),
    #[error("payload truncated: {available} of {declared} bytes left")]
    TruncatedPayload { declared: u32, available: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("relocate frame payload of {0} bytes is shorter than its 8-byte LSN prefix")]
    RelocateTooShort(u32),
    #[error("tx field {tx} does not fit frame type {frame_type:?}")]
    TxMismatch { frame_type: FrameType, tx: u64 },
}

impl FrameHeader {
    /// Header bytes 4..40, the part the checksum covers.
    pub fn encode_tail(&self) -> [u8; HEADER_BYTES - 4] {
        let mut b = [0u8; HEADER_BYTES - 4];
        b[0..4].copy_from_slice(&self.payload_len.to_le_bytes());
        b[4..12].copy_from_slice(&self.lsn.0.to_le_bytes());
        b[12..20].copy_from_slice(&self.id.to_le_bytes());
        b[20..28].copy_from_slice(&self.tx.to_le_bytes());
        b[28..32].copy_from_slice(&self.since_sync.to_le_bytes());
        b[32] = self.frame_type as u8;
        b[33] = self.kind;
        b
    }

    /// Encodes the header, given the CRC32 of the payload (computed by the caller, often on another thread).
    pub fn encode(&self, binding: &Binding, payload_crc: &crc32fast::Hasher) -> [u8; HEADER_BYTES] {
        debug_assert!(u64::from(self.payload_len) <= PAYLOAD_BYTES_MAX);
        let tail = self.encode_tail();
        let mut h = binding.hasher();
        h.update(&tail);
        h.combine(payload_crc);
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&h.finalize().to_le_bytes());
        b[4..].copy_from_slice(&tail);
        b
    }

    /// Total bytes of the frame on disk.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES + u64::from(self.payload_len)
    }
}

/// Encodes a complete frame into a new buffer. For tests, tools and rarely written frames; the group-commit
/// path writes header and payload as separate slices.
pub fn encode_frame(binding: &Binding, header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    assert_eq!(header.payload_len as usize, payload.len());
    let mut crc = crc32fast::Hasher::new();
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header.encode(binding, &crc));
    out.extend_from_slice(payload);
    out
}

/// Decodes the frame at the start of `buf`. Never panics, whatever `buf` holds.
pub fn decode_frame<'a>(binding: &Binding, buf: &'a [u8]) -> Result<(FrameHeader, &'a [u8]), FrameError> {
    if buf.len() < HEADER_BYTES {
        return Err(FrameError::TruncatedHeader { available: buf.len() });
    }
    let frame_type = FrameType::from_u8(buf[36]).ok_or(FrameError::UnknownType(buf[36]))?;
    if buf[38] != 0 || buf[39] != 0 {
        return Err(FrameError::ReservedNotZero);
    }
    let payload_len = u32_at(buf, 4);
    if u64::from(payload_len) > PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLong(payload_len));
    }
    let available = buf.len() - HEADER_BYTES;
    if (payload_len as usize) > available {
        return Err(FrameError::TruncatedPayload { declared: payload_len, available });
    }
    let payload = &buf[HEADER_BYTES..HEADER_BYTES + payload_len as usize];
    let stored = u32_at(buf, 0);
    let mut h = binding.hasher();
    h.update(&buf[4..HEADER_BYTES]);
    h.update(payload);
    let computed = h.finalize();
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let header = FrameHeader {
        payload_len,
        lsn: crate::types::Lsn(u64_at(buf, 8)),
        id: u64_at(buf, 16),
        tx: u64_at(buf, 24),
        since_sync: u32_at(buf, 32),
        frame_type,
        kind: buf[37],
    };
    // A valid CRC proves the writer wrote these bytes; these checks catch a writer bug, still as an error.
    if frame_type.is_transactional() != (header.tx != 0) {
        return Err(FrameError::TxMismatch { frame_type, tx: header.tx });
    }
    if frame_type == FrameType::Relocate && payload.len() < RELOCATE_PREFIX_BYTES {
        return Err(FrameError::RelocateTooShort(payload_len));
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding { journal_id: [7; 16], segment_seq: 3 }
    }

    fn header(len: u32) -> FrameHeader {
        FrameHeader { payload_len: len, lsn: Lsn(42), id: 9, tx: 0, since_sync: 1, frame_type: FrameType::Add, kind: 5 }
    }

    #[test]
    fn round_trip() {
        let f = encode_frame(&binding(), &header(3), b"abc");
        let (h, p) = decode_frame(&binding(), &f).unwrap();
        assert_eq!(h, header(3));
        assert_eq!(p, b"abc");
    }

    #[test]
    fn other_segment_or_journal_does_not_validate() {
        let f = encode_frame(&binding(), &header(3), b"abc");
        let other_seq = Binding { segment_seq: 4, ..binding() };
        assert!(matches!(decode_frame(&other_seq, &f), Err(FrameError::Checksum { .. })));
        let other_journal = Binding { journal_id: [8; 16], ..binding() };
        assert!(matches!(decode_frame(&other_journal, &f), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = encode_frame(&binding(), &header(16), &[0xAB; 16]);
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(decode_frame(&binding(), &g).is_err(), "flip at {byte}:{bit} passed");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let f = encode_frame(&binding(), &header(16), &[0xAB; 16]);
        for len in 0..f.len() {
            assert!(decode_frame(&binding(), &f[..len]).is_err());
        }
    }

    #[test]
    fn zeros_are_not_a_frame() {
        assert!(decode_frame(&binding(), &[0u8; 64]).is_err());
    }
}
