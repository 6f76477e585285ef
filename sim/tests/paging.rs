//! The paging simulator as a test, in the default run: seeds drawn now (or the one `KEEL_SIM_SEED`
//! names), each profile in turn, for `KEEL_SIM_SECS` seconds in all (default 30). A failure prints the
//! seed that replays it. The long soak is `keel-sim paging` (docs/SIMULATOR.md).

use std::time::{Duration, Instant};

use keel_sim::harness::Profile;

#[test]
fn paging_keeps_every_acknowledged_message() {
    let secs: u64 = std::env::var("KEEL_SIM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let (first, only) = keel_sim::seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let profiles = [Profile::PowerLoss, Profile::Crashes, Profile::Full];
    let (mut seed, mut ops, mut runs) = (first, 0, 0);
    loop {
        let profile = profiles[runs % profiles.len()];
        match keel_sim::paging::run(seed, 1_500, profile) {
            Ok(s) => ops += s.ops,
            Err(v) => panic!("{profile:?}: {v}"),
        }
        runs += 1;
        if only || Instant::now() >= deadline {
            break;
        }
        seed += 1;
    }
    println!("paging simulator: seeds {first}..={seed}: {runs} runs, {ops} operations, no violation");
}
