//! Typed errors, one enum per operation. Each names what failed and where, and, where there is one, what to do.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::frame::FrameError;
use crate::format::identity::IdentityError;
use crate::format::segment_header::HeaderError;
use crate::types::{Lsn, RecordId, TxId};

/// Damage found in a journal's files: what and exactly where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: corrupt at byte offset {offset}: {what} (open with salvage to skip damaged ranges, or restore from backup)", path.display())]
pub struct Corruption {
    pub path: PathBuf,
    pub offset: u64,
    pub what: CorruptionKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    #[error("bad frame: {0}")]
    Frame(FrameError),
    #[error("bad segment header: {0}")]
    Header(HeaderError),
    #[error("frame has LSN {found}, expected {expected}")]
    LsnGap { expected: Lsn, found: Lsn },
    #[error("segment belongs to journal {found}, this directory is journal {expected}")]
    ForeignSegment { expected: String, found: String },
    #[error("header says segment {in_header}, the file name says {in_name}")]
    SequenceMismatch { in_name: u64, in_header: u64 },
    #[error("file is {actual} bytes, header says {declared}")]
    SizeMismatch { declared: u64, actual: u64 },
    #[error("segment {expected} is missing (found {found} next)")]
    MissingSegment { expected: u64, found: u64 },
    #[error("segment is not sealed, yet later segment {later} is in use")]
    NotSealed { later: u64 },
    #[error("segment is an unused spare, yet later segment {later} is in use")]
    SpareBeforeActive { later: u64 },
    #[error("damaged bytes here were fdatasynced: a valid frame of a later sync group (LSN {later_lsn}) follows at byte {later_offset}")]
    DamageBeforeSyncedData { later_offset: u64, later_lsn: Lsn },
    #[error("seal frame counts {declared} frames, the segment has {actual}")]
    SealCount { declared: u64, actual: u64 },
    #[error("sealed unit: {0}")]
    Unit(crate::crypto::unit::UnitError),
    #[error("transaction {tx}: {frame} declares {declared} records, {staged} were logged")]
    TxCount { tx: u64, frame: &'static str, declared: u64, staged: u64 },
}

/// Why `Journal::open` (or a read-only inspection) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("{}: the journal is in use by another process (its LOCK is held); stop that process first", path.display())]
    Locked { path: PathBuf },
    #[error("{}: identity file: {source}", path.display())]
    Identity { path: PathBuf, source: IdentityError },
    #[error("{}: reclaim horizon file: {source} (it says which old segments are gone; without it, recovery cannot tell a reclaimed segment from a lost one)", path.display())]
    Horizon { path: PathBuf, source: crate::format::horizon::HorizonError },
    #[error("{}: holds segment files but no KEEL-JOURNAL identity file; refusing to guess which journal they belong to", dir.display())]
    MissingIdentity { dir: PathBuf },
    #[error("{}: no journal here (no KEEL-JOURNAL identity file)", dir.display())]
    NotAJournal { dir: PathBuf },
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("{}: encrypted under master key id {key_id}, {why}", path.display())]
    KeyUnavailable { path: PathBuf, key_id: u32, why: &'static str },
    #[error("invalid option {name}: {why}")]
    InvalidOption { name: &'static str, why: String },
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> OpenError {
        let path = path.into();
        move |source| OpenError::Io { path, op, source }
    }
}

/// Why an append (or `sync`) failed. Cloneable because one failure answers every caller in a batch.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("journal stopped after {op} failed on {}: {source}; no write is accepted until it is reopened, which recovers what is durable", path.display())]
    Poisoned { path: PathBuf, op: &'static str, source: Arc<io::Error> },
    #[error("no space left on device for {}: {source}; nothing acknowledged was lost, and writes resume once space is freed", path.display())]
    NoSpace { path: PathBuf, source: Arc<io::Error> },
    #[error("{op} {}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: Arc<io::Error> },
    #[error("payload of {len} bytes exceeds this journal's maximum of {max} bytes")]
    PayloadTooLarge { len: u64, max: u64 },
    #[error("record {0} already exists")]
    IdInUse(RecordId),
    #[error("record {0} does not exist")]
    NoSuchRecord(RecordId),
    #[error("record {0} changed or was deleted since compaction read it; not relocated")]
    Superseded(RecordId),
    #[error("transaction {0} is not open")]
    NoSuchTx(TxId),
    #[error("transaction {0} is prepared; it accepts only commit or rollback")]
    TxPrepared(TxId),
    #[error("the journal is closed")]
    Closed,
}
