//! `keel bench …`: benchmarks that print JSON, each figure beside a baseline measured in the same run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use keel_bench::{run_matrix, MatrixConfig};

use crate::Outcome;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Restart: open time and peak RSS of a large journal with few live records, with a fresh checkpoint,
    /// a stale one and none, and the full-scan rate; each open in a child process.
    Restart {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Journal size in GiB.
        #[arg(long, default_value_t = 2.0)]
        gib: f64,
        /// Record payload bytes.
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        /// Percentage of records left live.
        #[arg(long, default_value_t = 5)]
        live_percent: u64,
        /// Timed opens per mode (after one untimed, which warms the page cache).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long, default_value_t = keel_journal::limits::SEGMENT_BYTES_DEFAULT)]
        segment_bytes: u64,
        /// Keep the journal afterwards (its path is printed) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// Append latency (p50/p99) of W durable writers without and during a paced background compaction.
    Compaction {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// MiB of sparse (10 % live) old segments to compact each round.
        #[arg(long, default_value_t = 256)]
        sparse_mb: u64,
        #[arg(long, default_value_t = 4)]
        writers: u32,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Seconds of the no-compaction phase.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Compaction pace, MiB/s.
        #[arg(long, default_value_t = 16)]
        mib_per_sec: u64,
        /// Pace of freeing reclaimed segments, MiB/s.
        #[arg(long, default_value_t = 64)]
        trim_mib_per_sec: u64,
        #[arg(long, default_value_t = 2)]
        rounds: u32,
    },
    /// Object put/get throughput of keel-s3 against `aws s3 cp` on the same in-process S3 server, and the
    /// directory backend.
    S3 {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Object sizes in MiB (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        sizes: Vec<u64>,
        #[arg(long, default_value_t = 2)]
        runs: u32,
    },
    /// Paging: producers into a paged address while a consumer drains it (vs the raw group-commit loop),
    /// then a cold backlog paged in (vs a sequential read of a cold file), with peak RSS of each phase.
    Paging {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Message sizes in bytes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1024,16384")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 8)]
        producers: u32,
        /// Seconds of producing while draining.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// MiB of cold backlog to page in.
        #[arg(long, default_value_t = 512)]
        backlog_mib: u64,
        /// MiB of backlog to open, on the volume and in a directory object store (0: skip).
        #[arg(long, default_value_t = 2048)]
        open_backlog_mib: u64,
    },
    /// Backup and restore of a journal of random records against restic (Debian package `restic`, local
    /// repositories on the same disk), and the bytes a second backup after 1 % new data stores; with the
    /// peak RSS of each. Needs `restic` on the PATH; drops the page cache before each step when root.
    Backup {
        /// A directory on the disk to measure (a scratch subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Size of the journal to back up.
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        #[arg(long, default_value_t = 16384)]
        record_bytes: usize,
    },
    /// (Used by `restart`.) Open a journal once and print what it cost, as JSON.
    #[command(hide = true)]
    OpenOnce {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        segment_bytes: u64,
        #[arg(long)]
        return_records: bool,
    },
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
        /// Turns Keel and the raw baselines take within a round (each runs secs/rounds/passes per turn,
        /// in a rotating order), so that the disk's drift over seconds hits them alike.
        #[arg(long, default_value_t = 4)]
        passes: u32,
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
        /// Keel's periodic checkpoints: at most one per this many sealed segments (0: none), to see what
        /// they cost a row.
        #[arg(long, default_value_t = keel_journal::Options::default().checkpoint_every_segments)]
        checkpoint_every_segments: u32,
        /// Peer engines to measure in the same rounds (comma-separated): okaywal, surrealkv (plaintext, and
        /// encrypted with --encrypt; commits with Durability::Immediate). Default: okaywal, or surrealkv
        /// with --encrypt.
        #[arg(long, value_delimiter = ',', conflicts_with = "no_peer")]
        peers: Option<Vec<Peer>>,
        /// Measure no peer engine.
        #[arg(long)]
        no_peer: bool,
        /// Also measure an encrypted journal beside the plaintext one (ratio encrypted / plaintext).
        #[arg(long)]
        encrypt: bool,
    },
}

/// A peer engine of `keel bench journal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Okaywal,
    Surrealkv,
}

pub fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Compaction { dir, sparse_mb, writers, size, secs, mib_per_sec, trim_mib_per_sec, rounds } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let mut out = Vec::new();
            for r in 0..rounds.max(1) {
                let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(&dir)?;
                let round = keel_bench::compaction::round(
                    scratch.path(),
                    sparse_mb << 20,
                    writers,
                    size,
                    Duration::from_secs_f64(secs),
                    mib_per_sec << 20,
                    trim_mib_per_sec << 20,
                )?;
                eprintln!(
                    "compaction round {r}: p99 {:.0} µs without, {:.0} µs during ({:.2}x; copying {:.0} µs, reclaiming {:.0} µs); p50 {:.0} / {:.0} µs; {:.0} / {:.0} appends/s; moved {} records ({:.1} MB) in {:.1} s, {} segments reclaimed",
                    round.without.p99_us,
                    round.during.p99_us,
                    round.p99_during_vs_without,
                    round.copying.p99_us,
                    round.reclaiming.p99_us,
                    round.without.p50_us,
                    round.during.p50_us,
                    round.without.appends_per_sec,
                    round.during.appends_per_sec,
                    round.records_moved,
                    round.bytes_moved as f64 / 1e6,
                    round.compaction_secs,
                    round.segments_reclaimed
                );
                out.push(round);
            }
            let json = serde_json::json!({
                "benchmark": "compaction",
                "machine": machine(),
                "writers": writers, "size": size, "sparse_mb": sparse_mb, "mib_per_sec": mib_per_sec,
                "trim_mib_per_sec": trim_mib_per_sec,
                "rounds": out,
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::S3 { dir, sizes, runs } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(&dir)?;
            let rows = keel_bench::s3::run(scratch.path(), &sizes, runs)?;
            for r in &rows {
                eprintln!(
                    "s3 {:>4} MiB: put keel {:.0} MB/s vs aws cli {:.0} MB/s ({:.2}x); get keel {:.0} vs {:.0} MB/s ({:.2}x); directory put {:.0}, get {:.0} MB/s",
                    r.size_mib, r.keel_s3_put_mb_s, r.aws_cli_put_mb_s, r.put_vs_aws_cli, r.keel_s3_get_mb_s,
                    r.aws_cli_get_mb_s, r.get_vs_aws_cli, r.dir_put_mb_s, r.dir_get_mb_s
                );
            }
            let out = serde_json::json!({ "benchmark": "s3", "machine": machine(), "runs": runs, "rows": rows });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::Paging { dir, sizes, producers, secs, backlog_mib, open_backlog_mib } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let mut rows = Vec::new();
            for size in sizes {
                let r = keel_bench::paging::run(&dir, size, producers, secs, backlog_mib)?;
                eprintln!(
                    "paging {size} B x {producers}: produce {:.0} msg/s {:.1} MB/s ({:.2}x raw group commit {:.1} MB/s), drain {:.0} msg/s; page-in {:.0} MB/s ({:.2}x sequential read {:.0} MB/s) of {:.0} MB; peak RSS {:.0} MiB draining, {:.0} MiB paging in",
                    r.produce_msgs_per_sec, r.produce_mb_per_sec, r.produce_vs_raw, r.raw_group_commit_mb_per_sec,
                    r.consume_msgs_per_sec, r.page_in_mb_per_sec, r.page_in_vs_sequential_read,
                    r.sequential_read_mb_per_sec, r.backlog_mb, r.peak_rss_while_draining_mib, r.peak_rss_paging_in_mib
                );
                rows.push(r);
            }
            let mut open_rows = Vec::new();
            if open_backlog_mib > 0 {
                for r in keel_bench::paging_open::run(&dir, open_backlog_mib)? {
                    eprintln!(
                        "paging open with {} MiB backlog, pages on the {}: {:.1} s, peak RSS +{:.0} MiB (budget {} MiB)",
                        r.backlog_mib, r.pages, r.open_secs, r.open_rss_mib, r.budget_mib
                    );
                    open_rows.push(r);
                }
            }
            let out = serde_json::json!({
                "benchmark": "paging", "machine": machine(), "rows": rows, "open": open_rows
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::Backup { dir, mib, record_bytes } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let (_scratch, path) = keel_bench::backup::scratch_in(&dir)?;
            let exe = std::env::current_exe()?;
            let r = keel_bench::backup::compare(&path, &exe, mib, record_bytes)?;
            eprintln!(
                "backup: {} MiB: keel {:.0} MB/s ({:.0} MiB RSS) vs restic {:.0} MB/s ({:.0} MiB): {:.2}x; restore keel {:.0} MB/s ({:.0} MiB) vs restic {:.0} MB/s ({:.0} MiB): {:.2}x; vs restic+sync {:.0} MB/s: {:.2}x, vs cp+sync {:.0} MB/s: {:.2}x; after 1 % new data keel stored {:.2} %, restic {:.2} % of the full size",
                r.data_bytes >> 20,
                r.keel.backup_mb_per_s,
                r.keel.backup.max_rss_kib as f64 / 1024.0,
                r.restic.backup_mb_per_s,
                r.restic.backup.max_rss_kib as f64 / 1024.0,
                r.backup_ratio,
                r.keel.restore_mb_per_s,
                r.keel.restore.max_rss_kib as f64 / 1024.0,
                r.restic.restore_mb_per_s,
                r.restic.restore.max_rss_kib as f64 / 1024.0,
                r.restore_ratio,
                r.restic_restore_synced_mb_per_s,
                r.restore_ratio_synced,
                r.raw_copy_mb_per_s,
                r.restore_ratio_raw_copy,
                r.keel.incremental_ratio * 100.0,
                r.restic.incremental_ratio * 100.0,
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::OpenOnce { dir, segment_bytes, return_records } => {
            let s = keel_bench::restart::open_once(&dir, segment_bytes, return_records)?;
            println!("{}", serde_json::to_string(&s)?);
            Ok(Outcome::Ok)
        }
        BenchCommand::Restart { dir, gib, record_bytes, live_percent, runs, segment_bytes, keep } => {
            restart(&dir, gib, record_bytes, live_percent, runs, segment_bytes, keep)
        }
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
        BenchCommand::Journal {
            dir,
            secs,
            rounds,
            passes,
            writers,
            sizes,
            settle_ms,
            segment_bytes,
            checkpoint_every_segments,
            peers,
            no_peer,
            encrypt,
        } => {
            let peers = match (no_peer, peers) {
                (true, _) => Vec::new(),
                (false, Some(p)) => p,
                (false, None) if encrypt => vec![Peer::Surrealkv],
                (false, None) => vec![Peer::Okaywal],
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(&dir)?;
            let cfg = MatrixConfig {
                writers,
                sizes,
                duration: Duration::from_secs_f64(secs),
                rounds,
                passes,
                with_okaywal: peers.contains(&Peer::Okaywal),
                with_surrealkv: peers.contains(&Peer::Surrealkv),
                segment_bytes,
                checkpoint_every_segments,
                with_encrypted: encrypt,
                settle: Duration::from_millis(settle_ms),
            };
            let cores = |m: &keel_bench::Measurement| match m.machine_busy_cores {
                Some(busy) => format!("cores: process {:.2}, machine {busy:.2}", m.cpu_cores),
                None => format!("cores: process {:.2}", m.cpu_cores),
            };
            let rows = run_matrix(scratch.path(), &cfg, &mut |row| {
                eprintln!(
                    "{:>3} writers × {:>5} B: keel {:>8.0}/s ({})  raw group commit {:>8.0}/s ({})  ratio {:.2}{}{}{}",
                    row.writers,
                    row.size,
                    row.keel.appends_per_sec,
                    cores(&row.keel),
                    row.raw_group_commit.appends_per_sec,
                    cores(&row.raw_group_commit),
                    row.keel_vs_raw_group_commit,
                    row.keel_vs_raw_loop.map_or(String::new(), |r| format!("  vs raw loop {r:.2}")),
                    row.keel_vs_raw_framed_loop.zip(row.raw_framed_loop_vs_raw_loop).map_or(String::new(), |(k, f)| {
                        format!("  vs raw framed loop {k:.2} (framed ÷ raw loop {f:.2})")
                    }),
                    row.okaywal_vs_raw_group_commit.map_or(String::new(), |r| format!("  okaywal {r:.2}")),
                );
                let batch = |w: &keel_bench::WriterCounts| {
                    format!(
                        "{:.1} records per fdatasync ({} of {} overlapped); {} checkpoints, appends held {:.1} ms",
                        w.frames as f64 / w.fdatasyncs.max(1) as f64,
                        w.overlapped_fdatasyncs,
                        w.fdatasyncs,
                        w.checkpoints,
                        w.checkpoint_pause_ms
                    )
                };
                eprintln!("{:>3} writers × {:>5} B: keel {}", row.writers, row.size, batch(&row.keel_writer));
                let by_round = |r: &[f64]| r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
                eprintln!(
                    "{:>3} writers × {:>5} B: by round: ratio {}{}",
                    row.writers,
                    row.size,
                    by_round(&row.keel_vs_raw_group_commit_by_round),
                    if row.keel_vs_raw_loop_by_round.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "  vs raw loop {}  vs raw framed loop {}",
                            by_round(&row.keel_vs_raw_loop_by_round),
                            by_round(&row.keel_vs_raw_framed_loop_by_round)
                        )
                    },
                );
                if let Some(r) = row.encrypted_vs_plaintext {
                    let w = row.keel_encrypted_writer.as_ref().map_or(String::new(), |w| format!("; {}", batch(w)));
                    let cores = row.keel_encrypted.as_ref().map_or(String::new(), cores);
                    eprintln!(
                        "{:>3} writers × {:>5} B: encrypted ÷ plaintext {r:.2} ({cores}){w}",
                        row.writers, row.size
                    );
                }
                if let Some(s) = &row.surrealkv {
                    eprintln!(
                        "{:>3} writers × {:>5} B: surrealkv {:>8.0}/s{}{}",
                        row.writers,
                        row.size,
                        s.appends_per_sec,
                        row.surrealkv_encrypted_vs_plaintext
                            .map_or(String::new(), |r| format!("  its encrypted ÷ plaintext {r:.2}")),
                        row.keel_encrypted_vs_surrealkv_encrypted
                            .map_or(String::new(), |r| format!("  keel encrypted ÷ surrealkv encrypted {r:.2}")),
                    );
                }
            })?;
            let out = serde_json::json!({
                "benchmark": "journal",
                "machine": machine(),
                "secs_per_measurement": secs,
                "rounds": rounds,
                "passes": passes,
                "settle_ms": settle_ms,
                "checkpoint_every_segments": checkpoint_every_segments,
                "rows": rows,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(Outcome::Ok)
        }
    }
}

fn restart(
    dir: &std::path::Path,
    gib: f64,
    record_bytes: usize,
    live_percent: u64,
    runs: u32,
    segment_bytes: u64,
    keep: bool,
) -> anyhow::Result<Outcome> {
    use keel_bench::restart::{build, CheckpointMode, Hidden, OpenSample};
    std::fs::create_dir_all(dir).with_context(|| format!("--dir {}", dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("keel-bench-").tempdir_in(dir)?;
    let journal = scratch.path().join("journal");
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    eprintln!("restart: building a {gib} GiB journal, {live_percent} % live, {record_bytes} B records ...");
    let built = build(&journal, bytes, record_bytes, live_percent, segment_bytes)?;
    eprintln!("restart: built {built:?}");
    let exe = std::env::current_exe()?;
    let once = |return_records: bool| -> anyhow::Result<OpenSample> {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "open-once", "--dir"]).arg(&journal).args(["--segment-bytes", &segment_bytes.to_string()]);
        if return_records {
            cmd.arg("--return-records");
        }
        let out = cmd.output()?;
        anyhow::ensure!(out.status.success(), "open-once failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut modes = Vec::new();
    for mode in [CheckpointMode::Fresh, CheckpointMode::Stale, CheckpointMode::None] {
        let _hidden = Hidden::new(&journal, mode)?;
        once(false)?; // warms the page cache
        let mut samples: Vec<OpenSample> = (0..runs.max(1)).map(|_| once(false)).collect::<anyhow::Result<_>>()?;
        samples.sort_by(|a, b| a.open_secs.total_cmp(&b.open_secs));
        let with_copy = once(true)?;
        let median = samples[samples.len() / 2].clone();
        eprintln!(
            "restart: {mode:?}: open {:.3} s (best {:.3}), {} segments read, {:.0} MB read, checkpoint {}, peak RSS {} KiB (before open {} KiB; index table {} KiB, entries {} KiB; with the caller's copy {} KiB)",
            median.open_secs,
            samples[0].open_secs,
            median.segments_read,
            median.bytes_read as f64 / 1e6,
            median.from_checkpoint,
            median.peak_rss_kib,
            median.rss_before_open_kib,
            median.index_table_bytes / 1024,
            median.index_entry_bytes / 1024,
            with_copy.peak_rss_kib,
        );
        modes.push((mode, samples, with_copy));
    }
    let median = |i: usize| modes[i].1[modes[i].1.len() / 2].clone();
    let (fresh, stale, none) = (median(0), median(1), median(2));
    let full_scan_mb_s = none.bytes_read as f64 / none.open_secs / 1e6;
    let out = serde_json::json!({
        "benchmark": "restart",
        "machine": machine(),
        "built": built,
        "record_bytes": record_bytes,
        "segment_bytes": segment_bytes,
        "runs": runs,
        "modes": modes.iter().map(|(m, s, c)| serde_json::json!({"mode": m, "samples": s, "with_callers_copy": c})).collect::<Vec<_>>(),
        "fresh_open_secs": fresh.open_secs,
        "stale_open_secs": stale.open_secs,
        "full_scan_open_secs": none.open_secs,
        "full_scan_vs_fresh_checkpoint": none.open_secs / fresh.open_secs,
        "full_scan_mb_per_sec": full_scan_mb_s,
        "peak_rss_vs_index_table": modes.iter().map(|(m, s, _)| {
            let s = &s[s.len() / 2];
            (format!("{m:?}").to_lowercase(), s.peak_rss_kib as f64 * 1024.0 / s.index_table_bytes.max(1) as f64)
        }).collect::<std::collections::BTreeMap<_, _>>(),
        "peak_rss_vs_index_entries": modes.iter().map(|(m, s, _)| {
            let s = &s[s.len() / 2];
            (format!("{m:?}").to_lowercase(), s.peak_rss_kib as f64 * 1024.0 / s.index_entry_bytes.max(1) as f64)
        }).collect::<std::collections::BTreeMap<_, _>>(),
    });
    eprintln!(
        "restart: full scan {:.3} s = {:.2}x the fresh-checkpoint open ({:.3} s); stale {:.3} s; full scan {:.0} MB/s",
        none.open_secs,
        none.open_secs / fresh.open_secs,
        fresh.open_secs,
        stale.open_secs,
        full_scan_mb_s
    );
    println!("{}", serde_json::to_string_pretty(&out)?);
    if keep {
        eprintln!("restart: kept {}", scratch.keep().display());
    }
    Ok(Outcome::Ok)
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    serde_json::json!({ "cpus": cpus, "cpu_model": model, "os": std::env::consts::OS })
}
