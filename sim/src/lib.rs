//! # keel-sim
//!
//! Keel's storage-fault simulator, in the spirit of TigerBeetle's VOPR: a seeded, deterministic driver
//! runs the journal through its `Vfs` seam over a simulated disk ([`disk`]) that models the page cache,
//! power loss at any point, torn sectors, lost directory entries, bit flips in synced data, EIO on reads
//! and fsyncs, and a full disk; it reopens with options that change from one open to the next, and after
//! every open checks what was recovered against a model of what was acknowledged ([`model`],
//! [`journal`]).
//!
//! The operations and faults a seed chooses replay exactly with `KEEL_SIM_SEED`; the journal's own
//! threads (group commit, spare preparation, background maintenance) still race as they do in
//! production, and the disk widens those races with small delays, so a replay takes the same steps but
//! not always the same interleaving.

pub mod disk;
pub mod harness;
pub mod journal;
pub mod model;
pub mod paging;

/// Seeds to run: `KEEL_SIM_SEED` alone if set, else consecutive seeds from one drawn now.
pub fn seeds() -> (u64, bool) {
    match std::env::var("KEEL_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => (seed, true),
        None => (rand::random::<u64>() >> 16, false),
    }
}
