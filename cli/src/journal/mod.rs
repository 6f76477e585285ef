//! `keel journal …`.

mod import;
mod perf;
mod print;
mod stats;
pub mod stress;
mod verify;
mod verify_acks;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::{Options, RecoveryMode, SyncPolicy};

use crate::Outcome;

/// Marks an error after which the exit code is 1 (the command ran and failed), not 2.
#[derive(Debug)]
pub struct Failed;

impl std::error::Error for Failed {}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Print every record frame, one a line (seal frames are structural and not printed).
    Print {
        #[command(flatten)]
        dir: DirArg,
        /// One JSON object a line: type, id, kind, tx, lsn, payload (base64); the input of `import`.
        #[arg(long)]
        json: bool,
        /// Skip damaged ranges instead of stopping at the first (reports them on stderr).
        #[arg(long)]
        salvage: bool,
    },
    /// Append records read as JSON lines (the output of `print --json`) from standard input.
    Import {
        /// The journal directory (created if absent).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Segments, sizes and the live ratio.
    Stats {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// Check every frame; exit 0 only if no corruption. Errors name file and byte offset.
    Verify {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Append records as fast as possible and log each id as soon as it is durable.
    Stress(stress::StressArgs),
    /// Prove that every id in an ack log is present with its exact payload.
    VerifyAcks {
        #[command(flatten)]
        dir: DirArg,
        /// The ack log written by `stress`.
        #[arg(long)]
        ack_log: PathBuf,
    },
    /// Copy the live records of every segment with dead bytes forward, delete the emptied segments, and
    /// write a checkpoint. Run on a stopped journal (an open journal compacts itself in the background).
    Compact {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Measure this disk's durable-write latency and recommend the group-commit wait.
    Perf(perf::PerfArgs),
    /// Re-wrap every segment's data key under the current (highest-id) master key, so older keys can be
    /// retired. Seals the active segment first. Crash-safe; the library does the same while in use.
    Rekey {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Args, Clone)]
pub struct DirArg {
    /// The journal directory.
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Where master keys come from.
#[derive(Args, Clone, Default)]
pub struct KeyArgs {
    /// Master key file (lines `ID:HEX`; the highest id encrypts new segments). Without one, `KEEL_KEY` (for
    /// development) may hold the same text; without either, the journal is plaintext.
    #[arg(long, env = "KEEL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl KeyArgs {
    pub fn load(&self) -> anyhow::Result<Option<KeyRing>> {
        if let Some(path) = &self.key_file {
            return Ok(Some(KeyRing::from_file(path)?));
        }
        if std::env::var_os("KEEL_KEY").is_some() {
            return Ok(Some(KeyRing::from_env("KEEL_KEY")?));
        }
        Ok(None)
    }
}

#[derive(Args, Clone)]
pub struct WriteArgs {
    /// When an append is acknowledged: always (fdatasync first), interval:MS, or never.
    #[arg(long, default_value = "always", value_parser = parse_sync)]
    pub sync: SyncPolicy,
    /// Size of newly created segment files, in bytes.
    #[arg(long, default_value_t = keel_journal::limits::SEGMENT_BYTES_DEFAULT)]
    pub segment_bytes: u64,
    /// Segments kept pre-allocated and zero-filled ahead of the writer (1..=64): a roll-over that finds
    /// none ready waits for one.
    #[arg(long, default_value_t = Options::default().spare_segments)]
    pub spare_segments: u32,
    #[command(flatten)]
    pub keys: KeyArgs,
}

impl WriteArgs {
    pub fn options(&self) -> anyhow::Result<Options> {
        Ok(Options {
            sync: self.sync,
            segment_bytes: self.segment_bytes,
            spare_segments: self.spare_segments,
            keys: self.keys.load()?,
            ..Options::default()
        })
    }
}

pub fn parse_sync(s: &str) -> Result<SyncPolicy, String> {
    match s {
        "always" => Ok(SyncPolicy::Always),
        "never" => Ok(SyncPolicy::Never),
        _ => {
            let ms = s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .ok_or_else(|| format!("'{s}' is not always, never or interval:MS (MS > 0)"))?;
            Ok(SyncPolicy::Interval(Duration::from_millis(ms)))
        }
    }
}

pub fn run(command: JournalCommand) -> anyhow::Result<Outcome> {
    match command {
        JournalCommand::Print { dir, json, salvage } => {
            print::run(&existing(&dir)?, dir.keys.load()?.as_ref(), json, salvage)
        }
        JournalCommand::Import { dir, write } => import::run(&dir, &write),
        JournalCommand::Stats { dir, json } => stats::run(&existing(&dir)?, dir.keys.load()?.as_ref(), json),
        JournalCommand::Verify { dir } => verify::run(&existing(&dir)?, dir.keys.load()?.as_ref()),
        JournalCommand::Stress(args) => stress::run(&args),
        JournalCommand::VerifyAcks { dir, ack_log } => {
            verify_acks::run(&existing(&dir)?, dir.keys.load()?.as_ref(), &ack_log)
        }
        JournalCommand::Perf(args) => perf::run(&args),
        JournalCommand::Rekey { dir, write } => rekey(&dir, &write),
        JournalCommand::Compact { dir, write } => compact(&dir, &write),
    }
}

fn compact(dir: &std::path::Path, write: &WriteArgs) -> anyhow::Result<Outcome> {
    let options = keel_journal::Options { auto_maintenance: false, ..write.options()? };
    let (journal, recovered) = keel_journal::Journal::open(dir, options)?;
    let report = journal.compact(&keel_journal::CompactionPolicy::offline())?;
    let reclaimed = journal.reclaim()?;
    let checkpoint = journal.checkpoint()?;
    match report.segments {
        Some((from, to)) => println!(
            "compact: segments {from}..={to}: moved {} live records ({} bytes), {} superseded",
            report.records_moved, report.bytes_moved, report.superseded
        ),
        None => println!("compact: no segment with dead bytes before the newest"),
    }
    let gone: Vec<u64> = report.reclaimed.segments.iter().chain(&reclaimed.segments).copied().collect();
    println!("compact: {} segments reclaimed {gone:?}; {} live records", gone.len(), recovered.records.len());
    if let Some(c) = checkpoint {
        println!("compact: checkpoint {} ({} records, {} bytes)", c.path.display(), c.records, c.bytes);
    }
    journal.close()?;
    Ok(Outcome::Ok)
}

fn rekey(dir: &std::path::Path, write: &WriteArgs) -> anyhow::Result<Outcome> {
    let options = write.options()?;
    anyhow::ensure!(options.keys.is_some(), "rekey needs the master keys: pass --key-file (old and new keys)");
    let (journal, _) = keel_journal::Journal::open(dir, options)?;
    let report = journal.rekey()?;
    for (path, from, to) in &report.rewrapped {
        println!("rekey: {}: key id {from} -> {to}", path.display());
    }
    println!(
        "rekey: {} segments re-wrapped, {} already under the current key, {} plaintext",
        report.rewrapped.len(),
        report.already_current,
        report.plaintext
    );
    journal.close()?;
    Ok(Outcome::Ok)
}

/// The directory of an existing journal (offline tools never create one).
fn existing(dir: &DirArg) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(&dir.dir).with_context(|| format!("--dir {}", dir.dir.display()))?;
    if !meta.is_dir() {
        bail!("--dir {}: not a directory", dir.dir.display());
    }
    Ok(dir.dir.clone())
}

pub fn mode(salvage: bool) -> RecoveryMode {
    if salvage {
        RecoveryMode::Salvage
    } else {
        RecoveryMode::Strict
    }
}
