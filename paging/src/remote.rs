//! Sealed pages in an object store (a volume directory or S3, through keel-s3): uploaded once complete and
//! then deleted locally; read in ranges, a read-ahead chunk at a time, when a reader or recovery needs them
//! (never held whole: the memory a backlog in the object store takes does not grow with it). A range is
//! not covered by the object's checksum; every frame (or unit) it holds is checked by its own. The open
//! page always stays on the local volume, where appends are fdatasynced.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use keel_journal::vfs::{OpenMode, Vfs};
use keel_s3::{AnyStore, ObjectStore, PutBody, PutCondition, StoreError};

use crate::error::PagingError;

/// Sealed pages in an object store.
#[derive(Clone, Debug)]
pub struct RemotePages {
    pub store: AnyStore,
    /// Key prefix, e.g. `broker-1/pages/` (a page is `<prefix><address store id>/<page id>.kpage`).
    pub prefix: String,
}

#[derive(Debug)]
pub(crate) struct Remote {
    cfg: RemotePages,
    /// Always `Some` until drop (an `Option` so that drop can shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
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
        Ok(Remote { cfg, rt: Some(rt) })
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

    pub fn upload(&self, address: &str, key: &str, vfs: &dyn Vfs, path: &Path) -> Result<(), PagingError> {
        // On the operating system's files keel-s3 streams the page itself (in parallel parts when large);
        // behind another filesystem (the simulator's) the page is read whole through it.
        let body = match vfs.os_path(path) {
            Some(p) => PutBody::File(p),
            None => {
                let read = |e| crate::error::io(address, path, "read page to upload")(e);
                let file = vfs.open(path, OpenMode::Read).map_err(read)?;
                let mut bytes = vec![0; file.size().map_err(read)? as usize];
                file.read_exact_at(&mut bytes, 0).map_err(read)?;
                PutBody::Bytes(bytes.into())
            }
        };
        let (store, k) = (self.cfg.store.clone(), key.to_owned());
        // Immutable content: a repeated upload (after a crash before the local delete) writes the same bytes.
        let r = self.run(async move { store.put(&k, body, PutCondition::None).await });
        r.map(|_| ()).map_err(|e| remote_error(address, key, e))
    }

    /// Bytes `offset..offset + buf.len()` of the object `key`.
    pub fn read_range(&self, key: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let (store, k, end) = (self.cfg.store.clone(), key.to_owned(), offset + buf.len() as u64);
        let got = self.run(async move { store.get_range(&k, offset..end).await?.into_vec().await });
        let got = got.map_err(|e| std::io::Error::other(format!("object {key}: {e}")))?;
        if got.len() != buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object {key}: {} bytes at {offset}, wanted {}", got.len(), buf.len()),
            ));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }

    /// Page ids stored for an address, with each object's size.
    pub fn list(&self, address: &str, store_id: &[u8; 16]) -> Result<Vec<(u64, u64)>, PagingError> {
        let prefix = self.address_prefix(store_id);
        let (store, p) = (self.cfg.store.clone(), prefix.clone());
        let r = self.run(async move { store.list(&p).map_ok(|m| (m.key, m.size)).try_collect::<Vec<_>>().await });
        let objects = r.map_err(|e| remote_error(address, &prefix, e))?;
        let id = |k: &str| k.strip_prefix(&prefix)?.strip_suffix(".kpage")?.parse().ok();
        let mut ids: Vec<(u64, u64)> = objects.iter().filter_map(|(k, size)| Some((id(k)?, *size))).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn delete(&self, address: &str, keys: Vec<String>) -> Result<(), PagingError> {
        if keys.is_empty() {
            return Ok(());
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
    /// Uploads failed so far, and the last failure: what a waiter that saw one fail returns.
    failures: u64,
    last_failure: Option<PagingError>,
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

    /// Waits until every queued page is uploaded (or its address is gone), or until an upload fails: then
    /// its error (the upload is retried in the background; a failure need not pass).
    pub fn wait_idle(&self) -> Result<(), PagingError> {
        let mut q = self.lock();
        let failures = q.failures;
        while (!q.jobs.is_empty() || q.busy) && !q.stop {
            if q.failures > failures {
                return Err(q.last_failure.clone().expect("recorded with the count"));
            }
            q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
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
                    q.failures += 1;
                    q.last_failure = Some(e);
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
