//! # keel-backup
//!
//! Backups of a Keel data directory (journal and page stores) to a repository in a directory or in S3:
//! online, consistent, incremental and encrypted snapshots; continuous archiving of journal segments for
//! point-in-time restore; verify, prune, and restore drills that report metrics. The repository format is
//! specified in `docs/BACKUP-FORMAT.md`.
//!
//! Every operation works through [`Repo`], opened with the repository key:
//! ```no_run
//! use keel_backup::{CreateOptions, Progress, Repo, Create};
//! use keel_journal::crypto::keys::KeyRing;
//! let key = KeyRing::from_file("/etc/keel/repo.key".as_ref()).unwrap();
//! let repo = Repo::open("s3://backups/keel", key, Create::IfAbsent).unwrap();
//! let snap = repo.create("/var/lib/keel".as_ref(), &CreateOptions::default(), &Progress::default()).unwrap();
//! println!("snapshot {} at LSN {}", snap.id, snap.next_lsn);
//! ```

mod archive;
mod drill;
mod error;
mod lease;
pub mod manifest;
mod progress;
mod prune;
mod repo;
mod restore;
mod seal;
mod snapshots;
mod source;
mod upload;
mod verify;

pub use archive::{ArchiveOptions, ArchiveRound};
pub use drill::{write_atomically, DrillFailure, DrillOptions, DrillReport};
pub use error::BackupError;
pub use lease::{Lease, LeaseOptions};
pub use manifest::{ArchiveEntry, ChunkRef, FileEntry, Snapshot};
pub use progress::Progress;
pub use prune::{PruneReport, Retention};
pub use repo::{Config, Create, Repo, CHUNK_BYTES};
pub use restore::{RestoreOptions, RestorePoint, RestoreReport};
pub use seal::{ChunkMode, RepoKeys};
pub use snapshots::{CreateOptions, Listed};
pub use verify::{VerifyOptions, VerifyReport};

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Decoders over arbitrary bytes, for the fuzz target (`backup/fuzz`); not a stable API.
#[doc(hidden)]
pub mod __fuzz {
    use crate::manifest::{parse_archive_name, parse_snapshot_name, ArchiveEntry, Snapshot};

    /// Runs every decoder of repository objects over `data`; panics only on an inconsistency.
    pub fn decoders(data: &[u8]) {
        if let Ok(c) = crate::repo::Config::decode(data) {
            assert_eq!(&c.encode()[..], &data[..64]);
        }
        let ring = keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}", "11".repeat(32)), "fuzz").unwrap();
        let keys = crate::seal::RepoKeys::new(ring, [7; 16], 1, "fuzz").unwrap();
        let _ = keys.open("snapshots/x", data);
        let mut copy = data.to_vec();
        let _ = keys.open_in_place("data/x", &mut copy);
        if let Ok(s) = serde_json::from_slice::<Snapshot>(data) {
            for f in &s.files {
                let _ = crate::restore::safe_join(std::path::Path::new("/target"), &f.path)
                    .map(|p| assert!(p.starts_with("/target") && !f.path.contains("..")));
            }
            let _ = s.newest_segment();
            let _ = s.object_name();
        }
        let _ = serde_json::from_slice::<ArchiveEntry>(data).map(|e| e.object_name());
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = parse_snapshot_name(text);
            let _ = parse_archive_name(text);
        }
    }
}
