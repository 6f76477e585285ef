//! One address's page store: the memory-or-page decision, durable group-committed appends to its pages,
//! transaction visibility, and deleting pages every cursor has passed.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::crypto::unit;
use keel_journal::vfs::{OpenMode, Vfs, VfsFile};
use keel_journal::{Journal, TxId};

use crate::error::PagingError;
use crate::format::{self, encode_frame, FrameHead, FRAME_HEADER_BYTES, MESSAGE_BYTES_MAX, PAGE_HEADER_BYTES};
use crate::page::{self, create_page, poisoned, PageKeying};
use crate::ranges::RangeSet;
use crate::remote::{Remote, Uploader};
use crate::subscription::Subscription;
use crate::GlobalMemory;

/// Bytes one group-commit write (and, encrypted, one sealed unit) holds at most, a single larger frame
/// aside. Also bounds a torn tail.
pub(crate) const WRITE_BYTES_MAX: u64 = 1 << 20;

/// Where a page's bytes are.
#[derive(Clone, Debug)]
pub(crate) enum PageLocation {
    /// On the volume. Only a page still taking writes keeps its file open (`Some`): a large backlog must
    /// not cost a file descriptor per page; readers open complete pages themselves.
    Local(Option<Arc<dyn VfsFile>>),
    /// Uploaded to the object store and deleted locally.
    Remote,
}

/// A page as the address knows it.
#[derive(Debug)]
pub(crate) struct PageInfo {
    pub location: PageLocation,
    upload_queued: bool,
    pub keying: Arc<PageKeying>,
    pub first_seq: u64,
    /// Messages below this sequence number are durable.
    pub end_seq: u64,
    /// Bytes durable (readers read up to here).
    pub durable_len: u64,
    /// Bytes assigned to appends, durable or not.
    assigned_len: u64,
    /// No more appends: the page is complete once `durable_len` reaches `assigned_len`.
    pub sealed: bool,
}

impl PageInfo {
    pub fn complete(&self) -> bool {
        self.sealed && self.durable_len == self.assigned_len
    }

    /// Once complete, a page takes no more writes: close it (readers open their own).
    fn close_if_complete(&mut self) {
        if self.complete() {
            self.location = PageLocation::Local(None);
        }
    }
}

#[derive(Debug)]
struct PendingWrite {
    page_id: u64,
    offset: u64,
    /// Plaintext frames, until written.
    frames: Vec<u8>,
    /// Bytes it took on disk (the frames, in a sealed unit when encrypted), once written.
    written: u64,
    /// (seq, tx, payload bytes) of its messages.
    messages: Vec<(u64, u64, u64)>,
}

#[derive(Debug)]
pub(crate) enum TxState {
    Undecided { messages: Vec<(u64, u64)> },
    Committed,
}

/// One use of a journal transaction id on an address, keyed by its mark's number. A broker may use an id
/// again once its first use is decided (after a restart the journal has rolled back every incomplete
/// transaction, so a broker may restart its counter); each use has its own mark, and each paged message
/// names the mark of the use that sent it (see `MessageTx`).
#[derive(Debug)]
pub(crate) struct TxInfo {
    /// The journal transaction id.
    pub tx: u64,
    /// The address's next sequence number when the mark was made: a message naming this mark's number
    /// below it belongs to an earlier use of the number (one rolled back before a restart).
    pub first_seq: u64,
    pub state: TxState,
    pub mark_id: u64,
    /// The newest page holding one of its messages.
    pub last_page: u64,
    /// The mark is being added to the journal transaction: no message may name it yet.
    pub marking: bool,
}

/// What a frame's `tx` field holds in a version 2 page: 0, or the number of the transaction mark that
/// covers the message, plus one.
pub(crate) fn frame_tx(mark_number: Option<u64>) -> u64 {
    mark_number.map_or(0, |n| n + 1)
}

/// The use of a transaction that sent message `seq`, whose frame's `tx` field is `field` (not 0).
pub(crate) fn tx_of(txs: &BTreeMap<u64, TxInfo>, field: u64, seq: u64) -> Option<&TxInfo> {
    txs.get(&(field - 1)).filter(|t| t.first_seq <= seq)
}

pub(crate) fn tx_of_mut(txs: &mut BTreeMap<u64, TxInfo>, field: u64, seq: u64) -> Option<&mut TxInfo> {
    txs.get_mut(&(field - 1)).filter(|t| t.first_seq <= seq)
}

/// What a reader makes of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visibility {
    Visible,
    /// Rolled back: never delivered.
    Dead,
    /// Its transaction is neither committed nor rolled back: readers wait here, keeping order.
    Undecided,
}

/// The tickets `lo + 1..=hi` of a flush whose write failed (see `Address::rewind`).
#[derive(Debug)]
struct FailedTickets {
    lo: u64,
    /// Senders yet to take the error (each ticket has one).
    waiting: u64,
    error: PagingError,
}

/// Why a flush failed.
enum FlushError {
    /// A write (ENOSPC, EIO): nothing it held was acknowledged; the appends are undone and sends go on.
    Write(PagingError),
    /// An fdatasync: what the page holds is unknown, and retrying cannot tell; the address stops.
    Sync(PagingError),
}

#[derive(Debug, Default)]
pub(crate) struct AddrState {
    /// The sequence number the next message gets (messages below it may not be durable yet).
    pub next_seq: u64,
    /// Messages below this one are durable: where a new subscription starts, so that a crash never
    /// leaves its cursor past the pages' end.
    durable_seq: u64,
    pub pages: BTreeMap<u64, PageInfo>,
    pending: Vec<PendingWrite>,
    appended: u64,
    durable: u64,
    flushing: bool,
    pub poisoned: Option<PagingError>,
    /// Appends a failed write undid, by their last ticket: each waiting sender takes its error.
    failed: BTreeMap<u64, FailedTickets>,
    /// Transaction uses by mark number.
    pub txs: BTreeMap<u64, TxInfo>,
    /// The undecided use of each journal transaction id: its mark number.
    pub undecided: HashMap<u64, u64>,
    pub dead: RangeSet,
    pub subs: BTreeMap<String, Arc<Subscription>>,
    /// Producers between the decision to page and their message getting a sequence number.
    paging_writers: u64,
    /// Bumped (under the lock) with every signal of `Address::changed`, so a waiter cannot miss one.
    pub generation: u64,
}

impl AddrState {
    pub fn visibility(&self, seq: u64, tx: u64) -> Visibility {
        if self.dead.contains(seq) {
            return Visibility::Dead;
        }
        if tx == 0 {
            return Visibility::Visible;
        }
        match tx_of(&self.txs, tx, seq).map(|t| &t.state) {
            Some(TxState::Committed) => Visibility::Visible,
            Some(TxState::Undecided { .. }) => Visibility::Undecided,
            None => Visibility::Dead,
        }
    }

    pub fn newest_page(&self) -> Option<u64> {
        self.pages.keys().next_back().copied()
    }

    /// Every subscription's durable cursor is at or past this: messages below it are needed by none.
    /// Without subscriptions, every message paged so far.
    fn durable_floor(&self) -> u64 {
        self.subs.values().map(|s| s.durable_floor()).min().unwrap_or(self.next_seq)
    }
}

/// Where a sent message went.
#[derive(Debug)]
pub enum Sent {
    /// The address is in memory mode: the broker keeps the message in memory (and in its journal). The
    /// grant holds the message's bytes against the address's and the global limit until dropped.
    Memory(MemoryGrant),
    /// Paged, durably, with this sequence number.
    Paged(u64),
}

/// Memory held by a message in memory mode; dropping it releases the memory.
#[derive(Debug)]
pub struct MemoryGrant {
    address: Arc<Address>,
    bytes: u64,
}

impl Drop for MemoryGrant {
    fn drop(&mut self) {
        self.address.mem_used.fetch_sub(self.bytes, Ordering::SeqCst);
        self.address.global.release(self.bytes);
    }
}

/// An address's page store. Obtain it from [`crate::Paging::address`].
#[derive(Debug)]
pub struct Address {
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) store_id: [u8; 16],
    pub(crate) dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) journal: Arc<Journal>,
    pub(crate) keys: Option<KeyRing>,
    pub(crate) page_bytes: u64,
    pub(crate) max_size_bytes: u64,
    pub(crate) read_ahead_bytes: usize,
    pub(crate) global: Arc<GlobalMemory>,
    pub(crate) tx_marks: Arc<AtomicU64>,
    pub(crate) sub_indexes: Arc<AtomicU64>,
    pub(crate) remote: Option<Arc<Remote>>,
    uploader: Option<Arc<Uploader>>,
    me: Weak<Address>,
    mem_used: AtomicU64,
    paging: AtomicBool,
    pub(crate) state: Mutex<AddrState>,
    /// Signalled when appends become durable, a transaction is decided, or the address fails.
    pub(crate) changed: Condvar,
    /// What the open that recovered this address cut off its newest page.
    pub(crate) torn_tail: std::sync::OnceLock<crate::recovery::TornTail>,
}

pub(crate) struct AddressInit {
    pub name: String,
    pub index: u32,
    pub store_id: [u8; 16],
    pub dir: PathBuf,
    pub vfs: Arc<dyn Vfs>,
    pub journal: Arc<Journal>,
    pub keys: Option<KeyRing>,
    pub page_bytes: u64,
    pub max_size_bytes: u64,
    pub read_ahead_bytes: usize,
    pub global: Arc<GlobalMemory>,
    pub tx_marks: Arc<AtomicU64>,
    pub sub_indexes: Arc<AtomicU64>,
    pub remote: Option<Arc<Remote>>,
    pub uploader: Option<Arc<Uploader>>,
}

impl Address {
    pub(crate) fn new(init: AddressInit, state: AddrState) -> Arc<Address> {
        // An address recovered with a backlog starts in paging mode: new messages queue behind it.
        let backlog = state.pages.values().any(|p| p.end_seq > p.first_seq);
        let a = Arc::new_cyclic(|me| Address {
            name: init.name,
            index: init.index,
            store_id: init.store_id,
            dir: init.dir,
            vfs: init.vfs,
            journal: init.journal,
            keys: init.keys,
            page_bytes: init.page_bytes,
            max_size_bytes: init.max_size_bytes,
            read_ahead_bytes: init.read_ahead_bytes,
            global: init.global,
            tx_marks: init.tx_marks,
            sub_indexes: init.sub_indexes,
            remote: init.remote,
            uploader: init.uploader,
            me: me.clone(),
            mem_used: AtomicU64::new(0),
            paging: AtomicBool::new(backlog),
            state: Mutex::new(state),
            changed: Condvar::new(),
            torn_tail: std::sync::OnceLock::new(),
        });
        let mut st = a.lock();
        a.queue_uploads(&mut st);
        drop(st);
        a
    }

    /// Queues the upload of every complete local page not yet queued.
    fn queue_uploads(&self, st: &mut AddrState) {
        let Some(uploader) = &self.uploader else { return };
        for (&id, p) in st.pages.iter_mut() {
            if p.complete() && !p.upload_queued && matches!(p.location, PageLocation::Local(_)) {
                p.upload_queued = true;
                uploader.push(self.me.clone(), id);
            }
        }
    }

    /// Uploads one complete page, then deletes it locally (run by the uploader).
    pub(crate) fn upload_page(&self, id: u64) -> Result<(), PagingError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let path = page::page_path(&self.dir, id);
        match self.lock().pages.get(&id) {
            Some(p) if matches!(p.location, PageLocation::Local(_)) => {}
            _ => return Ok(()),
        }
        let key = remote.key(&self.store_id, id);
        if let Err(e) = remote.upload(&self.name, &key, &*self.vfs, &path) {
            // Freed (every cursor passed it) while it was being read: nothing left to upload.
            if !self.lock().pages.contains_key(&id) {
                return Ok(());
            }
            return Err(e);
        }
        keel_crashpoint::hook("paging-uploaded");
        let freed_meanwhile = match self.lock().pages.get_mut(&id) {
            Some(p) => {
                p.location = PageLocation::Remote;
                false
            }
            None => true,
        };
        match self.vfs.remove_file(&path) {
            Ok(()) => page::sync_dir(&*self.vfs, &self.name, &self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::error::io(&self.name, &path, "delete uploaded page")(e)),
        }
        if freed_meanwhile {
            remote.delete(&self.name, vec![key])?;
        }
        Ok(())
    }

    /// The directory of the address's page files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The torn tail (an unacknowledged write a crash cut short) that recovery cut off the newest page when
    /// this address was opened.
    pub fn torn_tail(&self) -> Option<&crate::recovery::TornTail> {
        self.torn_tail.get()
    }

    /// Waits until every complete page queued for upload was uploaded (no-op without an object store), or
    /// until an upload fails: then its error (see [`crate::Paging::wait_uploaded`]).
    pub fn wait_uploaded(&self) -> Result<(), PagingError> {
        match &self.uploader {
            Some(u) => u.wait_idle(),
            None => Ok(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, AddrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether new messages are being paged.
    pub fn is_paging(&self) -> bool {
        self.paging.load(Ordering::SeqCst)
    }

    /// Bytes of memory-mode messages held.
    pub fn memory_bytes(&self) -> u64 {
        self.mem_used.load(Ordering::SeqCst)
    }

    /// Sends a message: kept in memory while the address and the global limit allow and no backlog is
    /// paged, else paged durably. Inside a journal transaction (`tx`), a paged message becomes visible
    /// only if [`crate::Paging::commit`] commits it; transactional sends are always paged, so that
    /// visibility has one rule.
    pub fn send(self: &Arc<Self>, payload: &[u8], tx: Option<TxId>) -> Result<Sent, PagingError> {
        let len = payload.len() as u64;
        if len > MESSAGE_BYTES_MAX {
            return Err(PagingError::MessageTooLarge { len, max: MESSAGE_BYTES_MAX });
        }
        {
            let mut st = self.lock();
            if self.paging.load(Ordering::SeqCst) && self.drained(&st) {
                tracing::info!(address = %self.name, "paged backlog drained: memory mode");
                self.paging.store(false, Ordering::SeqCst);
            }
            if tx.is_none() && !self.paging.load(Ordering::SeqCst) {
                let used = self.mem_used.load(Ordering::SeqCst);
                if used + len <= self.max_size_bytes && self.global.try_reserve(len) {
                    self.mem_used.fetch_add(len, Ordering::SeqCst);
                    return Ok(Sent::Memory(MemoryGrant { address: self.clone(), bytes: len }));
                }
                tracing::info!(address = %self.name, used, "memory limit reached: paging");
                self.paging.store(true, Ordering::SeqCst);
            }
            st.paging_writers += 1;
        }
        let r = self.page(payload, tx);
        self.lock().paging_writers -= 1;
        r.map(Sent::Paged)
    }

    /// Appends one message to the pages and returns once it is durable.
    fn page(&self, payload: &[u8], tx: Option<TxId>) -> Result<u64, PagingError> {
        let mark = tx.map(|tx| self.mark_tx(tx)).transpose()?;
        let tx_field = frame_tx(mark);
        let ticket = {
            let mut st = self.lock();
            if let Some(e) = &st.poisoned {
                return Err(e.clone());
            }
            let frame_bytes = (FRAME_HEADER_BYTES + payload.len()) as u64;
            let sealed = self.ensure_room(&mut st, frame_bytes)?;
            let page_id = st.newest_page().expect("ensure_room leaves an open page");
            let seq = st.next_seq;
            st.next_seq += 1;
            // As the page's header says, not as the options do: keys added at a reopen leave the plaintext
            // newest page plaintext (the next page is encrypted).
            let (binding, assigned, encrypted) = {
                let info = &st.pages[&page_id];
                (info.keying.header.binding(), info.assigned_len, info.keying.cipher.is_some())
            };
            let join = st
                .pending
                .last()
                .is_some_and(|w| w.page_id == page_id && w.frames.len() as u64 + frame_bytes <= WRITE_BYTES_MAX);
            let mut grow = frame_bytes;
            if !join {
                let overhead = if encrypted { unit::UNIT_OVERHEAD_BYTES } else { 0 };
                st.pending.push(PendingWrite {
                    page_id,
                    offset: assigned,
                    frames: Vec::new(),
                    written: 0,
                    messages: Vec::new(),
                });
                grow += overhead;
            }
            st.pages.get_mut(&page_id).expect("open page").assigned_len += grow;
            if let Some(t) = mark.and_then(|n| st.txs.get_mut(&n)) {
                t.last_page = page_id;
            }
            // Every pending write of this page goes into the next flush, and so into one sync group.
            let group_first = st.pending.iter().find(|w| w.page_id == page_id).and_then(|w| w.messages.first());
            let since_sync = group_first.map_or(0, |&(first, _, _)| seq - first);
            let since_sync = u32::try_from(since_sync).expect("a page holds fewer than 2^32 frames");
            let w = st.pending.last_mut().expect("pushed");
            let head = FrameHead { len: payload.len() as u32, seq, tx: tx_field, since_sync };
            encode_frame(&binding, head, payload, &mut w.frames);
            w.messages.push((seq, tx_field, payload.len() as u64));
            st.appended += 1;
            (st.appended, seq, sealed)
        };
        let (ticket, seq, sealed) = ticket;
        self.wait_durable(ticket)?;
        // The page this send sealed may already be behind every cursor (they acknowledged all of it before
        // it filled): delete it now rather than at the next acknowledgement. Its last write is durable once
        // ours is, since writes become durable in order.
        if sealed {
            self.free_pages_logged();
        }
        Ok(seq)
    }

    /// Makes sure the newest page can take `frame_bytes` more, sealing it and creating the next if not.
    /// Returns whether it sealed a page.
    fn ensure_room(&self, st: &mut AddrState, frame_bytes: u64) -> Result<bool, PagingError> {
        let (next_id, seal) = match st.pages.iter().next_back() {
            Some((&id, p)) if !p.sealed => {
                let holds_one = p.assigned_len > PAGE_HEADER_BYTES as u64;
                if !holds_one || p.assigned_len + frame_bytes <= self.page_bytes {
                    return Ok(false);
                }
                (id + 1, true)
            }
            Some((&id, _)) => (id + 1, false),
            None => (1, false),
        };
        let first_seq = st.next_seq;
        // The next page exists before the full one is sealed: a sealed page is uploaded and leaves the
        // volume, and a failed creation must not leave the newest page only in the object store.
        let (file, keying) =
            create_page(&*self.vfs, &self.name, &self.dir, self.store_id, next_id, first_seq, self.keys.as_ref())
                .inspect_err(|e| {
                    if matches!(e, PagingError::Poisoned { .. }) {
                        st.poisoned = Some(e.clone());
                    }
                })?;
        if seal {
            let full = st.pages.get_mut(&(next_id - 1)).expect("the newest page");
            full.sealed = true;
            full.close_if_complete();
        }
        keel_crashpoint::hook("paging-page-created");
        st.pages.insert(
            next_id,
            PageInfo {
                location: PageLocation::Local(Some(file)),
                upload_queued: false,
                keying: Arc::new(keying),
                first_seq,
                end_seq: first_seq,
                durable_len: PAGE_HEADER_BYTES as u64,
                assigned_len: PAGE_HEADER_BYTES as u64,
                sealed: false,
            },
        );
        Ok(seal)
    }

    /// Waits until append `ticket` is durable, leading a group write + fdatasync if none is running.
    fn wait_durable(&self, ticket: u64) -> Result<(), PagingError> {
        let mut st = self.lock();
        loop {
            if let Some((&hi, failed)) = st.failed.range_mut(ticket..).next().filter(|(_, f)| ticket > f.lo) {
                let e = failed.error.clone();
                failed.waiting -= 1;
                if failed.waiting == 0 {
                    st.failed.remove(&hi);
                }
                return Err(e);
            }
            if st.durable >= ticket {
                return Ok(());
            }
            if let Some(e) = &st.poisoned {
                return Err(e.clone());
            }
            if st.flushing {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let writes = std::mem::take(&mut st.pending);
            let hi = st.appended;
            let files: Vec<(u64, Arc<dyn VfsFile>, Arc<PageKeying>)> = writes
                .iter()
                .map(|w| w.page_id)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|id| {
                    let p = &st.pages[&id];
                    let PageLocation::Local(Some(file)) = &p.location else {
                        unreachable!("a page with pending writes is not complete, so open and not uploaded")
                    };
                    (id, file.clone(), p.keying.clone())
                })
                .collect();
            drop(st);
            let result = self.write_and_sync(writes, &files);
            st = self.lock();
            st.flushing = false;
            match result {
                Ok(writes) => {
                    self.publish(&mut st, &writes);
                    st.durable = hi;
                    self.queue_uploads(&mut st);
                }
                Err(FlushError::Sync(e)) => {
                    tracing::error!(address = %self.name, error = %e, "page fdatasync failed; the address stops");
                    // The kernel may have forgotten the failed pages while the page cache still shows them
                    // (Linux does): cut them off, so that a reopen without a power loss cannot build on
                    // them. Best effort; the address stops either way.
                    self.cut_unsynced(&st);
                    st.poisoned = Some(e);
                }
                Err(FlushError::Write(e)) => match self.rewind(&mut st) {
                    Ok(()) => {
                        tracing::warn!(address = %self.name, error = %e,
                            "page write failed; the sends it held failed and were undone, the address goes on");
                        let (lo, hi) = (st.durable, st.appended);
                        st.failed.insert(hi, FailedTickets { lo, waiting: hi - lo, error: e });
                        st.durable = hi;
                    }
                    Err(fatal) => {
                        tracing::error!(address = %self.name, error = %e, undo = %fatal,
                            "page write failed and could not be undone; the address stops");
                        st.poisoned = Some(fatal);
                    }
                },
            }
            st.generation += 1;
            self.changed.notify_all();
        }
    }

    /// After a failed fdatasync, on the way to stopping: cuts every page back to its durable length and
    /// deletes pages created for messages that never became durable, in the page cache only (an fsync now
    /// would prove nothing). Best effort: each step that fails is logged and the rest still tried.
    fn cut_unsynced(&self, st: &AddrState) {
        let warn = |path: &std::path::Path, e: std::io::Error| {
            tracing::warn!(address = %self.name, page = %path.display(), error = %e, "cutting off unsynced writes");
        };
        for (&id, p) in &st.pages {
            let path = page::page_path(&self.dir, id);
            if p.first_seq > st.durable_seq {
                if let Err(e) = self.vfs.remove_file(&path) {
                    warn(&path, e);
                }
            } else if let (true, PageLocation::Local(Some(f))) = (p.assigned_len > p.durable_len, &p.location) {
                if let Err(e) = f.set_len(p.durable_len) {
                    warn(&path, e);
                }
            }
        }
    }

    /// After a failed write: undoes every append not yet durable — the flush's and those queued behind
    /// it, whose sends all fail — so that the address goes on from its durable end. The pages are cut back
    /// to their durable length (and fdatasynced), and pages created for the failed messages deleted.
    fn rewind(&self, st: &mut AddrState) -> Result<(), PagingError> {
        st.pending.clear();
        let end = st.durable_seq;
        st.next_seq = end;
        let created_for_failed: Vec<u64> =
            st.pages.iter().filter(|(_, p)| p.first_seq > end).map(|(&id, _)| id).collect();
        for id in &created_for_failed {
            st.pages.remove(id);
            let path = page::page_path(&self.dir, *id);
            self.vfs.remove_file(&path).map_err(|e| poisoned(&self.name, &path, "delete page", e))?;
        }
        if !created_for_failed.is_empty() {
            page::sync_dir(&*self.vfs, &self.name, &self.dir)?;
        }
        for (&id, p) in st.pages.iter_mut().filter(|(_, p)| p.assigned_len > p.durable_len) {
            let path = page::page_path(&self.dir, id);
            let f = self.vfs.open(&path, OpenMode::ReadWrite).map_err(|e| poisoned(&self.name, &path, "open", e))?;
            f.set_len(p.durable_len).map_err(|e| poisoned(&self.name, &path, "truncate", e))?;
            f.sync_all().map_err(|e| poisoned(&self.name, &path, "fsync", e))?;
            p.assigned_len = p.durable_len;
            p.close_if_complete();
        }
        Ok(())
    }

    fn write_and_sync(
        &self,
        mut writes: Vec<PendingWrite>,
        files: &[(u64, Arc<dyn VfsFile>, Arc<PageKeying>)],
    ) -> Result<Vec<PendingWrite>, FlushError> {
        let find = |id: u64| files.iter().find(|f| f.0 == id).expect("collected");
        let sync = |id: u64, file: &dyn VfsFile| {
            let path = page::page_path(&self.dir, id);
            file.sync_data().map_err(|e| FlushError::Sync(poisoned(&self.name, &path, "fdatasync", e)))
        };
        // Pages are made durable in order: a page's writes are synced before the next page's are issued,
        // so a crash can tear only the last page with frames, never one followed by frames.
        let mut previous: Option<u64> = None;
        for w in &mut writes {
            let (_, file, keying) = find(w.page_id);
            if let Some(prev) = previous.filter(|&p| p != w.page_id) {
                sync(prev, &*find(prev).1)?;
            }
            previous = Some(w.page_id);
            let path = page::page_path(&self.dir, w.page_id);
            let bytes = match &keying.cipher {
                None => std::mem::take(&mut w.frames),
                Some(cipher) => {
                    let mut frames = std::mem::take(&mut w.frames);
                    let (head, tag) = unit::seal(cipher, &keying.header.binding(), w.offset, &mut frames);
                    let mut b = Vec::with_capacity(head.len() + frames.len() + tag.len());
                    b.extend_from_slice(&head);
                    b.extend_from_slice(&frames);
                    b.extend_from_slice(&tag);
                    b
                }
            };
            file.write_all_at(&[IoSlice::new(&bytes)], w.offset)
                .map_err(|e| FlushError::Write(crate::error::io(&self.name, &path, "write page")(e)))?;
            w.written = bytes.len() as u64;
        }
        keel_crashpoint::hook("paging-written");
        if let Some(last) = previous {
            sync(last, &*find(last).1)?;
        }
        Ok(writes)
    }

    /// Makes durable writes visible: page lengths, counts, undecided transactions' messages.
    fn publish(&self, st: &mut AddrState, writes: &[PendingWrite]) {
        for w in writes {
            let p = st.pages.get_mut(&w.page_id).expect("a page with pending writes is not deleted");
            debug_assert_eq!(p.durable_len, w.offset, "writes become durable in order");
            p.durable_len = w.offset + w.written;
            p.close_if_complete();
            if let Some(&(seq, _, _)) = w.messages.last() {
                p.end_seq = seq + 1;
                debug_assert!(seq >= st.durable_seq, "writes become durable in order");
                st.durable_seq = seq + 1;
            }
            for &(seq, tx, len) in &w.messages {
                if tx == 0 {
                    for s in st.subs.values() {
                        s.count_new(seq, len);
                    }
                } else if let Some(TxInfo { state: TxState::Undecided { messages }, .. }) =
                    tx_of_mut(&mut st.txs, tx, seq)
                {
                    messages.push((seq, len));
                }
            }
        }
    }

    /// Adds this address's mark to journal transaction `tx`, once per use of its id; returns the mark's
    /// number. A decided id used again is a new use with a new mark.
    fn mark_tx(&self, tx: TxId) -> Result<u64, PagingError> {
        let (number, mark_id, first_seq) = {
            let mut st = self.lock();
            // Another send of this use may be adding the mark: its messages may name the mark only once the
            // mark is in the transaction (if adding it fails, they would name a mark that never existed).
            while let Some(&n) = st.undecided.get(&tx.get()) {
                if !st.txs[&n].marking {
                    return Ok(n);
                }
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            let number = self.tx_marks.fetch_add(1, Ordering::SeqCst);
            let last_page = st.newest_page().unwrap_or(1);
            let first_seq = st.next_seq;
            let state = TxState::Undecided { messages: Vec::new() };
            let mark_id = format::tx_mark_id(number);
            let info = TxInfo { tx: tx.get(), first_seq, state, mark_id, last_page, marking: true };
            assert!(st.txs.insert(number, info).is_none(), "mark numbers are not reused within a run");
            st.undecided.insert(tx.get(), number);
            (number, format::tx_mark_id(number), first_seq)
        };
        // Outside the lock: the append waits for its fdatasync. The broker commits only after its sends
        // returned, so the mark is in the transaction before the commit.
        let rec = format::TxMarkRecord { address: self.index, tx: tx.get(), first_seq };
        let added = self.journal.add_tx(tx, mark_id, format::KIND_TX_MARK, &rec.encode());
        let mut st = self.lock();
        match &added {
            Ok(_) => {
                // Gone if the broker decided the transaction while its send was still running.
                if let Some(t) = st.txs.get_mut(&number) {
                    t.marking = false;
                }
            }
            Err(_) => {
                st.txs.remove(&number);
                if st.undecided.get(&tx.get()) == Some(&number) {
                    st.undecided.remove(&tx.get());
                }
            }
        }
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
        added.map(|_| number).map_err(Into::into)
    }

    /// The journal committed `tx`: its messages become visible.
    pub(crate) fn tx_committed(&self, tx: u64) {
        let mut st = self.lock();
        let Some(info) = st.undecided.remove(&tx).and_then(|n| st.txs.get_mut(&n)) else { return };
        let TxState::Undecided { messages } = std::mem::replace(&mut info.state, TxState::Committed) else { return };
        for (seq, len) in messages {
            for s in st.subs.values() {
                s.count_new(seq, len);
            }
        }
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
    }

    /// The journal rolled `tx` back: its messages are never delivered.
    pub(crate) fn tx_rolled_back(&self, tx: u64) {
        let mut st = self.lock();
        let removed = st.undecided.remove(&tx).and_then(|n| st.txs.remove(&n));
        if let Some(TxInfo { state: TxState::Undecided { messages }, .. }) = removed {
            for (seq, _) in messages {
                st.dead.insert(seq);
            }
        }
        st.generation += 1;
        drop(st);
        self.changed.notify_all();
        for s in self.subscriptions() {
            s.advance_over_dead();
        }
        self.free_pages_logged();
    }

    pub(crate) fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.lock().subs.values().cloned().collect()
    }

    /// Leaves paging mode if every subscription has read everything paged and nothing is being paged.
    pub(crate) fn try_leave_paging(&self) {
        if !self.paging.load(Ordering::SeqCst) {
            return;
        }
        let st = self.lock();
        if self.drained(&st) {
            tracing::info!(address = %self.name, "paged backlog drained: memory mode");
            self.paging.store(false, Ordering::SeqCst);
        }
    }

    /// Whether the paged backlog is drained: nothing being paged, every subscription has read all that was
    /// paged, and memory is below the address's limit. Messages sent in memory mode then come after every
    /// paged one for every subscription.
    fn drained(&self, st: &AddrState) -> bool {
        st.paging_writers == 0
            && st.durable == st.appended
            && st.subs.values().all(|s| s.read_seq() >= st.next_seq)
            && self.mem_used.load(Ordering::SeqCst) < self.max_size_bytes
    }

    /// [`Address::free_pages`] after an operation that already succeeded durably (a send, an
    /// acknowledgement, an unsubscribe): a failure to delete is logged, not returned, so that the caller
    /// never mistakes it for a failure of its own operation. Files left behind lie below every cursor, and
    /// the next open deletes them.
    pub(crate) fn free_pages_logged(&self) {
        if let Err(e) = self.free_pages() {
            tracing::warn!(address = %self.name, error = %e, "deleting acknowledged pages failed; retried later");
        }
    }

    /// Deletes the sealed pages every subscription has acknowledged, oldest first, and the transaction
    /// marks of their messages. Returns how many pages were deleted.
    pub fn free_pages(&self) -> Result<usize, PagingError> {
        let (local, remote_keys, marks) = {
            let mut st = self.lock();
            let floor = st.durable_floor();
            let newest = st.newest_page();
            let mut ids = Vec::new();
            for (&id, p) in &st.pages {
                if Some(id) == newest || !p.complete() || p.end_seq > floor {
                    break;
                }
                ids.push(id);
            }
            if ids.is_empty() {
                return Ok(0);
            }
            let last = *ids.last().expect("non-empty");
            let (mut local, mut remote_keys) = (Vec::new(), Vec::new());
            for id in &ids {
                match st.pages.remove(id).map(|p| p.location) {
                    Some(PageLocation::Local(_)) => local.push(page::page_path(&self.dir, *id)),
                    Some(PageLocation::Remote) => {
                        let r = self.remote.as_ref().expect("remote pages need an object store");
                        remote_keys.push(r.key(&self.store_id, *id));
                    }
                    None => {}
                }
            }
            let marks: Vec<u64> = st
                .txs
                .iter()
                .filter(|(_, t)| matches!(t.state, TxState::Committed) && t.last_page <= last)
                .map(|(&key, _)| key)
                .collect();
            let marks: Vec<u64> = marks.into_iter().filter_map(|k| st.txs.remove(&k)).map(|t| t.mark_id).collect();
            st.dead.forget_below(floor);
            (local, remote_keys, marks)
        };
        let deleted = local.len() + remote_keys.len();
        for p in &local {
            match self.vfs.remove_file(p) {
                Ok(()) => {}
                // Uploaded (and deleted locally) between our look and now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::error::io(&self.name, p, "delete page")(e)),
            }
        }
        if !local.is_empty() {
            page::sync_dir(&*self.vfs, &self.name, &self.dir)?;
        }
        if let Some(r) = &self.remote {
            r.delete(&self.name, remote_keys)?;
        }
        keel_crashpoint::hook("paging-pages-deleted");
        let pending: Vec<_> = marks.iter().map(|&id| self.journal.delete_async(id)).collect();
        for p in pending {
            p.wait()?;
        }
        Ok(deleted)
    }

    /// The subscription `name`, created if absent. A new subscription receives the messages paged from
    /// now on.
    pub fn subscribe(self: &Arc<Self>, name: &str) -> Result<Arc<Subscription>, PagingError> {
        if name.len() > u16::MAX as usize {
            return Err(PagingError::InvalidOption {
                name: "subscription name",
                why: "longer than 65535 bytes".into(),
            });
        }
        let sub = {
            let mut st = self.lock();
            if let Some(s) = st.subs.get(name) {
                return Ok(s.clone());
            }
            let start = st.durable_seq;
            let read_page = st.pages.iter().rev().find(|(_, p)| p.first_seq <= start).map_or(1, |(&id, _)| id);
            let cursor_id = format::cursor_id(self.sub_indexes.fetch_add(1, Ordering::SeqCst));
            let sub = Arc::new(Subscription::new(
                self.clone(),
                name.to_owned(),
                cursor_id,
                start,
                start,
                RangeSet::default(),
                crate::subscription::Pending::default(),
                read_page,
            ));
            st.subs.insert(name.to_owned(), sub.clone());
            sub
        };
        let rec = format::CursorRecord {
            address: self.index,
            name: name.to_owned(),
            start: sub.start(),
            floor: sub.start(),
            acked: RangeSet::default(),
        };
        if let Err(e) = self.journal.add(sub.cursor_id(), format::KIND_CURSOR, &rec.encode()) {
            self.lock().subs.remove(name);
            return Err(e.into());
        }
        Ok(sub)
    }

    /// An existing subscription.
    pub fn subscription(&self, name: &str) -> Option<Arc<Subscription>> {
        self.lock().subs.get(name).cloned()
    }

    /// Removes a subscription durably; pages only it still needed are deleted.
    pub fn unsubscribe(&self, name: &str) -> Result<(), PagingError> {
        let sub = self.lock().subs.get(name).cloned().ok_or_else(|| PagingError::NoSuchSubscription {
            address: self.name.clone(),
            subscription: name.to_owned(),
        })?;
        self.journal.delete(sub.cursor_id())?;
        sub.mark_removed();
        self.lock().subs.remove(name);
        self.free_pages_logged();
        Ok(())
    }

    /// The address's pages, oldest first.
    pub fn pages(&self) -> Vec<PageSummary> {
        self.lock()
            .pages
            .iter()
            .map(|(&id, p)| PageSummary {
                id,
                first_seq: p.first_seq,
                end_seq: p.end_seq,
                bytes: p.durable_len,
                sealed: p.sealed,
            })
            .collect()
    }

    /// The next sequence number a paged message gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }
}

/// What [`Address::pages`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSummary {
    pub id: u64,
    pub first_seq: u64,
    /// One past the last message.
    pub end_seq: u64,
    pub bytes: u64,
    pub sealed: bool,
}

/// A page recovered from disk, for [`AddrState`].
pub(crate) fn recovered_page(
    location: PageLocation,
    keying: PageKeying,
    first_seq: u64,
    end_seq: u64,
    len: u64,
    sealed: bool,
) -> PageInfo {
    PageInfo {
        location,
        upload_queued: false,
        keying: Arc::new(keying),
        first_seq,
        end_seq,
        durable_len: len,
        assigned_len: len,
        sealed,
    }
}

pub(crate) fn recovered_state(
    next_seq: u64,
    pages: BTreeMap<u64, PageInfo>,
    txs: BTreeMap<u64, TxInfo>,
    dead: RangeSet,
) -> AddrState {
    let undecided = txs.iter().filter(|(_, t)| matches!(t.state, TxState::Undecided { .. })).map(|(&n, t)| (t.tx, n));
    let undecided = undecided.collect();
    AddrState { next_seq, durable_seq: next_seq, pages, txs, undecided, dead, ..AddrState::default() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keel_journal::{Journal, Options};

    use keel_journal::vfs::{OpenMode, StdVfs, Vfs};

    use super::PageLocation;
    use crate::{format, Paging, PagingError, PagingOptions};

    fn open(dir: &std::path::Path) -> Paging {
        let jopts = Options { segment_bytes: 1 << 20, auto_maintenance: false, ..Options::default() };
        let (journal, rec) = Journal::open(dir.join("journal"), jopts).unwrap();
        let opts = PagingOptions { page_bytes: 64 << 10, max_size_bytes: 0, ..PagingOptions::default() };
        Paging::open(dir.join("pages"), Arc::new(journal), &rec.prepared, opts).unwrap()
    }

    /// Issue 31, defect 3: a subscription created while a send was in flight started at the next number to
    /// be assigned; a crash before that send was durable left its cursor past the pages' end, and the
    /// address refused to open. Also: a store already in that state opens, and the cursor is rewritten.
    #[test]
    fn a_subscription_created_while_a_send_is_in_flight_starts_at_the_durable_end() {
        let dir = tempfile::tempdir().unwrap();
        {
            let paging = open(dir.path());
            let a = paging.address("a").unwrap();
            a.send(b"durable", None).unwrap();
            // Hold every flush, as a slow fdatasync would, so the next send stays in flight.
            a.lock().flushing = true;
            let sender = {
                let a = a.clone();
                std::thread::spawn(move || a.send(b"in flight", None))
            };
            while a.lock().next_seq < 2 {
                std::thread::yield_now();
            }
            let s = a.subscribe("s").unwrap();
            assert_eq!(s.start(), 1, "the durable end, not the next number");
            // The "crash": the in-flight send never reaches the page.
            let mut st = a.lock();
            st.poisoned = Some(PagingError::MessageTooLarge { len: 0, max: 0 });
            a.changed.notify_all();
            drop(st);
            assert!(sender.join().unwrap().is_err());
            a.lock().subs.clear();
        }
        let paging = open(dir.path());
        let a = paging.address("a").unwrap();
        let s = a.subscription("s").unwrap();
        a.send(b"after", None).unwrap();
        let d = s.receive().unwrap().unwrap();
        assert_eq!((d.seq, &d.payload[..]), (1, &b"after"[..]));

        // A cursor past the end is damage now (this build never starts one there): refused.
        let rec =
            format::CursorRecord { address: 0, name: "old".into(), start: 40, floor: 40, acked: Default::default() };
        paging.journal().add(format::cursor_id(99), format::KIND_CURSOR, &rec.encode()).unwrap();
        drop((d, s, a));
        drop(paging);
        let e = open(dir.path()).address("a").unwrap_err().to_string();
        assert!(e.contains("\"old\" starts at message 40"), "{e}");
    }

    /// Swaps page `id`'s handle for a read-only one, so that writes to it fail; returns the writable one.
    fn refuse_writes(a: &super::Address, id: u64) -> PageLocation {
        let path = crate::page::page_path(&a.dir, id);
        let read_only = Vfs::open(&StdVfs, &path, OpenMode::Read).unwrap().into();
        let mut st = a.lock();
        std::mem::replace(&mut st.pages.get_mut(&id).unwrap().location, PageLocation::Local(Some(read_only)))
    }

    /// Issue 31, defect 6: a failed page write (a transient ENOSPC) poisoned the address until the store
    /// was reopened. Now the failed sends fail, their appends are undone, and the next send goes on from
    /// the durable end; nothing acknowledged is lost and sequence numbers stay consecutive.
    #[test]
    fn a_failed_page_write_fails_its_sends_and_the_address_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let paging = open(dir.path());
            let a = paging.address("a").unwrap();
            let s = a.subscribe("s").unwrap();
            for i in 0..5u8 {
                a.send(&[i; 100], None).unwrap();
            }
            // The newest page's handle swapped for one that cannot write, as a full disk would refuse.
            let newest = a.lock().newest_page().unwrap();
            let path = crate::page::page_path(&a.dir, newest);
            let writable = refuse_writes(&a, newest);
            let e = a.send(&[9; 100], None).unwrap_err();
            assert!(!matches!(e, PagingError::Poisoned { .. }), "{e}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), a.lock().pages[&newest].durable_len);
            a.lock().pages.get_mut(&newest).unwrap().location = writable;
            let Ok(crate::Sent::Paged(seq)) = a.send(&[5; 100], None) else { panic!("the address goes on") };
            assert_eq!(seq, 5, "the failed send's number is given again");
            let got: Vec<u64> = std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect();
            assert_eq!(got, (0..6).collect::<Vec<_>>());
            a.lock().subs.clear();
        }
        let paging = open(dir.path());
        let s = paging.address("a").unwrap().subscription("s").unwrap();
        let got: Vec<(u64, u8)> = std::iter::from_fn(|| s.receive().unwrap().map(|d| (d.seq, d.payload[0]))).collect();
        assert_eq!(got, (0..6).map(|i| (i, i as u8)).collect::<Vec<_>>());
    }

    /// The same when the failed flush spanned a page it had created: that page is deleted, the full one
    /// cut back, and the next send starts again from the durable end.
    #[test]
    fn a_failed_flush_across_a_new_page_is_undone_with_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let paging = open(dir.path());
        let a = paging.address("a").unwrap();
        let s = a.subscribe("s").unwrap();
        a.send(&[0; 20_000], None).unwrap();
        // Queue three more sends behind a held flush: the third needs page 2.
        a.lock().flushing = true;
        let senders: Vec<_> = (1..=3u8)
            .map(|i| {
                let sender = a.clone();
                let t = std::thread::spawn(move || sender.send(&[i; 20_000], None));
                while a.lock().next_seq < u64::from(i) + 1 {
                    std::thread::yield_now();
                }
                t
            })
            .collect();
        assert_eq!(a.lock().pages.len(), 2, "the queued sends created page 2");
        let writable = refuse_writes(&a, 1);
        // Release the flush; one of the senders leads it, and it fails.
        a.lock().flushing = false;
        a.changed.notify_all();
        for t in senders {
            assert!(t.join().unwrap().is_err());
        }
        {
            let mut st = a.lock();
            assert_eq!((st.next_seq, st.pages.len()), (1, 1), "page 2 deleted, numbers rewound");
            assert!(!crate::page::page_path(&a.dir, 2).exists());
            st.pages.get_mut(&1).unwrap().location = writable;
        }
        for i in 1..=3u8 {
            let Ok(crate::Sent::Paged(seq)) = a.send(&[i; 20_000], None) else { panic!("send {i}") };
            assert_eq!(seq, u64::from(i));
        }
        let got: Vec<(u64, u8)> = std::iter::from_fn(|| s.receive().unwrap().map(|d| (d.seq, d.payload[0]))).collect();
        assert_eq!(got, (0..4).map(|i| (i, i as u8)).collect::<Vec<_>>());
        a.lock().subs.clear();
    }

    /// Found in review: a send of a transaction whose mark another send was still adding used that mark's
    /// number at once; when adding it then failed, the message named a mark that never existed and stayed
    /// invisible after the broker committed. Now the send waits, then adds a mark of its own.
    #[test]
    fn a_send_waits_for_its_transactions_mark_and_outlives_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let paging = open(dir.path());
        let a = paging.address("a").unwrap();
        let s = a.subscribe("s").unwrap();
        let tx = keel_journal::TxId::new(7).unwrap();
        // Another send of tx 7 is adding mark 999 to the journal transaction (and will fail to).
        {
            let mut st = a.lock();
            let info = super::TxInfo {
                tx: 7,
                first_seq: 0,
                state: super::TxState::Undecided { messages: Vec::new() },
                mark_id: format::tx_mark_id(999),
                last_page: 1,
                marking: true,
            };
            st.txs.insert(999, info);
            st.undecided.insert(7, 999);
        }
        let sender = {
            let a = a.clone();
            std::thread::spawn(move || a.send(b"in the transaction", Some(tx)))
        };
        // Time for the send to reach the mark (the old code used it at once).
        std::thread::sleep(std::time::Duration::from_millis(100));
        {
            let mut st = a.lock();
            st.txs.remove(&999);
            st.undecided.remove(&7);
            st.generation += 1;
        }
        a.changed.notify_all();
        assert!(matches!(sender.join().unwrap(), Ok(crate::Sent::Paged(0))));
        paging.commit(tx).unwrap();
        let d = s.receive().unwrap().expect("the committed message is visible");
        assert_eq!(&d.payload[..], b"in the transaction");
        a.lock().subs.clear();
    }

    /// A cursor an earlier build left past the end (its pages are version 1), having acknowledged nothing,
    /// is moved back to the end at open, and its record rewritten.
    #[test]
    fn a_cursor_an_earlier_build_left_past_the_end_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let paging = open(dir.path());
        let store_id = {
            let a = paging.address("a").unwrap();
            a.store_id
        };
        let rec =
            format::CursorRecord { address: 0, name: "old".into(), start: 40, floor: 40, acked: Default::default() };
        paging.journal().add(format::cursor_id(99), format::KIND_CURSOR, &rec.encode()).unwrap();
        drop(paging);
        // The earlier build's newest page: a version 1 header, no message yet.
        let header = format::PageHeader { version: 1, store_id, page_id: 1, first_seq: 0, key: None };
        std::fs::write(crate::page::page_path(&dir.path().join("pages/a-00000000"), 1), header.encode()).unwrap();
        for _ in 0..2 {
            let paging = open(dir.path());
            let a = paging.address("a").unwrap();
            let old = a.subscription("old").unwrap();
            assert_eq!((old.start(), old.floor()), (0, 0));
            a.send(b"next", None).unwrap();
            assert_eq!(old.pending().messages, 1);
            drop((old, a));
            drop(paging);
            std::fs::remove_file(crate::page::page_path(&dir.path().join("pages/a-00000000"), 2)).ok();
        }
    }

    /// Found by the paging simulator: two senders, one's message still being written to the full page when
    /// the other's created the next page (durably, numbered after it); a crash before the first write was
    /// durable left a page numbered past the durable end, and open refused the address ("its first message
    /// is 1050, the previous page ended before 1049"). That page never held a message: open deletes it.
    #[test]
    fn an_empty_page_created_ahead_of_messages_that_never_became_durable_is_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let pages = dir.path().join("pages/a-00000000");
        let store_id = {
            let paging = open(dir.path());
            let a = paging.address("a").unwrap();
            a.subscribe("s").unwrap();
            for i in 0..5u8 {
                a.send(&[i; 100], None).unwrap();
            }
            a.store_id
        };
        // What the crash left: page 2 created for message 6 while message 5 was still being written.
        let header =
            format::PageHeader { version: format::PAGE_VERSION, store_id, page_id: 2, first_seq: 6, key: None };
        std::fs::write(crate::page::page_path(&pages, 2), header.encode()).unwrap();
        let paging = open(dir.path());
        let a = paging.address("a").expect("the address opens");
        let Ok(crate::Sent::Paged(seq)) = a.send(&[5; 100], None) else { panic!("paged") };
        assert_eq!(seq, 5, "numbers continue from the durable end");
        let s = a.subscription("s").unwrap();
        let got: Vec<u64> = std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect();
        assert_eq!(got, (0..6).collect::<Vec<_>>());
    }
}
