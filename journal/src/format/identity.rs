//! The identity file `KEEL-JOURNAL` (docs/FORMAT.md, "Identity file").

use super::{u32_at, u64_at};

pub const FILE_NAME: &str = "KEEL-JOURNAL";
pub const BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"KEELJNL\0";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub journal_id: [u8; 16],
    pub created_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} bytes long, expected {BYTES}")]
    Length(usize),
    #[error("bad magic (not a Keel journal identity file)")]
    Magic,
    #[error("format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
}

impl Identity {
    pub fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.journal_id);
        b[32..40].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Identity, IdentityError> {
        if b.len() != BYTES {
            return Err(IdentityError::Length(b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err(IdentityError::Magic);
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(IdentityError::Checksum { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(IdentityError::Version(version));
        }
        let mut journal_id = [0u8; 16];
        journal_id.copy_from_slice(&b[16..32]);
        Ok(Identity { journal_id, created_unix_ms: u64_at(b, 32) })
    }
}

/// Formats a journal id the way tools and errors print it.
pub fn id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flip() {
        let id = Identity { journal_id: [3; 16], created_unix_ms: 17 };
        let b = id.encode();
        assert_eq!(Identity::decode(&b).unwrap(), id);
        for i in 0..BYTES {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(Identity::decode(&c).is_err(), "flip at {i}");
        }
    }
}
