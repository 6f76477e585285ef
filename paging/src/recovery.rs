//! Opening a paging store: the paging records from the journal, then each address's pages — garbage
//! below every cursor removed, the rest checked frame by frame, a torn tail of the newest page cut off,
//! and every subscription's exact pending counts recomputed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use keel_journal::crypto::unit::UNIT_OVERHEAD_BYTES;
use keel_journal::{Journal, PreparedTx, TxOp};

use crate::address::{self, Address, AddressInit, TxInfo, TxState, WRITE_BYTES_MAX};
use crate::error::{io, PagingError};
use crate::format::{self, AddressRecord, CursorRecord, TxMarkRecord, FRAME_HEADER_BYTES, PAGE_HEADER_BYTES};
use crate::page::{self, corrupt, list_pages, open_page, read_messages};
use crate::ranges::RangeSet;
use crate::subscription::{Pending, Subscription};

/// Bytes recovery reads from a page at a time.
const SCAN_CHUNK: usize = 4 << 20;

pub fn create_dir_durably(dir: &Path) -> Result<(), PagingError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io("", dir, "create directory"))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        page::sync_dir("", parent)?;
    }
    Ok(())
}

/// Paging's records in the journal.
#[derive(Debug, Default)]
pub struct Found {
    pub addresses: BTreeMap<u32, AddressRecord>,
    pub cursors: Vec<(u64, CursorRecord)>,
    /// Marks of committed transactions (live records).
    pub committed: Vec<(u64, TxMarkRecord)>,
    /// Marks inside prepared, undecided transactions.
    pub prepared: Vec<(u64, TxMarkRecord)>,
    pub next_address_index: u32,
    pub next_sub_index: u64,
    pub next_tx_mark: u64,
}

pub fn read_records(journal: &Journal, prepared: &[PreparedTx]) -> Result<Found, PagingError> {
    let mut ids = Vec::new();
    journal.for_each_record(|id, r| {
        if format::is_paging_id(id) {
            ids.push((id, r.kind));
        }
    });
    let mut found = Found::default();
    let bad = |id: u64| move |why: String| PagingError::BadRecord { id, why };
    for (id, kind) in ids {
        let payload = journal.read(id)?;
        let n = format::id_number(id);
        match kind {
            format::KIND_ADDRESS => {
                let rec = AddressRecord::decode(&payload).map_err(bad(id))?;
                if u64::from(rec.index) != n {
                    return Err(bad(id)(format!("address index {} in a record numbered {n}", rec.index)));
                }
                found.next_address_index = found.next_address_index.max(rec.index + 1);
                found.addresses.insert(rec.index, rec);
            }
            format::KIND_CURSOR => {
                found.cursors.push((id, CursorRecord::decode(&payload).map_err(bad(id))?));
                found.next_sub_index = found.next_sub_index.max(n + 1);
            }
            format::KIND_TX_MARK => {
                found.committed.push((id, TxMarkRecord::decode(&payload).map_err(bad(id))?));
                found.next_tx_mark = found.next_tx_mark.max(n + 1);
            }
            k => return Err(bad(id)(format!("kind {k:#x} is not a paging record kind"))),
        }
    }
    for p in prepared {
        for r in &p.records {
            if r.op == TxOp::Add && format::is_paging_id(r.id) && r.record.kind == format::KIND_TX_MARK {
                let payload = journal.read_version(&r.record)?;
                found.prepared.push((r.id, TxMarkRecord::decode(&payload).map_err(bad(r.id))?));
                found.next_tx_mark = found.next_tx_mark.max(format::id_number(r.id) + 1);
            }
        }
    }
    Ok(found)
}

struct Counting<'a> {
    cursor: &'a CursorRecord,
    pending: Pending,
}

pub fn recover_address(init: AddressInit, found: &Found) -> Result<Arc<Address>, PagingError> {
    let name = init.name.clone();
    let dir = init.dir.clone();
    if !dir.is_dir() {
        return Err(corrupt(&name, &dir, "the address directory is missing"));
    }
    let cursors: Vec<&(u64, CursorRecord)> = found.cursors.iter().filter(|(_, c)| c.address == init.index).collect();
    let committed: HashMap<u64, u64> =
        found.committed.iter().filter(|(_, m)| m.address == init.index).map(|(id, m)| (m.tx, *id)).collect();
    let prepared: HashMap<u64, u64> =
        found.prepared.iter().filter(|(_, m)| m.address == init.index).map(|(id, m)| (m.tx, *id)).collect();
    let min_floor = cursors.iter().map(|(_, c)| c.floor).min();

    let mut ids = list_pages(&name, &dir)?;
    let mut headers = Vec::with_capacity(ids.len());
    for &id in &ids {
        // The newest page takes appends.
        let write = Some(&id) == ids.last();
        headers.push(open_page(&name, &dir, init.store_id, id, init.keys.as_ref(), write)?);
    }
    if ids.is_empty() {
        if let Some((_, c)) = cursors.iter().find(|(_, c)| c.floor > 0) {
            let why = format!("no page files, but subscription {:?} is at message {}", c.name, c.floor);
            return Err(corrupt(&name, &dir, why));
        }
    }
    // Pages wholly below every cursor are garbage (a crash between deletes, or no subscriptions).
    let keep_from = match min_floor {
        None => ids.len().saturating_sub(1),
        Some(floor) => match headers.iter().rposition(|(_, k)| k.header.first_seq <= floor) {
            Some(i) => i,
            None if ids.is_empty() => 0,
            None => {
                return Err(PagingError::MissingPage {
                    address: name.clone(),
                    dir: dir.clone(),
                    page: ids[0].saturating_sub(1),
                    first: ids[0],
                    last: *ids.last().expect("non-empty"),
                })
            }
        },
    };
    if keep_from > 0 {
        for &id in &ids[..keep_from] {
            let p = page::page_path(&dir, id);
            std::fs::remove_file(&p).map_err(io(&name, &p, "delete page"))?;
        }
        page::sync_dir(&name, &dir)?;
        tracing::info!(address = %name, pages = keep_from, "deleted pages every cursor had passed");
        ids.drain(..keep_from);
        headers.drain(..keep_from);
    }
    for w in ids.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(PagingError::MissingPage {
                address: name.clone(),
                dir: dir.clone(),
                page: w[0] + 1,
                first: ids[0],
                last: *ids.last().expect("non-empty"),
            });
        }
    }

    let mut counting: Vec<Counting> =
        cursors.iter().map(|(_, c)| Counting { cursor: c, pending: Pending::default() }).collect();
    let mut txs: HashMap<u64, TxInfo> = HashMap::new();
    for (&tx, &mark_id) in &committed {
        txs.insert(tx, TxInfo { state: TxState::Committed, mark_id, last_page: 0 });
    }
    for (&tx, &mark_id) in &prepared {
        txs.insert(tx, TxInfo { state: TxState::Undecided { messages: Vec::new() }, mark_id, last_page: 0 });
    }
    let mut dead = RangeSet::default();
    let mut pages = BTreeMap::new();
    let mut expected = headers.first().map_or(0, |(_, k)| k.header.first_seq);
    let newest = ids.last().copied();
    for (&id, (file, keying)) in ids.iter().zip(headers) {
        let path = page::page_path(&dir, id);
        if keying.header.first_seq != expected {
            let why =
                format!("its first message is {}, the previous page ended before {expected}", keying.header.first_seq);
            return Err(corrupt(&name, &path, why));
        }
        let mut len = file.metadata().map_err(io(&name, &path, "stat page"))?.len();
        let mut offset = PAGE_HEADER_BYTES as u64;
        let mut messages = Vec::new();
        while offset < len {
            messages.clear();
            match read_messages(&file, &keying, offset, len, SCAN_CHUNK, &mut messages) {
                Ok(next) => offset = next,
                Err(Err(e)) => return Err(io(&name, &path, "read page")(e)),
                Err(Ok(stop)) => {
                    let torn_bound = WRITE_BYTES_MAX + UNIT_OVERHEAD_BYTES + FRAME_HEADER_BYTES as u64;
                    let torn = Some(id) == newest && (stop.past_end || len - stop.offset <= torn_bound);
                    if !torn {
                        return Err(corrupt(&name, &path, format!("at byte {}: {}", stop.offset, stop.why)));
                    }
                    // The messages before the damage in this chunk are in `messages` already.
                    tracing::warn!(address = %name, page = %path.display(), at = stop.offset, bytes = len - stop.offset,
                        "cutting off a torn tail (never acknowledged)");
                    let f =
                        std::fs::OpenOptions::new().write(true).open(&path).map_err(io(&name, &path, "open page"))?;
                    f.set_len(stop.offset).map_err(io(&name, &path, "truncate torn tail"))?;
                    f.sync_all().map_err(|e| page::poisoned(&name, &path, "fsync", e))?;
                    len = stop.offset;
                    offset = len;
                }
            }
            for m in &messages {
                if m.seq != expected {
                    return Err(corrupt(&name, &path, format!("message {} where {expected} was expected", m.seq)));
                }
                expected += 1;
                let visible = match m.tx {
                    0 => true,
                    tx => match txs.get_mut(&tx) {
                        Some(t) => {
                            t.last_page = id;
                            match &mut t.state {
                                TxState::Committed => true,
                                TxState::Undecided { messages } => {
                                    messages.push((m.seq, m.payload.len() as u64));
                                    false
                                }
                            }
                        }
                        None => {
                            dead.insert(m.seq);
                            false
                        }
                    },
                };
                if visible {
                    for c in &mut counting {
                        if m.seq >= c.cursor.start.max(c.cursor.floor) && !c.cursor.acked.contains(m.seq) {
                            c.pending.messages += 1;
                            c.pending.bytes += m.payload.len() as u64;
                        }
                    }
                }
            }
        }
        let sealed = Some(id) != newest;
        let first_seq = keying.header.first_seq;
        pages.insert(id, address::recovered_page(file, keying, first_seq, expected, len, sealed));
    }
    if let Some((_, c)) = cursors.iter().find(|(_, c)| c.floor > expected) {
        let why = format!("subscription {:?} is at message {}, but the pages end before {expected}", c.name, c.floor);
        return Err(corrupt(&name, &dir, why));
    }

    let page_firsts: Vec<(u64, u64)> = pages.iter().map(|(&id, p)| (id, p.first_seq)).collect();
    let state = address::recovered_state(expected, pages, txs, dead);
    let addr = Arc::new(Address::new(init, state));
    for (c, (id, _)) in counting.iter().zip(&cursors) {
        let pos = c.cursor.floor.max(c.cursor.start);
        let read_page =
            page_firsts.iter().rev().find(|(_, first)| *first <= pos).or(page_firsts.first()).map_or(1, |(id, _)| *id);
        let sub = Arc::new(Subscription::new(
            addr.clone(),
            c.cursor.name.clone(),
            *id,
            c.cursor.start,
            c.cursor.floor,
            c.cursor.acked.clone(),
            c.pending,
            read_page,
        ));
        sub.set_delivered_before(expected);
        addr.lock().subs.insert(c.cursor.name.clone(), sub.clone());
        sub.advance_over_dead();
    }
    Ok(addr)
}
