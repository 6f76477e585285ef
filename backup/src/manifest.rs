//! Snapshot manifests and archive entries (docs/BACKUP-FORMAT.md), and the names they are stored under.

use serde::{Deserialize, Serialize};

use crate::seal::ChunkMode;

pub const VERSION: u32 = 1;

/// One chunk of a file: stored under its id, or all zeros and not stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// 64 hex digits; `None`: a chunk of zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub len: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ChunkMode>,
}

impl ChunkRef {
    pub fn zero(len: u32) -> ChunkRef {
        ChunkRef { id: None, len, mode: None }
    }

    pub fn object_name(&self) -> Option<String> {
        self.id.as_deref().map(chunk_name)
    }

    /// Bytes the chunk's object holds in the store: a sealed chunk carries its envelope.
    pub fn stored_len(&self) -> u64 {
        match self.mode {
            Some(ChunkMode::Sealed) => u64::from(self.len) + crate::seal::OVERHEAD as u64,
            _ => u64::from(self.len),
        }
    }
}

pub fn chunk_name(id: &str) -> String {
    format!("data/{}/{id}", &id[..2])
}

/// What a journal segment file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub seq: u64,
    pub first_lsn: u64,
    pub key_id: u32,
}

/// What a sealed segment's file looked like when it was read, so that the next snapshot can reuse its
/// chunks without reading it again: sealed segments never change, and a file replaced since (a rekey
/// writes a new file) has another inode or modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub ino: u64,
    pub mtime_ns: i64,
    pub sealed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory.
    pub path: String,
    pub size: u64,
    pub copy_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub id: String,
    pub created_unix_ms: u64,
    /// When the manifest was written; the data is as of the cut, taken just after `created_unix_ms`.
    pub finished_unix_ms: u64,
    pub cut_unix_ms: u64,
    pub host: String,
    pub journal_id: String,
    /// Where the journal lies in the data directory: `""` (the data directory is the journal) or `journal`.
    pub journal_dir: String,
    pub first_lsn: u64,
    pub next_lsn: u64,
    /// Frames in the snapshot's journal: `next_lsn − first_lsn`.
    pub frames: u64,
    pub files: Vec<FileEntry>,
    /// Bytes of the files (up to `copy_bytes`), and of chunks this snapshot added to the repository.
    pub total_bytes: u64,
    pub new_bytes: u64,
}

impl Snapshot {
    pub fn object_name(&self) -> String {
        snapshot_name(self.created_unix_ms, &self.id)
    }

    /// The newest journal segment in the snapshot.
    pub fn newest_segment(&self) -> Option<SegmentInfo> {
        self.files.iter().filter_map(|f| f.segment).max_by_key(|s| s.seq)
    }
}

pub fn snapshot_name(created_unix_ms: u64, id: &str) -> String {
    format!("snapshots/{created_unix_ms:020}-{id}")
}

/// `(created_unix_ms, id)` of a snapshot object name.
pub fn parse_snapshot_name(name: &str) -> Option<(u64, String)> {
    let rest = name.strip_prefix("snapshots/")?;
    let (ms, id) = rest.split_once('-')?;
    (ms.len() == 20 && id.len() == 16).then_some(())?;
    Some((ms.parse().ok()?, id.to_owned()))
}

/// One journal segment as archived at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    pub version: u32,
    pub journal_id: String,
    pub seq: u64,
    pub first_lsn: u64,
    pub size: u64,
    pub key_id: u32,
    pub copy_bytes: u64,
    /// The segment was sealed: this entry is final.
    pub sealed: bool,
    /// The first LSN after the frames this entry holds.
    pub next_lsn: u64,
    /// `(unix ms, next_lsn)` at each archiving of this segment, ascending.
    pub points: Vec<(u64, u64)>,
    pub chunks: Vec<ChunkRef>,
}

impl ArchiveEntry {
    pub fn object_name(&self) -> String {
        archive_name(&self.journal_id, self.seq, self.next_lsn)
    }
}

pub fn archive_prefix(journal_id: &str) -> String {
    format!("archive/{journal_id}/")
}

pub fn archive_name(journal_id: &str, seq: u64, next_lsn: u64) -> String {
    format!("archive/{journal_id}/{seq:020}/{next_lsn:020}")
}

/// `(seq, next_lsn)` of an archive entry name under `archive/<journal id>/`.
pub fn parse_archive_name(name: &str) -> Option<(String, u64, u64)> {
    let mut parts = name.strip_prefix("archive/")?.split('/');
    let (jid, seq, lsn) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && seq.len() == 20 && lsn.len() == 20).then_some(())?;
    Some((jid.to_owned(), seq.parse().ok()?, lsn.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        assert_eq!(parse_snapshot_name(&snapshot_name(42, "0123456789abcdef")), Some((42, "0123456789abcdef".into())));
        assert_eq!(parse_snapshot_name("snapshots/x"), None);
        assert_eq!(parse_archive_name(&archive_name("ab", 7, 99)), Some(("ab".into(), 7, 99)));
        assert_eq!(parse_archive_name("archive/ab/1/2"), None);
    }
}
