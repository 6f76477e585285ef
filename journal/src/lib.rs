//! # keel-journal
//!
//! An append-only, segmented, checksummed journal for message brokers: add, update and delete records,
//! transactions with two-phase commit, group-committed fdatasync, and crash recovery that tells a torn tail
//! from corruption. The on-disk format is specified in `docs/FORMAT.md`.
//!
//! ## Guarantees
//! - Under [`SyncPolicy::Always`], an append returns only after its bytes were fdatasynced; it survives a
//!   process kill and a power loss. Concurrent appends share one write and one fdatasync.
//! - Every frame is checksummed (CRC32) with the journal id and segment sequence bound into the checksum,
//!   so stale bytes of a recycled or foreign file never pass as records.
//! - Recovery discards only a torn last sync group of the newest segment, and says so. Any other damage is
//!   reported as [`Corruption`] naming file and byte offset; [`RecoveryMode::Salvage`] skips it instead
//!   and reports every skipped range.
//! - A failed fdatasync stops the journal for good ([`AppendError::Poisoned`]); a full disk fails only the
//!   appends it hits ([`AppendError::NoSpace`]) and writing resumes when space is freed.
//!
//! ## Example
//! ```
//! use keel_journal::{Journal, Options, TxId};
//! let dir = tempfile::tempdir().unwrap();
//! let opts = Options { segment_bytes: 1 << 20, ..Options::default() };
//! let (journal, recovered) = Journal::open(dir.path(), opts.clone()).unwrap();
//! assert!(recovered.records.is_empty());
//! journal.add(1, 0, b"hello").unwrap();
//! let tx = TxId::new(7).unwrap();
//! journal.add_tx(tx, 2, 0, b"in a tx").unwrap();
//! journal.prepare(tx, b"xid").unwrap();
//! drop(journal);
//! let (journal, recovered) = Journal::open(dir.path(), opts).unwrap();
//! assert_eq!(journal.read_version(&recovered.records[&1]).unwrap(), b"hello");
//! assert_eq!(journal.read(1).unwrap(), b"hello");
//! assert_eq!(recovered.prepared[0].tx, tx);
//! ```

mod commit;
pub mod crypto;
mod error;
pub mod export;
mod format;
mod index;
pub mod inspect;
mod journal;
pub mod limits;
mod maintenance;
mod reader;
mod recovery;
mod segment;
mod sync_util;
mod types;
pub mod vfs;

pub use commit::completion::Pending;
pub use error::{AppendError, Corruption, CorruptionKind, OpenError};
pub use format::frame::{FrameHeader, FrameType};
pub use format::Binding;
pub use index::{Location, RecordRef, SegmentLive};
pub use journal::{Journal, Options, RekeyError, RekeyReport};
pub use maintenance::checkpoint::CheckpointReport;
pub use maintenance::compact::{CompactReport, CompactionPolicy};
pub use maintenance::reclaim::ReclaimReport;
pub use maintenance::MaintenanceStats;
pub use reader::{ReadError, Reader};
pub use recovery::replay::{PreparedTx, TxOp, TxRecord};
pub use recovery::scan::{SegmentEnd, SkippedRange};
pub use recovery::{Recovered, RecoveryReport, SegmentSummary, TornTail};
pub use types::{Lsn, RecordId, RecoveryMode, SyncPolicy, TxId, WriteStats};

/// Frame codec, exposed for the fuzz target and tools; not a stable API.
#[doc(hidden)]
pub mod __format {
    pub use crate::crypto::unit::{open as unit_open, peek as unit_peek};
    pub use crate::format::identity::Identity;
    pub use crate::format::segment_header::SegmentHeader;

    pub fn decode_identity(b: &[u8]) -> Result<Identity, crate::format::identity::IdentityError> {
        Identity::decode(b)
    }

    pub fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, crate::format::segment_header::HeaderError> {
        SegmentHeader::decode(b)
    }
    pub use crate::format::checkpoint::CheckpointHeader;
    pub use crate::format::horizon::Horizon;

    pub fn decode_horizon(b: &[u8]) -> Result<Horizon, crate::format::horizon::HorizonError> {
        Horizon::decode(b)
    }
    pub use crate::format::frame::{decode_frame, encode_frame, FrameError};

    pub fn decode_checkpoint_header(b: &[u8]) -> Result<CheckpointHeader, crate::format::checkpoint::CheckpointError> {
        CheckpointHeader::decode(b)
    }

    /// Decodes a checkpoint body; `Ok` carries the number of live records it held.
    pub fn decode_checkpoint_body(b: &[u8]) -> Result<usize, crate::format::checkpoint::CheckpointError> {
        crate::format::checkpoint::decode_body_bytes(b).map(|body| body.index.records.len())
    }
    pub use crate::format::Binding;
    pub use crate::recovery::scan::{scan_segment, ScanInput};
}
