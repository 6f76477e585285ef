//! 4 million sequential ids into 16 std `HashMap` shards, as the record table holds them, timing every
//! insert: with equal shares (`equal`, Keel before "Index growth" in docs/BENCHMARKS.md) all shards double
//! together; with shares weighted 64..79 (`weighted`, `keel_journal::index`) one at a time.

use std::collections::HashMap;
use std::time::Instant;
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct R {
    k: u8,
    l: u64,
    s: u64,
    o: u64,
    i: u32,
    f: u32,
}
fn main() {
    let weighted = std::env::args().nth(1).as_deref() == Some("weighted");
    let total: u64 = 16 * 64 + 120;
    let mut bounds = [0u64; 16];
    let mut c = 0u64;
    for i in 0..16 {
        c += 64 + i as u64;
        bounds[i] = (c << 32) / total;
    }
    let mut shards: Vec<HashMap<u64, R>> = (0..16).map(|_| HashMap::new()).collect();
    let r = R { k: 1, l: 2, s: 3, o: 4, i: 5, f: 6 };
    let mut stalls = Vec::new();
    for id in 0..4_000_000u64 {
        let s = if weighted {
            let p = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
            bounds.partition_point(|b| *b <= p)
        } else {
            (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize
        };
        let t = Instant::now();
        shards[s].insert(id, r);
        let e = t.elapsed();
        if e.as_micros() > 1000 {
            stalls.push((id, s, e.as_secs_f64() * 1e3));
        }
    }
    let big: Vec<_> = stalls.iter().filter(|x| x.0 > 2_000_000).collect();
    let mut worst = 0f64;
    for a in &stalls {
        let w: f64 = stalls.iter().filter(|b| b.0 >= a.0 && b.0 < a.0 + 7000).map(|b| b.2).sum();
        worst = worst.max(w);
    }
    println!("{} stalls over 1 ms after 2M records, largest {:.1} ms; worst stall within any 7000 inserts (1 s of a lone 16 KiB writer): {worst:.0} ms", big.len(), big.iter().map(|x| x.2).fold(0.0, f64::max));
    println!("total stall {:.0} ms in {} inserts over 1 ms", stalls.iter().map(|x| x.2).sum::<f64>(), stalls.len());
}
