//! Errors of the paging store: each names the address (and page) it concerns.

use std::path::PathBuf;
use std::sync::Arc;

use keel_journal::{AppendError, ReadError};

/// Why a paging operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PagingError {
    #[error("address {address:?}, page {}: {why}", path.display())]
    CorruptPage { address: String, path: PathBuf, why: String },
    #[error("address {address:?}: page {page} is missing ({}); pages {first}..={last} remain", dir.display())]
    MissingPage { address: String, dir: PathBuf, page: u64, first: u64, last: u64 },
    #[error("address {address:?} is unavailable: {cause}")]
    AddressFailed { address: String, cause: Box<PagingError> },
    #[error("address {address:?}: {op} {}: {source}", path.display())]
    Io { address: String, path: PathBuf, op: &'static str, source: Arc<std::io::Error> },
    #[error("paging store: {op} {}: {source}", path.display())]
    StoreIo { path: PathBuf, op: &'static str, source: Arc<std::io::Error> },
    #[error("address {address:?} stopped after {op} failed on {}: {source}; reopen to recover what is durable", path.display())]
    Poisoned { address: String, path: PathBuf, op: &'static str, source: Arc<std::io::Error> },
    #[error("address {address:?}: object store, {key}: {why}")]
    Remote { address: String, key: String, why: String },
    #[error("journal record {id:#x}: {why}")]
    BadRecord { id: u64, why: String },
    #[error("journal: {0}")]
    Journal(Arc<AppendError>),
    #[error("journal: {0}")]
    JournalOpen(Arc<keel_journal::OpenError>),
    #[error("journal read: {0}")]
    JournalRead(Arc<ReadError>),
    #[error("address {address:?}: page {page} is encrypted and no master key with id {key_id} was given")]
    MissingKey { address: String, page: u64, key_id: u32 },
    #[error("address {address:?}: page {page}: the master key {key_id} does not open its data key (wrong key?)")]
    WrongKey { address: String, page: u64, key_id: u32 },
    #[error("address {address:?}, subscription {subscription:?}: message {seq} was not delivered or is already acknowledged")]
    NotDelivered { address: String, subscription: String, seq: u64 },
    #[error("address {address:?}: no subscription {subscription:?}")]
    NoSuchSubscription { address: String, subscription: String },
    #[error("address {address:?}: subscription {subscription:?} already exists")]
    SubscriptionExists { address: String, subscription: String },
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge { len: u64, max: u64 },
    #[error(
        "address {address:?}: subscription {subscription:?} would hold {ranges} acknowledged ranges, more than \
         its cursor record can ({max} bytes): acknowledge or hand back (nack) the oldest messages in flight"
    )]
    CursorTooLarge { address: String, subscription: String, ranges: usize, max: u64 },
    #[error("invalid option {name}: {why}")]
    InvalidOption { name: &'static str, why: String },
}

impl PagingError {
    /// Whether the error may pass without anything being repaired: the object store or a file unreachable
    /// for a while, not damage.
    pub fn is_transient(&self) -> bool {
        match self {
            PagingError::AddressFailed { cause, .. } => cause.is_transient(),
            PagingError::Remote { .. } | PagingError::Io { .. } | PagingError::StoreIo { .. } => true,
            _ => false,
        }
    }
}

impl From<AppendError> for PagingError {
    fn from(e: AppendError) -> PagingError {
        PagingError::Journal(Arc::new(e))
    }
}

impl From<ReadError> for PagingError {
    fn from(e: ReadError) -> PagingError {
        PagingError::JournalRead(Arc::new(e))
    }
}

pub(crate) fn io(
    address: &str,
    path: &std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> PagingError {
    let (address, path) = (address.to_owned(), path.to_path_buf());
    move |e| PagingError::Io { address, path, op, source: Arc::new(e) }
}
