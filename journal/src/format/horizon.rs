//! The reclaim horizon file `RECLAIMED` (docs/FORMAT.md, "Reclaim"): every segment numbered at or below
//! `horizon` is gone from the journal, whether or not its file still exists. Written (temporary file,
//! fsync, rename, directory fsync) before any of those segments' files is touched, so that a reclaim is
//! atomic however many segments it removes and wherever a crash interrupts it.
//!
//! ```text
//! offset 0   magic        8 B  "KEELRCLM"
//!        8   version      u32  1
//!       12   reserved     u32  0
//!       16   journal_id   16 B
//!       32   horizon      u64  last reclaimed segment
//!       40   next_lsn     u64  the journal's next LSN when it was written: LSNs never go below it
//!       48   reserved     12 B 0
//!       60   crc32        u32  over bytes 0..60
//! ```

use super::{u32_at, u64_at};
use crate::types::Lsn;

pub const FILE_NAME: &str = "RECLAIMED";
pub const TMP_NAME: &str = "RECLAIMED.tmp";
pub const BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"KEELRCLM";
const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Horizon {
    pub journal_id: [u8; 16],
    pub horizon: u64,
    pub next_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HorizonError {
    #[error("{0} bytes long, expected {BYTES}")]
    Length(usize),
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("version {0} is not supported")]
    Version(u32),
    #[error("belongs to another journal")]
    Foreign,
}

impl Horizon {
    pub fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.journal_id);
        b[32..40].copy_from_slice(&self.horizon.to_le_bytes());
        b[40..48].copy_from_slice(&self.next_lsn.0.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Horizon, HorizonError> {
        if b.len() != BYTES {
            return Err(HorizonError::Length(b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err(HorizonError::Magic);
        }
        if u32_at(b, 60) != crc32fast::hash(&b[0..60]) {
            return Err(HorizonError::Checksum);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(HorizonError::Version(version));
        }
        let mut journal_id = [0u8; 16];
        journal_id.copy_from_slice(&b[16..32]);
        Ok(Horizon { journal_id, horizon: u64_at(b, 32), next_lsn: Lsn(u64_at(b, 40)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flips() {
        let h = Horizon { journal_id: [4; 16], horizon: 17, next_lsn: Lsn(999) };
        let b = h.encode();
        assert_eq!(Horizon::decode(&b).unwrap(), h);
        for i in 0..BYTES {
            let mut c = b;
            c[i] ^= 0x20;
            assert!(Horizon::decode(&c).is_err(), "flip at {i}");
        }
    }
}
