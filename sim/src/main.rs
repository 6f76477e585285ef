//! The soak: `keel-sim journal --secs N [--ops-per-seed M] [--profile power-loss|crashes|full] [--verbose]` runs seeds until the time is up, printing
//! totals; it exits 1 with the replay command at the first violation.

use std::time::{Duration, Instant};

fn main() {
    // The journal reports what goes wrong (poisoning, a writer thread that cannot stop) through tracing:
    // `KEEL_SIM_LOG=FILE` keeps its errors.
    if let Some(path) = std::env::var_os("KEEL_SIM_LOG") {
        let file = std::fs::File::create(&path).expect("KEEL_SIM_LOG names a file that can be created");
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::ERROR)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if args.get(1).map(String::as_str) != Some("journal") {
        eprintln!("usage: keel-sim journal [--secs N] [--ops-per-seed M] [--profile power-loss|crashes|full] [--verbose]   (KEEL_SIM_SEED=S replays one seed)");
        std::process::exit(2);
    }
    let secs = flag("--secs", 60);
    let per_seed = flag("--ops-per-seed", 20_000);
    let profile = match args.iter().position(|a| a == "--profile").and_then(|i| args.get(i + 1)).map(String::as_str) {
        Some("full") => keel_sim::journal::Profile::Full,
        Some("crashes") => keel_sim::journal::Profile::Crashes,
        _ => keel_sim::journal::Profile::PowerLoss,
    };
    let verbose = args.iter().any(|a| a == "--verbose");
    let (first, only) = keel_sim::seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut total = keel_sim::journal::Stats::default();
    let mut seeds = 0u64;
    let mut seed = first;
    loop {
        if verbose {
            eprintln!("seed {seed}");
        }
        match keel_sim::journal::run(seed, per_seed, profile) {
            Ok(s) => {
                seeds += 1;
                total.ops += s.ops;
                total.opens += s.opens;
                total.crashes += s.crashes;
                total.damaged += s.damaged;
                total.refused += s.refused;
                total.disk_ops += s.disk_ops;
            }
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1);
            }
        }
        if only || Instant::now() >= deadline {
            break;
        }
        seed += 1;
    }
    println!(
        "journal simulator: seeds {first}..={seed} ({seeds} runs), {} operations, {} opens, {} crashes, {} bits flipped \
         ({} opens refused naming them), {} disk operations, in {:.1} s: no violation",
        total.ops,
        total.opens,
        total.crashes,
        total.damaged,
        total.refused,
        total.disk_ops,
        started.elapsed().as_secs_f64()
    );
}
