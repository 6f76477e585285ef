//! The 256-byte segment header (docs/FORMAT.md, "Segment header").

use super::{u32_at, u64_at};
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::types::Lsn;

pub const BYTES: usize = SEGMENT_HEADER_BYTES as usize;
const MAGIC: &[u8; 8] = b"KEELSEG\0";
/// Plaintext segments.
pub const FORMAT_VERSION: u32 = 1;
/// Encrypted segments (docs/FORMAT.md, "Journal format version 2").
pub const FORMAT_VERSION_ENCRYPTED: u32 = 2;
pub const WRAPPED_KEY_BYTES: usize = crate::crypto::WRAPPED_KEY_BYTES;
const CRC_AT: usize = BYTES - 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub journal_id: [u8; 16],
    pub segment_seq: u64,
    pub first_lsn: Lsn,
    pub created_unix_ms: u64,
    pub segment_bytes: u64,
    /// 0 for plaintext; otherwise the master key id that wraps `wrapped_key`.
    pub key_id: u32,
    /// The segment's data key wrapped under master key `key_id`; zero for plaintext.
    pub wrapped_key: [u8; WRAPPED_KEY_BYTES],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header truncated: {0} of {BYTES} bytes")]
    Truncated(usize),
    #[error("header is all zero (an unused spare segment)")]
    Zero,
    /// Set by recovery, never by `decode`: the spare after the active segments has a zero header but bytes
    /// past it (an activation whose later sectors landed without the header's, or damage).
    #[error("header is all zero but the segment holds data past it (an activation torn before its header landed)")]
    ZeroButWritten,
    #[error("bad magic (not a Keel segment)")]
    Magic,
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("format version {0} is not supported (this build reads versions {FORMAT_VERSION} and {FORMAT_VERSION_ENCRYPTED})")]
    Version(u32),
    #[error("format version {version} does not go with key id {key_id}")]
    KeyIdMismatch { version: u32, key_id: u32 },
    #[error("header_bytes field is {0}, expected {BYTES}")]
    HeaderBytes(u32),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..8].copy_from_slice(MAGIC);
        let version = if self.key_id == 0 { FORMAT_VERSION } else { FORMAT_VERSION_ENCRYPTED };
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&(BYTES as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.journal_id);
        b[32..40].copy_from_slice(&self.segment_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b[56..64].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[64..68].copy_from_slice(&self.key_id.to_le_bytes());
        b[68..68 + WRAPPED_KEY_BYTES].copy_from_slice(&self.wrapped_key);
        let crc = crc32fast::hash(&b[0..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < BYTES {
            return Err(HeaderError::Truncated(b.len()));
        }
        let b = &b[..BYTES];
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderError::Zero);
        }
        if &b[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let stored = u32_at(b, CRC_AT);
        let computed = crc32fast::hash(&b[0..CRC_AT]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_ENCRYPTED {
            return Err(HeaderError::Version(version));
        }
        let header_bytes = u32_at(b, 12);
        if header_bytes as usize != BYTES {
            return Err(HeaderError::HeaderBytes(header_bytes));
        }
        let key_id = u32_at(b, 64);
        if (key_id == 0) != (version == FORMAT_VERSION) {
            return Err(HeaderError::KeyIdMismatch { version, key_id });
        }
        let mut wrapped_key = [0u8; WRAPPED_KEY_BYTES];
        wrapped_key.copy_from_slice(&b[68..68 + WRAPPED_KEY_BYTES]);
        let mut journal_id = [0u8; 16];
        journal_id.copy_from_slice(&b[16..32]);
        Ok(SegmentHeader {
            journal_id,
            segment_seq: u64_at(b, 32),
            first_lsn: Lsn(u64_at(b, 40)),
            created_unix_ms: u64_at(b, 48),
            segment_bytes: u64_at(b, 56),
            key_id,
            wrapped_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let h = SegmentHeader {
            journal_id: [1; 16],
            segment_seq: 2,
            first_lsn: Lsn(3),
            created_unix_ms: 4,
            segment_bytes: 1 << 20,
            key_id: 0,
            wrapped_key: [0; WRAPPED_KEY_BYTES],
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        for i in 0..BYTES {
            let mut c = b;
            c[i] ^= 1;
            assert!(SegmentHeader::decode(&c).is_err(), "flip at {i}");
        }
        assert_eq!(SegmentHeader::decode(&[0u8; BYTES]), Err(HeaderError::Zero));
    }
}
