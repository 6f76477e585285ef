//! The files of a data directory as one consistent cut (docs/BACKUP-FORMAT.md, "The cut"): the journal
//! through `keel_journal::export::capture`, page files through handles opened around it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::export::{capture, Capture, CapturedSegment};

use crate::error::BackupError;
use crate::manifest::{FileStat, SegmentInfo};
use crate::seal::ChunkMode;

/// Where a file's bytes come from.
pub(crate) enum Bytes {
    Segment(CapturedSegment),
    File(File),
    Memory(Vec<u8>),
}

/// One file to back up.
pub(crate) struct SourceFile {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub copy_bytes: u64,
    pub mode: ChunkMode,
    pub segment: Option<SegmentInfo>,
    /// For a sealed segment: its file's identity, to skip reading it when the previous snapshot has it.
    pub stat: Option<FileStat>,
    pub bytes: Bytes,
}

impl SourceFile {
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &self.bytes {
            Bytes::Segment(s) => s.read_at(buf, offset),
            Bytes::File(f) => f.read_exact_at(buf, offset),
            Bytes::Memory(m) => {
                let src = m.get(offset as usize..offset as usize + buf.len());
                buf.copy_from_slice(src.ok_or_else(|| std::io::Error::other("read past the end"))?);
                Ok(())
            }
        }
    }
}

/// A captured data directory.
pub(crate) struct Source {
    pub journal_dir: String,
    pub journal_id: String,
    pub first_lsn: u64,
    pub next_lsn: u64,
    pub cut_unix_ms: u64,
    pub files: Vec<SourceFile>,
}

/// `DIR` itself when it holds a journal, else `DIR/journal`; and `DIR/pages` when that exists.
pub(crate) fn layout(data: &Path) -> (String, PathBuf, Option<PathBuf>) {
    if data.join("KEEL-JOURNAL").exists() {
        (String::new(), data.to_path_buf(), None)
    } else {
        let pages = data.join("pages");
        ("journal".into(), data.join("journal"), pages.is_dir().then_some(pages))
    }
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Opens every page file under `pages` (`a-*/<id>.kpage`) not in `have`.
fn open_pages(pages: &Path, have: &mut BTreeMap<String, File>) -> Result<(), BackupError> {
    let dirs = match std::fs::read_dir(pages) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BackupError::io(pages, "list")(e)),
    };
    for d in dirs {
        let d = d.map_err(BackupError::io(pages, "list"))?;
        let name = d.file_name().to_string_lossy().into_owned();
        if !name.starts_with("a-") || !d.path().is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(d.path()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // address removed meanwhile
            Err(e) => return Err(BackupError::io(d.path(), "list")(e)),
        };
        for e in entries {
            let e = e.map_err(BackupError::io(d.path(), "list"))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            if !file_name.ends_with(".kpage") {
                continue; // `.kpage.tmp`: a page not yet in place
            }
            let rel = format!("pages/{name}/{file_name}");
            if have.contains_key(&rel) {
                continue;
            }
            match File::open(e.path()) {
                Ok(f) => {
                    have.insert(rel, f);
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {} // deleted meanwhile
                Err(err) => return Err(BackupError::io(e.path(), "open")(err)),
            }
        }
    }
    Ok(())
}

/// Captures `data` (see the module docs). `keys`: the journal's master keys, needed when its newest
/// segment is encrypted.
pub(crate) fn capture_data(data: &Path, keys: Option<&KeyRing>) -> Result<Source, BackupError> {
    let (journal_dir, journal_path, pages) = layout(data);
    let mut page_files = BTreeMap::new();
    if let Some(p) = &pages {
        open_pages(p, &mut page_files)?;
    }
    let c: Capture = capture(&journal_path, keys)?;
    // Every frame in the capture was written by now: the cut's time for `--to-time`.
    let cut_unix_ms = crate::now_ms();
    if let Some(p) = &pages {
        open_pages(p, &mut page_files)?;
    }
    let journal_id = crate::seal::hex(&c.journal_id);
    let first_lsn = c.segments.first().map_or(1, |s| s.first_lsn.0);
    let mut files = Vec::new();
    let small = |name: &str, b: Vec<u8>| SourceFile {
        path: join(&journal_dir, name),
        size: b.len() as u64,
        copy_bytes: b.len() as u64,
        mode: ChunkMode::Sealed,
        segment: None,
        stat: None,
        bytes: Bytes::Memory(b),
    };
    files.push(small("KEEL-JOURNAL", c.identity));
    if let Some(h) = c.horizon {
        files.push(small("RECLAIMED", h));
    }
    for s in c.segments {
        let stat = match &s.source {
            keel_journal::export::SegmentSource::Sealed(f) => {
                use std::os::unix::fs::MetadataExt;
                let path = journal_path.join(format!("{:020}.kseg", s.seq));
                let m = f.metadata().map_err(BackupError::io(&path, "stat"))?;
                Some(FileStat { ino: m.ino(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(), sealed: true })
            }
            keel_journal::export::SegmentSource::Tail(_) => None,
        };
        files.push(SourceFile {
            stat,
            path: join(&journal_dir, &format!("{:020}.kseg", s.seq)),
            size: s.segment_bytes,
            copy_bytes: s.copy_bytes(),
            mode: if s.key_id == 0 { ChunkMode::Sealed } else { ChunkMode::Raw },
            segment: Some(SegmentInfo { seq: s.seq, first_lsn: s.first_lsn.0, key_id: s.key_id }),
            bytes: Bytes::Segment(s),
        });
    }
    for (path, file) in page_files {
        let size = file.metadata().map_err(BackupError::io(&path, "stat"))?.len();
        // Flags at offset 12 of the page header; bit 0: encrypted (docs/FORMAT.md, "Page header").
        let mut flags = [0u8; 4];
        let encrypted = size >= 16 && file.read_exact_at(&mut flags, 12).is_ok() && u32::from_le_bytes(flags) & 1 == 1;
        files.push(SourceFile {
            path,
            size,
            copy_bytes: size,
            mode: if encrypted { ChunkMode::Raw } else { ChunkMode::Sealed },
            segment: None,
            stat: None,
            bytes: Bytes::File(file),
        });
    }
    Ok(Source { journal_dir, journal_id, first_lsn, next_lsn: c.next_lsn.0, cut_unix_ms, files })
}
