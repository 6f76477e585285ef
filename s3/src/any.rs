//! Either backend, chosen at run time: what a tool or a configuration names as a directory or as
//! `s3://BUCKET`.

use std::ops::Range;

use crate::dir::DirStore;
use crate::s3::{S3Config, S3Store};
use crate::{GetObject, ListPage, ObjectMeta, ObjectStore, PutBody, PutCondition, StoreError};

/// A directory store or an S3 store behind one type.
#[derive(Clone, Debug)]
pub enum AnyStore {
    Dir(DirStore),
    // Boxed: the S3 client is a few hundred bytes, the directory store one pointer.
    S3(Box<S3Store>),
}

impl AnyStore {
    /// `s3://BUCKET` (endpoint, region and credentials from the AWS environment), or a directory path
    /// (created if absent).
    pub async fn open(location: &str) -> Result<AnyStore, StoreError> {
        match location.strip_prefix("s3://") {
            Some(bucket) => {
                let cfg = S3Config::new(bucket.trim_end_matches('/'));
                Ok(AnyStore::S3(Box::new(S3Store::connect(cfg).await?)))
            }
            None => Ok(AnyStore::Dir(DirStore::open(location)?)),
        }
    }
}

impl AnyStore {
    /// Where the store is, as `AnyStore::open` takes it: the directory, or `s3://BUCKET`.
    pub fn location(&self) -> String {
        match self {
            AnyStore::Dir(s) => s.root().display().to_string(),
            AnyStore::S3(s) => format!("s3://{}", s.bucket()),
        }
    }
}

impl From<DirStore> for AnyStore {
    fn from(s: DirStore) -> AnyStore {
        AnyStore::Dir(s)
    }
}

impl From<S3Store> for AnyStore {
    fn from(s: S3Store) -> AnyStore {
        AnyStore::S3(Box::new(s))
    }
}

impl ObjectStore for AnyStore {
    async fn put(&self, key: &str, body: PutBody, cond: PutCondition) -> Result<ObjectMeta, StoreError> {
        match self {
            AnyStore::Dir(s) => s.put(key, body, cond).await,
            AnyStore::S3(s) => s.put(key, body, cond).await,
        }
    }

    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        match self {
            AnyStore::Dir(s) => s.get(key).await,
            AnyStore::S3(s) => s.get(key).await,
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        match self {
            AnyStore::Dir(s) => s.get_range(key, range).await,
            AnyStore::S3(s) => s.get_range(key, range).await,
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        match self {
            AnyStore::Dir(s) => s.head(key).await,
            AnyStore::S3(s) => s.head(key).await,
        }
    }

    async fn list_page(&self, prefix: &str, after: Option<String>) -> Result<ListPage, StoreError> {
        match self {
            AnyStore::Dir(s) => s.list_page(prefix, after).await,
            AnyStore::S3(s) => s.list_page(prefix, after).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Dir(s) => s.delete(key).await,
            AnyStore::S3(s) => s.delete(key).await,
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        match self {
            AnyStore::Dir(s) => s.delete_many(keys).await,
            AnyStore::S3(s) => s.delete_many(keys).await,
        }
    }
}
