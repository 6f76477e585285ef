//! The record table's hash map, for ids that do not come in runs: stragglers left behind a sliding window,
//! and ids with no order at all.

use std::collections::HashMap;
use std::sync::Arc;

use super::RecordRef;
use crate::types::RecordId;

/// Shards of the record table. A hash table grows by allocating one twice its size and moving every entry,
/// so for a moment it holds both: sharding makes that moment cost 1/SHARDS of the table instead of 1.5×,
/// which is what bounds recovery's peak memory when it cannot know the final count in advance.
const SHARDS: usize = 16;

/// Records by id in a hash table, sharded (see `SHARDS`): the records that are not in a dense region.
///
/// Each shard is copy-on-write, so that a clone costs 16 reference counts, not a copy of the table: a
/// checkpoint clones the index under the writer's lock and serializes it after letting go, and the writer
/// copies only the shards it changes meanwhile (serializing 1.2 million records under the lock held appends
/// for ~50 ms; docs/BENCHMARKS.md).
#[derive(Clone, Debug)]
pub(super) struct SparseMap {
    shards: Vec<Arc<HashMap<RecordId, RecordRef>>>,
}

impl Default for SparseMap {
    fn default() -> SparseMap {
        SparseMap { shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect() }
    }
}

impl SparseMap {
    fn shard(id: RecordId) -> usize {
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
    }
    /// The shard of `id`, for writing; copied first if a clone still shares it.
    fn shard_mut(&mut self, id: RecordId) -> &mut HashMap<RecordId, RecordRef> {
        Arc::make_mut(&mut self.shards[Self::shard(id)])
    }
    pub(super) fn get(&self, id: &RecordId) -> Option<&RecordRef> {
        self.shards[Self::shard(*id)].get(id)
    }
    pub(super) fn insert(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        self.shard_mut(id).insert(id, r)
    }
    /// Inserts `r` if `id` is absent, with one lookup; false (and nothing changed) if present.
    pub(super) fn insert_new(&mut self, id: RecordId, r: RecordRef) -> bool {
        match self.shard_mut(id).entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(r);
                true
            }
        }
    }
    /// Replaces the record of `id` if it is live, with one lookup; returns the version replaced, or `None`
    /// (and nothing changed) if `id` is not live.
    pub(super) fn replace(&mut self, id: RecordId, r: RecordRef) -> Option<RecordRef> {
        let shard = &mut self.shards[Self::shard(id)];
        // As in `remove`: shared (a checkpoint in progress), a miss must not copy the shard.
        if Arc::get_mut(shard).is_none() && !shard.contains_key(&id) {
            return None;
        }
        Arc::make_mut(shard).get_mut(&id).map(|cur| std::mem::replace(cur, r))
    }
    pub(super) fn remove(&mut self, id: &RecordId) -> Option<RecordRef> {
        let shard = &mut self.shards[Self::shard(*id)];
        // Unshared (no checkpoint in progress), one lookup; shared, a miss must not copy the shard.
        if let Some(s) = Arc::get_mut(shard) {
            return s.remove(id);
        }
        if !shard.contains_key(id) {
            return None;
        }
        Arc::make_mut(shard).remove(id)
    }
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
    /// Room for `n` more records in all, spread evenly.
    pub(super) fn reserve(&mut self, n: usize) {
        for s in &mut self.shards {
            Arc::make_mut(s).reserve(n / SHARDS + 1);
        }
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = (&RecordId, &RecordRef)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
    /// Bytes the table occupies (hashbrown: per shard a power-of-two number of buckets at most 7/8 full,
    /// each an entry plus one control byte).
    pub(super) fn table_bytes(&self) -> u64 {
        let entry = std::mem::size_of::<(RecordId, RecordRef)>() as u64 + 1;
        self.shards
            .iter()
            .map(|s| s.capacity() as u64)
            .filter(|c| *c > 0)
            .map(|c| (c * 8 / 7).next_power_of_two() * entry)
            .sum()
    }
}
