//! The directory backend: objects as files under a root directory on a mounted volume.
//!
//! Each object is one file, `<root>/<key>`: a 32-byte header, then the bytes.
//! ```text
//! offset 0   magic      8 B   "KEELOBJ1"
//!        8   size       u64   bytes after the header
//!       16   crc32      u32   of those bytes
//!       20   etag       u64   random, new for every put
//!       28   hdr_crc    u32   CRC32 of bytes 0..28
//! ```
//! A put writes `<dir>/.keel-tmp-<random>`, fsyncs it, and renames it into place, then fsyncs the
//! directory. Conditions are checked and the rename done under an exclusive `flock` of `<root>/.keel-lock`,
//! so they hold between processes sharing the volume. `IfAbsent` creates the name atomically where the
//! filesystem allows (see [`CreateIfAbsent`]): NFS and many FUSE mounts, exactly the shared volumes this
//! backend serves, refuse `RENAME_NOREPLACE` but support `link(2)`.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::Body;
use crate::key::{self, RESERVED_PREFIX};
use crate::{ETag, GetObject, ListPage, ObjectMeta, ObjectStore, PutBody, PutCondition, StoreError};

const MAGIC: &[u8; 8] = b"KEELOBJ1";
const HEADER: usize = ObjectHeader::LEN;
const LIST_PAGE: usize = 1000;

/// The header of an object file (docs/FORMAT.md, "keel-s3 object files").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Bytes after the header.
    pub size: u64,
    /// CRC32 of those bytes.
    pub crc32: u32,
    /// Random, new for every put.
    pub etag: u64,
}

/// Why an object file's header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("shorter than its {} byte header", ObjectHeader::LEN)]
    Short,
    #[error("bad magic (not a keel-s3 object file)")]
    BadMagic,
    #[error("header checksum mismatch")]
    Checksum,
}

impl ObjectHeader {
    pub const LEN: usize = 32;

    pub fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.crc32.to_le_bytes());
        b[20..28].copy_from_slice(&self.etag.to_le_bytes());
        let c = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes the first [`ObjectHeader::LEN`] bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<ObjectHeader, HeaderError> {
        let b: &[u8; HEADER] = b.get(..HEADER).and_then(|h| h.try_into().ok()).ok_or(HeaderError::Short)?;
        if &b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let le64 = |r: Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        let le32 = |r: Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes"));
        if le32(28..32) != crc32fast::hash(&b[0..28]) {
            return Err(HeaderError::Checksum);
        }
        Ok(ObjectHeader { size: le64(8..16), crc32: le32(16..20), etag: le64(20..28) })
    }
}

/// Objects in a directory.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: Arc<PathBuf>,
    /// How `IfAbsent` creates a name: starts at the strongest and steps down, once, when the filesystem
    /// refuses it, for every handle of this store.
    create: Arc<AtomicU8>,
}

/// How a create-if-absent put puts its object in place. Each is done under the store's lock; the first two
/// are atomic even against a writer that does not take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CreateIfAbsent {
    /// `renameat2(RENAME_NOREPLACE)`: local filesystems.
    RenameNoReplace = 0,
    /// `link(2)` of the temporary file to the name, which fails if the name exists, then unlink of the
    /// temporary: NFS, and FUSE filesystems without `rename2`.
    Link = 1,
    /// A check that the name is absent, then a plain rename, both under the lock: filesystems with neither
    /// (some FUSE object-store mounts). Atomic only among Keel processes whose `flock`s exclude each other,
    /// which many FUSE mounts do only within one host: never chosen automatically.
    Locked = 2,
}

impl CreateIfAbsent {
    fn from_u8(v: u8) -> CreateIfAbsent {
        match v {
            0 => CreateIfAbsent::RenameNoReplace,
            1 => CreateIfAbsent::Link,
            _ => CreateIfAbsent::Locked,
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Errors with which a filesystem says it does not support an operation (Linux NFS answers
/// `RENAME_NOREPLACE` with EINVAL, FUSE without `rename2` with ENOSYS or EINVAL). EPERM is not among them:
/// it also means a permission, which stepping down would not fix.
fn unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP].contains(&e)
}

impl DirStore {
    /// The directory the objects are in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A store rooted at `root`, created (durably) if absent.
    pub fn open(root: impl AsRef<Path>) -> Result<DirStore, StoreError> {
        let root = root.as_ref().to_path_buf();
        create_dirs_durably(&root)?;
        sweep_in_background(&root);
        Ok(DirStore { root: Arc::new(root), create: Arc::new(AtomicU8::new(CreateIfAbsent::RenameNoReplace as u8)) })
    }

    /// Starts create-if-absent puts at `how` rather than at the strongest operation, for a filesystem whose
    /// refusal is not one of the errors detected, and for tests of the fallbacks.
    pub fn with_create_if_absent(self, how: CreateIfAbsent) -> DirStore {
        self.create.store(how as u8, Ordering::SeqCst);
        self
    }

    /// How create-if-absent puts are done now.
    pub fn create_if_absent(&self) -> CreateIfAbsent {
        CreateIfAbsent::from_u8(self.create.load(Ordering::SeqCst))
    }

    /// Puts `tmp` in place at `path` only if no object is there; under the store's lock.
    fn create_if_absent_at(&self, key: &str, tmp: &Path, path: &Path) -> Result<(), StoreError> {
        let exists = || StoreError::PreconditionFailed { key: key.to_owned(), condition: "create-if-absent" };
        let failed = |op| move |e: rustix::io::Errno| StoreError::io(tmp, op)(e.into());
        loop {
            let how = self.create_if_absent();
            let result = match how {
                CreateIfAbsent::RenameNoReplace => {
                    let (cwd, flags) = (rustix::fs::CWD, rustix::fs::RenameFlags::NOREPLACE);
                    rustix::fs::renameat_with(cwd, tmp, cwd, path, flags)
                }
                CreateIfAbsent::Link => rustix::fs::link(tmp, path).map(|()| {
                    // The name holds the object now; the temporary is a second name for it.
                    let _ = std::fs::remove_file(tmp);
                }),
                CreateIfAbsent::Locked => {
                    match std::fs::symlink_metadata(path) {
                        Ok(_) => return Err(exists()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io(path, "stat object")(e)),
                    }
                    return std::fs::rename(tmp, path).map_err(StoreError::io(tmp, "rename object into place"));
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::EXIST) if how == CreateIfAbsent::Link && same_file(tmp, path) => {
                    // An NFS LINK that took effect, retransmitted after its reply was lost.
                    let _ = std::fs::remove_file(tmp);
                    return Ok(());
                }
                Err(rustix::io::Errno::EXIST) => return Err(exists()),
                Err(e) if unsupported(e) && how == CreateIfAbsent::Link => {
                    let why = format!(
                        "the filesystem supports neither RENAME_NOREPLACE nor link(2) ({e}): no atomic \
                         create-if-absent; choose DirStore::with_create_if_absent(CreateIfAbsent::Locked) only if \
                         every process using this store runs on one host"
                    );
                    return Err(StoreError::Config {
                        what: format!("directory store {}", self.root.display()),
                        fix: why,
                    });
                }
                Err(e) if unsupported(e) => {
                    let next = CreateIfAbsent::from_u8(how as u8 + 1);
                    tracing::warn!(root = %self.root.display(), refused = ?how, errno = %e, next = ?next,
                        "the filesystem refuses this way of creating an object only if absent; using the next");
                    let _ = self.create.compare_exchange(how as u8, next as u8, Ordering::SeqCst, Ordering::SeqCst);
                }
                Err(e) => return Err(failed("create object if absent")(e)),
            }
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        key::check(key)?;
        Ok(self.root.join(key))
    }

    fn meta(key: &str, path: &Path) -> Result<(File, ObjectMeta), StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { key: key.to_owned() })
            }
            Err(e) => return Err(StoreError::io(path, "open object")(e)),
        };
        let mut hb = [0u8; HEADER];
        file.read_exact_at(&mut hb, 0).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                StoreError::Corrupt { path: path.to_path_buf(), why: HeaderError::Short.to_string() }
            }
            _ => StoreError::io(path, "read object header")(e),
        })?;
        let h = ObjectHeader::decode(&hb)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), why: e.to_string() })?;
        let len = file.metadata().map_err(StoreError::io(path, "stat object"))?.len();
        if len != HEADER as u64 + h.size {
            let why = format!("header says {} bytes, the file holds {}", h.size, len.saturating_sub(HEADER as u64));
            return Err(StoreError::Corrupt { path: path.to_path_buf(), why });
        }
        let meta = ObjectMeta { key: key.to_owned(), size: h.size, etag: etag_of(h.etag), crc32: Some(h.crc32) };
        Ok((file, meta))
    }

    fn put_blocking(&self, key: &str, body: PutBody, cond: PutCondition) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent: the root").to_path_buf();
        create_dirs_durably(&dir)?;
        let tmp = dir.join(format!("{RESERVED_PREFIX}tmp-{}", crate::token()));
        let written = write_tmp(&tmp, &body);
        // Held (and so `flock`ed) until the rename: the sweep of stale temporaries passes it over.
        let (_tmp_file, header) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: header.size,
            etag: etag_of(header.etag),
            crc32: Some(header.crc32),
        };
        keel_crashpoint::hook("dir-put-written");
        let _lock = self.lock()?;
        let outcome = match &cond {
            PutCondition::None => {
                std::fs::rename(&tmp, &path).map_err(StoreError::io(&tmp, "rename object into place"))
            }
            PutCondition::IfAbsent => self.create_if_absent_at(key, &tmp, &path),
            PutCondition::IfMatch(want) => match Self::meta(key, &path) {
                Ok((_, cur)) if &cur.etag == want => {
                    std::fs::rename(&tmp, &path).map_err(StoreError::io(&tmp, "rename object into place"))
                }
                Ok(_) | Err(StoreError::NotFound { .. }) => {
                    Err(StoreError::PreconditionFailed { key: key.to_owned(), condition: "if-match (etag changed)" })
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = outcome {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        keel_crashpoint::hook("dir-put-renamed");
        sync_dir(&dir)?;
        Ok(meta)
    }

    /// Removes temporary files that puts killed between writing and renaming left behind, if older than
    /// `older_than` (a younger one may belong to a put still running in another process). Returns how many.
    /// Walks the whole tree: run it at start-up or from maintenance, not per request.
    pub async fn remove_stale_temporaries(&self, older_than: std::time::Duration) -> Result<usize, StoreError> {
        let root = self.root.clone();
        blocking(move || {
            let mut removed = 0;
            remove_stale(&root, older_than, &mut removed)?;
            Ok(removed)
        })
        .await
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.root.join(format!("{RESERVED_PREFIX}lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path, "open store lock"))?;
        f.lock().map_err(StoreError::io(&path, "lock store"))?;
        Ok(f)
    }

    fn list_blocking(&self, prefix: &str, after: Option<String>) -> Result<ListPage, StoreError> {
        let mut keys = Vec::new();
        walk_ordered(&self.root, "", prefix, after.as_deref(), LIST_PAGE + 1, &mut keys)?;
        let more = keys.len() > LIST_PAGE;
        keys.truncate(LIST_PAGE);
        let mut objects = Vec::with_capacity(keys.len());
        for k in &keys {
            match Self::meta(k, &self.root.join(k)) {
                Ok((_, m)) => objects.push(m),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let next = if more { keys.last().cloned() } else { None };
        Ok(ListPage { objects, next })
    }

    fn delete_blocking(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let _lock = self.lock()?;
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("has a parent")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, "delete object")(e)),
        }
    }
}

fn etag_of(x: u64) -> ETag {
    ETag(format!("\"{x:016x}\""))
}

/// Writes header and body to a new temporary file and fsyncs it.
/// Writes a temporary object file, `flock`ed for as long as the returned file is open.
fn write_tmp(tmp: &Path, body: &PutBody) -> Result<(File, ObjectHeader), StoreError> {
    let mut f = File::options().create_new(true).write(true).open(tmp).map_err(StoreError::io(tmp, "create"))?;
    f.lock().map_err(StoreError::io(tmp, "lock"))?;
    let mut etag = [0u8; 8];
    getrandom::fill(&mut etag).expect("the operating system's random source failed");
    let mut header = ObjectHeader { size: 0, crc32: 0, etag: u64::from_le_bytes(etag) };
    f.write_all(&[0u8; HEADER]).map_err(StoreError::io(tmp, "write"))?;
    let mut crc = crc32fast::Hasher::new();
    match body {
        PutBody::Bytes(b) => {
            crc.update(b);
            f.write_all(b).map_err(StoreError::io(tmp, "write"))?;
            header.size = b.len() as u64;
        }
        PutBody::File(src) => {
            let mut from = File::open(src).map_err(StoreError::io(src, "open source file"))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = from.read(&mut buf).map_err(StoreError::io(src, "read source file"))?;
                if n == 0 {
                    break;
                }
                crc.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(StoreError::io(tmp, "write"))?;
                header.size += n as u64;
            }
        }
    }
    header.crc32 = crc.finalize();
    f.write_all_at(&header.encode(), 0).map_err(StoreError::io(tmp, "write header"))?;
    f.sync_all().map_err(StoreError::io(tmp, "fsync"))?;
    Ok((f, header))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io(dir, "fsync directory"))
}

/// Creates `dir` and missing ancestors, fsyncing each new one's parent.
fn create_dirs_durably(dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir, "create directory"))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Temporaries older than this that no put holds are removed: puts killed mid-write leave them.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes stale temporaries under `root` on a thread of its own, at most once per `STALE_TEMPORARY` for
/// all processes sharing the store (the modification time of `<root>/.keel-swept` says when it last ran).
fn sweep_in_background(root: &Path) {
    let marker = root.join(format!("{RESERVED_PREFIX}swept"));
    let due = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .map_or(true, |t| t.elapsed().map_or(true, |age| age >= STALE_TEMPORARY));
    if !due {
        return;
    }
    if File::create(&marker).is_err() {
        return;
    }
    let root = root.to_path_buf();
    let spawned = std::thread::Builder::new().name("keel-s3-sweep".into()).spawn(move || {
        let mut removed = 0;
        match remove_stale(&root, STALE_TEMPORARY, &mut removed) {
            Ok(()) if removed > 0 => tracing::info!(root = %root.display(), removed, "removed stale temporaries"),
            Ok(()) => {}
            Err(e) => tracing::warn!(root = %root.display(), error = %e, "sweeping stale temporaries"),
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting the sweep of stale temporaries");
    }
}

/// Whether a put is still writing the temporary file at `path` (it holds its `flock`).
fn in_use(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn remove_stale(dir: &Path, older_than: std::time::Duration, removed: &mut usize) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, "list directory")(e)),
    };
    let tmp_prefix = format!("{RESERVED_PREFIX}tmp-");
    let mut any = false;
    for e in entries {
        let e = e.map_err(StoreError::io(dir, "list directory"))?;
        let ft = e.file_type().map_err(StoreError::io(e.path(), "stat"))?;
        let is_tmp = e.file_name().to_str().is_some_and(|n| n.starts_with(&tmp_prefix));
        if ft.is_dir() {
            remove_stale(&e.path(), older_than, removed)?;
        } else if ft.is_file() && is_tmp {
            let modified = e.metadata().and_then(|m| m.modified()).map_err(StoreError::io(e.path(), "stat"))?;
            if modified.elapsed().is_ok_and(|age| age >= older_than) && !in_use(&e.path()) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        *removed += 1;
                        any = true;
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(StoreError::io(e.path(), "remove stale temporary")(err)),
                }
            }
        }
    }
    if any {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Collects the keys under `dir` (reserved names skipped).
/// Appends to `out`, in key order, up to `limit` keys under `dir` (whose keys begin with `base`) that start
/// with `prefix` and sort after `after`. Entries are visited in key order — a directory sorts as its name
/// and a `/`, so that `a-b` < `a/x` < `a0` as keys do — and subtrees that cannot hold a wanted key are not
/// read: a page of a listing costs the keys it returns and the directories on their way, not the store.
fn walk_ordered(
    dir: &Path,
    base: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, "list directory")(e)),
    };
    let mut items = Vec::new();
    for e in entries {
        let e = e.map_err(StoreError::io(dir, "list directory"))?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
        if name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let ft = e.file_type().map_err(StoreError::io(e.path(), "stat"))?;
        if ft.is_dir() {
            items.push((format!("{base}{name}/"), Some(e.path())));
        } else if ft.is_file() {
            items.push((format!("{base}{name}"), None));
        }
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, subdir) in items {
        if out.len() >= limit {
            break;
        }
        match subdir {
            Some(path) => {
                let holds_prefix = key.starts_with(prefix) || prefix.starts_with(&key);
                // Every key below sorts before `after` when they part within `key`.
                let all_before = after.is_some_and(|a| !a.starts_with(&key) && key.as_str() < a);
                if holds_prefix && !all_before {
                    walk_ordered(&path, &key, prefix, after, limit, out)?;
                }
            }
            None if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) => out.push(key),
            None => {}
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io { path: PathBuf::new(), op: "blocking task", source: std::io::Error::other(e.to_string()) })
    })
}

impl ObjectStore for DirStore {
    async fn put(&self, key: &str, body: PutBody, cond: PutCondition) -> Result<ObjectMeta, StoreError> {
        let (s, key) = (self.clone(), key.to_owned());
        blocking(move || s.put_blocking(&key, body, cond)).await
    }

    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let (file, meta) = blocking(move || Self::meta(&key, &path)).await?;
        let path = self.root.join(&meta.key);
        let remaining = meta.size;
        Ok(GetObject::new(meta, Body::File { file, path, offset: HEADER as u64, remaining }, true))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let (file, meta) = blocking(move || Self::meta(&key, &path)).await?;
        let start = range.start.min(meta.size);
        let end = range.end.clamp(start, meta.size);
        let path = self.root.join(&meta.key);
        let body = Body::File { file, path, offset: HEADER as u64 + start, remaining: end - start };
        Ok(GetObject::new(meta, body, false))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || Self::meta(&key, &path).map(|(_, m)| m)).await
    }

    async fn list_page(&self, prefix: &str, after: Option<String>) -> Result<ListPage, StoreError> {
        let (s, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || s.list_blocking(&prefix, after)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (s, key) = (self.clone(), key.to_owned());
        blocking(move || s.delete_blocking(&key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            self.delete(k).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 31, defect 10: temporaries of puts killed mid-write stayed forever (the sweep ran only in
    /// tests). Opening a store sweeps, in the background, those older than an hour that no put holds.
    #[test]
    fn opening_a_store_sweeps_stale_temporaries_no_put_holds() {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let make = |name: &str, old: bool| {
            let f = File::create(sub.join(name)).unwrap();
            f.set_len(1 << 20).unwrap();
            if old {
                f.set_modified(two_hours_ago).unwrap();
            }
            f
        };
        drop(make(".keel-tmp-killed", true));
        drop(make(".keel-tmp-young", false));
        let held = make(".keel-tmp-held", true);
        held.lock().unwrap();
        let _store = DirStore::open(root.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sub.join(".keel-tmp-killed").exists() {
            assert!(std::time::Instant::now() < deadline, "the stale temporary was not swept");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(sub.join(".keel-tmp-young").exists() && sub.join(".keel-tmp-held").exists());
        drop(held);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Issue 31, defect 10: a listing walked the whole store for every page. The ordered walk returns
        /// exactly what sorting and filtering every key would, page by page.
        #[test]
        fn the_ordered_walk_pages_as_a_sorted_filter_would(
            keys in proptest::collection::btree_set("[a0-]{1,2}(/[a0-]{1,2}){0,2}", 1..40),
            prefix in "[a0/-]{0,3}",
            limit in 1usize..7,
        ) {
            let root = tempfile::tempdir().unwrap();
            let mut made = Vec::new();
            for k in &keys {
                let path = root.path().join(k);
                std::fs::create_dir_all(path.parent().unwrap()).ok();
                // A name is a file or a directory, not both: keep the first.
                if !path.exists() && std::fs::write(&path, b"x").is_ok() {
                    made.push(k.clone());
                }
            }
            made.retain(|k| root.path().join(k).is_file());
            made.sort();
            let want: Vec<String> = made.iter().filter(|k| k.starts_with(&prefix)).cloned().collect();
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut page = Vec::new();
                walk_ordered(root.path(), "", &prefix, after.as_deref(), limit, &mut page).unwrap();
                got.extend(page.iter().cloned());
                if page.len() < limit {
                    break;
                }
                after = page.last().cloned();
            }
            prop_assert_eq!(got, want);
        }
    }
}
