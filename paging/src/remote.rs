//! Sealed pages in an object store (a volume directory or S3, through keel-s3): uploaded once complete and
//! then deleted locally; fetched whole (checksum verified) when a reader or recovery needs them, and kept in
//! a small cache. The open page always stays on the local volume, where appends are fdatasynced.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use keel_s3::{AnyStore, ObjectStore, PutBody, PutCondition, StoreError};

use crate::error::PagingError;

/// Sealed pages in an object store.
#[derive(Clone, Debug)]
pub struct RemotePages {
    pub store: AnyStore,
    /// Key prefix, e.g. `broker-1/pages/` (a page is `<prefix><address store id>/<page id>.kpage`).
    pub prefix: String,
    /// Fetched pages kept in memory (each up to `page_bytes`), shared by all subscriptions.
    pub cache_pages: usize,
}

/// A page's bytes as fetched.
pub type PageBytes = Arc<[u8]>;

#[derive(Debug)]
pub(crate) struct Remote {
    cfg: RemotePages,
    /// Always `Some` until drop (an `Option` so that drop can shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    cache: Mutex<VecDeque<(String, PageBytes)>>,
}

fn remote_error(address: &str, key: &str, e: StoreError) -> PagingError {
    PagingError::Remote { address: address.to_owned(), key: key.to_owned(), why: e.to_string() }
}

impl Remote {
    pub fn new(cfg: RemotePages) -> Result<Remote, PagingError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keel-paging-remote")
            .enable_all()
            .build()
            .map_err(|e| PagingError::StoreIo {
                path: Default::default(),
                op: "start the object-store runtime",
                source: Arc::new(e),
            })?;
        Ok(Remote { cfg, rt: Some(rt), cache: Mutex::new(VecDeque::new()) })
    }

    /// Runs `f` on the runtime and waits for it; callable from any thread, also a runtime's.
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.as_ref().expect("runtime present until drop").spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the object-store runtime dropped a task")
    }

    /// The prefix of an address's pages: `<prefix><store id in hex>/`.
    fn address_prefix(&self, store_id: &[u8; 16]) -> String {
        let id: String = store_id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{id}/", self.cfg.prefix)
    }

    pub fn key(&self, store_id: &[u8; 16], page_id: u64) -> String {
        format!("{}{page_id:020}.kpage", self.address_prefix(store_id))
    }

    pub fn upload(&self, address: &str, key: &str, path: &std::path::Path) -> Result<(), PagingError> {
        let (store, k, p) = (self.cfg.store.clone(), key.to_owned(), path.to_path_buf());
        // Immutable content: a repeated upload (after a crash before the local delete) writes the same bytes.
        let r = self.run(async move { store.put(&k, PutBody::File(p), PutCondition::None).await });
        r.map(|_| ()).map_err(|e| remote_error(address, key, e))
    }

    /// The whole page, verified, through the cache.
    pub fn fetch(&self, address: &str, key: &str) -> Result<PageBytes, PagingError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, b)) = cache.iter().find(|(k, _)| k == key) {
                return Ok(b.clone());
            }
        }
        let (store, k) = (self.cfg.store.clone(), key.to_owned());
        let r = self.run(async move { store.get_all(&k).await });
        let bytes: PageBytes = PageBytes::from(r.map_err(|e| remote_error(address, key, e))?.1);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(k, _)| k != key);
        cache.push_back((key.to_owned(), bytes.clone()));
        while cache.len() > self.cfg.cache_pages.max(1) {
            cache.pop_front();
        }
        Ok(bytes)
    }

    /// Page ids stored for an address.
    pub fn list(&self, address: &str, store_id: &[u8; 16]) -> Result<Vec<u64>, PagingError> {
        let prefix = self.address_prefix(store_id);
        let (store, p) = (self.cfg.store.clone(), prefix.clone());
        let r = self.run(async move { store.list(&p).map_ok(|m| m.key).try_collect::<Vec<_>>().await });
        let keys = r.map_err(|e| remote_error(address, &prefix, e))?;
        let mut ids: Vec<u64> =
            keys.iter().filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".kpage")?.parse().ok()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn delete(&self, address: &str, keys: Vec<String>) -> Result<(), PagingError> {
        if keys.is_empty() {
            return Ok(());
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|(k, _)| !keys.contains(k));
        }
        let first = keys[0].clone();
        let store = self.cfg.store.clone();
        let r = self.run(async move { store.delete_many(&keys).await });
        r.map_err(|e| remote_error(address, &first, e))
    }
}

impl Drop for Remote {
    /// A broker may drop the paging store inside an async task, where dropping a runtime (which blocks)
    /// would panic: shut it down in the background instead.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Uploads complete pages in the background, in order, retrying with backoff while the store is down.
#[derive(Debug, Default)]
pub(crate) struct Uploader {
    queue: Mutex<UploadQueue>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct UploadQueue {
    jobs: VecDeque<(std::sync::Weak<crate::address::Address>, u64)>,
    busy: bool,
    stop: bool,
}

impl Uploader {
    pub fn start() -> (Arc<Uploader>, std::thread::JoinHandle<()>) {
        let u = Arc::new(Uploader::default());
        let worker = u.clone();
        let handle = std::thread::Builder::new()
            .name("keel-paging-upload".into())
            .spawn(move || worker.run())
            .expect("spawning the upload thread");
        (u, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, address: std::sync::Weak<crate::address::Address>, page: u64) {
        self.lock().jobs.push_back((address, page));
        self.changed.notify_all();
    }

    /// Waits until every queued page is uploaded (or its address is gone).
    pub fn wait_idle(&self) {
        let mut q = self.lock();
        while (!q.jobs.is_empty() || q.busy) && !q.stop {
            q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn pending(&self) -> usize {
        let q = self.lock();
        q.jobs.len() + usize::from(q.busy)
    }

    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    fn run(&self) {
        let mut failures = 0u32;
        loop {
            let (address, page) = {
                let mut q = self.lock();
                loop {
                    if q.stop {
                        return;
                    }
                    if let Some(job) = q.jobs.pop_front() {
                        q.busy = true;
                        break job;
                    }
                    q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            let result = address.upgrade().map_or(Ok(()), |a| a.upload_page(page));
            let mut q = self.lock();
            q.busy = false;
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, page, failures, "page upload failed; retrying");
                    q.jobs.push_front((address, page));
                    let backoff = std::time::Duration::from_millis((100u64 << failures.min(6)).min(5000));
                    drop(q);
                    self.changed.notify_all();
                    std::thread::sleep(backoff);
                    continue;
                }
            }
            drop(q);
            self.changed.notify_all();
        }
    }
}
