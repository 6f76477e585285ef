//! The soak: `keel-sim journal|paging --secs N [--ops-per-seed M] [--until-ops T] [--profile power-loss|crashes|full] [--verbose]` runs seeds until the time is up, printing
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
    let sim = match args.get(1).map(String::as_str) {
        Some("journal") => "journal",
        Some("paging") => "paging",
        _ => "",
    };
    if sim.is_empty() {
        eprintln!("usage: keel-sim journal|paging [--secs N] [--ops-per-seed M] [--until-ops T] [--profile power-loss|crashes|full] [--verbose]   (KEEL_SIM_SEED=S replays one seed)");
        std::process::exit(2);
    }
    let secs = flag("--secs", 60);
    let per_seed = flag("--ops-per-seed", 20_000);
    // Stops early once this many operations ran in all.
    let until_ops = flag("--until-ops", u64::MAX);
    let profile = match args.iter().position(|a| a == "--profile").and_then(|i| args.get(i + 1)).map(String::as_str) {
        Some("full") => keel_sim::harness::Profile::Full,
        Some("crashes") => keel_sim::harness::Profile::Crashes,
        _ => keel_sim::harness::Profile::PowerLoss,
    };
    let verbose = args.iter().any(|a| a == "--verbose");
    let (first, only) = keel_sim::seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut total = keel_sim::harness::Stats::default();
    let mut seeds = 0u64;
    let mut seed = first;
    loop {
        if verbose {
            eprintln!("seed {seed}");
        }
        let run = if sim == "journal" { keel_sim::journal::run } else { keel_sim::paging::run };
        match run(seed, per_seed, profile) {
            Ok(s) => {
                seeds += 1;
                total.add(&s);
            }
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1);
            }
        }
        if only || Instant::now() >= deadline || total.ops >= until_ops {
            break;
        }
        seed += 1;
    }
    println!(
        "{sim} simulator: seeds {first}..={seed} ({seeds} runs), {} operations, {} opens, {} crashes, {} bits flipped \
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
