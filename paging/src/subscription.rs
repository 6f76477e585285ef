//! A subscription: a durable cursor over its address's pages. It reads ahead in bounded chunks on its own,
//! so a slow subscription never slows another; acknowledgements update its cursor record in the journal
//! (group-committed with everything else the journal writes).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::address::{Address, PageLocation, Visibility};
use crate::error::PagingError;
use crate::format::{self, CursorRecord, PAGE_HEADER_BYTES};
use crate::page::{self, Message};
use crate::ranges::RangeSet;

/// A message handed to a consumer; acknowledge or negatively acknowledge it by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    pub payload: Arc<[u8]>,
    /// Whether it was delivered before (a nack, or a restart before its ack).
    pub redelivered: bool,
}

#[derive(Debug)]
struct Cursor {
    floor: u64,
    acked: RangeSet,
    read_page: u64,
    read_offset: u64,
    buffer: VecDeque<Message>,
    in_flight: BTreeMap<u64, Arc<[u8]>>,
    redeliver: BTreeMap<u64, Arc<[u8]>>,
    /// Everything below was delivered before the last restart: a delivery is a redelivery.
    delivered_before: u64,
    /// The complete page being read, opened by this subscription.
    open_page: Option<(u64, Arc<dyn keel_journal::vfs::VfsFile>)>,
    /// Cursor updates queued to the journal: an update that fails is undone only if none followed it.
    updates: u64,
}

/// One subscription of an address. Obtain it from [`Address::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    pub(crate) address: Arc<Address>,
    name: String,
    cursor_id: u64,
    start: u64,
    pending_messages: AtomicU64,
    pending_bytes: AtomicU64,
    floor_durable: AtomicU64,
    read_seq: AtomicU64,
    removed: AtomicBool,
    cursor: Mutex<Cursor>,
}

/// Exact counts of what a subscription has yet to acknowledge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub messages: u64,
    pub bytes: u64,
}

impl Subscription {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        address: Arc<Address>,
        name: String,
        cursor_id: u64,
        start: u64,
        floor: u64,
        acked: RangeSet,
        pending: Pending,
        read_page: u64,
    ) -> Subscription {
        Subscription {
            address,
            name,
            cursor_id,
            start,
            pending_messages: AtomicU64::new(pending.messages),
            pending_bytes: AtomicU64::new(pending.bytes),
            floor_durable: AtomicU64::new(floor),
            read_seq: AtomicU64::new(floor),
            removed: AtomicBool::new(false),
            cursor: Mutex::new(Cursor {
                floor,
                acked,
                read_page,
                read_offset: PAGE_HEADER_BYTES as u64,
                buffer: VecDeque::new(),
                in_flight: BTreeMap::new(),
                redeliver: BTreeMap::new(),
                delivered_before: 0,
                open_page: None,
                updates: 0,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn cursor_id(&self) -> u64 {
        self.cursor_id
    }

    /// The first sequence number this subscription receives.
    pub fn start(&self) -> u64 {
        self.start
    }

    fn lock(&self) -> MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_new(&self, seq: u64, len: u64) {
        if seq >= self.start {
            self.pending_messages.fetch_add(1, Ordering::SeqCst);
            self.pending_bytes.fetch_add(len, Ordering::SeqCst);
        }
    }

    pub(crate) fn durable_floor(&self) -> u64 {
        self.floor_durable.load(Ordering::SeqCst)
    }

    pub(crate) fn read_seq(&self) -> u64 {
        self.read_seq.load(Ordering::SeqCst)
    }

    pub(crate) fn set_delivered_before(&self, seq: u64) {
        self.lock().delivered_before = seq;
    }

    /// Messages and bytes paged for this subscription and not yet acknowledged (delivered or not).
    pub fn pending(&self) -> Pending {
        Pending {
            messages: self.pending_messages.load(Ordering::SeqCst),
            bytes: self.pending_bytes.load(Ordering::SeqCst),
        }
    }

    /// Everything below is acknowledged.
    pub fn floor(&self) -> u64 {
        self.lock().floor
    }

    /// Messages delivered and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The next message, if one is readable now. Messages come in sequence order, after any negatively
    /// acknowledged ones; a message of an undecided transaction holds back those after it.
    pub fn receive(&self) -> Result<Option<Delivery>, PagingError> {
        if self.removed.load(Ordering::SeqCst) {
            return Err(PagingError::NoSuchSubscription {
                address: self.address.name.clone(),
                subscription: self.name.clone(),
            });
        }
        let mut c = self.lock();
        if let Some((seq, payload)) = c.redeliver.pop_first() {
            c.in_flight.insert(seq, payload.clone());
            return Ok(Some(Delivery { seq, payload, redelivered: true }));
        }
        loop {
            if c.buffer.is_empty() && !self.fill(&mut c)? {
                drop(c);
                self.address.try_leave_paging();
                return Ok(None);
            }
            let m = c.buffer.front().expect("filled");
            let skip = m.seq < c.floor.max(self.start) || c.acked.contains(m.seq) || c.in_flight.contains_key(&m.seq);
            // Only transactional messages can be undecided or rolled back: the address lock is not needed
            // for the others.
            let vis = match (skip, m.tx) {
                (true, _) => Visibility::Dead,
                (false, 0) => Visibility::Visible,
                (false, _) => self.address.lock().visibility(m.seq, m.tx),
            };
            match vis {
                Visibility::Undecided => return Ok(None),
                Visibility::Dead => {
                    let m = c.buffer.pop_front().expect("filled");
                    self.read_seq.fetch_max(m.seq + 1, Ordering::SeqCst);
                    if !skip {
                        // Rolled back: counted as acknowledged, so that the acknowledged ranges stay merged
                        // across it while an older message is in flight (else every rolled-back message
                        // would split them, and the cursor record would grow with each).
                        c.acked.insert(m.seq);
                    }
                }
                Visibility::Visible => {
                    let m = c.buffer.pop_front().expect("filled");
                    self.read_seq.fetch_max(m.seq + 1, Ordering::SeqCst);
                    let payload = m.payload;
                    c.in_flight.insert(m.seq, payload.clone());
                    return Ok(Some(Delivery { seq: m.seq, payload, redelivered: m.seq < c.delivered_before }));
                }
            }
        }
    }

    /// Like [`Subscription::receive`], waiting up to `timeout` for a message.
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Option<Delivery>, PagingError> {
        let deadline = Instant::now() + timeout;
        loop {
            let generation = self.address.lock().generation;
            if let Some(d) = self.receive()? {
                return Ok(Some(d));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let st = self.address.lock();
            if st.generation == generation {
                let _ = self.address.changed.wait_timeout(st, deadline - now);
            }
        }
    }

    /// Reads the next chunk of messages into the buffer; false if nothing more is durable yet.
    fn fill(&self, c: &mut Cursor) -> Result<bool, PagingError> {
        loop {
            let (location, keying, durable_len, complete, has_next) = {
                let st = self.address.lock();
                let p = match st.pages.get(&c.read_page) {
                    Some(p) => p,
                    None => match st.pages.range(c.read_page..).next() {
                        Some((&id, p)) => {
                            c.read_page = id;
                            c.read_offset = PAGE_HEADER_BYTES as u64;
                            p
                        }
                        None => return Ok(false),
                    },
                };
                let has_next = st.pages.contains_key(&(c.read_page + 1));
                // A complete page on the volume is opened while the address is locked: freeing it (every
                // cursor past it) or uploading it deletes the file only after its entry is gone or moved,
                // so the file is there now; once open, it stays readable.
                let reopen = !matches!(&c.open_page, Some((id, _)) if *id == c.read_page);
                if matches!(p.location, PageLocation::Local(None)) && reopen && c.read_offset < p.durable_len {
                    let path = page::page_path(&self.address.dir, c.read_page);
                    let f = self.address.vfs.open(&path, keel_journal::vfs::OpenMode::Read);
                    let f = f.map_err(|e| crate::error::io(&self.address.name, &path, "open page")(e))?;
                    c.open_page = Some((c.read_page, f.into()));
                }
                (p.location.clone(), p.keying.clone(), p.durable_len, p.complete(), has_next)
            };
            if c.read_offset < durable_len {
                let path = match (&location, &self.address.remote) {
                    (PageLocation::Remote, Some(r)) => r.key(&self.address.store_id, c.read_page).into(),
                    _ => page::page_path(&self.address.dir, c.read_page),
                };
                // A remote page is read one chunk per request, without any lock held.
                let (file, fetched) = match &location {
                    PageLocation::Local(Some(f)) => (Some(f.clone()), None),
                    PageLocation::Local(None) => match &c.open_page {
                        Some((id, f)) if *id == c.read_page => (Some(f.clone()), None),
                        _ => unreachable!("opened above, under the address lock"),
                    },
                    PageLocation::Remote => {
                        let remote = self.address.remote.as_ref().expect("remote pages need an object store");
                        let key = remote.key(&self.address.store_id, c.read_page);
                        (None, Some(page::RemotePage { remote: remote.clone(), key, len: durable_len }))
                    }
                };
                let src: &dyn page::ReadAt = match (&file, &fetched) {
                    (Some(f), _) => f,
                    (None, Some(b)) => b,
                    (None, None) => unreachable!("opened or fetched above"),
                };
                let mut got = Vec::new();
                let read = page::read_messages(
                    src,
                    &keying,
                    c.read_offset,
                    durable_len,
                    self.address.read_ahead_bytes,
                    &mut got,
                );
                match read {
                    Ok(next) if next > c.read_offset => {
                        c.read_offset = next;
                        // Let the kernel read the next chunks while this one is consumed.
                        let ahead = (2 * self.address.read_ahead_bytes as u64).min(durable_len.saturating_sub(next));
                        if let Some(f) = &file {
                            f.will_need(next, ahead);
                        }
                        c.buffer.extend(got);
                        return Ok(true);
                    }
                    Ok(_) => return Err(page::corrupt(&self.address.name, &path, "a read made no progress")),
                    Err(Ok(stop)) => {
                        let why = format!("at byte {}: {}", stop.offset, stop.why);
                        return Err(page::corrupt(&self.address.name, &path, why));
                    }
                    Err(Err(e)) => return Err(crate::error::io(&self.address.name, &path, "read page")(e)),
                }
            }
            if complete && has_next {
                c.read_page += 1;
                c.read_offset = PAGE_HEADER_BYTES as u64;
                c.open_page = None;
                continue;
            }
            return Ok(false);
        }
    }

    /// Acknowledges one delivered message, durably.
    pub fn ack(&self, seq: u64) -> Result<(), PagingError> {
        self.ack_many(&[seq])
    }

    /// Acknowledges delivered messages with one durable cursor update. On an error the messages stay
    /// delivered, to be acknowledged again or handed back with [`Subscription::nack`]; the cursor is as it
    /// was, unless a later acknowledgement (whose update records these too) was queued meanwhile.
    pub fn ack_many(&self, seqs: &[u64]) -> Result<(), PagingError> {
        let (pending, floor, taken, undo) = {
            let mut c = self.lock();
            if let Some(&bad) = seqs.iter().find(|s| !c.in_flight.contains_key(s)) {
                return Err(PagingError::NotDelivered {
                    address: self.address.name.clone(),
                    subscription: self.name.clone(),
                    seq: bad,
                });
            }
            // The cursor as it will be, checked before anything changes.
            let mut acked = c.acked.clone();
            for s in seqs {
                acked.insert(*s);
            }
            let (floor, acked) = self.advanced(c.floor, acked);
            let rec =
                CursorRecord { address: self.address.index, name: self.name.clone(), start: self.start, floor, acked };
            let payload = rec.encode();
            let max = self.address.journal.payload_bytes_max();
            if payload.len() as u64 > max {
                return Err(PagingError::CursorTooLarge {
                    address: self.address.name.clone(),
                    subscription: self.name.clone(),
                    ranges: rec.acked.len(),
                    max,
                });
            }
            // Appended under the cursor lock, so cursor versions reach the journal in order.
            let pending = self.address.journal.update_async(self.cursor_id, format::KIND_CURSOR, &payload);
            let mut taken = Vec::with_capacity(seqs.len());
            for s in seqs {
                if let Some(p) = c.in_flight.remove(s) {
                    self.pending_messages.fetch_sub(1, Ordering::SeqCst);
                    self.pending_bytes.fetch_sub(p.len() as u64, Ordering::SeqCst);
                    taken.push((*s, p));
                }
            }
            let before = (c.floor, std::mem::replace(&mut c.acked, rec.acked));
            c.floor = rec.floor;
            c.updates += 1;
            (pending, c.floor, taken, (c.updates, before))
        };
        if let Err(e) = pending.wait() {
            // Whether the update is durable is unknown: the messages are in flight again, as if not
            // acknowledged, and the cursor is as before unless a later update (which holds these
            // acknowledgements too) was queued since.
            let mut c = self.lock();
            let (update, (floor, acked)) = undo;
            if c.updates == update {
                (c.floor, c.acked) = (floor, acked);
            }
            for (seq, p) in taken {
                self.pending_messages.fetch_add(1, Ordering::SeqCst);
                self.pending_bytes.fetch_add(p.len() as u64, Ordering::SeqCst);
                c.in_flight.insert(seq, p);
            }
            return Err(e.into());
        }
        keel_crashpoint::hook("paging-acked");
        if floor > self.floor_durable.fetch_max(floor, Ordering::SeqCst) {
            self.address.free_pages_logged();
        }
        Ok(())
    }

    /// Hands a delivered message back: it is delivered again, before newer ones.
    pub fn nack(&self, seq: u64) -> Result<(), PagingError> {
        let mut c = self.lock();
        let p = c.in_flight.remove(&seq).ok_or_else(|| PagingError::NotDelivered {
            address: self.address.name.clone(),
            subscription: self.name.clone(),
            seq,
        })?;
        c.redeliver.insert(seq, p);
        Ok(())
    }

    fn advance_floor(&self, c: &mut Cursor) {
        let acked = std::mem::take(&mut c.acked);
        (c.floor, c.acked) = self.advanced(c.floor, acked);
    }

    /// The floor moved past every acknowledged or rolled-back message above it, and the ranges below it
    /// dropped.
    fn advanced(&self, mut floor: u64, mut acked: RangeSet) -> (u64, RangeSet) {
        let st = self.address.lock();
        loop {
            let f = st.dead.skip(acked.skip(floor));
            if f == floor {
                break;
            }
            floor = f;
        }
        drop(st);
        acked.forget_below(floor);
        (floor, acked)
    }

    /// After a rollback: the floor may pass rolled-back messages (in memory; the next ack records it).
    pub(crate) fn advance_over_dead(&self) {
        let mut c = self.lock();
        self.advance_floor(&mut c);
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }
}
