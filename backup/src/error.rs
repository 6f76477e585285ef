//! Why a backup operation failed. Each variant names the object, file or snapshot involved.

use std::path::PathBuf;

use keel_s3::StoreError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("repository: {0}")]
    Store(#[from] StoreError),
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("journal: {0}")]
    Journal(#[from] keel_journal::export::ExportError),
    #[error("journal: {0}")]
    JournalOpen(#[from] keel_journal::OpenError),
    #[error("repository key: {0}")]
    Key(#[from] keel_journal::crypto::keys::KeyError),
    #[error("{location}: no backup repository here (no config object); `keel backup create` makes one")]
    NoRepository { location: String },
    #[error("{location}: wrong repository key: key id {key_id} does not open the repository's key check")]
    WrongKey { location: String, key_id: u32 },
    #[error("{location}: the repository was sealed under key id {key_id}, which is not in the repository key ring")]
    KeyMissing { location: String, key_id: u32 },
    #[error("object {key:?}: {why}")]
    Damaged { key: String, why: String },
    #[error("object {key:?} is missing (needed by {needed_by})")]
    Missing { key: String, needed_by: String },
    #[error("no snapshot {what} in the repository")]
    NoSnapshot { what: String },
    #[error("{}: the target directory is not empty; pass --force to restore into it anyway", path.display())]
    TargetNotEmpty { path: PathBuf },
    #[error("the repository is leased by {holder} until {expires_unix_ms} (unix ms); waited {waited_ms} ms")]
    Leased { holder: String, expires_unix_ms: u64, waited_ms: u64 },
    #[error("the lease was lost during {op} (another process took it after it expired); stopped before changing the repository")]
    LeaseLost { op: &'static str },
    #[error("cannot restore to {what}: {why}")]
    PointInTime { what: String, why: String },
    #[error("{}: {why}", path.display())]
    Data { path: PathBuf, why: String },
    #[error("{}: shrank while it was read (the journal reclaimed it after the cut)", path.display())]
    SourceChanged { path: PathBuf },
    #[error("invalid {name}: {why}")]
    Invalid { name: &'static str, why: String },
    #[error("deadline of {secs} s exceeded during {during}")]
    Deadline { secs: u64, during: String },
}

impl BackupError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io { path, op, source }
    }

    pub(crate) fn damaged(key: &str, why: impl Into<String>) -> BackupError {
        BackupError::Damaged { key: key.to_owned(), why: why.into() }
    }
}
