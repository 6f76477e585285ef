//! Master keys: read from a key file (a Vault agent sidecar writes them) or, for development, from an
//! environment variable; never written to disk by Keel; zeroized when dropped.
//!
//! Key file format: one key a line, `ID:HEX`, where ID is a decimal key id from 1 to 2^32-1 and HEX is 64
//! hex digits (32 bytes). Blank lines and lines starting with `#` are ignored. The key with the highest id is
//! the current key: new segments are encrypted under it; older ids stay readable while they are listed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const KEY_BYTES: usize = 32;

/// One master key. Its bytes never appear in `Debug` output.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; KEY_BYTES],
}

impl MasterKey {
    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }
}

/// The master keys a journal may use, by id.
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<u32, MasterKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("key_ids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key file {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{origin}, line {line}: {why} (expected ID:HEX, a decimal key id ≥ 1 and 64 hex digits)")]
    Malformed { origin: String, line: usize, why: &'static str },
    #[error("{origin}, line {line}: key id {id} appears twice")]
    DuplicateId { origin: String, line: usize, id: u32 },
    #[error("{origin}: holds no key")]
    Empty { origin: String },
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
}

impl KeyRing {
    /// Parses key-file text; `origin` names where it came from, for errors.
    pub fn parse(text: &str, origin: &str) -> Result<KeyRing, KeyError> {
        let mut keys = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let bad = |why| KeyError::Malformed { origin: origin.to_owned(), line, why };
            let (id, hex) = l.split_once(':').ok_or_else(|| bad("no ':' between id and key"))?;
            let id: u32 = id.trim().parse().map_err(|_| bad("the key id is not a decimal number"))?;
            if id == 0 {
                return Err(bad("key id 0 is reserved for plaintext"));
            }
            let hex = hex.trim().as_bytes();
            if hex.len() != 2 * KEY_BYTES {
                return Err(bad("the key is not 64 hex digits"));
            }
            let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
            for (i, pair) in hex.chunks(2).enumerate() {
                let digit = |c: u8| (c as char).to_digit(16).ok_or_else(|| bad("the key has a non-hex digit"));
                bytes[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
            }
            if keys.insert(id, MasterKey { bytes: *bytes }).is_some() {
                return Err(KeyError::DuplicateId { origin: origin.to_owned(), line, id });
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty { origin: origin.to_owned() });
        }
        Ok(KeyRing { keys })
    }

    pub fn from_file(path: &Path) -> Result<KeyRing, KeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?,
        );
        KeyRing::parse(&text, &format!("key file {}", path.display()))
    }

    /// Reads keys from environment variable `var` (development only: the environment is visible to
    /// anyone who can inspect the process).
    pub fn from_env(var: &str) -> Result<KeyRing, KeyError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| KeyError::EnvMissing(var.to_owned()))?);
        KeyRing::parse(&text, &format!("environment variable {var}"))
    }

    /// The id and key new segments are encrypted under: the highest id.
    pub fn current(&self) -> (u32, &MasterKey) {
        let (id, key) = self.keys.iter().next_back().expect("a key ring is never empty");
        (*id, key)
    }

    pub fn get(&self, id: u32) -> Option<&MasterKey> {
        self.keys.get(&id)
    }

    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parses_and_picks_the_highest_id() {
        let text = format!("# keys\n\n{K1}\n7:{}\n", "ab".repeat(32));
        let ring = KeyRing::parse(&text, "test").unwrap();
        assert_eq!(ring.ids(), vec![1, 7]);
        assert_eq!(ring.current().0, 7);
        assert_eq!(ring.get(1).unwrap().bytes()[31], 0x1f);
        assert!(!format!("{ring:?}").contains("ab"), "Debug never shows key bytes");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: Vec<(String, &str)> = vec![
            ("1:zz".to_owned(), "line 1"),
            (format!("\n0:{}", "00".repeat(32)), "line 2"),
            ("x:00".to_owned(), "line 1"),
            (format!("{K1}\n{K1}"), "appears twice"),
            ("# nothing".to_owned(), "holds no key"),
        ];
        for (text, want) in cases {
            let e = KeyRing::parse(&text, "test").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
