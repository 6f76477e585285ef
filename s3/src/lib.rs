//! # keel-s3
//!
//! One object-store interface, [`ObjectStore`], over two backends: a directory on a mounted volume
//! ([`dir::DirStore`]) and any S3-compatible store ([`s3::S3Store`], through `aws-sdk-s3`). Paging, journal
//! tiering, backup and replication put and get immutable objects through it.
//!
//! ## Guarantees, on both backends
//! - A put is atomic: readers see the whole new object or the old one, never a part.
//! - [`PutCondition::IfAbsent`] (S3 `If-None-Match: *`) and [`PutCondition::IfMatch`] (`If-Match: <etag>`)
//!   hold between processes: they are the fencing primitives. A failed condition is
//!   [`StoreError::PreconditionFailed`], never retried blindly.
//! - Every object carries a CRC32 of its bytes; a whole-object read verifies it and fails with
//!   [`StoreError::ChecksumMismatch`] otherwise. (A ranged read cannot check a whole-object checksum.)
//! - A retried put never duplicates or corrupts: each put carries a unique token, so a condition that fails
//!   only because an earlier attempt of the same put landed is recognised as success.
//! - Large objects stream: a file is uploaded in parts read from disk, a get is read chunk by chunk.

mod any;
pub mod dir;
mod error;
mod key;
pub mod s3;
#[cfg(feature = "test-server")]
pub mod test_server;

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;

pub use any::AnyStore;
pub use error::StoreError;

/// An object's entity tag, as the store gives it. Opaque: only compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

/// What the store knows of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: ETag,
    /// CRC32 of the object's bytes, if it was written through this crate.
    pub crc32: Option<u32>,
}

/// When a put may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutCondition {
    /// Always (replaces any existing object).
    None,
    /// Only if no object has the key.
    IfAbsent,
    /// Only if the object has this etag.
    IfMatch(ETag),
}

/// What to put.
#[derive(Clone, Debug)]
pub enum PutBody {
    Bytes(Bytes),
    /// The file's current contents, streamed (and, when large, uploaded in parallel parts).
    File(PathBuf),
}

/// A body being read.
pub struct GetObject {
    pub meta: ObjectMeta,
    body: error::Body,
    /// The CRC32 the bytes must have at the end (whole-object reads of objects that carry one).
    verify: Option<u32>,
    crc: crc32fast::Hasher,
    read: u64,
}

impl GetObject {
    pub(crate) fn new(meta: ObjectMeta, body: error::Body, whole: bool) -> GetObject {
        let verify = if whole { meta.crc32 } else { None };
        GetObject { meta, body, verify, crc: crc32fast::Hasher::new(), read: 0 }
    }

    /// The next chunk of bytes; `None` at the end, once the checksum (if any) has been verified.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        match self.body.next(&self.meta.key).await? {
            Some(chunk) => {
                self.crc.update(&chunk);
                self.read += chunk.len() as u64;
                Ok(Some(chunk))
            }
            None => {
                if let Some(stored) = self.verify.take() {
                    let computed = self.crc.clone().finalize();
                    if computed != stored {
                        return Err(StoreError::ChecksumMismatch { key: self.meta.key.clone(), stored, computed });
                    }
                }
                Ok(None)
            }
        }
    }

    /// All the bytes, verified. For objects that fit in memory.
    pub async fn bytes(self) -> Result<Bytes, StoreError> {
        self.into_vec().await.map(Bytes::from)
    }

    /// All the bytes, verified, in a buffer the caller owns (to decrypt in place, say).
    pub async fn into_vec(mut self) -> Result<Vec<u8>, StoreError> {
        // A file body is read with one read into the final buffer rather than piece by piece and copied.
        if let error::Body::File { file, path, offset, remaining } = &mut self.body {
            use std::os::unix::fs::FileExt;
            let mut out = vec![0u8; *remaining as usize];
            file.read_exact_at(&mut out, *offset).map_err(StoreError::io(path.clone(), "read object"))?;
            *offset += *remaining;
            *remaining = 0;
            self.crc.update(&out);
            self.read += out.len() as u64;
            self.next_chunk().await?; // the end: checks the checksum
            return Ok(out);
        }
        let mut out = Vec::with_capacity(self.meta.size.min(1 << 30) as usize);
        while let Some(c) = self.next_chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Pass to the next call; `None` when this was the last page.
    pub next: Option<String>,
}

/// Reads of a whole object whose body broke off are attempted this many times in all (`get_all`).
pub const BODY_READ_ATTEMPTS: u32 = 4;

/// An object store. Keys are `/`-separated paths of non-empty segments, without `.` or `..` segments.
pub trait ObjectStore: Send + Sync {
    fn put(
        &self,
        key: &str,
        body: PutBody,
        cond: PutCondition,
    ) -> impl Future<Output = Result<ObjectMeta, StoreError>> + Send;
    /// The whole object, verified against its checksum as it is read.
    fn get(&self, key: &str) -> impl Future<Output = Result<GetObject, StoreError>> + Send;
    /// Bytes `range` of the object (clamped to its end).
    fn get_range(&self, key: &str, range: Range<u64>) -> impl Future<Output = Result<GetObject, StoreError>> + Send;
    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectMeta, StoreError>> + Send;
    /// One page of the objects whose keys start with `prefix`, in key order; `after` is the previous
    /// page's `next`.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<String>,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;
    /// Deletes `key`; deleting an absent object succeeds.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete_many(&self, keys: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The whole object, verified, with its bytes in a buffer the caller owns. A body that breaks off
    /// mid-transfer is read again from the start, up to `BODY_READ_ATTEMPTS` times in all: the SDK retries
    /// a request only until its response begins, and a dropped connection after that is as transient as
    /// one before. For objects that fit in memory.
    fn get_all(&self, key: &str) -> impl Future<Output = Result<(ObjectMeta, Vec<u8>), StoreError>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut attempt = 1;
            loop {
                let got = self.get(key).await?;
                let meta = got.meta.clone();
                match got.into_vec().await {
                    Err(e) if e.is_interrupted_body() && attempt < BODY_READ_ATTEMPTS => {
                        tracing::debug!(key, attempt, error = %e, "reading the object again");
                        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                        attempt += 1;
                    }
                    result => return result.map(|bytes| (meta, bytes)),
                }
            }
        }
    }

    /// Every object under `prefix`, page by page (each page fetched only when the previous is consumed).
    fn list(&self, prefix: &str) -> impl futures::Stream<Item = Result<ObjectMeta, StoreError>> + Send + '_
    where
        Self: Sized,
    {
        let prefix = prefix.to_owned();
        let state = (Some(None::<String>), Vec::<ObjectMeta>::new().into_iter());
        futures::stream::unfold(state, move |(mut after, mut buffered)| {
            let prefix = prefix.clone();
            async move {
                loop {
                    if let Some(m) = buffered.next() {
                        return Some((Ok(m), (after, buffered)));
                    }
                    let token = after.take()?;
                    match self.list_page(&prefix, token).await {
                        Ok(page) => {
                            after = page.next.map(Some);
                            buffered = page.objects.into_iter();
                        }
                        Err(e) => return Some((Err(e), (None, Vec::new().into_iter()))),
                    }
                }
            }
        })
    }
}

/// A random token, hex: etags of the directory backend, and the put tokens that make retries safe.
pub(crate) fn token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The CRC32 of a body (a file is read once for it).
pub(crate) fn body_crc(body: &PutBody) -> std::io::Result<(u32, u64)> {
    match body {
        PutBody::Bytes(b) => Ok((crc32fast::hash(b), b.len() as u64)),
        PutBody::File(path) => {
            use std::io::Read;
            let mut f = std::fs::File::open(path)?;
            let mut h = crc32fast::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                len += n as u64;
            }
            Ok((h.finalize(), len))
        }
    }
}
