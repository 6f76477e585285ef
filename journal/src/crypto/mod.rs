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

pub mod aead;
pub mod keys;
pub mod unit;

use zeroize::Zeroizing;

use crate::format::Binding;
use aead::XChaCha;
pub use aead::{NONCE_BYTES, TAG_BYTES};
use keys::{MasterKey, KEY_BYTES};
/// A wrapped data key: nonce, ciphertext, tag.
pub const WRAPPED_KEY_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;

/// A segment's data key, ready to seal and open units.
#[derive(Clone)]
pub struct SegmentCipher {
    aead: XChaCha,
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
        let mut buf = Zeroizing::new(*data_key);
        let tag = XChaCha::new(master.bytes()).seal_in_place(&nonce, &wrap_ad(binding, key_id), &mut *buf);
        let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
        wrapped[..NONCE_BYTES].copy_from_slice(&nonce);
        wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(&*buf);
        wrapped[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
        (SegmentCipher { aead: XChaCha::new(&data_key) }, wrapped)
    }

    /// Unwraps a segment's data key; `None` if `master` is not the key that wrapped it (or the envelope
    /// was tampered with).
    pub fn open(
        master: &MasterKey,
        key_id: u32,
        binding: &Binding,
        wrapped: &[u8; WRAPPED_KEY_BYTES],
    ) -> Option<SegmentCipher> {
        let key = unwrap_key(master, &wrap_ad(binding, key_id), wrapped)?;
        Some(SegmentCipher { aead: XChaCha::new(&key) })
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
        let mut key = unwrap_key(old, &wrap_ad(binding, old_id), wrapped)?;
        let nonce = random_bytes::<NONCE_BYTES>();
        let tag = XChaCha::new(new.bytes()).seal_in_place(&nonce, &wrap_ad(binding, new_id), &mut *key);
        let mut out = [0u8; WRAPPED_KEY_BYTES];
        out[..NONCE_BYTES].copy_from_slice(&nonce);
        out[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(&*key);
        out[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
        Some(out)
    }
}

/// The data key inside a wrapped key; `None` if `master` did not wrap it or the envelope was tampered with.
fn unwrap_key(master: &MasterKey, ad: &[u8], wrapped: &[u8; WRAPPED_KEY_BYTES]) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    let (nonce, rest) = wrapped.split_first_chunk::<NONCE_BYTES>().expect("sized");
    let (ct, tag) = rest.split_first_chunk::<KEY_BYTES>().expect("sized");
    let tag: &[u8; TAG_BYTES] = tag.try_into().expect("sized");
    let mut key = Zeroizing::new(*ct);
    XChaCha::new(master.bytes()).open_in_place(nonce, ad, &mut *key, tag).ok()?;
    Some(key)
}
