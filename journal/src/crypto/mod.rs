//! Encryption at rest (docs/FORMAT.md, "Encrypted segments").
//!
//! Key hierarchy: a master key (from the key file, by id) wraps a random 32-byte data key per segment,
//! stored in the segment header. Each group-commit write is one **sealed unit**: its frames encrypted with
//! XChaCha20-Poly1305 under the segment's data key, with a random 192-bit nonce, and the journal id,
//! segment sequence, unit offset and length as associated data, so that a unit moved, swapped, spliced
//! from another segment or truncated fails authentication.
//!
//! Why random nonces: a unit offset can be written twice under one data key (a write that failed and is
//! retried at the same offset, a torn tail sealed over), so a nonce derived from the offset could repeat.
//! A random 192-bit nonce repeats with probability ~n²/2¹⁹³ for n units under one key: never, in practice.

pub mod keys;
pub mod unit;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::format::Binding;
use keys::{MasterKey, KEY_BYTES};

pub const NONCE_BYTES: usize = 24;
pub const TAG_BYTES: usize = 16;
/// A wrapped data key: nonce, ciphertext, tag.
pub const WRAPPED_KEY_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;

/// A segment's data key, ready to seal and open units.
#[derive(Clone)]
pub struct SegmentCipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentCipher(..)")
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom fails only if the OS has no entropy source at all; continuing would be unsafe.
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

fn wrap_ad(binding: &Binding, key_id: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(40);
    ad.extend_from_slice(b"keel-data-key");
    ad.extend_from_slice(&binding.journal_id);
    ad.extend_from_slice(&binding.segment_seq.to_le_bytes());
    ad.extend_from_slice(&key_id.to_le_bytes());
    ad
}

impl SegmentCipher {
    /// A fresh data key for a new segment, and its wrapping under `master`.
    pub fn create(master: &MasterKey, key_id: u32, binding: &Binding) -> (SegmentCipher, [u8; WRAPPED_KEY_BYTES]) {
        let data_key = Zeroizing::new(random_bytes::<KEY_BYTES>());
        let nonce = random_bytes::<NONCE_BYTES>();
        let mut buf = Zeroizing::new(data_key.to_vec());
        let wrap = XChaCha20Poly1305::new(master.bytes().into());
        let tag = wrap
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &wrap_ad(binding, key_id), &mut buf)
            .expect("encrypting 32 bytes cannot fail");
        let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
        wrapped[..NONCE_BYTES].copy_from_slice(&nonce);
        wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(&buf);
        wrapped[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
        (SegmentCipher { aead: XChaCha20Poly1305::new(data_key.as_ref().into()) }, wrapped)
    }

    /// Unwraps a segment's data key; `None` if `master` is not the key that wrapped it (or the envelope
    /// was tampered with).
    pub fn open(
        master: &MasterKey,
        key_id: u32,
        binding: &Binding,
        wrapped: &[u8; WRAPPED_KEY_BYTES],
    ) -> Option<SegmentCipher> {
        let mut buf = Zeroizing::new(wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].to_vec());
        let tag = chacha20poly1305::Tag::from_slice(&wrapped[NONCE_BYTES + KEY_BYTES..]);
        let wrap = XChaCha20Poly1305::new(master.bytes().into());
        wrap.decrypt_in_place_detached(
            XNonce::from_slice(&wrapped[..NONCE_BYTES]),
            &wrap_ad(binding, key_id),
            &mut buf,
            tag,
        )
        .ok()?;
        Some(SegmentCipher { aead: XChaCha20Poly1305::new(buf.as_slice().into()) })
    }

    /// Re-wraps this segment's data key under another master key (rotation without re-encrypting data).
    pub fn rewrap(
        old: &MasterKey,
        old_id: u32,
        new: &MasterKey,
        new_id: u32,
        binding: &Binding,
        wrapped: &[u8; WRAPPED_KEY_BYTES],
    ) -> Option<[u8; WRAPPED_KEY_BYTES]> {
        let mut key = Zeroizing::new(wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].to_vec());
        let tag = chacha20poly1305::Tag::from_slice(&wrapped[NONCE_BYTES + KEY_BYTES..]);
        XChaCha20Poly1305::new(old.bytes().into())
            .decrypt_in_place_detached(
                XNonce::from_slice(&wrapped[..NONCE_BYTES]),
                &wrap_ad(binding, old_id),
                &mut key,
                tag,
            )
            .ok()?;
        let nonce = random_bytes::<NONCE_BYTES>();
        let tag = XChaCha20Poly1305::new(new.bytes().into())
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &wrap_ad(binding, new_id), &mut key)
            .ok()?;
        let mut out = [0u8; WRAPPED_KEY_BYTES];
        out[..NONCE_BYTES].copy_from_slice(&nonce);
        out[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(&key);
        out[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
        Some(out)
    }
}
