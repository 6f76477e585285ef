//! `keel`: journal data tools, stress and ack verification, benchmarks.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (corruption, a missing acknowledged record,
//! a failed append); 2 the command could not run (bad arguments, unreadable input).

mod backup;
mod bench;
mod journal;
mod paging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel", version, about = "Keel: durable storage for message brokers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Journal data tools (offline, on a directory), stress and ack verification.
    #[command(subcommand)]
    Journal(journal::JournalCommand),
    /// Paging data tools (offline, on a broker's data directory).
    #[command(subcommand)]
    Paging(paging::PagingCommand),
    /// Backups: snapshots, continuous archiving, restore, verify, prune (to a directory or S3).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// A restore drill: restore a snapshot to scratch, recover it, check it, report JSON and metrics.
    Drill(backup::DrillArgs),
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// How a command ended, mapped to the exit code.
pub enum Outcome {
    Ok,
    /// The command ran and found a problem it already reported.
    Problem,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Journal(c) => journal::run(c),
        Command::Paging(c) => paging::run(c),
        Command::Backup(c) => backup::run(c),
        Command::Drill(a) => backup::drill(a),
        Command::Bench(c) => bench::run(c),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: error: {e:#}");
            ExitCode::from(e.downcast_ref::<journal::Failed>().map_or(2, |_| 1))
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions only in debug builds, at parse time; check every command here.
    #[test]
    fn command_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
