//! `keel backup …` and `keel drill`: snapshots, continuous archiving, restore, verify, prune and restore
//! drills against a repository in a directory or in S3 (docs/BACKUP-FORMAT.md, docs/operations.md).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use keel_backup::{
    ArchiveOptions, Create, CreateOptions, DrillFailure, DrillOptions, DrillReport, LeaseOptions, Progress, Repo,
    RestoreOptions, RestorePoint, Retention, Snapshot, VerifyOptions,
};
use keel_journal::crypto::keys::KeyRing;

use crate::journal::{Failed, KeyArgs};
use crate::Outcome;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// An online, consistent snapshot of a live data directory; stores only what the repository lacks.
    Create {
        /// The data directory: a journal directory, or one holding `journal/` and `pages/`.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Check that every chunk exists instead of trusting the previous snapshot's (after
        /// `verify --read-data --remove-damaged`: stores the removed chunks again where the data has them).
        #[arg(long)]
        check_all: bool,
    },
    /// Continuous archiving: each segment when sealed, and the open one every --interval, for restores to
    /// any LSN or time in the archived window. Takes a base snapshot first when there is none.
    Archive {
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        run: RunArgs,
        /// How often the open segment is archived.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// One round, then exit.
        #[arg(long)]
        once: bool,
    },
    /// The repository's snapshots, oldest first.
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (`--snapshot`), or the journal at an LSN or a time, into an empty directory.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        /// `latest` or a snapshot id.
        #[arg(long, conflicts_with_all = ["to_lsn", "to_time"])]
        snapshot: Option<String>,
        /// The journal exactly up to and including this LSN, from a snapshot and the archive.
        #[arg(long, conflicts_with = "to_time")]
        to_lsn: Option<u64>,
        /// The newest state archived at or before this time (RFC 3339, e.g. 2026-11-26T10:00:00Z).
        #[arg(long, value_parser = parse_time)]
        to_time: Option<u64>,
        /// For --to-lsn/--to-time: the journal id (default: that of the newest snapshot).
        #[arg(long)]
        journal: Option<String>,
        #[arg(long)]
        target: PathBuf,
        /// Restore into a non-empty directory.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check every manifest and that every chunk exists; with --read-data, read every chunk and check it
    /// against its id. Exit 1 if anything is wrong.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        read_data: bool,
        /// A file of chunk ids already read and verified: skipped, and new ones added (for nightly runs).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// With --read-data: delete damaged chunks, so that `create --check-all` can store them again.
        #[arg(long, requires = "read_data")]
        remove_damaged: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Remove snapshots the rules do not keep (the newest of each journal always stays), archive entries
    /// nothing can restore any more, and chunks nothing references.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        keep_last: Option<usize>,
        #[arg(long)]
        keep_daily: Option<usize>,
        #[arg(long)]
        keep_weekly: Option<usize>,
        /// e.g. 7d, 36h.
        #[arg(long, value_parser = humantime::parse_duration)]
        keep_within: Option<Duration>,
        /// Report what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// `keel drill`.
#[derive(Args)]
pub struct DrillArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// `latest` or a snapshot id.
    #[arg(long, default_value = "latest")]
    snapshot: String,
    /// Where to restore (removed afterwards); default a new directory under the system's temporary one.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Stop and fail after this long, so that a hung drill never blocks the next scheduled one.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write Prometheus text-format metrics to this file (atomically; e.g. a node-exporter textfile
    /// collector's directory, `…/keel_drill.prom`).
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Keep the scratch directory (to look at a failure).
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone)]
pub struct RepoArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX (endpoint, region and credentials from the AWS
    /// environment).
    #[arg(long, env = "KEEL_REPO")]
    repo: String,
    /// The repository key file (lines `ID:HEX`, like the journal's); without one, `KEEL_REPO_KEY` may hold
    /// the same text.
    #[arg(long, env = "KEEL_REPO_KEY_FILE")]
    repo_key_file: Option<PathBuf>,
    /// The journal's master keys (needed for an encrypted journal's cut, point-in-time restores and drills).
    #[command(flatten)]
    journal_keys: KeyArgs,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Chunks in flight at a time.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// The repository lease lasts this long without a heartbeat (a crashed run blocks others this long).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// How long to wait for a lease another run holds.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    lease_wait: Duration,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn lease(&self) -> LeaseOptions {
        LeaseOptions { ttl: self.lease_ttl, wait: self.lease_wait }
    }
}

fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e} (expected RFC 3339, or unix milliseconds)"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as u64)
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl RepoArgs {
    fn repo_key(&self) -> anyhow::Result<KeyRing> {
        if let Some(p) = &self.repo_key_file {
            return Ok(KeyRing::from_file(p)?);
        }
        if std::env::var_os("KEEL_REPO_KEY").is_some() {
            return Ok(KeyRing::from_env("KEEL_REPO_KEY")?);
        }
        bail!("a repository key is needed: --repo-key-file FILE (lines ID:HEX, 64 hex digits) or KEEL_REPO_KEY")
    }

    fn open(&self, create: Create) -> anyhow::Result<Repo> {
        let key = self.repo_key()?;
        Repo::open(&self.repo, key, create).with_context(|| format!("repository {}", self.repo))
    }
}

/// Draws `progress` while `work` runs: a bar on a terminal, a line every 10 s otherwise, nothing for --json.
fn with_progress<T>(json: bool, progress: &Progress, work: impl FnOnce() -> T) -> T {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        if !json {
            s.spawn(|| {
                let tty = std::io::stderr().is_terminal();
                let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
                if tty {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                }
                let mut last_line = std::time::Instant::now();
                while !done.load(Ordering::Acquire) {
                    let (phase, n, total) = progress.get();
                    if tty {
                        bar.set_message(phase);
                        bar.set_length(total);
                        bar.set_position(n);
                    } else if last_line.elapsed() >= Duration::from_secs(10) && total > 0 {
                        eprintln!("{phase}: {} of {} MiB", n >> 20, total >> 20);
                        last_line = std::time::Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            });
        }
        let r = work();
        done.store(true, Ordering::Release);
        r
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(serde::Serialize)]
struct SnapshotSummary<'a> {
    id: &'a str,
    created: String,
    created_unix_ms: u64,
    cut_unix_ms: u64,
    host: &'a str,
    journal_id: &'a str,
    first_lsn: u64,
    next_lsn: u64,
    frames: u64,
    files: usize,
    total_bytes: u64,
    new_bytes: u64,
}

fn summary(s: &Snapshot) -> SnapshotSummary<'_> {
    SnapshotSummary {
        id: &s.id,
        created: time(s.created_unix_ms),
        created_unix_ms: s.created_unix_ms,
        cut_unix_ms: s.cut_unix_ms,
        host: &s.host,
        journal_id: &s.journal_id,
        first_lsn: s.first_lsn,
        next_lsn: s.next_lsn,
        frames: s.frames,
        files: s.files.len(),
        total_bytes: s.total_bytes,
        new_bytes: s.new_bytes,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

pub fn run(cmd: BackupCommand) -> anyhow::Result<Outcome> {
    match cmd {
        BackupCommand::Create { data, repo, run, check_all } => {
            let r = repo.open(Create::IfAbsent)?;
            let journal_keys = repo.journal_keys.load()?;
            let opts = CreateOptions { journal_keys, parallel: run.parallel, lease: run.lease(), check_all };
            let progress = Progress::default();
            let s = with_progress(run.json, &progress, || r.create(&data, &opts, &progress))?;
            if run.json {
                print_json(&summary(&s))?;
            } else {
                println!(
                    "snapshot {} of journal {}: LSNs {}..{} ({} frames), {} in {} files, {} new",
                    s.id,
                    s.journal_id,
                    s.first_lsn,
                    s.next_lsn,
                    s.frames,
                    mib(s.total_bytes),
                    s.files.len(),
                    mib(s.new_bytes)
                );
            }
        }
        BackupCommand::Archive { data, repo, run, interval, once } => {
            let r = repo.open(Create::IfAbsent)?;
            let create = CreateOptions {
                journal_keys: repo.journal_keys.load()?,
                parallel: run.parallel,
                lease: run.lease(),
                check_all: false,
            };
            let opts = ArchiveOptions { create, interval };
            let progress = Progress::default();
            let report = |round: &keel_backup::ArchiveRound| {
                if run.json {
                    let v = serde_json::json!({
                        "time": time(keel_now()), "snapshot": round.snapshot, "archived": round.archived,
                        "next_lsn": round.next_lsn, "new_bytes": round.new_bytes,
                    });
                    println!("{v}");
                } else {
                    if let Some(s) = &round.snapshot {
                        println!("base snapshot {s}");
                    }
                    for (seq, lsn) in &round.archived {
                        println!("archived segment {seq} up to LSN {}", lsn - 1);
                    }
                }
            };
            if once {
                let round = r.archive_once(&data, &opts, &progress)?;
                report(&round);
            } else {
                let stop = AtomicBool::new(false);
                r.archive(&data, &opts, &progress, &stop, report)?;
            }
        }
        BackupCommand::List { repo, json } => {
            let r = repo.open(Create::Never)?;
            let snaps = r.snapshots()?;
            if json {
                print_json(&snaps.iter().map(summary).collect::<Vec<_>>())?;
            } else {
                println!(
                    "{:<16}  {:<20}  {:<32}  {:>12}  {:>12}  {:>10}",
                    "id", "created", "journal", "next_lsn", "size", "new"
                );
                for s in &snaps {
                    println!(
                        "{:<16}  {:<20}  {:<32}  {:>12}  {:>12}  {:>10}",
                        s.id,
                        time(s.created_unix_ms),
                        s.journal_id,
                        s.next_lsn,
                        mib(s.total_bytes),
                        mib(s.new_bytes)
                    );
                }
            }
        }
        BackupCommand::Restore { repo, snapshot, to_lsn, to_time, journal, target, force, run } => {
            let r = repo.open(Create::Never)?;
            let point = match (snapshot, to_lsn, to_time) {
                (_, Some(n), _) => RestorePoint::Lsn(n),
                (_, _, Some(t)) => RestorePoint::Time(t),
                (Some(s), _, _) => RestorePoint::Snapshot(s),
                (None, None, None) => bail!("say what to restore: --snapshot ID|latest, --to-lsn N or --to-time T"),
            };
            let opts = RestoreOptions {
                parallel: run.parallel,
                force,
                journal_keys: repo.journal_keys.load()?,
                journal_id: journal,
            };
            let progress = Progress::default();
            let rep = with_progress(run.json, &progress, || r.restore(&point, &target, &opts, &progress))?;
            if run.json {
                print_json(&serde_json::json!({
                    "snapshot": rep.snapshot.id, "journal_dir": rep.journal_dir, "files": rep.files, "bytes": rep.bytes,
                    "chunks": rep.chunks, "secs": rep.secs, "next_lsn": rep.next_lsn,
                    "cut": rep.truncated.as_ref().map(|t| serde_json::json!({"segment": t.segment_seq, "end_offset": t.end_offset})),
                }))?;
            } else {
                println!(
                    "restored {} ({} files, {}) into {} in {:.1} s; the journal ends at LSN {}",
                    rep.snapshot.id,
                    rep.files,
                    mib(rep.bytes),
                    target.display(),
                    rep.secs,
                    rep.next_lsn - 1
                );
                if matches!(point, RestorePoint::Lsn(_) | RestorePoint::Time(_))
                    && rep.snapshot.files.iter().any(|f| f.path.starts_with("pages/"))
                {
                    println!(
                        "note: a point-in-time restore restores the journal only; page stores come back with \
                         `--snapshot` (see docs/operations.md, Backups)"
                    );
                }
            }
        }
        BackupCommand::Verify { repo, read_data, cache, remove_damaged, run } => {
            let r = repo.open(Create::Never)?;
            let opts = VerifyOptions { read_data, cache, parallel: run.parallel, remove_damaged, lease: run.lease() };
            let progress = Progress::default();
            let rep = with_progress(run.json, &progress, || r.verify(&opts, &progress))?;
            if run.json {
                print_json(&rep)?;
            } else {
                println!(
                    "{} snapshots, {} archive entries, {} chunks ({} read, {} MiB; {} already verified)",
                    rep.snapshots,
                    rep.archive_entries,
                    rep.chunks,
                    rep.chunks_read,
                    rep.bytes_read >> 20,
                    rep.chunks_cached
                );
                for p in &rep.problems {
                    println!("PROBLEM: {p}");
                }
                for k in &rep.removed {
                    println!("removed damaged chunk {k}; run `keel backup create --check-all` to store it again");
                }
            }
            if !rep.problems.is_empty() {
                return Err(Failed.into());
            }
        }
        BackupCommand::Prune { repo, keep_last, keep_daily, keep_weekly, keep_within, dry_run, run } => {
            let r = repo.open(Create::Never)?;
            let policy = Retention { keep_last, keep_daily, keep_weekly, keep_within };
            let progress = Progress::default();
            let rep = with_progress(run.json, &progress, || r.prune(&policy, run.lease(), dry_run, &progress))?;
            if run.json {
                print_json(&rep)?;
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "kept {} snapshots; {verb} {} snapshots, {} archive entries, {} chunks ({})",
                    rep.kept.len(),
                    rep.removed_snapshots.len(),
                    rep.removed_archive_entries,
                    rep.removed_chunks,
                    mib(rep.removed_bytes)
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

fn keel_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs a drill with a deadline. The drill runs on its own thread: if it does not finish in time, the
/// report says so, the scratch directory is removed, and the process exits (ending the drill with it).
pub fn drill(args: DrillArgs) -> anyhow::Result<Outcome> {
    let started = keel_now();
    let scratch = match &args.scratch {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("keel-drill-{}-{started}", std::process::id())),
    };
    let location = args.repo.repo.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let progress = Arc::new(Progress::default());
    {
        let (repo_args, journal_keys, scratch, progress) =
            (args.repo.clone(), args.repo.journal_keys.load()?, scratch.clone(), progress.clone());
        let opts = DrillOptions { snapshot: args.snapshot.clone(), journal_keys, parallel: args.run.parallel };
        std::thread::spawn(move || {
            let report = match repo_args.open(Create::Never) {
                Ok(repo) => repo.drill(&scratch, &opts, &progress),
                Err(e) => {
                    let failure =
                        e.downcast_ref::<keel_backup::BackupError>().map_or(DrillFailure::Other, DrillFailure::of);
                    DrillReport::failed(&repo_args.repo, started, failure, format!("{e:#}"))
                }
            };
            let _ = tx.send(report);
        });
    }
    let received = with_progress(args.run.json, &progress, move || rx.recv_timeout(args.deadline));
    let timed_out = received.is_err();
    let report = match received {
        Ok(r) => r,
        Err(_) => {
            let mut r = DrillReport::failed(
                &location,
                started,
                DrillFailure::Deadline,
                format!(
                    "the drill did not finish within its deadline of {}",
                    humantime::format_duration(args.deadline)
                ),
            );
            r.duration_secs = args.deadline.as_secs_f64();
            r
        }
    };
    if !args.keep {
        remove_scratch(&scratch);
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.report {
        keel_backup::write_atomically(p, &format!("{json}\n"))?;
    }
    if let Some(p) = &args.metrics {
        keel_backup::write_atomically(p, &report.prometheus())?;
    }
    if args.run.json {
        println!("{json}");
    } else if report.ok {
        println!(
            "drill ok: snapshot {} restored ({}) in {:.1} s, recovered {} records in {:.1} s; data age {:.0} s",
            report.snapshot.as_deref().unwrap_or("?"),
            mib(report.restore_bytes),
            report.restore_secs,
            report.records,
            report.recovery_secs,
            report.data_age_secs
        );
    } else {
        println!(
            "drill FAILED ({}): {}",
            report.failure.map_or("other", DrillFailure::label),
            report.error.as_deref().unwrap_or("")
        );
    }
    if report.ok {
        Ok(Outcome::Ok)
    } else if timed_out {
        // The drill thread may still be running; leave now rather than wait for it.
        std::process::exit(1);
    } else {
        Ok(Outcome::Problem)
    }
}

fn remove_scratch(p: &Path) {
    if let Err(e) = std::fs::remove_dir_all(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("keel: warning: could not remove the drill's scratch directory {}: {e}", p.display());
        }
    }
}
