//! How three ways of hashing record ids into a 16-shard table of `(u64, 40-byte record)` behave with
//! millions of entries:
//! - `siphash`: std's default (Keel's record table before `IdHash`), 16 shards by a multiplicative hash;
//! - `fmix`: a fast uniform hash (MurmurHash3's finalizer), shards as above;
//! - `blocks`: `keel_journal::index::IdHash`'s scheme: 64 shards, runs of 1024 consecutive ids to one shard,
//!   and there blocks of 16 consecutive ids to consecutive buckets after a random start.
//!
//! Two measurements:
//! - tight loops (insert all, random lookups, FIFO delete-oldest + insert-newest), where the CPU overlaps
//!   the cache misses of consecutive operations;
//! - isolated inserts: a 256 KiB copy between two inserts evicts what the last one touched, as a journal's
//!   write and fdatasync do between two appends of one writer.
//!
//! Usage: `cargo run --release -- [RECORDS]` (default 2 500 000).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Record {
    kind: u8,
    lsn: u64,
    seq: u64,
    offset: u64,
    inner: u32,
    frame_bytes: u32,
}
const R: Record = Record { kind: 1, lsn: 2, seq: 3, offset: 4, inner: 5, frame_bytes: 6 };

fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[derive(Clone, Copy, Default)]
struct Uniform;
#[derive(Clone, Copy, Default)]
struct Blocks;
struct H(u64, bool);
impl Hasher for H {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("u64 keys only")
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = if self.1 {
            let within = id & 15;
            fmix64(id >> 4).wrapping_add(within) ^ (within << 57)
        } else {
            fmix64(id)
        };
    }
}
impl BuildHasher for Uniform {
    type Hasher = H;
    fn build_hasher(&self) -> H {
        H(0, false)
    }
}
impl BuildHasher for Blocks {
    type Hasher = H;
    fn build_hasher(&self) -> H {
        H(0, true)
    }
}

trait Table {
    fn insert(&mut self, id: u64) -> bool;
    fn contains(&self, id: u64) -> bool;
    fn remove(&mut self, id: u64) -> bool;
    /// Buckets allocated, all shards.
    fn buckets(&self) -> usize;
}
struct Sharded<S> {
    shards: Vec<HashMap<u64, Record, S>>,
    blocks: bool,
}
impl<S: BuildHasher + Default> Sharded<S> {
    fn new(blocks: bool) -> Self {
        let shards = if blocks { 64 } else { 16 };
        Sharded { shards: (0..shards).map(|_| HashMap::with_hasher(S::default())).collect(), blocks }
    }
    fn shard(&self, id: u64) -> usize {
        if self.blocks {
            let run = id >> 10;
            (run.wrapping_add(fmix64((run / 64) ^ 0x5151)) % 64) as usize
        } else {
            (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize
        }
    }
}
impl<S: BuildHasher + Default> Table for Sharded<S> {
    fn insert(&mut self, id: u64) -> bool {
        let s = self.shard(id);
        self.shards[s].insert(id, R).is_none()
    }
    fn contains(&self, id: u64) -> bool {
        self.shards[self.shard(id)].contains_key(&id)
    }
    fn remove(&mut self, id: u64) -> bool {
        let s = self.shard(id);
        self.shards[s].remove(&id).is_some()
    }
    fn buckets(&self) -> usize {
        self.shards.iter().map(|s| s.capacity()).filter(|c| *c > 0).map(|c| (c * 8 / 7).next_power_of_two()).sum()
    }
}

fn tables() -> Vec<(&'static str, Box<dyn Table>)> {
    vec![
        ("siphash", Box::new(Sharded::<std::collections::hash_map::RandomState>::new(false))),
        ("fmix", Box::new(Sharded::<Uniform>::new(false))),
        ("blocks", Box::new(Sharded::<Blocks>::new(true))),
    ]
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn ns_per(started: Instant, ops: u64) -> f64 {
    started.elapsed().as_nanos() as f64 / ops as f64
}

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(2_500_000, |s| s.parse().expect("RECORDS is a number"));
    let m = 1_000_000.min(n);
    println!("tight loops, {n} records (ns per operation)");
    for stride in [1u64, 3, 16, 4096] {
        for (name, mut t) in tables() {
            let started = Instant::now();
            for i in 0..n {
                assert!(t.insert(i * stride));
            }
            let insert = ns_per(started, n);
            let mut x = 88_172_645_463_325_252u64;
            let started = Instant::now();
            for _ in 0..m {
                assert!(t.contains((xorshift(&mut x) % n) * stride));
            }
            let get = ns_per(started, m);
            let started = Instant::now();
            for i in 0..m {
                assert!(t.remove(i * stride));
                assert!(t.insert((n + i) * stride));
            }
            let fifo = ns_per(started, m);
            println!("  stride {stride:>5} {name:>8}: insert {insert:6.1}, random lookup {get:6.1}, FIFO remove+insert {fifo:6.1}");
        }
    }
    // `keel bench restart`'s journal, replayed: ids added in order, each deleted again 8192 ids later
    // unless it is a multiple of 20 (5 % stay live).
    println!("add, delete 8192 ids later, keep 5 %: {n} ids (buckets allocated at the end; live records)");
    for (name, mut t) in tables() {
        let mut live = 0u64;
        for id in 0..n {
            assert!(t.insert(id));
            live += 1;
            if id >= 8192 && (id - 8192) % 20 != 0 {
                assert!(t.remove(id - 8192));
                live -= 1;
            }
        }
        println!("  {name:>8}: {} buckets for {live} records", t.buckets());
    }
    println!("isolated inserts after {n} records (ns per insert; a 256 KiB copy between two)");
    let src = vec![1u8; 8 << 20];
    let mut dst = vec![0u8; 8 << 20];
    for stride in [1u64, 16, 4096] {
        for (name, mut t) in tables() {
            for i in 0..n {
                t.insert(i * stride);
            }
            let (mut total, mut at) = (0u128, 0usize);
            let k = 200_000u64;
            for i in 0..k {
                dst[at..at + (256 << 10)].copy_from_slice(black_box(&src[at..at + (256 << 10)]));
                black_box(&mut dst);
                at = (at + (256 << 10)) % (8 << 20);
                let started = Instant::now();
                t.insert((n + i) * stride);
                total += started.elapsed().as_nanos();
            }
            println!("  stride {stride:>5} {name:>8}: {:6.1}", total as f64 / k as f64);
        }
    }
}
