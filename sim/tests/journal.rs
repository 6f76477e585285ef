//! The journal simulator as a test: seeds for `KEEL_SIM_SECS` seconds, or the one seed `KEEL_SIM_SEED`
//! names. A failure prints the seed that replays it. Not yet part of the default run: it still finds
//! violations under triage (docs/SIMULATOR.md), and CI must stay green for the fixes it already proved.

use std::time::{Duration, Instant};

#[test]
#[ignore = "finds violations still under triage (docs/SIMULATOR.md); run with -- --ignored"]
fn journal_keeps_every_acknowledged_record() {
    let secs: u64 = std::env::var("KEEL_SIM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let (first, only) = keel_sim::seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut seed, mut ops, mut runs) = (first, 0, 0);
    loop {
        match keel_sim::journal::run(seed, 3_000, keel_sim::journal::Profile::PowerLoss) {
            Ok(s) => ops += s.ops,
            Err(v) => panic!("{v}"),
        }
        runs += 1;
        if only || Instant::now() >= deadline {
            break;
        }
        seed += 1;
    }
    println!("journal simulator: seeds {first}..={seed}: {runs} runs, {ops} operations, no violation");
}
