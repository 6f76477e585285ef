//! # keel-paging
//!
//! Queues larger than memory. Each address keeps at most `max_size_bytes` of messages in memory (and all
//! addresses together at most `global_max_bytes`); past that, new messages are **paged**: appended,
//! durably and group-committed, to the address's page files, until every subscription has read the paged
//! backlog, when the address returns to memory mode. One stored copy per message, however many
//! subscriptions; each subscription has a durable cursor in the broker's journal.
//!
//! ## Guarantees
//! - A paged send returns after its page write was fdatasynced; it survives SIGKILL and power loss.
//! - An acknowledgement returns after the subscription's cursor record is durable in the journal; after a
//!   crash a subscription resumes exactly after its durable acknowledgements: every unacknowledged message
//!   is delivered again (at least once), no acknowledged one is.
//! - Per subscription, messages are delivered in sequence order (negatively acknowledged ones first).
//! - A message paged inside a journal transaction is visible only once [`Paging::commit`] commits it — also
//!   after a crash (its transaction mark is a record of that transaction). Readers wait at a message of an
//!   undecided transaction rather than pass it, so order holds.
//! - Pending counts per subscription are exact, also across crashes: recovery recomputes them from the
//!   pages and cursors instead of trusting a counter.
//! - A page file is deleted once every subscription's durable cursor is past it; cleanup of any number of
//!   messages touches only whole pages and cursor ranges, never per-message state.
//! - A damaged or missing page makes only its address unavailable, with an error naming address and page.
//!
//! On-disk format: docs/FORMAT.md, "keel-paging".

mod address;
mod error;
mod format;
pub mod inspect;
mod page;
mod ranges;
mod recovery;
mod remote;
mod subscription;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::vfs::{StdVfs, Vfs};
use keel_journal::{Journal, Lsn, PreparedTx, TxId};

pub use address::{Address, MemoryGrant, PageSummary, Sent};
pub use error::PagingError;
pub use format::MESSAGE_BYTES_MAX;
pub use page::Message;
pub use recovery::{Standing, TornTail};
pub use remote::RemotePages;
pub use subscription::{Delivery, Pending, Subscription};

/// How paging runs.
#[derive(Clone, Debug)]
pub struct PagingOptions {
    /// A page is sealed and the next begun once it holds this many bytes.
    pub page_bytes: u64,
    /// Memory-mode bytes an address holds before it pages.
    pub max_size_bytes: u64,
    /// Memory-mode bytes all addresses together hold before they page.
    pub global_max_bytes: u64,
    /// Bytes a subscription reads ahead from its pages at a time (its page-in buffer).
    pub read_ahead_bytes: usize,
    /// Encrypt new pages under the current key (and read encrypted pages).
    pub keys: Option<KeyRing>,
    /// Upload complete pages to an object store and delete them locally; `None`: pages stay on the volume.
    pub remote: Option<RemotePages>,
    /// The filesystem pages live on: the operating system's, or a test's (the storage-fault simulator).
    pub vfs: Arc<dyn Vfs>,
}

impl Default for PagingOptions {
    fn default() -> PagingOptions {
        PagingOptions {
            page_bytes: 8 << 20,
            max_size_bytes: 64 << 20,
            global_max_bytes: 512 << 20,
            read_ahead_bytes: 1 << 20,
            keys: None,
            remote: None,
            vfs: Arc::new(StdVfs),
        }
    }
}

impl PagingOptions {
    fn validate(&self) -> Result<(), PagingError> {
        let bad = |name, why: &str| Err(PagingError::InvalidOption { name, why: why.to_owned() });
        if self.page_bytes < 64 << 10 {
            return bad("page_bytes", "must be at least 64 KiB");
        }
        if self.page_bytes > 4 << 30 {
            return bad("page_bytes", "must be at most 4 GiB");
        }
        if self.read_ahead_bytes < 64 << 10 {
            return bad("read_ahead_bytes", "must be at least 64 KiB");
        }
        Ok(())
    }
}

impl Drop for Paging {
    /// Subscriptions and their address refer to each other; break that so the address, and through it the
    /// journal, close once the caller's handles are gone.
    fn drop(&mut self) {
        for a in self.available() {
            a.lock().subs.clear();
        }
        // Pages not yet uploaded stay on the volume; the next open queues them again.
        if let Some((u, handle)) = self.uploader.take() {
            u.stop();
            let _ = handle.join();
        }
    }
}

/// Memory-mode bytes across addresses.
#[derive(Debug)]
pub struct GlobalMemory {
    used: AtomicU64,
    max: u64,
}

impl GlobalMemory {
    fn try_reserve(&self, n: u64) -> bool {
        self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| (u + n <= self.max).then_some(u + n)).is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// The paging store of a broker: its addresses' page files under one directory, their cursors and
/// transaction marks in the broker's journal.
#[derive(Debug)]
pub struct Paging {
    dir: PathBuf,
    journal: Arc<Journal>,
    options: PagingOptions,
    global: Arc<GlobalMemory>,
    tx_marks: Arc<AtomicU64>,
    sub_indexes: Arc<AtomicU64>,
    remote: Option<Arc<remote::Remote>>,
    uploader: Option<(Arc<remote::Uploader>, std::thread::JoinHandle<()>)>,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next_index: u32,
    addresses: BTreeMap<String, Result<Arc<Address>, PagingError>>,
    /// Addresses whose recovery failed with an error that may pass (an object store down at start-up):
    /// when it may be tried again.
    retry: BTreeMap<String, std::time::Instant>,
    /// The journal's prepared transactions not yet decided: what a retried recovery needs.
    prepared: Vec<PreparedTx>,
}

/// How long an address whose recovery failed transiently waits before the next attempt.
const RECOVERY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Paging {
    /// Opens the paging store in `dir` (created if absent) over `journal`, recovering every address.
    /// `prepared` are the journal's prepared transactions (`Recovered::prepared`): messages they paged stay
    /// undecided until [`Paging::commit`] or [`Paging::rollback`].
    ///
    /// An address whose pages are damaged or missing does not fail the open: [`Paging::address`] returns
    /// its error, and the other addresses work.
    pub fn open(
        dir: impl AsRef<Path>,
        journal: Arc<Journal>,
        prepared: &[PreparedTx],
        options: PagingOptions,
    ) -> Result<Paging, PagingError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        recovery::create_dir_durably(&*options.vfs, &dir)?;
        let global = Arc::new(GlobalMemory { used: AtomicU64::new(0), max: options.global_max_bytes });
        let found = recovery::read_records(&journal, prepared)?;
        let remote = match &options.remote {
            Some(r) => Some(Arc::new(remote::Remote::new(r.clone())?)),
            None => None,
        };
        let uploader = remote.as_ref().map(|_| remote::Uploader::start());
        let tx_marks = Arc::new(AtomicU64::new(found.next_tx_mark));
        let sub_indexes = Arc::new(AtomicU64::new(found.next_sub_index));
        let mut registry =
            Registry { next_index: found.next_address_index, prepared: prepared.to_vec(), ..Registry::default() };
        let paging = Paging {
            dir,
            journal,
            options,
            global,
            tx_marks,
            sub_indexes,
            remote,
            uploader,
            registry: Mutex::new(Registry::default()),
        };
        for rec in found.addresses.values() {
            let result = paging.recover(rec, &found);
            if result.as_ref().is_err_and(PagingError::is_transient) {
                registry.retry.insert(rec.name.clone(), std::time::Instant::now() + RECOVERY_RETRY);
            }
            registry.addresses.insert(rec.name.clone(), result);
        }
        *paging.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        Ok(paging)
    }

    fn recover(&self, rec: &format::AddressRecord, found: &recovery::Found) -> Result<Arc<Address>, PagingError> {
        let init = self.init(rec.index, rec.store_id, rec.name.clone());
        recovery::recover_address(init, found).map_err(|cause| {
            tracing::error!(address = %rec.name, error = %cause, "address unavailable");
            PagingError::AddressFailed { address: rec.name.clone(), cause: Box::new(cause) }
        })
    }

    /// Recovers again an address whose recovery failed with an error that may have passed, at most once a
    /// second.
    fn retry_recovery(&self, reg: &mut Registry, name: &str) {
        let due = reg.retry.get(name).is_some_and(|&at| std::time::Instant::now() >= at);
        if !due {
            return;
        }
        // The journal as it is now: transactions decided since the open are live marks or gone.
        let found = match recovery::read_records(&self.journal, &reg.prepared) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(address = %name, error = %e, "reading paging records to retry recovery");
                reg.retry.insert(name.to_owned(), std::time::Instant::now() + RECOVERY_RETRY);
                return;
            }
        };
        let Some(rec) = found.addresses.values().find(|r| r.name == name) else { return };
        let result = self.recover(rec, &found);
        match &result {
            Ok(_) => {
                tracing::info!(address = %name, "address recovered on a later attempt");
                reg.retry.remove(name);
            }
            Err(e) if e.is_transient() => {
                reg.retry.insert(name.to_owned(), std::time::Instant::now() + RECOVERY_RETRY);
            }
            Err(_) => {
                reg.retry.remove(name);
            }
        }
        reg.addresses.insert(name.to_owned(), result);
    }

    fn init(&self, index: u32, store_id: [u8; 16], name: String) -> address::AddressInit {
        address::AddressInit {
            dir: self.dir.join(format!("a-{index:08}")),
            vfs: self.options.vfs.clone(),
            name,
            index,
            store_id,
            journal: self.journal.clone(),
            keys: self.options.keys.clone(),
            page_bytes: self.options.page_bytes,
            max_size_bytes: self.options.max_size_bytes,
            read_ahead_bytes: self.options.read_ahead_bytes,
            global: self.global.clone(),
            tx_marks: self.tx_marks.clone(),
            sub_indexes: self.sub_indexes.clone(),
            remote: self.remote.clone(),
            uploader: self.uploader.as_ref().map(|u| u.0.clone()),
        }
    }

    /// Waits until every complete page was uploaded to the object store (no-op without one), or until an
    /// upload fails: then its error, while the uploader goes on retrying in the background.
    pub fn wait_uploaded(&self) -> Result<(), PagingError> {
        match &self.uploader {
            Some((u, _)) => u.wait_idle(),
            None => Ok(()),
        }
    }

    /// Complete pages waiting for upload.
    pub fn pending_uploads(&self) -> usize {
        self.uploader.as_ref().map_or(0, |(u, _)| u.pending())
    }

    /// The address `name`, created (durably) if absent; its recovery error if its pages are damaged.
    pub fn address(&self, name: &str) -> Result<Arc<Address>, PagingError> {
        if name.is_empty() || name.len() > u16::MAX as usize {
            return Err(PagingError::InvalidOption { name: "address name", why: "1 to 65535 bytes".into() });
        }
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if reg.retry.contains_key(name) {
            self.retry_recovery(&mut reg, name);
        }
        if let Some(a) = reg.addresses.get(name) {
            return a.clone();
        }
        let index = reg.next_index;
        let mut store_id = [0u8; 16];
        getrandom::fill(&mut store_id).expect("the operating system's random source failed");
        let init = self.init(index, store_id, name.to_owned());
        // The directory first: an address record always has its directory.
        recovery::create_dir_durably(&*init.vfs, &init.dir)?;
        let rec = format::AddressRecord { index, store_id, name: name.to_owned() };
        self.journal.add(format::address_id(index), format::KIND_ADDRESS, &rec.encode())?;
        reg.next_index += 1;
        let a =
            Address::new(init, address::recovered_state(0, BTreeMap::new(), Default::default(), Default::default()));
        reg.addresses.insert(name.to_owned(), Ok(a.clone()));
        Ok(a)
    }

    /// Every address: its name and whether it is available.
    pub fn addresses(&self) -> Vec<(String, Result<Arc<Address>, PagingError>)> {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.addresses.iter().map(|(n, a)| (n.clone(), a.clone())).collect()
    }

    fn available(&self) -> Vec<Arc<Address>> {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.addresses.values().filter_map(|a| a.as_ref().ok().cloned()).collect()
    }

    /// Commits journal transaction `tx` and makes the messages it paged visible.
    pub fn commit(&self, tx: TxId) -> Result<Lsn, PagingError> {
        let lsn = self.journal.commit(tx)?;
        self.decided(tx);
        for a in self.available() {
            a.tx_committed(tx.get());
        }
        Ok(lsn)
    }

    /// Rolls journal transaction `tx` back; the messages it paged are never delivered.
    pub fn rollback(&self, tx: TxId) -> Result<Lsn, PagingError> {
        let lsn = self.journal.rollback(tx)?;
        self.decided(tx);
        for a in self.available() {
            a.tx_rolled_back(tx.get());
        }
        Ok(lsn)
    }

    fn decided(&self, tx: TxId) {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.prepared.retain(|p| p.tx != tx);
    }

    /// Memory-mode bytes held across addresses.
    pub fn memory_bytes(&self) -> u64 {
        self.global.used()
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The decoders on arbitrary bytes, for the fuzz target; not a stable API.
#[doc(hidden)]
pub mod __fuzz {
    use crate::format::{self, AddressRecord, CursorRecord, PageHeader, TxMarkRecord};
    use crate::page::{read_messages, PageKeying};

    /// Runs every decoder over `data`; panics only if a decoder accepts bytes it does not re-encode.
    pub fn decoders(data: &[u8]) {
        if let Ok(h) = PageHeader::decode(data) {
            assert_eq!(&h.encode()[..], &data[..format::PAGE_HEADER_BYTES]);
        }
        let binding = keel_journal::Binding { journal_id: [0; 16], segment_seq: 1 };
        for version in [1, format::PAGE_VERSION] {
            let mut at = 0;
            while let Ok((_, r)) = format::decode_frame(&binding, version, &data[at..]) {
                at += r.end;
            }
        }
        if let Ok(r) = AddressRecord::decode(data) {
            assert_eq!(r.encode(), data);
        }
        if let Ok(r) = CursorRecord::decode(data) {
            assert_eq!(CursorRecord::decode(&r.encode()).as_ref(), Ok(&r));
        }
        if let Ok(r) = TxMarkRecord::decode(data) {
            assert_eq!(TxMarkRecord::decode(&r.encode()), Ok(r));
        }
        let header =
            PageHeader { version: format::PAGE_VERSION, store_id: [0; 16], page_id: 1, first_seq: 0, key: None };
        let keying = PageKeying { header, cipher: None };
        let src: std::sync::Arc<[u8]> = data.into();
        let mut out = Vec::new();
        let _ = read_messages(&src, &keying, 0, data.len() as u64, 4096, &mut out);
    }
}
