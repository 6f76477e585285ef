//! `keel bench …`: benchmarks that print JSON, each figure beside a baseline measured in the same run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use keel_bench::{run_matrix, MatrixConfig};

use crate::Outcome;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Read-only recovery throughput (page cache warm) of a plaintext and an encrypted journal of the same
    /// records, built in the same run.
    Recovery {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Size of each journal, in MiB of 1 KiB records.
        #[arg(long, default_value_t = 256)]
        mb: u64,
        /// Timed recoveries of each; the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Durable appends/s, MB/s and p50/p99 latency of the journal for W writers × record sizes, beside a raw
    /// write+fdatasync loop, a raw leader/follower group commit and okaywal, all in one run.
    Journal {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Interleaved rounds per measurement (each system runs secs/rounds per round).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Writer counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        writers: Vec<u32>,
        /// Record sizes in bytes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "256,1024,16384")]
        sizes: Vec<usize>,
        /// Milliseconds of idle time before each round, once the spare pool is topped up (see
        /// docs/BENCHMARKS.md: the device is still writing back the zero-fill when fsync returns).
        #[arg(long, default_value_t = 3000)]
        settle_ms: u64,
        /// Keel's segment size in bytes.
        #[arg(long, default_value_t = keel_journal::limits::SEGMENT_BYTES_DEFAULT)]
        segment_bytes: u64,
        /// Skip the okaywal peer.
        #[arg(long)]
        no_peer: bool,
        /// Also measure an encrypted journal beside the plaintext one (ratio encrypted / plaintext).
        #[arg(long)]
        encrypt: bool,
    },
}

pub fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Recovery { dir, mb, runs } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(&dir)?;
            let plain = keel_bench::recovery_rate(&scratch.path().join("plain"), mb, false, runs)?;
            let enc = keel_bench::recovery_rate(&scratch.path().join("encrypted"), mb, true, runs)?;
            eprintln!(
                "recovery: plaintext {:.0} MB/s, encrypted {:.0} MB/s: encrypted ÷ plaintext {:.2}",
                plain.mb_per_sec,
                enc.mb_per_sec,
                enc.mb_per_sec / plain.mb_per_sec
            );
            let out = serde_json::json!({
                "benchmark": "recovery",
                "machine": machine(),
                "plaintext": plain,
                "encrypted": enc,
                "encrypted_vs_plaintext": enc.mb_per_sec / plain.mb_per_sec,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::Journal { dir, secs, rounds, writers, sizes, settle_ms, segment_bytes, no_peer, encrypt } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(&dir)?;
            let cfg = MatrixConfig {
                writers,
                sizes,
                duration: Duration::from_secs_f64(secs),
                rounds,
                with_okaywal: !no_peer,
                segment_bytes,
                with_encrypted: encrypt,
                settle: Duration::from_millis(settle_ms),
            };
            let rows = run_matrix(scratch.path(), &cfg, &mut |row| {
                eprintln!(
                    "{:>3} writers × {:>5} B: keel {:>8.0}/s  raw group commit {:>8.0}/s  ratio {:.2}{}{}",
                    row.writers,
                    row.size,
                    row.keel.appends_per_sec,
                    row.raw_group_commit.appends_per_sec,
                    row.keel_vs_raw_group_commit,
                    row.keel_vs_raw_loop.map_or(String::new(), |r| format!("  vs raw loop {r:.2}")),
                    row.okaywal_vs_raw_group_commit.map_or(String::new(), |r| format!("  okaywal {r:.2}")),
                );
                if let Some(r) = row.encrypted_vs_plaintext {
                    eprintln!("{:>3} writers × {:>5} B: encrypted ÷ plaintext {r:.2}", row.writers, row.size);
                }
            })?;
            let out = serde_json::json!({
                "benchmark": "journal",
                "machine": machine(),
                "secs_per_measurement": secs,
                "rounds": rounds,
                "settle_ms": settle_ms,
                "rows": rows,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(Outcome::Ok)
        }
    }
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    serde_json::json!({ "cpus": cpus, "cpu_model": model, "os": std::env::consts::OS })
}
