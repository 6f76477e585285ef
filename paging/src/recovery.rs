//! Opening a paging store: the paging records from the journal, then each address's pages — garbage
//! below every cursor removed, the rest checked frame by frame, a torn tail of the newest page cut off,
//! and every subscription's exact pending counts recomputed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::vfs::{OpenMode, Vfs, VfsFile};
use keel_journal::{Journal, PreparedTx, ReadError, RecordRef, TxOp};

use crate::address::{self, Address, AddressInit, PageLocation, TxInfo, TxState, WRITE_BYTES_MAX};
use crate::error::{io, PagingError};
use crate::format::{self, AddressRecord, CursorRecord, TxMarkRecord, PAGE_HEADER_BYTES};
use crate::page::{self, check_header, corrupt, list_pages, open_page, read_messages, Message, PageKeying, Source};
use crate::ranges::RangeSet;
use crate::remote::Remote;
use crate::subscription::{Pending, Subscription};
use keel_journal::crypto::unit::UNIT_OVERHEAD_BYTES;

/// Bytes recovery reads from a page at a time.
const SCAN_CHUNK: usize = 4 << 20;

/// Creates `dir` and its missing ancestors, fsyncing the parent of each one created.
pub fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> Result<(), PagingError> {
    let failed = |path: &Path, op| {
        let path = path.to_path_buf();
        move |e| PagingError::StoreIo { path, op, source: Arc::new(e) }
    };
    let missing: Vec<&Path> =
        // One that cannot be listed counts as missing: creating it then reports why.
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !matches!(page::dir_exists(vfs, d), Ok(true))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    vfs.create_dir_all(dir).map_err(failed(dir, "create directory"))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(failed(parent, "fsync directory"))?;
        }
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

/// Paging's records from an open journal.
pub fn read_records(journal: &Journal, prepared: &[PreparedTx]) -> Result<Found, PagingError> {
    let mut ids = Vec::new();
    journal.for_each_record(|id, r| {
        if format::is_paging_id(id) {
            ids.push((id, *r));
        }
    });
    records_from(ids, prepared, &|r| journal.read_version(r))
}

/// Paging's records among `records`, their payloads read with `read`.
pub fn records_from(
    records: Vec<(u64, RecordRef)>,
    prepared: &[PreparedTx],
    read: &dyn Fn(&RecordRef) -> Result<Vec<u8>, ReadError>,
) -> Result<Found, PagingError> {
    let ids: Vec<(u64, RecordRef)> = records.into_iter().filter(|(id, _)| format::is_paging_id(*id)).collect();
    let mut found = Found::default();
    let bad = |id: u64| move |why: String| PagingError::BadRecord { id, why };
    for (id, r) in ids {
        let payload = read(&r)?;
        let n = format::id_number(id);
        match r.kind {
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
                let payload = read(&r.record)?;
                found.prepared.push((r.id, TxMarkRecord::decode(&payload).map_err(bad(r.id))?));
                found.next_tx_mark = found.next_tx_mark.max(format::id_number(r.id) + 1);
            }
        }
    }
    Ok(found)
}

/// A page as a scan found it.
#[derive(Debug)]
pub struct ScannedPage {
    pub id: u64,
    /// Whether the page is on the volume (else only in the object store).
    pub local: bool,
    pub keying: PageKeying,
    pub first_seq: u64,
    pub end_seq: u64,
    /// Bytes of whole frames (the file's length unless a torn tail follows).
    pub len: u64,
    pub file_bytes: u64,
    pub payload_bytes: u64,
}

/// A damaged end of the newest page that was never acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub page: u64,
    pub offset: u64,
    pub bytes: u64,
}

/// What reading an address's pages found, without changing anything.
#[derive(Debug)]
pub struct Scan {
    pub pages: Vec<ScannedPage>,
    /// Pages wholly below every cursor, with whether each is on the volume: deleted on open.
    pub garbage: Vec<(u64, bool)>,
    /// Pages holding only a header that follow a torn tail (created before the write that tore), or that
    /// were created ahead of messages none of which became durable: deleted on open, so that sequence
    /// numbers continue from the durable end.
    pub after_torn: Vec<u64>,
    pub torn: Option<TornTail>,
    pub txs: BTreeMap<u64, TxInfo>,
    pub dead: RangeSet,
    pub cursors: Vec<(u64, CursorRecord, Pending)>,
    /// Cursors moved back to the pages' end (see `repair_cursors_past_end`): open rewrites their records.
    pub repaired: Vec<u64>,
    pub next_seq: u64,
}

/// How a scanned message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Visible,
    RolledBack,
    Undecided,
}

/// Reads an address's pages (not those below every cursor) and checks every frame; calls `visit` for
/// each message. Changes nothing on disk.
#[allow(clippy::too_many_arguments)]
pub fn scan_address(
    vfs: &dyn Vfs,
    name: &str,
    dir: &Path,
    index: u32,
    store_id: [u8; 16],
    keys: Option<&KeyRing>,
    remote: Option<&Arc<Remote>>,
    found: &Found,
    visit: &mut dyn FnMut(u64, &Message, Standing),
) -> Result<Scan, PagingError> {
    if !page::dir_exists(vfs, dir).map_err(io(name, dir, "list pages"))? {
        return Err(corrupt(name, dir, "the address directory is missing"));
    }
    let cursors: Vec<&(u64, CursorRecord)> = found.cursors.iter().filter(|(_, c)| c.address == index).collect();
    let marks = |list: &[(u64, TxMarkRecord)]| -> Vec<(u64, TxMarkRecord)> {
        list.iter().filter(|(_, m)| m.address == index).copied().collect()
    };
    let (committed, prepared) = (marks(&found.committed), marks(&found.prepared));
    let min_floor = cursors.iter().map(|(_, c)| c.floor).min();

    let local_ids = list_pages(vfs, name, dir)?;
    let remote_ids = match remote {
        Some(r) => r.list(name, &store_id)?,
        None => Vec::new(),
    };
    let mut ids: Vec<u64> = local_ids.iter().copied().chain(remote_ids.iter().map(|&(id, _)| id)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut headers = Vec::with_capacity(ids.len());
    for &id in &ids {
        // A page on the volume is authoritative (an upload may not have finished deleting it).
        if local_ids.binary_search(&id).is_ok() {
            let (file, keying) = open_page(vfs, name, dir, store_id, id, keys, false)?;
            headers.push((Source::File(file), keying, true));
        } else {
            let r = remote.expect("listed remotely");
            let key = r.key(&store_id, id);
            let len = remote_ids[remote_ids.partition_point(|&(i, _)| i < id)].1;
            let page = page::RemotePage { remote: r.clone(), key: key.clone(), len };
            let keying = check_header(name, Path::new(&key), &page, store_id, id, keys)?;
            headers.push((Source::Remote(page), keying, false));
        }
    }
    // Pages wholly below every cursor are garbage (a crash between deletes, or no subscriptions).
    let keep_from = match min_floor {
        None => ids.len().saturating_sub(1),
        Some(floor) => match headers.iter().rposition(|(_, k, _)| k.header.first_seq <= floor) {
            Some(i) => i,
            None if ids.is_empty() => 0,
            None => {
                return Err(PagingError::MissingPage {
                    address: name.to_owned(),
                    dir: dir.to_path_buf(),
                    page: ids[0].saturating_sub(1),
                    first: ids[0],
                    last: *ids.last().expect("non-empty"),
                })
            }
        },
    };
    let garbage: Vec<(u64, bool)> = ids.drain(..keep_from).zip(headers.drain(..keep_from).map(|h| h.2)).collect();
    for w in ids.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(PagingError::MissingPage {
                address: name.to_owned(),
                dir: dir.to_path_buf(),
                page: w[0] + 1,
                first: ids[0],
                last: *ids.last().expect("non-empty"),
            });
        }
    }

    let mut counted: Vec<(u64, CursorRecord, Pending)> =
        cursors.iter().map(|(id, c)| (*id, c.clone(), Pending::default())).collect();
    let mut txs: BTreeMap<u64, TxInfo> = BTreeMap::new();
    let info = |mark_id: u64, m: &TxMarkRecord, state| TxInfo {
        tx: m.tx,
        first_seq: m.first_seq,
        state,
        mark_id,
        last_page: 0,
        marking: false,
    };
    for (mark_id, m) in &committed {
        txs.insert(format::id_number(*mark_id), info(*mark_id, m, TxState::Committed));
    }
    for (mark_id, m) in &prepared {
        txs.insert(format::id_number(*mark_id), info(*mark_id, m, TxState::Undecided { messages: Vec::new() }));
    }
    let mut dead = RangeSet::default();
    let mut pages = Vec::with_capacity(ids.len());
    let mut torn = None;
    let mut expected = headers.first().map_or(0, |(_, k, _)| k.header.first_seq);
    // A tear can only be in the last page with frames (pages are synced in order); pages after it hold
    // at most a header.
    let mut lens = Vec::with_capacity(ids.len());
    for (&id, (src, _, _)) in ids.iter().zip(&headers) {
        let path = page::page_path(dir, id);
        lens.push(src.len().map_err(io(name, &path, "stat page"))?);
    }
    let last_with_frames = ids.iter().zip(&lens).rev().find(|(_, &l)| l > PAGE_HEADER_BYTES as u64).map(|(&id, _)| id);
    let newest = last_with_frames.or(ids.last().copied());
    let mut after_torn = Vec::new();
    for (i, (&id, (source, keying, local))) in ids.iter().zip(headers).enumerate() {
        // Damage is named where it lies: the file, or the object.
        let path = match &source {
            Source::Remote(r) => PathBuf::from(&r.key),
            Source::File(_) => page::page_path(dir, id),
        };
        if torn.is_some() {
            // Only headers follow the tear (see above); these pages are recreated as appends continue.
            after_torn.push(id);
            continue;
        }
        // Only after a page still on the volume (so one that may have been taking writes): a page in the
        // object store was complete, so a gap after it is damage, not messages in flight.
        let after_local = pages.last().is_some_and(|p: &ScannedPage| p.local);
        let header_only_tail = local && after_local && last_with_frames.is_none_or(|last| id > last);
        if keying.header.first_seq > expected && header_only_tail {
            // Created for a message that did not fit the previous page while earlier ones were still being
            // written, and a crash came before any of them was durable: it never held a message. Deleted,
            // so that numbers continue from the durable end.
            tracing::warn!(address = %name, page = %path.display(), first = keying.header.first_seq, expected,
                "deleting an empty page created ahead of messages that never became durable");
            after_torn.push(id);
            continue;
        }
        if keying.header.first_seq != expected {
            let why =
                format!("its first message is {}, the previous page ended before {expected}", keying.header.first_seq);
            return Err(corrupt(name, &path, why));
        }
        let file_bytes = lens[i];
        let mut len = file_bytes;
        let mut offset = PAGE_HEADER_BYTES as u64;
        let mut payload_bytes = 0;
        let mut messages = Vec::new();
        while offset < len {
            messages.clear();
            match read_messages(&source, &keying, offset, len, SCAN_CHUNK, &mut messages) {
                Ok(next) => offset = next,
                Err(Err(e)) => return Err(io(name, &path, "read page")(e)),
                Err(Ok(stop)) => {
                    // The messages before the damage in this chunk are in `messages`, not yet counted.
                    let at_damage = expected + messages.len() as u64;
                    let damage = format!("at byte {}: {}", stop.offset, stop.why);
                    // Only the volume's newest page is appended to; an uploaded page was complete.
                    if !local || Some(id) != newest {
                        return Err(corrupt(name, &path, damage));
                    }
                    if stop.in_valid_unit {
                        // A unit that authenticates was written whole: what it holds is not a tear.
                        return Err(corrupt(name, &path, damage));
                    }
                    let proof = synced_proof(&source, &keying, stop.offset, len, at_damage);
                    if let Some(proof) = proof.map_err(io(name, &path, "read page"))? {
                        return Err(corrupt(name, &path, format!("{damage}; {proof}")));
                    }
                    torn = Some(TornTail { page: id, offset: stop.offset, bytes: len - stop.offset });
                    len = stop.offset;
                    offset = len;
                }
            }
            for m in &messages {
                if m.seq != expected {
                    return Err(corrupt(name, &path, format!("message {} where {expected} was expected", m.seq)));
                }
                expected += 1;
                payload_bytes += m.payload.len() as u64;
                if m.tx != 0 && keying.header.version != format::PAGE_VERSION {
                    let why = format!(
                        "message {} was sent in a transaction, and this build does not read the transactions of \
                         page format version {} (drain the address with the build that wrote it)",
                        m.seq, keying.header.version
                    );
                    return Err(corrupt(name, &path, why));
                }
                let standing = match m.tx {
                    0 => Standing::Visible,
                    tx => match address::tx_of_mut(&mut txs, tx, m.seq) {
                        Some(t) => {
                            t.last_page = id;
                            match &mut t.state {
                                TxState::Committed => Standing::Visible,
                                TxState::Undecided { messages } => {
                                    messages.push((m.seq, m.payload.len() as u64));
                                    Standing::Undecided
                                }
                            }
                        }
                        None => {
                            dead.insert(m.seq);
                            Standing::RolledBack
                        }
                    },
                };
                if standing == Standing::Visible {
                    for (_, c, pending) in &mut counted {
                        if m.seq >= c.start.max(c.floor) && !c.acked.contains(m.seq) {
                            pending.messages += 1;
                            pending.bytes += m.payload.len() as u64;
                        }
                    }
                }
                visit(id, m, standing);
            }
        }
        let first_seq = keying.header.first_seq;
        pages.push(ScannedPage { id, local, keying, first_seq, end_seq: expected, len, file_bytes, payload_bytes });
    }
    // Only an earlier build (whose pages are version 1) started subscriptions past the durable end.
    let legacy = pages.last().is_some_and(|p| p.keying.header.version != format::PAGE_VERSION);
    let repaired = if legacy { repair_cursors_past_end(name, &mut counted, expected) } else { Vec::new() };
    check_cursors_within(name, dir, &counted, expected, torn.as_ref())?;
    Ok(Scan { pages, garbage, after_torn, torn, txs, dead, cursors: counted, repaired, next_seq: expected })
}

/// Why damage at `damaged` of the newest page, where message `expected` should begin, cannot be a tear:
/// a later flush's frame after it (version 2), or, in a version 1 page, which has no sync groups, more than
/// one write (its largest) before the end of the page.
fn synced_proof(
    source: &Source,
    keying: &PageKeying,
    damaged: u64,
    len: u64,
    expected: u64,
) -> std::io::Result<Option<String>> {
    if keying.header.version != format::PAGE_VERSION {
        let bound = WRITE_BYTES_MAX + UNIT_OVERHEAD_BYTES + keying.header.frame_header_bytes() as u64;
        let far = len - damaged > bound;
        return Ok(far.then(|| format!("more than one write ({bound} bytes) before the end of a version 1 page")));
    }
    let later = page::later_group(source, keying, damaged, len, expected)?;
    Ok(later.map(|l| {
        format!(
            "message {} at byte {} was written by a later flush, so the damaged bytes had been fdatasynced",
            l.seq, l.offset
        )
    }))
}

/// Moves back to `end` the cursors that start past it and acknowledged nothing: subscriptions created
/// before this build while sends were in flight started at the next number to be assigned, and a crash
/// before those sends were durable left them past the pages' end. Nothing was acknowledged and nothing
/// was delivered to them, so starting at `end` loses nothing. Returns their cursor ids.
fn repair_cursors_past_end(name: &str, cursors: &mut [(u64, CursorRecord, Pending)], end: u64) -> Vec<u64> {
    let mut repaired = Vec::new();
    for (id, c, _) in cursors.iter_mut() {
        if c.start > end && c.floor == c.start && c.acked.is_empty() {
            tracing::warn!(address = %name, subscription = %c.name, was = c.start, now = end,
                "a subscription created while sends were in flight starts at the pages' end");
            c.start = end;
            c.floor = end;
            repaired.push(*id);
        }
    }
    repaired
}

/// Every cursor must lie within the messages the pages hold: a floor, a start or an acknowledged range at
/// or past `end` names messages that existed, so pages that end before them lost acknowledged bytes.
/// After a torn tail, the error names the page and byte where the tail was cut: those bytes were damage.
fn check_cursors_within(
    name: &str,
    dir: &Path,
    cursors: &[(u64, CursorRecord, Pending)],
    end: u64,
    torn: Option<&TornTail>,
) -> Result<(), PagingError> {
    for (_, c, _) in cursors {
        let acked_end = c.acked.iter().map(|(_, e)| e).max().unwrap_or(0);
        let (what, at) = if c.start > end {
            ("starts at message", c.start)
        } else if c.floor > end {
            ("acknowledged everything before message", c.floor)
        } else if acked_end > end {
            ("acknowledged message", acked_end - 1)
        } else {
            continue;
        };
        let why = format!("subscription {:?} {what} {at}, but the pages end before message {end}", c.name);
        return Err(match torn {
            None => corrupt(name, dir, why),
            Some(t) => corrupt(
                name,
                &page::page_path(dir, t.page),
                format!(
                    "at byte {}: the {} bytes from here look like a torn write, but {why}: they were damaged after \
                     they were made durable",
                    t.offset, t.bytes
                ),
            ),
        });
    }
    Ok(())
}

/// Makes durable what recovery read from the newest pages and will build on: after an fdatasync failed
/// and the broker restarted without a power loss, the last write may be only in the page cache, and an
/// open that delivered it and numbered new messages after it must not lose it at the next power loss.
/// (On filesystems that drop the failed pages' dirty state, as Linux does, this cannot bring back what
/// the device never got: the address stopped at the failure for that reason.)
fn sync_what_was_read(vfs: &dyn Vfs, name: &str, dir: &Path, pages: &[ScannedPage]) -> Result<(), PagingError> {
    let from = pages.iter().rposition(|p| p.len > PAGE_HEADER_BYTES as u64).unwrap_or(0);
    let local: Vec<&ScannedPage> = pages[from.min(pages.len())..].iter().filter(|p| p.local).collect();
    for p in &local {
        let path = page::page_path(dir, p.id);
        let f = vfs.open(&path, OpenMode::Read).map_err(io(name, &path, "open page"))?;
        f.sync_data().map_err(|e| page::poisoned(name, &path, "fdatasync", e))?;
    }
    if !local.is_empty() {
        page::sync_dir(vfs, name, dir)?;
    }
    Ok(())
}

/// Opens an address: scans it, deletes its garbage pages, cuts a torn tail, and builds its state.
pub fn recover_address(init: AddressInit, found: &Found) -> Result<Arc<Address>, PagingError> {
    let name = init.name.clone();
    let dir = init.dir.clone();
    let remote = init.remote.clone();
    let vfs = init.vfs.clone();
    if page::dir_exists(&*vfs, &dir).map_err(io(&name, &dir, "list pages"))? {
        // Pages a crash left under their temporary name never held a message.
        page::remove_temporaries(&*vfs, &name, &dir)?;
    }
    let scan = scan_address(
        &*vfs,
        &name,
        &dir,
        init.index,
        init.store_id,
        init.keys.as_ref(),
        remote.as_ref(),
        found,
        &mut |_, _, _| {},
    )?;
    if !scan.garbage.is_empty() {
        let mut remote_keys = Vec::new();
        for &(id, local) in &scan.garbage {
            if local {
                let p = page::page_path(&dir, id);
                vfs.remove_file(&p).map_err(io(&name, &p, "delete page"))?;
            }
            if let Some(r) = &remote {
                // Also when local: an upload may have landed before the crash.
                remote_keys.push(r.key(&init.store_id, id));
            }
        }
        page::sync_dir(&*vfs, &name, &dir)?;
        if let Some(r) = &remote {
            r.delete(&name, remote_keys)?;
        }
        tracing::info!(address = %name, pages = scan.garbage.len(), "deleted pages every cursor had passed");
    }
    if !scan.after_torn.is_empty() {
        for &id in &scan.after_torn {
            let p = page::page_path(&dir, id);
            vfs.remove_file(&p).map_err(io(&name, &p, "delete page"))?;
        }
        page::sync_dir(&*vfs, &name, &dir)?;
    }
    if let Some(t) = &scan.torn {
        let path = page::page_path(&dir, t.page);
        tracing::warn!(address = %name, page = %path.display(), at = t.offset, bytes = t.bytes,
            "cutting off a torn tail (never acknowledged)");
        let f = vfs.open(&path, OpenMode::ReadWrite).map_err(io(&name, &path, "open page"))?;
        f.set_len(t.offset).map_err(io(&name, &path, "truncate torn tail"))?;
        f.sync_all().map_err(|e| page::poisoned(&name, &path, "fsync", e))?;
    }
    sync_what_was_read(&*vfs, &name, &dir, &scan.pages)?;
    for (id, c, _) in scan.cursors.iter().filter(|(id, _, _)| scan.repaired.contains(id)) {
        init.journal.update(*id, format::KIND_CURSOR, &c.encode())?;
    }
    let newest = scan.pages.last().map(|p| p.id);
    let mut pages = BTreeMap::new();
    let mut page_firsts = Vec::with_capacity(scan.pages.len());
    for p in scan.pages {
        // A page of an older format is never appended to: the next message starts a new page. Nor is a
        // page in the object store, which was complete when uploaded: the newest page is there only if an
        // earlier build sealed it and then failed to create the next (which held no message, since a page
        // is created durably before its first message is written).
        let sealed = Some(p.id) != newest || p.keying.header.version != format::PAGE_VERSION || !p.local;
        let location = match (p.local, sealed) {
            (false, _) => PageLocation::Remote,
            // The newest page takes appends: reopen it for writing.
            (true, false) => {
                let path = page::page_path(&dir, p.id);
                let f: Arc<dyn VfsFile> =
                    vfs.open(&path, OpenMode::ReadWrite).map_err(io(&name, &path, "open page"))?.into();
                PageLocation::Local(Some(f))
            }
            // Complete pages are not kept open (see `PageLocation`).
            (true, true) => PageLocation::Local(None),
        };
        page_firsts.push((p.id, p.first_seq));
        pages.insert(p.id, address::recovered_page(location, p.keying, p.first_seq, p.end_seq, p.len, sealed));
    }
    let state = address::recovered_state(scan.next_seq, pages, scan.txs, scan.dead);
    let addr = Address::new(init, state);
    if let Some(t) = scan.torn {
        let _ = addr.torn_tail.set(t);
    }
    for (id, c, pending) in scan.cursors {
        let pos = c.floor.max(c.start);
        let read_page =
            page_firsts.iter().rev().find(|(_, first)| *first <= pos).or(page_firsts.first()).map_or(1, |(id, _)| *id);
        let sub = Arc::new(Subscription::new(
            addr.clone(),
            c.name.clone(),
            id,
            c.start,
            c.floor,
            c.acked.clone(),
            pending,
            read_page,
        ));
        sub.set_delivered_before(scan.next_seq);
        addr.lock().subs.insert(c.name.clone(), sub.clone());
        sub.advance_over_dead();
    }
    Ok(addr)
}
