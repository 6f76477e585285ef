//! A backup repository: an object store, a prefix in it, its config and its key
//! (docs/BACKUP-FORMAT.md, "Objects").

use std::future::Future;

use bytes::Bytes;
use futures::TryStreamExt;
use keel_journal::crypto::keys::KeyRing;
use keel_s3::{AnyStore, ObjectMeta, ObjectStore, PutBody, PutCondition, StoreError};

use crate::error::BackupError;
use crate::seal::{OpenFailure, RepoKeys};

const CONFIG: &str = "config";
const CONFIG_MAGIC: &[u8; 8] = b"KEELREPO";
const CONFIG_VERSION: u32 = 1;
const CONFIG_BYTES: usize = 64;
const KEY_CHECK: &[u8; 16] = b"keel-backup-ok!!";
/// Chunk size of repositories this version creates.
pub const CHUNK_BYTES: u64 = 4 << 20;

/// The fixed part of the `config` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub chunk_bytes: u32,
    pub repo_id: [u8; 16],
    pub created_unix_ms: u64,
    pub key_id: u32,
}

impl Config {
    pub(crate) fn encode(&self) -> [u8; CONFIG_BYTES] {
        let mut b = [0u8; CONFIG_BYTES];
        b[0..8].copy_from_slice(CONFIG_MAGIC);
        b[8..12].copy_from_slice(&CONFIG_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[16..32].copy_from_slice(&self.repo_id);
        b[32..40].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b[40..44].copy_from_slice(&self.key_id.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Config, String> {
        let b = b.get(..CONFIG_BYTES).ok_or_else(|| format!("{} bytes, expected at least {CONFIG_BYTES}", b.len()))?;
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        if &b[0..8] != CONFIG_MAGIC {
            return Err("bad magic (not a Keel backup repository config)".into());
        }
        let crc = crc32fast::hash(&b[..60]);
        if u32_at(60) != crc {
            return Err(format!("checksum mismatch: stored {:#010x}, computed {crc:#010x}", u32_at(60)));
        }
        if u32_at(8) != CONFIG_VERSION {
            return Err(format!("repository format version {} (this build reads version {CONFIG_VERSION})", u32_at(8)));
        }
        let chunk_bytes = u32_at(12);
        if !(64 * 1024..=64 << 20).contains(&chunk_bytes) {
            return Err(format!("chunk size {chunk_bytes} out of range"));
        }
        Ok(Config {
            chunk_bytes,
            repo_id: b[16..32].try_into().unwrap(),
            created_unix_ms: u64::from_le_bytes(b[32..40].try_into().unwrap()),
            key_id: u32_at(40),
        })
    }
}

/// A repository, opened with its key.
pub struct Repo {
    rt: Option<tokio::runtime::Runtime>,
    pub(crate) store: AnyStore,
    prefix: String,
    location: String,
    pub(crate) keys: RepoKeys,
    pub(crate) config: Config,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Drop for Repo {
    /// A repository may be dropped inside an async task, where dropping a runtime (which blocks) panics.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BackupError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("keel-backup")
        .enable_all()
        .build()
        .map_err(BackupError::io("tokio runtime", "start"))
}

/// Splits `s3://BUCKET/PREFIX` into the store location and a key prefix (ending in `/` unless empty).
fn split_location(location: &str) -> (String, String) {
    match location.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
            (format!("s3://{bucket}"), prefix)
        }
        None => (location.to_owned(), String::new()),
    }
}

/// The object saying when chunks were last removed.
pub(crate) const CHUNKS_REMOVED: &str = "state/chunks-removed";

/// Whether to create the repository when the prefix holds none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    IfAbsent,
    Never,
}

impl Repo {
    /// Opens the repository at `location` (a directory, or `s3://BUCKET/PREFIX` with the AWS environment).
    pub fn open(location: &str, ring: KeyRing, create: Create) -> Result<Repo, BackupError> {
        let rt = runtime()?;
        let (store_at, prefix) = split_location(location);
        let store = rt.block_on(AnyStore::open(&store_at))?;
        Repo::finish_open(rt, store, prefix, location.to_owned(), ring, create)
    }

    /// Opens the repository under `prefix` of an already configured store (tests, embedding).
    pub fn open_in(store: AnyStore, prefix: &str, ring: KeyRing, create: Create) -> Result<Repo, BackupError> {
        let rt = runtime()?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let location = format!("{}/{prefix}", store.location().trim_end_matches('/'));
        Repo::finish_open(rt, store, prefix, location, ring, create)
    }

    fn finish_open(
        rt: tokio::runtime::Runtime,
        store: AnyStore,
        prefix: String,
        location: String,
        ring: KeyRing,
        create: Create,
    ) -> Result<Repo, BackupError> {
        let key = format!("{prefix}{CONFIG}");
        let existing = rt.block_on(async {
            match store.get_all(&key).await {
                Ok((_, b)) => Ok(Some(Bytes::from(b))),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let bytes = match (existing, create) {
            (Some(b), _) => b,
            (None, Create::Never) => return Err(BackupError::NoRepository { location }),
            (None, Create::IfAbsent) => {
                let mut repo_id = [0u8; 16];
                getrandom::fill(&mut repo_id).expect("the OS random source works");
                let config = Config {
                    chunk_bytes: CHUNK_BYTES as u32,
                    repo_id,
                    created_unix_ms: crate::now_ms(),
                    key_id: ring.current().0,
                };
                let keys = RepoKeys::new(ring.clone(), repo_id, config.key_id, &location)?;
                let mut b = config.encode().to_vec();
                b.extend_from_slice(&keys.seal_with(config.key_id, CONFIG, KEY_CHECK));
                let put = rt.block_on(store.put(&key, PutBody::Bytes(b.clone().into()), PutCondition::IfAbsent));
                match put {
                    Ok(_) => Bytes::from(b),
                    // Another first run won (or ours landed unconfirmed); use what is there.
                    Err(StoreError::PreconditionFailed { .. } | StoreError::Indeterminate { .. }) => {
                        rt.block_on(store.get_all(&key)).map(|(_, b)| Bytes::from(b))?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let config = Config::decode(&bytes).map_err(|why| BackupError::damaged(&key, why))?;
        let keys = RepoKeys::new(ring, config.repo_id, config.key_id, &location)?;
        match keys.open(CONFIG, &bytes[CONFIG_BYTES..]) {
            Ok(check) if check == KEY_CHECK => {}
            Ok(_) => return Err(BackupError::damaged(&key, "key check holds the wrong bytes")),
            Err(OpenFailure::Authentication) => return Err(BackupError::WrongKey { location, key_id: config.key_id }),
            Err(OpenFailure::UnknownKey(key_id)) => return Err(BackupError::KeyMissing { location, key_id }),
            Err(OpenFailure::Format) => return Err(BackupError::damaged(&key, "key check is not a sealed object")),
        }
        Ok(Repo { rt: Some(rt), store, prefix, location, keys, config })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn config(&self) -> Config {
        self.config
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.config.chunk_bytes)
    }

    /// Runs `f` on the repository's runtime.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("the runtime lives as long as the repository").block_on(f)
    }

    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.rt.as_ref().expect("the runtime lives as long as the repository").handle().clone()
    }

    /// The store key of the repository object `name`.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Reads and opens the sealed object `name`.
    /// When `verify --remove-damaged` last removed chunks (unix ms), or 0 (docs/BACKUP-FORMAT.md,
    /// "state/chunks-removed").
    pub(crate) fn chunks_removed_unix_ms(&self) -> Result<u64, BackupError> {
        match self.block_on(self.get_sealed(CHUNKS_REMOVED)) {
            Ok((plain, _)) => std::str::from_utf8(&plain)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| BackupError::damaged(&self.key(CHUNKS_REMOVED), "not a time in unix ms".to_owned())),
            Err(BackupError::Store(keel_s3::StoreError::NotFound { .. })) => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn get_sealed(&self, name: &str) -> Result<(Vec<u8>, ObjectMeta), BackupError> {
        let key = self.key(name);
        let (meta, bytes) = self.store.get_all(&key).await?;
        let plain = self.keys.open(name, &bytes).map_err(|e| BackupError::damaged(&key, e.to_string()))?;
        Ok((plain, meta))
    }

    pub(crate) async fn put_sealed(
        &self,
        name: &str,
        plain: &[u8],
        cond: PutCondition,
    ) -> Result<ObjectMeta, StoreError> {
        let sealed = self.keys.seal(name, plain);
        self.store.put(&self.key(name), PutBody::Bytes(sealed.into()), cond).await
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.store.delete(&self.key(name)).await
    }

    /// Names (relative to the repository) of the objects under `under`, in key order.
    pub(crate) async fn list(&self, under: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = self.key(under);
        let strip = self.prefix.len();
        self.store.list(&prefix).map_ok(|m| (m.key[strip..].to_owned(), m.size)).try_collect().await
    }

    /// Visits the objects under `under` page by page, without holding the whole listing.
    pub(crate) async fn for_each(
        &self,
        under: &str,
        mut f: impl FnMut(&str, u64) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        let prefix = self.key(under);
        let strip = self.prefix.len();
        let mut s = std::pin::pin!(self.store.list(&prefix));
        while let Some(m) = s.try_next().await? {
            f(&m.key[strip..], m.size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_store_and_prefix() {
        assert_eq!(split_location("s3://b/x/y/"), ("s3://b".into(), "x/y/".into()));
        assert_eq!(split_location("s3://b"), ("s3://b".into(), String::new()));
        assert_eq!(split_location("/var/backups"), ("/var/backups".into(), String::new()));
    }

    #[test]
    fn config_round_trips_and_refuses_damage() {
        let c = Config { chunk_bytes: 4 << 20, repo_id: [3; 16], created_unix_ms: 42, key_id: 1 };
        let b = c.encode();
        assert_eq!(Config::decode(&b).unwrap(), c);
        for i in 0..CONFIG_BYTES {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(Config::decode(&bad).is_err(), "flip at {i}");
        }
        assert!(Config::decode(&b[..10]).is_err());
    }
}
