//! Errors, and the body stream both backends hand to [`crate::GetObject`].

use std::path::PathBuf;

use bytes::Bytes;

/// Why an object-store operation failed. Each names what and where, and for configuration errors what to
/// fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("object {key:?} not found")]
    NotFound { key: String },
    /// The put's condition does not hold (the fencing case: another writer got there first).
    #[error("object {key:?}: {condition} does not hold")]
    PreconditionFailed { key: String, condition: &'static str },
    #[error(
        "object {key:?}: a put was refused ({condition}) after an attempt whose outcome is unknown, and \
         whether that attempt took effect could not be read ({cause}); read the object to find out"
    )]
    Indeterminate { key: String, condition: &'static str, cause: String },
    #[error("object {key:?}: conflicting concurrent operation (409); retry the whole operation")]
    Conflict { key: String },
    #[error("object {key:?}: checksum mismatch: stored {stored:#010x}, read {computed:#010x} (the object is damaged)")]
    ChecksumMismatch { key: String, stored: u32, computed: u32 },
    #[error("invalid object key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    #[error("configuration: {what}; {fix}")]
    Config { what: String, fix: String },
    #[error("access denied to {resource}: {detail}; check the credentials and the bucket policy")]
    AccessDenied { resource: String, detail: String },
    #[error("bucket {bucket:?} does not exist; create it or fix the bucket name")]
    NoSuchBucket { bucket: String },
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("{}: not a valid object file: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{op} {key:?} failed{}: {message}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default())]
    Service { op: &'static str, key: String, status: Option<u16>, message: String },
}

/// The `op` of a body that broke off after its response began (a dropped connection).
pub(crate) const READ_BODY_OP: &str = "read body of";

impl StoreError {
    /// The response began and its body broke off (a connection dropped mid-transfer): the SDK's retries
    /// end when the response starts, so a whole-object read retries these itself (`ObjectStore::get_all`).
    pub fn is_interrupted_body(&self) -> bool {
        matches!(self, StoreError::Service { op, status: None, .. } if *op == READ_BODY_OP)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, op, source }
    }
}

/// The bytes of a get, from either backend.
pub(crate) enum Body {
    File { file: std::fs::File, path: PathBuf, offset: u64, remaining: u64 },
    S3(aws_sdk_s3::primitives::ByteStream),
}

const CHUNK: u64 = 256 * 1024;

impl Body {
    pub async fn next(&mut self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self {
            Body::File { file, path, offset, remaining } => {
                if *remaining == 0 {
                    return Ok(None);
                }
                let n = (*remaining).min(CHUNK) as usize;
                let mut buf = vec![0u8; n];
                use std::os::unix::fs::FileExt;
                // A page-cache read of at most 256 KiB: short enough to do inline on the runtime.
                file.read_exact_at(&mut buf, *offset).map_err(StoreError::io(path.clone(), "read object"))?;
                *offset += n as u64;
                *remaining -= n as u64;
                Ok(Some(buf.into()))
            }
            Body::S3(stream) => match stream.next().await {
                None => Ok(None),
                Some(Ok(b)) => Ok(Some(b)),
                Some(Err(e)) => {
                    let mut message = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(c) = src {
                        message.push_str(": ");
                        message.push_str(&c.to_string());
                        src = c.source();
                    }
                    Err(StoreError::Service { op: READ_BODY_OP, key: key.to_owned(), status: None, message })
                }
            },
        }
    }
}
