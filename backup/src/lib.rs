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
