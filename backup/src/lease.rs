//! The repository lease (docs/BACKUP-FORMAT.md, "The lease"): one object, taken with create-if-absent or,
//! once expired, with put-if-match; kept alive by a heartbeat; released by deleting it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_s3::{ETag, ObjectStore, PutCondition, StoreError};
use serde::{Deserialize, Serialize};

use crate::error::BackupError;
use crate::repo::Repo;

const NAME: &str = "lease";

/// How long a lease lasts without a heartbeat, and how long to wait for one held by another process.
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    pub ttl: Duration,
    pub wait: Duration,
}

impl Default for LeaseOptions {
    fn default() -> LeaseOptions {
        LeaseOptions { ttl: Duration::from_secs(60), wait: Duration::from_secs(120) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Holder {
    owner: String,
    host: String,
    pid: u32,
    op: String,
    acquired_unix_ms: u64,
    expires_unix_ms: u64,
}

impl Holder {
    fn describe(&self) -> String {
        format!("{} on {} (pid {}, owner {})", self.op, self.host, self.pid, self.owner)
    }
}

/// A held lease. Released on drop (best effort) or by [`Lease::release`].
pub struct Lease {
    op: &'static str,
    lost: Arc<AtomicBool>,
    etag: Arc<Mutex<ETag>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    store: keel_s3::AnyStore,
    key: String,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("op", &self.op).field("key", &self.key).finish_non_exhaustive()
    }
}

impl Lease {
    /// Fails if the heartbeat found the lease taken by another process: call before every change.
    pub fn check(&self) -> Result<(), BackupError> {
        match self.lost.load(Ordering::Acquire) {
            true => Err(BackupError::LeaseLost { op: self.op }),
            false => Ok(()),
        }
    }

    /// Like [`Lease::check`], and also reads the lease object to see that it is still ours: before a step
    /// that cannot be undone (a manifest written, objects deleted). On a store that honours conditional
    /// writes the heartbeat alone would do; this also catches one that does not, where another process's
    /// "create-if-absent" silently replaced ours.
    pub fn confirm(&self) -> Result<(), BackupError> {
        self.check()?;
        let (store, key) = (self.store.clone(), self.key.clone());
        let ours = self.etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current = self.handle.block_on(async move { store.head(&key).await });
        match current {
            Ok(m) if m.etag == ours => Ok(()),
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                self.lost.store(true, Ordering::Release);
                Err(BackupError::LeaseLost { op: self.op })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn release(mut self) -> Result<(), BackupError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), BackupError> {
        let Some(stop) = self.stop.take() else { return Ok(()) };
        let _ = stop.send(());
        let (heartbeat, store, key, lost) =
            (self.heartbeat.take(), self.store.clone(), self.key.clone(), self.lost.clone());
        let etag = self.etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let handle = self.handle.clone();
        let run = async move {
            if let Some(h) = heartbeat {
                let _ = h.await;
            }
            // Delete only our own lease: if it was taken over, the new holder's must stay.
            if lost.load(Ordering::Acquire) {
                return Ok(());
            }
            match store.head(&key).await {
                Ok(m) if m.etag == etag => store.delete(&key).await,
                Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        };
        // Released from synchronous code; from inside the runtime (a drop in a task), in the background.
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                handle.spawn(run);
                Ok(())
            }
            Err(_) => handle.block_on(run).map_err(BackupError::from),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            tracing::warn!(error = %e, "releasing the repository lease failed; it expires on its own");
        }
    }
}

fn owner_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    crate::seal::hex(&b)
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl Repo {
    /// Fails unless a second create-if-absent of the lease we just created is refused: a store that
    /// ignores `If-None-Match` would let two processes both "take" the lease, and prune could then delete
    /// chunks a concurrent backup relies on. Our lease is removed again before failing.
    fn require_conditional_writes(&self) -> Result<(), BackupError> {
        let probe = self.block_on(self.put_sealed(NAME, b"{}", PutCondition::IfAbsent));
        match probe {
            // Refused: the store honours the condition (the lease we hold is there).
            Err(StoreError::PreconditionFailed { .. } | StoreError::Indeterminate { .. }) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => {
                let _ = self.block_on(self.delete(NAME));
                Err(BackupError::Invalid {
                    name: "repository store",
                    why: format!(
                        "{} accepted a create-if-absent put of an existing object: it does not honour conditional \
                         writes (If-None-Match), which the repository lease needs; use S3 or a store that does",
                        self.location()
                    ),
                })
            }
        }
    }

    /// Takes the repository lease for `op`, waiting up to `opts.wait` for another holder.
    pub fn lease(&self, op: &'static str, opts: LeaseOptions) -> Result<Lease, BackupError> {
        let start = std::time::Instant::now();
        let owner = owner_id();
        let holder = |now: u64| Holder {
            owner: owner.clone(),
            host: hostname(),
            pid: std::process::id(),
            op: op.to_owned(),
            acquired_unix_ms: now,
            expires_unix_ms: now + opts.ttl.as_millis() as u64,
        };
        let encode = |h: &Holder| serde_json::to_vec(h).expect("a lease serialises");
        let etag = loop {
            let now = crate::now_ms();
            match self.block_on(self.put_sealed(NAME, &encode(&holder(now)), PutCondition::IfAbsent)) {
                Ok(meta) => {
                    self.require_conditional_writes()?;
                    break meta.etag;
                }
                // Indeterminate: an earlier attempt may have landed; the lease read below tells.
                Err(StoreError::PreconditionFailed { .. } | StoreError::Indeterminate { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let current = match self.block_on(self.get_sealed(NAME)) {
                Ok((plain, meta)) => Some((plain, meta)),
                Err(BackupError::Store(StoreError::NotFound { .. })) => None, // released meanwhile: retry
                Err(e) => return Err(e),
            };
            if let Some((plain, meta)) = current {
                let other: Holder = serde_json::from_slice(&plain)
                    .map_err(|e| BackupError::damaged(&self.key(NAME), format!("lease is not valid JSON: {e}")))?;
                if other.owner == owner {
                    // Our own put, whose answer was lost or could not be confirmed.
                    break meta.etag;
                }
                if other.expires_unix_ms < now {
                    tracing::warn!(holder = %other.describe(), "taking over an expired repository lease");
                    let cond = PutCondition::IfMatch(meta.etag);
                    match self.block_on(self.put_sealed(NAME, &encode(&holder(now)), cond)) {
                        Ok(meta) => break meta.etag,
                        // Another taker won, or ours landed unconfirmed: the next read tells.
                        Err(StoreError::PreconditionFailed { .. } | StoreError::Indeterminate { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if start.elapsed() >= opts.wait {
                    return Err(BackupError::Leased {
                        holder: other.describe(),
                        expires_unix_ms: other.expires_unix_ms,
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(200).min(opts.ttl / 4));
        };
        let lost = Arc::new(AtomicBool::new(false));
        let etag = Arc::new(Mutex::new(etag));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let heartbeat = {
            let (lost, etag, store, key, keys) =
                (lost.clone(), etag.clone(), self.store.clone(), self.key(NAME), self.keys.clone());
            let acquired = crate::now_ms();
            let holder = holder(acquired);
            self.handle().spawn(async move {
                let period = opts.ttl / 3;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                    let mut h = holder.clone();
                    h.expires_unix_ms = crate::now_ms() + opts.ttl.as_millis() as u64;
                    let body = keys.seal(NAME, &serde_json::to_vec(&h).expect("a lease serialises"));
                    let current = etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let ours = || async {
                        let (meta, bytes) = store.get_all(&key).await.ok()?;
                        let h: Holder = serde_json::from_slice(&keys.open(NAME, &bytes).ok()?).ok()?;
                        (h.owner == holder.owner).then_some(meta.etag)
                    };
                    match store.put(&key, keel_s3::PutBody::Bytes(body.into()), PutCondition::IfMatch(current)).await {
                        Ok(meta) => *etag.lock().unwrap_or_else(|p| p.into_inner()) = meta.etag,
                        // Refused, or unconfirmed: an earlier beat of ours may have landed unconfirmed and
                        // changed the etag. The lease is lost only if another owner holds it.
                        Err(
                            e @ (StoreError::PreconditionFailed { .. }
                            | StoreError::NotFound { .. }
                            | StoreError::Indeterminate { .. }),
                        ) => match ours().await {
                            Some(etag_now) => *etag.lock().unwrap_or_else(|p| p.into_inner()) = etag_now,
                            None if matches!(e, StoreError::Indeterminate { .. }) => {
                                tracing::warn!(error = %e, "lease heartbeat unconfirmed; retrying")
                            }
                            None => {
                                tracing::error!("the repository lease was taken by another process; stopping");
                                lost.store(true, Ordering::Release);
                                return;
                            }
                        },
                        // A transient error: the next beat retries; the lease lasts 3 periods.
                        Err(e) => tracing::warn!(error = %e, "lease heartbeat failed; retrying"),
                    }
                }
            })
        };
        Ok(Lease {
            op,
            lost,
            etag,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
            store: self.store.clone(),
            key: self.key(NAME),
            handle: self.handle(),
        })
    }
}
