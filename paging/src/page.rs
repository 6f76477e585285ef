//! Page files on disk: create one, open one (checking its header against the address and its key), and
//! read its messages in bounded chunks, checking every frame (and, encrypted, every unit's tag).

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::crypto::unit::{self, UNIT_HEADER_BYTES, UNIT_OVERHEAD_BYTES};
use keel_journal::crypto::SegmentCipher;
use keel_journal::vfs::{OpenMode, Vfs, VfsFile};

use crate::error::{io, PagingError};
use crate::format::{decode_frame, FrameError, FrameHead, PageHeader, PAGE_HEADER_BYTES, PAGE_VERSION};

/// Positioned reads of a page's bytes: a file on the volume, or a page's object in the object store.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for dyn VfsFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        VfsFile::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for Arc<dyn VfsFile> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        VfsFile::read_exact_at(&**self, buf, offset)
    }
}

impl ReadAt for Arc<[u8]> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A page in the object store, read in ranges.
#[derive(Clone, Debug)]
pub struct RemotePage {
    pub remote: Arc<crate::remote::Remote>,
    pub key: String,
    pub len: u64,
}

impl ReadAt for RemotePage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.remote.read_range(&self.key, buf, offset)
    }
}

/// A page's bytes: its file on the volume, or its object in the object store.
#[derive(Debug)]
pub enum Source {
    File(Arc<dyn VfsFile>),
    Remote(RemotePage),
}

impl ReadAt for Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(f) => VfsFile::read_exact_at(&**f, buf, offset),
            Source::Remote(r) => r.read_exact_at(buf, offset),
        }
    }
}

impl Source {
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            Source::File(f) => f.size(),
            Source::Remote(r) => Ok(r.len),
        }
    }
}

/// A message read from a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// The journal transaction that paged it; 0: none.
    pub tx: u64,
    pub payload: Arc<[u8]>,
}

pub fn page_path(dir: &Path, page_id: u64) -> PathBuf {
    dir.join(format!("{page_id:020}.kpage"))
}

/// Where a page is written before its header is durable.
pub fn temporary_path(dir: &Path, page_id: u64) -> PathBuf {
    dir.join(format!("{page_id:020}.kpage.tmp"))
}

/// Removes page files a crash left under their temporary name (they never held a message).
pub fn remove_temporaries(vfs: &dyn Vfs, address: &str, dir: &Path) -> Result<usize, PagingError> {
    let mut removed = 0;
    for name in vfs.list(dir).map_err(io(address, dir, "list pages"))? {
        if name.ends_with(".kpage.tmp") {
            let path = dir.join(&name);
            vfs.remove_file(&path).map_err(io(address, &path, "remove temporary page"))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(vfs, address, dir)?;
    }
    Ok(removed)
}

/// The page ids present in an address directory, ascending.
pub fn list_pages(vfs: &dyn Vfs, address: &str, dir: &Path) -> Result<Vec<u64>, PagingError> {
    let mut ids = Vec::new();
    for name in vfs.list(dir).map_err(io(address, dir, "list pages"))? {
        let Some(stem) = name.strip_suffix(".kpage") else { continue };
        if stem.len() == 20 {
            if let Ok(id) = stem.parse() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub fn sync_dir(vfs: &dyn Vfs, address: &str, dir: &Path) -> Result<(), PagingError> {
    vfs.sync_dir(dir).map_err(io(address, dir, "fsync directory"))
}

/// Whether `dir` exists: false only if it is not found (another failure to list it is an error).
pub fn dir_exists(vfs: &dyn Vfs, dir: &Path) -> std::io::Result<bool> {
    match vfs.list(dir) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A page's identity and data key.
#[derive(Clone, Debug)]
pub struct PageKeying {
    pub header: PageHeader,
    pub cipher: Option<SegmentCipher>,
}

/// Creates a page file holding only its header, durably (file and directory fsynced).
pub fn create_page(
    vfs: &dyn Vfs,
    address: &str,
    dir: &Path,
    store_id: [u8; 16],
    page_id: u64,
    first_seq: u64,
    keys: Option<&KeyRing>,
) -> Result<(Arc<dyn VfsFile>, PageKeying), PagingError> {
    let mut header = PageHeader { version: PAGE_VERSION, store_id, page_id, first_seq, key: None };
    let cipher = keys.map(|k| {
        let (key_id, master) = k.current();
        let (cipher, wrapped) = SegmentCipher::create(master, key_id, &header.binding());
        header.key = Some((key_id, wrapped));
        cipher
    });
    // Written under a temporary name and renamed once its header is durable: a crash never leaves a page
    // file without a whole header.
    let path = page_path(dir, page_id);
    let tmp = temporary_path(dir, page_id);
    match vfs.remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(address, &tmp, "remove old temporary")(e)),
        _ => {}
    }
    let file: Arc<dyn VfsFile> = vfs.open(&tmp, OpenMode::CreateNew).map_err(io(address, &tmp, "create page"))?.into();
    file.write_all_at(&[IoSlice::new(&header.encode())], 0).map_err(io(address, &tmp, "write page header"))?;
    file.sync_all().map_err(|e| poisoned(address, &tmp, "fsync", e))?;
    keel_crashpoint::hook("paging-page-header-written");
    match vfs.open(&path, OpenMode::Read) {
        Ok(existing) if !unrecorded_header_only(&*existing, store_id, page_id) => {
            return Err(corrupt(address, &path, "a page with this number already exists"));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(address, &path, "open page")(e)),
        _ => {}
    }
    vfs.rename(&tmp, &path).map_err(io(address, &tmp, "rename page into place"))?;
    if let Err(e) = sync_dir(vfs, address, dir) {
        // Not recorded as created: take the name back, so that the next attempt starts clean (and, if this
        // fails too, finds a header-only page of its own number, which it may replace).
        let _ = vfs.remove_file(&path);
        return Err(e);
    }
    Ok((file, PageKeying { header, cipher }))
}

/// Whether `path` holds only a header of this address's page `page_id`: an earlier creation whose
/// directory fsync failed left it, and no message was ever written to it.
fn unrecorded_header_only(file: &dyn VfsFile, store_id: [u8; 16], page_id: u64) -> bool {
    let mut b = [0u8; PAGE_HEADER_BYTES];
    file.size().is_ok_and(|len| len == PAGE_HEADER_BYTES as u64)
        && file.read_exact_at(&mut b, 0).is_ok()
        && PageHeader::decode(&b).is_ok_and(|h| h.store_id == store_id && h.page_id == page_id)
}

pub fn poisoned(address: &str, path: &Path, op: &'static str, e: std::io::Error) -> PagingError {
    PagingError::Poisoned { address: address.to_owned(), path: path.to_path_buf(), op, source: std::sync::Arc::new(e) }
}

pub fn corrupt(address: &str, path: &Path, why: impl Into<String>) -> PagingError {
    PagingError::CorruptPage { address: address.to_owned(), path: path.to_path_buf(), why: why.into() }
}

/// Opens a page and checks that its header is this address's page `page_id` and that a key opens it.
pub fn open_page(
    vfs: &dyn Vfs,
    address: &str,
    dir: &Path,
    store_id: [u8; 16],
    page_id: u64,
    keys: Option<&KeyRing>,
    write: bool,
) -> Result<(Arc<dyn VfsFile>, PageKeying), PagingError> {
    let path = page_path(dir, page_id);
    let mode = if write { OpenMode::ReadWrite } else { OpenMode::Read };
    let file: Arc<dyn VfsFile> = vfs.open(&path, mode).map_err(io(address, &path, "open page"))?.into();
    let keying = check_header(address, &path, &file, store_id, page_id, keys)?;
    Ok((file, keying))
}

/// Reads and checks a page's header: this address's page `page_id`, opened by a key we have.
pub fn check_header(
    address: &str,
    path: &Path,
    src: &dyn ReadAt,
    store_id: [u8; 16],
    page_id: u64,
    keys: Option<&KeyRing>,
) -> Result<PageKeying, PagingError> {
    let mut b = [0u8; PAGE_HEADER_BYTES];
    src.read_exact_at(&mut b, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(address, path, "shorter than the page header"),
        _ => io(address, path, "read page header")(e),
    })?;
    let header = PageHeader::decode(&b).map_err(|why| corrupt(address, path, why))?;
    if header.store_id != store_id {
        return Err(corrupt(address, path, "the page belongs to another address (store id differs)"));
    }
    if header.page_id != page_id {
        return Err(corrupt(address, path, format!("the header says page {}", header.page_id)));
    }
    let cipher = match &header.key {
        None => None,
        Some((key_id, wrapped)) => {
            let missing = || PagingError::MissingKey { address: address.to_owned(), page: page_id, key_id: *key_id };
            let master = keys.ok_or_else(missing)?.get(*key_id).ok_or_else(missing)?;
            Some(SegmentCipher::open(master, *key_id, &header.binding(), wrapped).ok_or(PagingError::WrongKey {
                address: address.to_owned(),
                page: page_id,
                key_id: *key_id,
            })?)
        }
    };
    Ok(PageKeying { header, cipher })
}

/// Why a read of a page stopped before `end`.
#[derive(Debug)]
pub struct ReadStop {
    /// Where the first byte that is not a whole valid frame (or unit) lies.
    pub offset: u64,
    pub why: String,
    /// The damage is a bad frame inside a unit that authenticates (so was written whole): never a tear.
    pub in_valid_unit: bool,
}

/// Reads the whole frames (or units) from `offset` towards `end`, about `chunk` bytes' worth (more if one
/// frame is larger), appending their messages to `out`. Returns the offset after the last one read.
/// `Err` only for bytes that are not valid: a frame cut by `end` is left for the next read.
pub fn read_messages(
    file: &dyn ReadAt,
    keying: &PageKeying,
    offset: u64,
    end: u64,
    chunk: usize,
    out: &mut Vec<Message>,
) -> Result<u64, Result<ReadStop, std::io::Error>> {
    if offset >= end {
        return Ok(offset);
    }
    let binding = keying.header.binding();
    let version = keying.header.version;
    let want = (end - offset).min(chunk as u64) as usize;
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, offset).map_err(Err)?;
    let mut at = 0usize;
    loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            break;
        }
        let (consumed, incomplete) = match &keying.cipher {
            None => match decode_frame(&binding, version, rest) {
                Ok((h, r)) => {
                    out.push(Message { seq: h.seq, tx: h.tx, payload: rest[r.clone()].into() });
                    (r.end, None)
                }
                Err(FrameError::Incomplete { need }) => (0, Some(need)),
                Err(FrameError::Bad(why)) => {
                    return Err(Ok(ReadStop { offset: offset + at as u64, why, in_valid_unit: false }))
                }
            },
            Some(cipher) => {
                if rest.len() < UNIT_HEADER_BYTES {
                    (0, Some(None))
                } else {
                    let ct_len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as u64;
                    let total = UNIT_OVERHEAD_BYTES + ct_len;
                    if (rest.len() as u64) < total {
                        (0, Some(Some(total)))
                    } else {
                        let unit_at = offset + at as u64;
                        let plain = unit::open_one(cipher, &binding, &rest[..total as usize], unit_at)
                            .map_err(|e| Ok(ReadStop { offset: unit_at, why: e.to_string(), in_valid_unit: false }))?;
                        let mut p = 0;
                        while p < plain.len() {
                            match decode_frame(&binding, version, &plain[p..]) {
                                Ok((h, r)) => {
                                    out.push(Message {
                                        seq: h.seq,
                                        tx: h.tx,
                                        payload: plain[p + r.start..p + r.end].into(),
                                    });
                                    p += r.end;
                                }
                                Err(e) => {
                                    let why = format!("inside the unit at byte {unit_at}: {e:?}");
                                    return Err(Ok(ReadStop { offset: unit_at, why, in_valid_unit: true }));
                                }
                            }
                        }
                        (total as usize, None)
                    }
                }
            }
        };
        match incomplete {
            None => at += consumed,
            Some(need) => {
                if at > 0 {
                    // A frame cut by the chunk: the next read starts at it.
                    break;
                }
                match need {
                    Some(n) if offset + n <= end && n as usize > buf.len() => {
                        buf = vec![0u8; n as usize];
                        file.read_exact_at(&mut buf, offset).map_err(Err)?;
                        continue;
                    }
                    _ => {
                        let why = format!("a frame runs past byte {end}, the end of the written bytes");
                        return Err(Ok(ReadStop { offset, why, in_valid_unit: false }));
                    }
                }
            }
        }
    }
    Ok(offset + at as u64)
}

/// A frame after damage that proves the damaged bytes had been fdatasynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaterGroup {
    pub offset: u64,
    pub seq: u64,
}

/// Searches a page's bytes after damage at `damaged` (where message `expected` should begin) up to `end`
/// for a frame (encrypted: a unit that authenticates, judged by its first frame) that validates with a
/// sequence number of at least `expected` and belongs to a sync group begun after `expected`. Reads the
/// page whole: only the newest page is searched, after damage.
pub fn later_group(
    src: &dyn ReadAt,
    keying: &PageKeying,
    damaged: u64,
    end: u64,
    expected: u64,
) -> std::io::Result<Option<LaterGroup>> {
    let mut data = vec![0u8; usize::try_from(end).expect("a page fits in memory")];
    src.read_exact_at(&mut data, 0)?;
    let binding = keying.header.binding();
    let version = keying.header.version;
    let header_bytes = keying.header.frame_header_bytes();
    let seq_max = expected + data.len() as u64 / header_bytes as u64 + 1;
    let plausible = |h: &FrameHead| (expected..=seq_max).contains(&h.seq);
    // Checked before a frame's checksum, which may cover megabytes.
    let plausible_seq = |b: &[u8]| (expected..=seq_max).contains(&u64::from_le_bytes(b[8..16].try_into().expect("8")));
    let mut at = damaged + 1;
    while at + header_bytes as u64 <= end {
        let b = &data[at as usize..];
        let found = match &keying.cipher {
            None if !plausible_seq(b) => None,
            None => decode_frame(&binding, version, b).ok().map(|(h, _)| h),
            Some(cipher) => unit::peek(&binding, &data, at)
                .ok()
                .and_then(|_| unit::open(cipher, &binding, &data, at).ok())
                .and_then(|(plain, _)| decode_frame(&binding, version, &plain).ok())
                .filter(|(h, _)| plausible(h))
                .map(|(h, _)| h),
        };
        match found {
            Some(h) if h.group_began_after(expected) => return Ok(Some(LaterGroup { offset: at, seq: h.seq })),
            _ => at += 1,
        }
    }
    Ok(None)
}
