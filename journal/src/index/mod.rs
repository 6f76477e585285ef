//! The live-record index: for every live record, where its latest version lies on disk — never its payload,
//! so memory is proportional to the number of live records, not to their bytes. Recovery rebuilds it, the
//! writer keeps it current, checkpoints persist it, and reclaim and compaction decide from its per-segment
//! accounting which segments still matter.
//!
//! # Reclaim rule
//! Only a *prefix* of the sealed segments (the oldest ones) is ever deleted, and only when
//! 1. no live record's latest version lies in it, and
//! 2. no transaction has frames both inside it and after it (open and prepared transactions extend to
//!    infinity).
//!
//! Why this is safe: recovery replays the remaining segments from the new oldest one. (1) means no live
//! version is lost. A delete frame in a removed segment only removed versions that lie in even older,
//! already-removed segments, so nothing deleted returns. (2) means every transaction recovery sees is seen
//! whole, so a commit never applies half a transaction and the record-count check stays exact.

mod sparse;
mod table;

use std::collections::BTreeMap;

pub(crate) use table::{run_is_dense, same_region, RecordTable};

use crate::types::{Lsn, RecordId};

/// Where a frame lies on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Segment sequence number.
    pub seq: u64,
    /// File offset of the frame (plaintext segment) or of the sealed unit holding it (encrypted segment).
    pub offset: u64,
    /// Offset of the frame inside the unit's plaintext; 0 in a plaintext segment.
    pub inner: u32,
    /// Bytes of the frame: header and payload.
    pub frame_bytes: u32,
}

/// A live record as the index holds it: the latest version's place, not its bytes. Read the payload with
/// `Journal::read` (or `inspect::Reader::read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef {
    pub kind: u8,
    /// LSN of the add or update that wrote this version. Compaction moves a version without changing it.
    pub lsn: Lsn,
    pub location: Location,
}

/// Live-record accounting of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentLive {
    pub records: u64,
    /// Frame bytes of those records.
    pub bytes: u64,
}

/// The live records and what pins each segment.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveIndex {
    pub records: RecordTable,
    /// Per segment with at least one live record.
    pub segments: BTreeMap<u64, SegmentLive>,
    /// Resolved transactions whose frames span segments: first segment → the last segment any transaction
    /// starting there was resolved in. Pruned as segments are reclaimed.
    pub spans: BTreeMap<u64, u64>,
}

impl LiveIndex {
    /// Makes `r` the live version of `id`; returns the version it replaced.
    pub fn insert(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        let old = self.records.insert(id, r);
        if let Some(o) = &old {
            self.unaccount(o);
        }
        self.account(&r);
        old
    }

    /// Makes `r` the live version of `id` if `id` has none; false (and nothing changed) if it has.
    pub fn insert_new(&mut self, id: RecordId, r: RecordRef) -> bool {
        if !self.records.insert_new(id, r) {
            return false;
        }
        self.account(&r);
        true
    }

    /// Makes `r` the live version of `id` if `id` has one; returns the version replaced, or `None` (and
    /// nothing changed) if `id` is not live.
    pub fn replace(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        let old = self.records.replace(id, r)?;
        self.unaccount(&old);
        self.account(&r);
        Some(old)
    }

    /// Adds the records of one region at once (see `RecordTable::load_region`). `Err(i)`: `run[i]`'s id is
    /// live already, and `run[..i]` were added.
    pub fn load_region(&mut self, run: &[(RecordId, RecordRef)]) -> Result<(), usize> {
        let added = self.records.load_region(run);
        for (_, r) in &run[..added.err().unwrap_or(run.len())] {
            self.account(r);
        }
        added
    }

    pub fn remove(&mut self, id: RecordId) -> Option<RecordRef> {
        let old = self.records.remove(&id);
        if let Some(o) = &old {
            self.unaccount(o);
        }
        old
    }

    fn account(&mut self, r: &RecordRef) {
        let s = self.segments.entry(r.location.seq).or_default();
        s.records += 1;
        s.bytes += u64::from(r.location.frame_bytes);
    }

    fn unaccount(&mut self, r: &RecordRef) {
        let seq = r.location.seq;
        let s = self.segments.get_mut(&seq).expect("a live record's segment is accounted");
        assert!(s.records > 0 && s.bytes >= u64::from(r.location.frame_bytes), "segment {seq} accounting underflow");
        s.records -= 1;
        s.bytes -= u64::from(r.location.frame_bytes);
        if s.records == 0 {
            debug_assert_eq!(s.bytes, 0);
            self.segments.remove(&seq);
        }
    }

    /// Records that a transaction with frames from segment `first` was resolved in segment `last`.
    pub fn note_span(&mut self, first: u64, last: u64) {
        if first < last {
            let e = self.spans.entry(first).or_insert(last);
            *e = (*e).max(last);
        }
    }

    /// The largest `k` such that every segment in `oldest..=k` may be deleted under the reclaim rule, given
    /// that segments from `sealed_below` on are not sealed and that open transactions have frames from
    /// `open_tx_first` (their oldest segment) on.
    pub fn reclaim_bound(&self, oldest: u64, sealed_below: u64, open_tx_first: Option<u64>) -> Option<u64> {
        let mut limit = sealed_below;
        if let Some(s) = self.segments.keys().next() {
            limit = limit.min(*s);
        }
        if let Some(t) = open_tx_first {
            limit = limit.min(t);
        }
        // Candidates are oldest..limit (exclusive); a span starting inside and ending at or after a cut
        // forbids that cut.
        let mut best = None;
        let mut reach = 0u64;
        for k in oldest..limit {
            if let Some(last) = self.spans.get(&k) {
                reach = reach.max(*last);
            }
            if reach <= k {
                best = Some(k);
            }
        }
        // Spans that began before `oldest` were pruned with their segments; none can reach past it.
        best
    }

    /// Bytes the record table occupies.
    pub fn table_bytes(&self) -> u64 {
        self.records.table_bytes()
    }

    /// Forgets spans that lie wholly in reclaimed segments (`..=k`).
    pub fn prune_spans(&mut self, k: u64) {
        self.spans.retain(|first, last| !(*first <= k && *last <= k));
    }

    /// Checks the accounting against the records (tests and debug builds).
    pub fn check(&self) {
        let mut want: BTreeMap<u64, SegmentLive> = BTreeMap::new();
        for r in self.records.values() {
            let s = want.entry(r.location.seq).or_default();
            s.records += 1;
            s.bytes += u64::from(r.location.frame_bytes);
        }
        assert_eq!(want, self.segments, "per-segment accounting matches the records");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(seq: u64, lsn: u64) -> RecordRef {
        RecordRef { kind: 0, lsn: Lsn(lsn), location: Location { seq, offset: 256, inner: 0, frame_bytes: 50 } }
    }

    #[test]
    fn a_clone_keeps_its_state_while_the_original_changes() {
        let mut ix = LiveIndex::default();
        for id in 0..1_000 {
            ix.insert(id, rr(1, id + 1));
        }
        let snapshot = ix.clone();
        for id in 0..500 {
            ix.remove(id);
        }
        ix.insert(5_000, rr(2, 5_000));
        ix.insert(700, rr(2, 5_001));
        ix.remove(123_456); // a miss
        ix.replace(123_457, rr(2, 5_002)); // a miss
        ix.replace(900, rr(2, 5_003));
        assert_eq!(snapshot.records.len(), 1_000);
        assert!((0..1_000).all(|id| snapshot.records.get(&id) == Some(&rr(1, id + 1))));
        assert!(snapshot.records.get(&5_000).is_none());
        assert_eq!(ix.records.len(), 501);
        assert_eq!(ix.records.get(&700), Some(&rr(2, 5_001)));
        assert_eq!(ix.records.get(&900), Some(&rr(2, 5_003)));
        assert_eq!(snapshot.records.get(&900), Some(&rr(1, 901)));
        assert!(ix.records.get(&123_457).is_none());
        snapshot.check();
        ix.check();
    }

    #[test]
    fn accounting_follows_inserts_and_removes() {
        let mut ix = LiveIndex::default();
        ix.insert(1, rr(1, 1));
        ix.insert(2, rr(1, 2));
        ix.insert(1, rr(2, 3));
        assert!(!ix.insert_new(2, rr(3, 4)), "2 is live");
        assert!(ix.insert_new(3, rr(3, 5)));
        assert_eq!(ix.segments[&1], SegmentLive { records: 1, bytes: 50 });
        assert_eq!(ix.segments[&3], SegmentLive { records: 1, bytes: 50 });
        assert_eq!(ix.records.get(&2), Some(&rr(1, 2)));
        assert_eq!(ix.replace(4, rr(3, 6)), None, "4 is not live");
        assert!(ix.records.get(&4).is_none());
        assert_eq!(ix.replace(3, rr(4, 7)), Some(rr(3, 5)));
        assert!(!ix.segments.contains_key(&3));
        assert_eq!(ix.segments[&4], SegmentLive { records: 1, bytes: 50 });
        ix.remove(2);
        assert!(!ix.segments.contains_key(&1));
        ix.check();
    }

    #[test]
    fn reclaim_stops_at_live_records_open_txs_and_spans() {
        let mut ix = LiveIndex::default();
        ix.insert(1, rr(5, 1));
        assert_eq!(ix.reclaim_bound(1, 10, None), Some(4));
        assert_eq!(ix.reclaim_bound(1, 3, None), Some(2));
        assert_eq!(ix.reclaim_bound(1, 10, Some(2)), Some(1));
        assert_eq!(ix.reclaim_bound(2, 10, Some(2)), None);
        // A transaction from 2 resolved in 7: cuts at 2..6 would split it.
        ix.note_span(2, 7);
        assert_eq!(ix.reclaim_bound(1, 10, None), Some(1));
        ix.remove(1);
        assert_eq!(ix.reclaim_bound(1, 10, None), Some(9));
        ix.prune_spans(9);
        assert!(ix.spans.is_empty());
    }
}
