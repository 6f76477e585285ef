//! Reading a paging store without changing it, for `keel paging stats|print|verify`: every address's
//! pages checked frame by frame, subscriptions with their exact pending counts, and what an open would
//! repair (pages below every cursor, a torn tail).

use std::path::{Path, PathBuf};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::vfs::StdVfs;
use keel_journal::RecoveryMode;

use crate::error::PagingError;
use crate::page::Message;
use crate::recovery::{self, Standing, TornTail};
use crate::remote::RemotePages;
use crate::subscription::Pending;

#[derive(Debug)]
pub struct PageReport {
    pub id: u64,
    pub path: PathBuf,
    pub first_seq: u64,
    /// One past the last message.
    pub end_seq: u64,
    pub payload_bytes: u64,
    pub file_bytes: u64,
    /// The master key id, when encrypted.
    pub key_id: Option<u32>,
    /// On the volume (else only in the object store).
    pub local: bool,
}

#[derive(Debug)]
pub struct SubscriptionReport {
    pub name: String,
    pub start: u64,
    pub floor: u64,
    /// Ranges of acknowledgements above the floor.
    pub ack_ranges: usize,
    pub pending: Pending,
}

#[derive(Debug)]
pub struct AddressScan {
    pub pages: Vec<PageReport>,
    /// Pages every cursor is past, which an open deletes.
    pub garbage_pages: Vec<u64>,
    pub torn_tail: Option<TornTail>,
    pub subscriptions: Vec<SubscriptionReport>,
    pub next_seq: u64,
    pub committed_transactions: usize,
    pub undecided_transactions: usize,
    pub rolled_back_messages: u64,
}

#[derive(Debug)]
pub struct AddressReport {
    pub name: String,
    pub index: u32,
    pub dir: PathBuf,
    pub scan: Result<AddressScan, PagingError>,
}

/// What [`inspect`] found.
#[derive(Debug)]
pub struct Inspection {
    pub addresses: Vec<AddressReport>,
    /// Address directories no journal record names (an address creation cut short).
    pub orphan_dirs: Vec<PathBuf>,
}

/// Reads the paging store in `pages` whose records are in the journal in `journal`, changing neither.
/// `visit` sees every message of every readable address, with its standing.
pub fn inspect(
    pages: &Path,
    journal: &Path,
    keys: Option<&KeyRing>,
    remote: Option<RemotePages>,
    visit: &mut dyn FnMut(&str, u64, &Message, Standing),
) -> Result<Inspection, PagingError> {
    let j = keel_journal::inspect::inspect(journal, RecoveryMode::Strict, keys, &mut |_| {})
        .map_err(|e| PagingError::JournalOpen(std::sync::Arc::new(e)))?;
    let records: Vec<_> = j.recovered.records.iter().map(|(id, r)| (*id, *r)).collect();
    let found = recovery::records_from(records, &j.recovered.prepared, &|r| j.reader.read(r))?;
    let remote = remote.map(crate::remote::Remote::new).transpose()?.map(std::sync::Arc::new);
    let mut addresses = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for rec in found.addresses.values() {
        let dir = pages.join(format!("a-{:08}", rec.index));
        named.insert(dir.clone());
        let mut v = |page: u64, m: &Message, s: Standing| visit(&rec.name, page, m, s);
        let scan = recovery::scan_address(
            &StdVfs,
            &rec.name,
            &dir,
            rec.index,
            rec.store_id,
            keys,
            remote.as_ref(),
            &found,
            &mut v,
        )
        .map(|s| AddressScan {
            pages: s
                .pages
                .iter()
                .map(|p| PageReport {
                    id: p.id,
                    path: crate::page::page_path(&dir, p.id),
                    first_seq: p.first_seq,
                    end_seq: p.end_seq,
                    payload_bytes: p.payload_bytes,
                    file_bytes: p.file_bytes,
                    key_id: p.keying.header.key.as_ref().map(|k| k.0),
                    local: p.local,
                })
                .collect(),
            garbage_pages: s.garbage.iter().map(|g| g.0).collect(),
            torn_tail: s.torn,
            subscriptions: s
                .cursors
                .iter()
                .map(|(_, c, pending)| SubscriptionReport {
                    name: c.name.clone(),
                    start: c.start,
                    floor: c.floor,
                    ack_ranges: c.acked.len(),
                    pending: *pending,
                })
                .collect(),
            next_seq: s.next_seq,
            committed_transactions: s
                .txs
                .values()
                .filter(|t| matches!(t.state, crate::address::TxState::Committed))
                .count(),
            undecided_transactions: s
                .txs
                .values()
                .filter(|t| !matches!(t.state, crate::address::TxState::Committed))
                .count(),
            rolled_back_messages: s.dead.iter().map(|(a, b)| b - a).sum(),
        });
        addresses.push(AddressReport { name: rec.name.clone(), index: rec.index, dir, scan });
    }
    let mut orphan_dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(pages) {
        for e in entries.flatten() {
            let p = e.path();
            let is_addr = e.file_name().to_str().is_some_and(|n| n.starts_with("a-"));
            if is_addr && p.is_dir() && !named.contains(&p) {
                orphan_dirs.push(p);
            }
        }
    }
    orphan_dirs.sort();
    Ok(Inspection { addresses, orphan_dirs })
}
