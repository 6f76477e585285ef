//! One writer's durable appends through `keel_bench::journal_run` (the bench's journal options, its spare
//! pool refilling as segments fill) and nothing else, for profiling the lone writer's path: `cargo run --release -p keel-bench --example lone_writer -- DIR SIZE SECS`.

use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let size: usize = args.next().expect("SIZE").parse().expect("a number");
    let secs: f64 = args.next().expect("SECS").parse().expect("a number");
    let scenario = keel_bench::Scenario {
        writers: 1,
        size,
        duration: Duration::from_secs_f64(secs),
        max_batch_wait: Duration::ZERO,
    };
    let m = keel_bench::journal_run(&dir, &scenario, false)?;
    println!("{:.0}/s p50 {:.1} us", m.appends_per_sec, m.latency_p50_us);
    Ok(())
}
