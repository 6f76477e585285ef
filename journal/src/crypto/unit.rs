//! Sealed units (docs/FORMAT.md, "Sealed units").
//!
//! ```text
//! offset 0   ct_len   u32   bytes of ciphertext (= plaintext frames)
//!        4   hdr_crc  u32   CRC32(journal_id ‖ segment_seq ‖ unit offset ‖ bytes 0..4 ‖ bytes 8..32)
//!        8   nonce    24 B  random
//!       32   ciphertext (ct_len bytes), then the 16-byte Poly1305 tag
//! ```
//! Associated data: journal_id ‖ segment_seq ‖ unit offset (u64) ‖ ct_len (u32).

use super::{random_bytes, SegmentCipher, NONCE_BYTES, TAG_BYTES};
use crate::format::{u32_at, Binding};

pub const UNIT_HEADER_BYTES: usize = 32;
/// Bytes a unit adds around its frames.
pub const UNIT_OVERHEAD_BYTES: u64 = (UNIT_HEADER_BYTES + TAG_BYTES) as u64;
const _: () = assert!(UNIT_OVERHEAD_BYTES == crate::limits::UNIT_OVERHEAD_BYTES);

fn ad(binding: &Binding, offset: u64, ct_len: u32) -> [u8; 36] {
    let mut a = [0u8; 36];
    a[..16].copy_from_slice(&binding.journal_id);
    a[16..24].copy_from_slice(&binding.segment_seq.to_le_bytes());
    a[24..32].copy_from_slice(&offset.to_le_bytes());
    a[32..36].copy_from_slice(&ct_len.to_le_bytes());
    a
}

fn header_crc(binding: &Binding, offset: u64, header: &[u8]) -> u32 {
    let mut h = binding.hasher();
    h.update(&offset.to_le_bytes());
    h.update(&header[0..4]);
    h.update(&header[8..UNIT_HEADER_BYTES]);
    h.finalize()
}

/// Encrypts `frames` in place and returns the unit header and tag that go around them.
pub fn seal(
    cipher: &SegmentCipher,
    binding: &Binding,
    offset: u64,
    frames: &mut [u8],
) -> ([u8; UNIT_HEADER_BYTES], [u8; TAG_BYTES]) {
    let ct_len = u32::try_from(frames.len()).expect("a unit fits in a segment");
    let nonce = random_bytes::<NONCE_BYTES>();
    let mut header = [0u8; UNIT_HEADER_BYTES];
    header[0..4].copy_from_slice(&ct_len.to_le_bytes());
    header[8..].copy_from_slice(&nonce);
    let crc = header_crc(binding, offset, &header);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    let tag = cipher.aead.seal_in_place(&nonce, &ad(binding, offset, ct_len), frames);
    (header, tag)
}

/// A fixed-size field of a unit whose bounds were checked by `peek` or `open_one`.
fn array<const N: usize>(bytes: &[u8]) -> &[u8; N] {
    bytes.try_into().expect("field bounds checked against the unit's length")
}

/// Why the bytes at an offset are not a valid unit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("unit header truncated")]
    Truncated,
    #[error("unit header checksum mismatch")]
    HeaderChecksum,
    #[error("unit of {0} bytes runs past the end of the segment")]
    TooLong(u32),
    #[error("unit failed authentication (tampered, moved, or encrypted under another key)")]
    Authentication,
}

/// The unit at `offset` of `data` (a whole segment file): its total length, after checking only the
/// header's checksum and bounds. Cheap; used to find candidate units after damage.
pub fn peek(binding: &Binding, data: &[u8], offset: u64) -> Result<u64, UnitError> {
    let at = offset as usize;
    let header = data.get(at..at + UNIT_HEADER_BYTES).ok_or(UnitError::Truncated)?;
    if u32_at(header, 4) != header_crc(binding, offset, header) {
        return Err(UnitError::HeaderChecksum);
    }
    let ct_len = u32_at(header, 0);
    let total = UNIT_OVERHEAD_BYTES + u64::from(ct_len);
    if offset + total > data.len() as u64 {
        return Err(UnitError::TooLong(ct_len));
    }
    Ok(total)
}

/// Authenticates and decrypts the unit at `offset`, appending its plaintext frames to `out` (which is left
/// as it was on failure); returns the unit's total length.
pub fn open_into(
    cipher: &SegmentCipher,
    binding: &Binding,
    data: &[u8],
    offset: u64,
    out: &mut Vec<u8>,
) -> Result<u64, UnitError> {
    let total = peek(binding, data, offset)?;
    let start = out.len();
    out.resize(start + (total - UNIT_OVERHEAD_BYTES) as usize, 0);
    if let Err(e) = open_to(cipher, binding, data, offset, &mut out[start..]) {
        out.truncate(start);
        return Err(e);
    }
    Ok(total)
}

/// Authenticates and decrypts the unit at `offset` (whose bounds `peek` checked) into `out`, which must be
/// exactly its ciphertext's length. On failure `out` holds unspecified bytes.
pub fn open_to(
    cipher: &SegmentCipher,
    binding: &Binding,
    data: &[u8],
    offset: u64,
    out: &mut [u8],
) -> Result<(), UnitError> {
    let at = offset as usize;
    let ct_len = u32_at(data, at);
    assert_eq!(out.len(), ct_len as usize, "the output fits the unit's ciphertext exactly");
    let body = at + UNIT_HEADER_BYTES;
    let end = body + out.len();
    let (Some(ct), Some(tag)) = (data.get(body..end), data.get(end..end + TAG_BYTES)) else {
        return Err(UnitError::TooLong(ct_len));
    };
    out.copy_from_slice(ct);
    let nonce = array(&data[at + 8..body]);
    cipher
        .aead
        .open_in_place(nonce, &ad(binding, offset, ct_len), out, array(tag))
        .map_err(|_| UnitError::Authentication)
}

/// Authenticates and decrypts the unit at `offset`; returns its plaintext frames and total length.
pub fn open(cipher: &SegmentCipher, binding: &Binding, data: &[u8], offset: u64) -> Result<(Vec<u8>, u64), UnitError> {
    let mut plain = Vec::new();
    let total = open_into(cipher, binding, data, offset, &mut plain)?;
    Ok((plain, total))
}

/// Authenticates and decrypts one unit read on its own: `unit` holds exactly the unit that lies at file
/// offset `offset` (header, ciphertext, tag). For reads of single records.
pub fn open_one(cipher: &SegmentCipher, binding: &Binding, unit: &[u8], offset: u64) -> Result<Vec<u8>, UnitError> {
    let header = unit.get(..UNIT_HEADER_BYTES).ok_or(UnitError::Truncated)?;
    if u32_at(header, 4) != header_crc(binding, offset, header) {
        return Err(UnitError::HeaderChecksum);
    }
    let ct_len = u32_at(header, 0);
    if unit.len() as u64 != UNIT_OVERHEAD_BYTES + u64::from(ct_len) {
        return Err(UnitError::TooLong(ct_len));
    }
    let nonce = array(&header[8..UNIT_HEADER_BYTES]);
    let body = UNIT_HEADER_BYTES + ct_len as usize;
    let mut plain = unit[UNIT_HEADER_BYTES..body].to_vec();
    let tag = array(&unit[body..]);
    cipher
        .aead
        .open_in_place(nonce, &ad(binding, offset, ct_len), &mut plain, tag)
        .map_err(|_| UnitError::Authentication)?;
    Ok(plain)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::keys::KeyRing;
    use super::*;

    /// A segment cipher under a fixed master key, and the binding it was created for.
    pub(crate) fn setup() -> (SegmentCipher, Binding) {
        let ring = KeyRing::parse(&format!("3:{}", "11".repeat(32)), "t").unwrap();
        let binding = Binding { journal_id: [5; 16], segment_seq: 9 };
        let (id, key) = ring.current();
        (SegmentCipher::create(key, id, &binding).0, binding)
    }

    fn unit_at(cipher: &SegmentCipher, binding: &Binding, data: &mut Vec<u8>, offset: u64, plain: &[u8]) {
        let mut body = plain.to_vec();
        let (h, t) = seal(cipher, binding, offset, &mut body);
        data.resize(offset as usize, 0);
        data.extend_from_slice(&h);
        data.extend_from_slice(&body);
        data.extend_from_slice(&t);
    }

    #[test]
    fn round_trip_and_every_byte_flip_detected() {
        let (c, b) = setup();
        let mut data = Vec::new();
        unit_at(&c, &b, &mut data, 256, b"frames go here");
        assert_eq!(open(&c, &b, &data, 256).unwrap().0, b"frames go here");
        assert_eq!(open_one(&c, &b, &data[256..], 256).unwrap(), b"frames go here");
        assert!(open_one(&c, &b, &data[256..], 257).is_err(), "bound to its offset");
        for i in 256..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x01;
            assert!(open(&c, &b, &d, 256).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn moved_or_spliced_units_fail() {
        let (c, b) = setup();
        let mut data = Vec::new();
        unit_at(&c, &b, &mut data, 256, b"unit");
        let mut moved = vec![0u8; 300];
        moved.extend_from_slice(&data[256..]);
        assert!(open(&c, &b, &moved, 300).is_err(), "moved to another offset");
        let other = Binding { segment_seq: 10, ..b };
        assert!(open(&c, &other, &data, 256).is_err(), "spliced into another segment");
        let (c2, _) = setup();
        assert_eq!(open(&c2, &b, &data, 256).unwrap_err(), UnitError::Authentication, "other data key");
    }
}
