//! The record table: live records by id, laid out for the ids a broker actually uses.
//!
//! A broker takes its record ids from one sequential generator and deletes most records soon after adding
//! them, so the live ids form a dense window that slides forward, plus stragglers scattered behind it. A
//! hash table keyed by id serves the window badly (docs/BENCHMARKS.md, "Runs 33–40"): every add probes a
//! random bucket of a table of millions (a cache and TLB miss each time), the table doubles all at once,
//! and a checkpoint's copy-on-write copies whole shards of it.
//!
//! So the table has two parts:
//! - **Dense regions** of 64 consecutive ids: a bitmap and 64 slots behind an `Arc`, in a map keyed by
//!   region. Sequential adds fill one region after another: one probe of a small map per add, the same
//!   cache lines for 64 adds in a row, growth one region at a time, and a checkpoint's copy-on-write copies
//!   a region map shard and the few regions at the window's two ends, not the records in between.
//! - **The sparse map** (`SparseMap`, a hash table by id) for everything else: stragglers, and ids with
//!   no order at all. A straggler costs there what every record cost before.
//!
//! A region becomes dense when a run of adds reaches it: the next region after a dense frontier, or
//! `DENSE_MIN + 1` adds in a row into one region. A dense region behind the frontier that thins out to
//! `DENSE_MIN` records or fewer moves them to the sparse map, but only `THIN_LAG` frontier moves later:
//! a region that a first-in-first-out consumer is emptying is usually gone by then, so the drain never
//! touches the sparse map.
//!
//! # Invariants (checked by `check`)
//! - Every live id is in exactly one place: its dense region if that exists, else the sparse map. So a dense
//!   region answers for all 64 of its ids, and a lookup in it needs no second probe.
//! - A dense region is empty only while it is the frontier (the region of the latest add), so that adding
//!   and deleting one record at a time does not allocate and free a region each time.
//! - `len` is the number of live records; every sparse id's region lies in `sparse_regions`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::sparse::SparseMap;
use super::RecordRef;
use crate::types::RecordId;

/// Ids per region: one `u64` bitmap's worth.
const REGION_IDS: u64 = 64;
/// A dense region this thin costs about what its records cost in the sparse map (64 slots of 40 bytes
/// against ~64 bytes a record there), so below it, behind the frontier, the records move there.
const DENSE_MIN: u32 = 24;
/// Frontier moves (≈ 64 adds each in a run) before a thinned region moves to the sparse map.
const THIN_LAG: u64 = 64;
/// Shards of the region map, each copy-on-write on its own.
const SHARDS: usize = 16;

/// A filler for vacant slots; never returned (the bitmap says which slots hold records).
const VACANT: RecordRef = RecordRef {
    kind: 0,
    lsn: crate::types::Lsn(0),
    location: super::Location { seq: 0, offset: 0, inner: 0, frame_bytes: 0 },
};

fn region_of(id: RecordId) -> u64 {
    id / REGION_IDS
}

/// Whether `load_region` makes a run of `len` records a dense region (if it is one region's, ascending, and
/// nothing else of the region is live).
pub(crate) fn run_is_dense(len: usize) -> bool {
    len > DENSE_MIN as usize
}

/// Whether two ids fall in the same region (for a caller gathering a region's records for `load_region`).
pub(crate) fn same_region(a: RecordId, b: RecordId) -> bool {
    region_of(a) == region_of(b)
}

fn slot_of(id: RecordId) -> usize {
    (id % REGION_IDS) as usize
}

fn shard_of(region: u64) -> usize {
    (region.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// 64 consecutive ids' records.
#[derive(Clone, Debug)]
struct Dense {
    present: u64,
    slots: [RecordRef; REGION_IDS as usize],
}

impl Dense {
    fn empty() -> Dense {
        Dense { present: 0, slots: [VACANT; REGION_IDS as usize] }
    }
    fn count(&self) -> u32 {
        self.present.count_ones()
    }
    fn get(&self, slot: usize) -> Option<&RecordRef> {
        (self.present & (1 << slot) != 0).then(|| &self.slots[slot])
    }
    fn put(&mut self, slot: usize, r: RecordRef) {
        self.present |= 1 << slot;
        self.slots[slot] = r;
    }
    /// Its records with their ids, given the region's first id.
    fn entries(&self, base: RecordId) -> impl Iterator<Item = (RecordId, &RecordRef)> {
        let mut left = self.present;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let s = left.trailing_zeros() as usize;
            left &= left - 1;
            Some((base + s as u64, &self.slots[s]))
        })
    }
}

type RegionMap = HashMap<u64, Arc<Dense>>;

/// The live records by id (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct RecordTable {
    dense: [Arc<RegionMap>; SHARDS],
    sparse: SparseMap,
    len: usize,
    /// The region of the latest add, and how many adds in a row went to it.
    frontier: u64,
    run: u32,
    /// How many times the frontier has moved: the clock of `thinning`.
    moves: u64,
    /// Dense regions that thinned to `DENSE_MIN` records or fewer, with `moves` at the time.
    thinning: VecDeque<(u64, u64)>,
    /// The lowest and highest region of any id ever put in the sparse map (widened only): a new dense
    /// region outside it has no records to gather from there.
    sparse_regions: Option<(u64, u64)>,
}

impl PartialEq for RecordTable {
    /// The same records, wherever each table holds them.
    fn eq(&self, other: &RecordTable) -> bool {
        self.len == other.len && self.iter().all(|(id, r)| other.get(&id) == Some(r))
    }
}

impl Eq for RecordTable {}

impl RecordTable {
    fn region(&self, c: u64) -> Option<&Dense> {
        self.dense[shard_of(c)].get(&c).map(|d| &**d)
    }

    /// Dense region `c` for writing. A shard that a checkpoint still shares is copied only if `c` is in it
    /// (so a delete or update of an id that is not live, in a live region, may copy it: an error path).
    fn region_mut(&mut self, c: u64) -> Option<&mut Arc<Dense>> {
        let shard = &mut self.dense[shard_of(c)];
        if Arc::get_mut(shard).is_none() && !shard.contains_key(&c) {
            return None;
        }
        Arc::make_mut(shard).get_mut(&c)
    }

    pub fn get(&self, id: &RecordId) -> Option<&RecordRef> {
        match self.region(region_of(*id)) {
            Some(d) => d.get(slot_of(*id)),
            None => self.sparse.get(id),
        }
    }

    pub fn contains_key(&self, id: &RecordId) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes `r` the record of `id`; returns the one it replaced.
    pub fn insert(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        self.add(id, r, true)
    }

    /// Inserts `r` if `id` is absent, with one lookup; false (and nothing changed) if present.
    pub fn insert_new(&mut self, id: RecordId, r: RecordRef) -> bool {
        self.add(id, r, false).is_none()
    }

    /// Replaces the record of `id` if it is live, with one lookup; returns the version replaced, or `None`
    /// (and nothing changed) if `id` is not live.
    pub fn replace(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        let (c, slot) = (region_of(id), slot_of(id));
        if let Some(d) = self.region_mut(c) {
            d.get(slot)?;
            return Some(std::mem::replace(&mut Arc::make_mut(d).slots[slot], r));
        }
        self.sparse.replace(id, r)
    }

    /// Adds or (with `overwrite`) replaces the record of `id`; returns the record that was there. Without
    /// `overwrite`, a present record is left as it was.
    fn add(&mut self, id: RecordId, r: RecordRef, overwrite: bool) -> Option<RecordRef> {
        let (c, slot) = (region_of(id), slot_of(id));
        let run_goes_on = c == self.frontier.wrapping_add(1) && self.region(self.frontier).is_some();
        if (run_goes_on || (c == self.frontier && self.run > DENSE_MIN)) && self.region(c).is_none() {
            self.make_dense(c);
        }
        let old = match self.region_mut(c) {
            Some(d) => {
                let old = d.get(slot).copied();
                if old.is_none() || overwrite {
                    Arc::make_mut(d).put(slot, r);
                }
                old
            }
            None if overwrite => {
                self.widen_sparse(c);
                self.sparse.insert(id, r)
            }
            None => {
                self.widen_sparse(c);
                if self.sparse.insert_new(id, r) {
                    None
                } else {
                    self.sparse.get(&id).copied()
                }
            }
        };
        if old.is_none() {
            self.len += 1;
            self.advance(c);
        }
        old
    }

    /// Adds the records of one region at once, as a checkpoint lists them: ascending, more than
    /// `DENSE_MIN`, into a region with nothing live, they become a dense region without passing through the
    /// sparse map; otherwise one by one. `Err(i)`: `run[i]`'s id is live already, and `run[..i]` were added.
    pub fn load_region(&mut self, run: &[(RecordId, RecordRef)]) -> Result<(), usize> {
        let Some(&(first, _)) = run.first() else { return Ok(()) };
        let c = region_of(first);
        assert!(run.iter().all(|(id, _)| region_of(*id) == c), "records of one region");
        let fresh = || self.region(c).is_none() && !self.sparse_may_hold(c);
        if run_is_dense(run.len()) && run.windows(2).all(|w| w[0].0 < w[1].0) && fresh() {
            let mut d = Dense::empty();
            for (id, r) in run {
                d.put(slot_of(*id), *r);
            }
            let prior = Arc::make_mut(&mut self.dense[shard_of(c)]).insert(c, Arc::new(d));
            debug_assert!(prior.is_none());
            self.len += run.len();
            self.advance(c);
            return Ok(());
        }
        match run.iter().position(|(id, r)| !self.insert_new(*id, *r)) {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }

    /// Room in the sparse map for `n` more records.
    pub fn reserve_sparse(&mut self, n: usize) {
        self.sparse.reserve(n);
    }

    pub fn remove(&mut self, id: &RecordId) -> Option<RecordRef> {
        let (c, slot) = (region_of(*id), slot_of(*id));
        let frontier = self.frontier;
        let old = if let Some(d) = self.region_mut(c) {
            let old = *d.get(slot)?;
            let d = Arc::make_mut(d);
            d.present &= !(1 << slot);
            let n = d.count();
            if c != frontier {
                if n == 0 {
                    Arc::make_mut(&mut self.dense[shard_of(c)]).remove(&c);
                } else if n == DENSE_MIN {
                    self.thinning.push_back((c, self.moves));
                }
            }
            old
        } else {
            self.sparse.remove(id)?
        };
        self.len -= 1;
        Some(old)
    }

    /// Notes a new record in region `c`. When the frontier moves on, the region it leaves goes if empty,
    /// and joins `thinning` if thin; thinned regions whose time has come move to the sparse map.
    fn advance(&mut self, c: u64) {
        if c == self.frontier {
            self.run = self.run.saturating_add(1);
            return;
        }
        let from = std::mem::replace(&mut self.frontier, c);
        self.run = 1;
        self.moves += 1;
        match self.region(from).map(Dense::count) {
            Some(0) => {
                Arc::make_mut(&mut self.dense[shard_of(from)]).remove(&from);
            }
            Some(n) if n <= DENSE_MIN => self.thinning.push_back((from, self.moves)),
            _ => {}
        }
        while let Some(&(t, at)) = self.thinning.front() {
            if self.moves < at + THIN_LAG {
                break;
            }
            self.thinning.pop_front();
            // Gone already, filled again, or the frontier again (it rejoins when the frontier leaves).
            if t != self.frontier && self.region(t).is_some_and(|d| d.count() <= DENSE_MIN) {
                self.make_sparse(t);
            }
        }
    }

    /// Creates dense region `c`, gathering its records from the sparse map.
    fn make_dense(&mut self, c: u64) {
        let mut d = Dense::empty();
        if self.sparse_may_hold(c) {
            let base = c * REGION_IDS;
            for slot in 0..REGION_IDS as usize {
                if let Some(r) = self.sparse.remove(&(base + slot as u64)) {
                    d.put(slot, r);
                }
            }
        }
        let fresh = Arc::make_mut(&mut self.dense[shard_of(c)]).insert(c, Arc::new(d));
        assert!(fresh.is_none(), "region {c} made dense twice");
    }

    /// Moves dense region `c`'s records to the sparse map.
    fn make_sparse(&mut self, c: u64) {
        let d = Arc::make_mut(&mut self.dense[shard_of(c)]).remove(&c).expect("a dense region");
        self.widen_sparse(c);
        for (id, r) in d.entries(c * REGION_IDS) {
            let fresh = self.sparse.insert_new(id, *r);
            assert!(fresh, "record {id} both in a dense region and in the sparse map");
        }
    }

    /// Whether the sparse map may hold ids of region `c`.
    fn sparse_may_hold(&self, c: u64) -> bool {
        self.sparse_regions.is_some_and(|(lo, hi)| lo <= c && c <= hi)
    }

    fn widen_sparse(&mut self, c: u64) {
        self.sparse_regions = Some(match self.sparse_regions {
            Some((lo, hi)) => (lo.min(c), hi.max(c)),
            None => (c, c),
        });
    }

    /// Every live record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (RecordId, &RecordRef)> {
        let dense = self.dense.iter().flat_map(|s| s.iter()).flat_map(|(c, d)| d.entries(c * REGION_IDS));
        dense.chain(self.sparse.iter().map(|(id, r)| (*id, r)))
    }

    pub fn values(&self) -> impl Iterator<Item = &RecordRef> {
        self.iter().map(|(_, r)| r)
    }

    /// Bytes the table occupies: the region maps' buckets (hashbrown: a power-of-two number at most 7/8
    /// full, each an entry and a control byte), the dense regions, and the sparse map.
    pub fn table_bytes(&self) -> u64 {
        let entry = std::mem::size_of::<(u64, Arc<Dense>)>() as u64 + 1;
        // A region and its two reference counts.
        let region = std::mem::size_of::<Dense>() as u64 + 16;
        let maps: u64 = self
            .dense
            .iter()
            .map(|s| (s.capacity() as u64, s.len() as u64))
            .filter(|(cap, _)| *cap > 0)
            .map(|(cap, n)| (cap * 8 / 7).next_power_of_two() * entry + n * region)
            .sum();
        maps + self.sparse.table_bytes()
    }

    /// Checks the invariants in the module docs (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut n = 0;
        for (c, d) in self.dense.iter().flat_map(|s| s.iter()) {
            assert!(d.count() > 0 || *c == self.frontier, "region {c} is empty and not the frontier");
            n += d.count() as usize;
        }
        for (id, _) in self.sparse.iter() {
            let c = region_of(*id);
            assert!(self.region(c).is_none(), "record {id} is in the sparse map and its region is dense");
            assert!(self.sparse_may_hold(c), "record {id} outside `sparse_regions`");
            n += 1;
        }
        assert_eq!(n, self.len);
    }

    #[cfg(test)]
    fn dense_regions(&self) -> usize {
        self.dense.iter().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::index::Location;
    use crate::types::Lsn;

    fn rr(n: u64) -> RecordRef {
        RecordRef {
            kind: n as u8,
            lsn: Lsn(n),
            location: Location { seq: n % 7, offset: n, inner: 0, frame_bytes: 40 },
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        InsertNew(u64),
        Insert(u64),
        Replace(u64),
        Remove(u64),
        /// Clone the table (a checkpoint), which must keep its records while the original changes.
        Snapshot,
    }

    /// Ids as a broker makes them (the next one from a cursor), near ones behind the cursor, and the odd id
    /// from anywhere.
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let raw = (0u8..6, 0u64..3_000, proptest::bool::weighted(0.03));
        (proptest::collection::vec(raw, 1..3_000), 0u64..200).prop_map(|(raw, mut cursor)| {
            raw.into_iter()
                .map(|(k, x, wild)| {
                    let id = if wild { x.wrapping_mul(0x9E37_79B9_7F4A_7C15) } else { cursor.saturating_sub(x) };
                    match k {
                        0 | 1 => {
                            cursor += 1;
                            Op::InsertNew(cursor)
                        }
                        2 => Op::Insert(id),
                        3 => Op::Replace(id),
                        4 if x % 100 == 0 => Op::Snapshot,
                        _ => Op::Remove(id),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
        #[test]
        fn matches_a_hash_map(ops in ops()) {
            let mut t = RecordTable::default();
            let mut model: HashMap<u64, RecordRef> = HashMap::new();
            let mut snapshots: Vec<(RecordTable, HashMap<u64, RecordRef>)> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let r = rr(n as u64);
                match op {
                    Op::InsertNew(id) => {
                        let fresh = !model.contains_key(&id);
                        prop_assert_eq!(t.insert_new(id, r), fresh);
                        if fresh { model.insert(id, r); }
                    }
                    Op::Insert(id) => prop_assert_eq!(t.insert(id, r), model.insert(id, r)),
                    Op::Replace(id) => {
                        let want = model.get_mut(&id).map(|cur| std::mem::replace(cur, r));
                        prop_assert_eq!(t.replace(id, r), want);
                    }
                    Op::Remove(id) => prop_assert_eq!(t.remove(&id), model.remove(&id)),
                    Op::Snapshot => snapshots.push((t.clone(), model.clone())),
                }
                prop_assert_eq!(t.len(), model.len());
                if n % 64 == 0 { t.check(); }
            }
            t.check();
            for (id, r) in &model {
                prop_assert_eq!(t.get(id), Some(r));
            }
            let listed: HashMap<u64, RecordRef> = t.iter().map(|(id, r)| (id, *r)).collect();
            prop_assert_eq!(&listed, &model);
            for (snap, want) in snapshots {
                snap.check();
                let listed: HashMap<u64, RecordRef> = snap.iter().map(|(id, r)| (id, *r)).collect();
                prop_assert_eq!(&listed, &want);
            }
        }
    }

    /// 200 000 adds, each deleted 8 192 ids later but one in 20 kept, as `keel bench restart` does.
    fn sliding_window(t: &mut RecordTable) {
        for id in 0..200_000u64 {
            assert!(t.insert_new(id, rr(id)));
            if id >= 8_192 && (id - 8_192) % 20 != 0 {
                assert!(t.remove(&(id - 8_192)).is_some());
            }
        }
    }

    #[test]
    fn a_sliding_window_is_dense_and_its_stragglers_sparse() {
        let mut t = RecordTable::default();
        sliding_window(&mut t);
        t.check();
        assert_eq!(t.len() as u64, 8_192 + (200_000 - 8_192) / 20 + 1);
        // The window (128 regions) and the thinned regions not yet moved (THIN_LAG).
        let dense = t.dense_regions();
        assert!((128..=128 + THIN_LAG as usize + 2).contains(&dense), "{dense} dense regions");
        // Every straggler well behind the window is in the sparse map.
        assert!(t.sparse.len() >= (200_000 - 8_192 - 64 * (THIN_LAG as usize + 2)) / 20);
    }

    #[test]
    fn a_checkpointed_window_decodes_to_the_same_shape() {
        let mut t = RecordTable::default();
        sliding_window(&mut t);
        // A checkpoint lists the records in the table's own order; decoding inserts them in that order.
        let mut decoded = RecordTable::default();
        for (id, r) in t.iter() {
            assert!(decoded.insert_new(id, *r));
        }
        let mut loaded = RecordTable::default();
        let listed: Vec<(u64, RecordRef)> = t.iter().map(|(id, r)| (id, *r)).collect();
        for run in listed.chunk_by(|a, b| region_of(a.0) == region_of(b.0)) {
            assert_eq!(loaded.load_region(run), Ok(()));
        }
        loaded.check();
        assert!(loaded == t);
        assert!(loaded.dense_regions() <= t.dense_regions(), "{} dense regions", loaded.dense_regions());
        assert_eq!(loaded.load_region(&listed[..1]), Err(0), "a live id again");
        decoded.check();
        assert!(decoded == t);
        assert!(decoded.dense_regions() <= t.dense_regions(), "{} dense regions", decoded.dense_regions());
        assert!(decoded.table_bytes() <= t.table_bytes() * 11 / 10);
    }

    #[test]
    fn one_record_at_a_time_reuses_the_frontier_region() {
        let mut t = RecordTable::default();
        for id in 0..10_000u64 {
            assert!(t.insert_new(id, rr(id)));
            assert_eq!(t.remove(&id), Some(rr(id)));
        }
        t.check();
        assert_eq!(t.len(), 0);
        assert!(t.dense_regions() <= 1, "{} regions left for no records", t.dense_regions());
    }

    #[test]
    fn ids_with_no_order_stay_in_the_sparse_map() {
        let mut t = RecordTable::default();
        for n in 0..10_000u64 {
            assert!(t.insert_new(n.wrapping_mul(0x9E37_79B9_7F4A_7C15), rr(n)));
        }
        t.check();
        assert_eq!(t.dense_regions(), 0);
    }

    #[test]
    fn a_clone_shares_all_but_what_changes() {
        let mut t = RecordTable::default();
        for id in 0..64_000u64 {
            t.insert_new(id, rr(id));
        }
        let snapshot = t.clone();
        t.insert_new(64_000, rr(64_000));
        t.remove(&5);
        // Id 64 000 opens a new region, and id 5's region is copied: the other 999 are still shared.
        let shared = t
            .dense
            .iter()
            .zip(&snapshot.dense)
            .flat_map(|(a, b)| a.iter().filter(|(c, d)| b.get(c).is_some_and(|e| Arc::ptr_eq(d, e))))
            .count();
        assert_eq!(shared, 1_000 - 1);
        assert_eq!(snapshot.len(), 64_000);
        assert_eq!(snapshot.get(&5), Some(&rr(5)));
        assert_eq!(t.get(&5), None);
    }
}
