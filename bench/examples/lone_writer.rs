//! One writer's durable appends on a journal opened as `keel bench journal` opens it, and nothing else,
//! for profiling the lone writer's path: `cargo run --release -p keel-bench --example lone_writer -- DIR SIZE SECS`.

use std::sync::Arc;
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let size: usize = args.next().expect("SIZE").parse().expect("a number");
    let secs: f64 = args.next().expect("SECS").parse().expect("a number");
    let j = Arc::new(keel_bench::open_bench_journal(
        &dir,
        Duration::ZERO,
        16,
        keel_journal::limits::SEGMENT_BYTES_DEFAULT,
        false,
        keel_journal::Options::default().checkpoint_every_segments,
    )?);
    assert!(j.wait_for_spares(Duration::from_secs(120)), "spares ready");
    std::thread::sleep(Duration::from_secs(3));
    let m = keel_bench::journal_on(j, 1, size, Duration::from_secs_f64(secs))?;
    println!("{:.0}/s p50 {:.1} us", m.appends_per_sec, m.latency_p50_us);
    Ok(())
}
