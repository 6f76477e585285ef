//! The repository key: sealing objects (docs/BACKUP-FORMAT.md, "Sealed object envelope") and chunk ids.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use keel_journal::crypto::keys::KeyRing;

use crate::error::BackupError;

const MAGIC: &[u8; 8] = b"KEELBKS1";
const NONCE: usize = 24;
const TAG: usize = 16;
/// Envelope bytes around the ciphertext.
pub const OVERHEAD: usize = 8 + 4 + NONCE + TAG;
const ID_CONTEXT: &str = "keel-backup 2026-11-26 chunk id";

/// How a chunk is stored (docs/BACKUP-FORMAT.md, "Chunks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum ChunkMode {
    /// Plaintext file bytes, sealed with the repository key.
    Sealed = 1,
    /// Bytes the journal already sealed, stored as they are.
    Raw = 2,
}

impl From<ChunkMode> for u8 {
    fn from(m: ChunkMode) -> u8 {
        m as u8
    }
}

impl TryFrom<u8> for ChunkMode {
    type Error = String;
    fn try_from(b: u8) -> Result<ChunkMode, String> {
        match b {
            1 => Ok(ChunkMode::Sealed),
            2 => Ok(ChunkMode::Raw),
            _ => Err(format!("unknown chunk mode {b}")),
        }
    }
}

/// The repository's keys, bound to one repository id.
#[derive(Clone)]
pub struct RepoKeys {
    ring: KeyRing,
    repo_id: [u8; 16],
    id_key: [u8; 32],
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoKeys").field("ids", &self.ring.ids()).finish_non_exhaustive()
    }
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    #[error("not a sealed object (bad magic or too short)")]
    Format,
    #[error("sealed under key id {0}, which is not in the repository key ring")]
    UnknownKey(u32),
    #[error("failed authentication (tampered, truncated, moved from another key or repository, or a wrong key)")]
    Authentication,
}

impl RepoKeys {
    /// `id_key_id`: the key the repository's config names, from which chunk ids derive.
    pub fn new(ring: KeyRing, repo_id: [u8; 16], id_key_id: u32, location: &str) -> Result<RepoKeys, BackupError> {
        let master = ring
            .get(id_key_id)
            .ok_or_else(|| BackupError::KeyMissing { location: location.to_owned(), key_id: id_key_id })?;
        let id_key = blake3::derive_key(ID_CONTEXT, master.bytes());
        Ok(RepoKeys { ring, repo_id, id_key })
    }

    pub fn repo_id(&self) -> [u8; 16] {
        self.repo_id
    }

    pub fn current_id(&self) -> u32 {
        self.ring.current().0
    }

    /// The id of a chunk with these bytes stored in `mode`.
    pub fn chunk_id(&self, mode: ChunkMode, bytes: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(&[mode as u8]);
        h.update(bytes);
        *h.finalize().as_bytes()
    }

    fn aead(&self, key_id: u32) -> Option<XChaCha20Poly1305> {
        self.ring.get(key_id).map(|k| XChaCha20Poly1305::new(k.bytes().into()))
    }

    fn ad(&self, key_id: u32, name: &str) -> Vec<u8> {
        let mut ad = Vec::with_capacity(11 + 16 + 4 + name.len());
        ad.extend_from_slice(b"keel-backup");
        ad.extend_from_slice(&self.repo_id);
        ad.extend_from_slice(&key_id.to_le_bytes());
        ad.extend_from_slice(name.as_bytes());
        ad
    }

    /// Seals `plain` as the object named `name`, under the current key.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        self.seal_with(self.current_id(), name, plain)
    }

    pub(crate) fn seal_with(&self, key_id: u32, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plain.len() + OVERHEAD);
        buf.resize(ENVELOPE_HEADER, 0);
        buf.extend_from_slice(plain);
        self.seal_envelope_with(key_id, name, &mut buf);
        buf
    }

    /// Seals, in place, an envelope whose plaintext is already at `buf[ENVELOPE_HEADER..]`; the header is
    /// filled in and the tag appended. Saves the copy [`RepoKeys::seal`] makes, for chunks.
    pub fn seal_envelope(&self, name: &str, buf: &mut Vec<u8>) {
        self.seal_envelope_with(self.current_id(), name, buf);
    }

    fn seal_envelope_with(&self, key_id: u32, name: &str, buf: &mut Vec<u8>) {
        let aead = self.aead(key_id).expect("sealing keys come from the ring");
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        buf[..8].copy_from_slice(MAGIC);
        buf[8..12].copy_from_slice(&key_id.to_le_bytes());
        buf[12..ENVELOPE_HEADER].copy_from_slice(&nonce);
        let tag = aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &self.ad(key_id, name), &mut buf[ENVELOPE_HEADER..])
            .expect("objects are far below the AEAD's length limit");
        buf.extend_from_slice(&tag);
    }

    /// Opens the object named `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        let mut buf = sealed.to_vec();
        let plain = self.open_in_place(name, &mut buf)?;
        buf.truncate(plain.end);
        buf.drain(..plain.start);
        Ok(buf)
    }

    /// Opens the object named `name` in place; returns where in `sealed` its plaintext now lies.
    pub fn open_in_place(&self, name: &str, sealed: &mut [u8]) -> Result<std::ops::Range<usize>, OpenFailure> {
        if sealed.len() < OVERHEAD || &sealed[..8] != MAGIC {
            return Err(OpenFailure::Format);
        }
        let key_id = u32::from_le_bytes(sealed[8..12].try_into().expect("4 bytes"));
        let aead = self.aead(key_id).ok_or(OpenFailure::UnknownKey(key_id))?;
        let nonce = *XNonce::from_slice(&sealed[12..12 + NONCE]);
        let body_end = sealed.len() - TAG;
        let tag = *chacha20poly1305::Tag::from_slice(&sealed[body_end..]);
        aead.decrypt_in_place_detached(&nonce, &self.ad(key_id, name), &mut sealed[ENVELOPE_HEADER..body_end], &tag)
            .map_err(|_| OpenFailure::Authentication)?;
        Ok(ENVELOPE_HEADER..body_end)
    }

    /// The key id an envelope names, if it is one.
    pub fn key_id_of(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= OVERHEAD && &sealed[..8] == MAGIC)
            .then(|| u32::from_le_bytes(sealed[8..12].try_into().unwrap()))
    }
}

/// Bytes before the plaintext in an envelope.
pub const ENVELOPE_HEADER: usize = 8 + 4 + NONCE;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> RepoKeys {
        let ring = KeyRing::parse(&format!("1:{}\n2:{}", "11".repeat(32), "22".repeat(32)), "t").unwrap();
        RepoKeys::new(ring, [7; 16], 1, "t").unwrap()
    }

    #[test]
    fn an_envelope_opens_only_under_its_name_repository_and_bytes() {
        let k = keys();
        let sealed = k.seal("snapshots/a", b"manifest");
        assert_eq!(RepoKeys::key_id_of(&sealed), Some(2));
        assert_eq!(k.open("snapshots/a", &sealed).unwrap(), b"manifest");
        assert_eq!(k.open("snapshots/b", &sealed), Err(OpenFailure::Authentication));
        let other = RepoKeys::new(KeyRing::parse(&format!("2:{}", "22".repeat(32)), "t").unwrap(), [8; 16], 2, "t");
        assert_eq!(other.unwrap().open("snapshots/a", &sealed), Err(OpenFailure::Authentication));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(k.open("snapshots/a", &bad).is_err(), "flip at {i} accepted");
        }
        assert!(k.open("snapshots/a", &sealed[..sealed.len() - 1]).is_err());
        assert_eq!(k.open("x", b"short"), Err(OpenFailure::Format));
    }

    #[test]
    fn chunk_ids_depend_on_mode_and_key() {
        let k = keys();
        assert_ne!(k.chunk_id(ChunkMode::Sealed, b"x"), k.chunk_id(ChunkMode::Raw, b"x"));
        let other = RepoKeys::new(KeyRing::parse(&format!("1:{}", "33".repeat(32)), "t").unwrap(), [7; 16], 1, "t");
        assert_ne!(k.chunk_id(ChunkMode::Raw, b"x"), other.unwrap().chunk_id(ChunkMode::Raw, b"x"));
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
        let mut env = vec![0u8; ENVELOPE_HEADER];
        env.extend_from_slice(b"abc");
        k.seal_envelope("data/x", &mut env);
        assert_eq!(env.len(), 3 + OVERHEAD);
        assert_eq!(k.open("data/x", &env).unwrap(), b"abc");
        let range = k.open_in_place("data/x", &mut env).unwrap();
        assert_eq!(&env[range], b"abc");
    }
}
