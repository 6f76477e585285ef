//! XChaCha20-Poly1305, the journal's one AEAD.
//!
//! The construction (draft-irtf-cfrg-xchacha): HChaCha20 derives a subkey from the key and the first 16
//! nonce bytes, then ChaCha20-Poly1305 (RFC 8439) runs under that subkey with the nonce `0⁴ ‖ nonce[16..24]`.
//! The output is byte for byte that of the `chacha20poly1305` crate's `XChaCha20Poly1305` (the tests below
//! check it against that crate), so the on-disk format does not depend on which implementation wrote it.
//!
//! Why not that crate alone: the RFC 8439 part runs on `ring`'s assembly, which on this project's
//! benchmark machine seals 1.9× faster at 16 KiB and 3.4× faster at 1 KiB (docs/BENCHMARKS.md,
//! "Encryption at rest"); at 16 KiB that is the difference between a seal that costs ~9 % of an fdatasync
//! and one that costs ~17 %. `ring` is already in the build (through rustls); HChaCha20, which ring does
//! not offer, comes from the `chacha20` crate that `chacha20poly1305` itself uses.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, Zeroizing};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 24;
pub const TAG_BYTES: usize = 16;

/// The message failed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unauthentic;

/// An XChaCha20-Poly1305 key.
#[derive(Clone)]
pub struct XChaCha {
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for XChaCha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XChaCha(..)")
    }
}

impl XChaCha {
    pub fn new(key: &[u8; KEY_BYTES]) -> XChaCha {
        XChaCha { key: Zeroizing::new(*key) }
    }

    /// The RFC 8439 key and nonce for one message. (ring keeps its own copy of the subkey, which it does
    /// not zeroize; the subkey is good for this one nonce only.)
    fn inner(&self, nonce: &[u8; NONCE_BYTES]) -> (LessSafeKey, Nonce) {
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&nonce[..16]);
        let mut derived = chacha20::hchacha::<U10>((&*self.key).into(), &prefix.into());
        let mut subkey = Zeroizing::new([0u8; KEY_BYTES]);
        subkey.copy_from_slice(&derived);
        derived.as_mut_slice().zeroize();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &*subkey).expect("a 32-byte ChaCha20-Poly1305 key");
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(&nonce[16..]);
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(short))
    }

    /// Encrypts `buf` in place; returns the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_BYTES], ad: &[u8], buf: &mut [u8]) -> [u8; TAG_BYTES] {
        let (key, nonce) = self.inner(nonce);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(ad), buf)
            .expect("messages are far below ChaCha20-Poly1305's 256 GiB limit");
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Authenticates and decrypts `buf` in place. On failure `buf` holds unspecified bytes.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), Unauthentic> {
        let (key, nonce) = self.inner(nonce);
        key.open_in_place_separate_tag(nonce, Aad::from(ad), Tag::from(*tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use proptest::prelude::*;

    proptest! {
        /// Byte for byte the reference implementation, both ways.
        #[test]
        fn matches_the_reference(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            ad in proptest::collection::vec(any::<u8>(), 0..64),
            msg in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let mut ours = msg.clone();
            let tag = XChaCha::new(&key).seal_in_place(&nonce, &ad, &mut ours);
            let mut theirs = msg.clone();
            let reference = XChaCha20Poly1305::new(&key.into())
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut theirs)
                .unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(&tag[..], &reference[..]);
            let mut back = ours.clone();
            XChaCha::new(&key).open_in_place(&nonce, &ad, &mut back, &tag).unwrap();
            prop_assert_eq!(&back, &msg);
        }
    }

    #[test]
    fn any_change_fails_authentication() {
        let c = XChaCha::new(&[3; 32]);
        let nonce = [4; 24];
        let mut m = b"sealed frames".to_vec();
        let tag = c.seal_in_place(&nonce, b"ad", &mut m);
        let mut flipped = m.clone();
        flipped[0] ^= 1;
        assert_eq!(c.open_in_place(&nonce, b"ad", &mut flipped, &tag), Err(Unauthentic));
        assert_eq!(c.open_in_place(&nonce, b"da", &mut m.clone(), &tag), Err(Unauthentic));
        let mut other_nonce = nonce;
        other_nonce[20] ^= 1;
        assert_eq!(c.open_in_place(&other_nonce, b"ad", &mut m.clone(), &tag), Err(Unauthentic));
        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        assert_eq!(c.open_in_place(&nonce, b"ad", &mut m.clone(), &bad_tag), Err(Unauthentic));
        assert_eq!(XChaCha::new(&[5; 32]).open_in_place(&nonce, b"ad", &mut m.clone(), &tag), Err(Unauthentic));
        c.open_in_place(&nonce, b"ad", &mut m, &tag).unwrap();
        assert_eq!(m, b"sealed frames");
    }
}
