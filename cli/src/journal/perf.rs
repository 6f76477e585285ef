//! `keel journal perf`: measures this disk's durable-write latency (write + fdatasync of one record into a
//! pre-allocated file) and then the journal's group-commit throughput at several batch waits, and
//! recommends the wait that gave the most appends per second. As `artemis perf-journal` does for Artemis's
//! buffer timeout, but measured against Keel's own writer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use keel_bench::{journal_run, raw_fdatasync_loop, raw_file, Scenario};

use crate::Outcome;

#[derive(Args)]
pub struct PerfArgs {
    /// A directory on the disk to measure; a scratch subdirectory is created in it and removed.
    #[arg(long)]
    dir: PathBuf,
    /// Record size.
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Concurrent writers for the group-commit step.
    #[arg(long, default_value_t = 16)]
    writers: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &PerfArgs) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("keel-perf-").tempdir_in(&args.dir)?;
    let secs = Duration::from_secs_f64(args.secs);
    let raw = raw_fdatasync_loop(&raw_file(scratch.path())?, args.size as usize, secs)?;
    let sync_us = raw.latency_p50_us.max(1.0);
    let mut trials = Vec::new();
    for fraction in [0.0, 0.25, 0.5, 1.0] {
        let wait = Duration::from_micros((sync_us * fraction) as u64);
        let scenario =
            Scenario { writers: args.writers, size: args.size as usize, duration: secs, max_batch_wait: wait };
        let dir = scratch.path().join(format!("wait-{}", wait.as_micros()));
        let m = journal_run(&dir, &scenario, false)?;
        trials.push((wait, m));
    }
    let best = trials
        .iter()
        .max_by(|a, b| a.1.appends_per_sec.total_cmp(&b.1.appends_per_sec))
        .map(|t| t.0)
        .unwrap_or_default();
    if args.json {
        let v = serde_json::json!({
            "fdatasync_latency_us": { "p50": raw.latency_p50_us, "p99": raw.latency_p99_us },
            "trials": trials.iter().map(|(w, m)| serde_json::json!({
                "max_batch_wait_us": w.as_micros() as u64, "appends_per_sec": m.appends_per_sec, "p99_us": m.latency_p99_us
            })).collect::<Vec<_>>(),
            "recommended_max_batch_wait_us": best.as_micros() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "durable write ({} B write + fdatasync): p50 {:.0} us, p99 {:.0} us, {:.0} per second",
            args.size, raw.latency_p50_us, raw.latency_p99_us, raw.appends_per_sec
        );
        for (w, m) in &trials {
            println!(
                "journal, {} writers, max_batch_wait {:>6} us: {:>9.0} appends/s, p99 {:.0} us",
                args.writers,
                w.as_micros(),
                m.appends_per_sec,
                m.latency_p99_us
            );
        }
        println!("recommended: max_batch_wait = {} us", best.as_micros());
    }
    Ok(Outcome::Ok)
}
