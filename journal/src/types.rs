//! Small value types shared by the journal's modules.

use std::fmt;

/// Log sequence number: the position of a frame in the journal. Dense: each frame's LSN is the previous
/// frame's plus one, across segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record's id, chosen by the caller.
pub type RecordId = u64;

/// A transaction id, chosen by the caller. Zero is reserved (it marks non-transactional frames on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(u64);

impl TxId {
    /// `None` for zero, which the format reserves.
    pub const fn new(id: u64) -> Option<TxId> {
        if id == 0 {
            None
        } else {
            Some(TxId(id))
        }
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When an append is acknowledged relative to fdatasync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every call returns only after the bytes it wrote were fdatasynced (shared by concurrent callers).
    Always,
    /// Calls return after the write; a background sync runs at this interval. A crash of the machine may lose
    /// up to one interval of acknowledged records; a crash of the process loses none.
    Interval(std::time::Duration),
    /// Calls return after the write; the journal fdatasyncs only on `sync()`, roll-over and close.
    Never,
}

/// How `open` treats corruption (damage anywhere but the torn tail of the newest segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open, naming the file and offset.
    Strict,
    /// Skip damaged ranges and report exactly what was skipped.
    Salvage,
}

/// Counters of the group-commit writer since the journal was opened (`Journal::write_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Writes of frames (one vectored write each; a batch that spans a roll-over makes two).
    pub writes: u64,
    /// Frames written, seals excluded.
    pub frames: u64,
    /// fdatasyncs of the active segment, seals' included.
    pub fdatasyncs: u64,
    /// Of those, the ones that ran on the helper thread while the leader wrote the next batch.
    pub overlapped_fdatasyncs: u64,
    /// Segments activated for writing (roll-overs, and the first write after open into a new segment).
    pub activations: u64,
    /// Of those, the ones that found no spare ready and waited for one to be zero-filled: appends stall
    /// meanwhile. Many mean the disk cannot write both the appends and the next spare in time; more
    /// `spare_segments` absorb bursts, larger segments make roll-overs rarer.
    pub spare_waits: u64,
    /// Total time spent in those waits.
    pub spare_wait_time: std::time::Duration,
    /// Sealed units written (encrypted segments only): one per write since 2026-11-27 (earlier writers split
    /// large writes into several; readers take either).
    pub sealed_units: u64,
}
