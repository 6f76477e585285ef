//! `keel journal verify-acks`: every id in the ack log must be a live record with exactly the payload
//! `stress` derived from it. Read-only.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::RecoveryMode;

use super::stress::check_payload;
use crate::Outcome;

const PROBLEMS_SHOWN_MAX: usize = 20;

pub fn run(dir: &Path, keys: Option<&KeyRing>, ack_log: &Path) -> anyhow::Result<Outcome> {
    let ids = read_ack_log(ack_log)?;
    let inspection = inspect(dir, RecoveryMode::Strict, keys, &mut |_| {})?;
    let records = &inspection.recovered.records;
    let mut problems = Vec::new();
    for id in &ids {
        match records.get(id) {
            None => problems.push(format!("record {id} was acknowledged but is missing")),
            Some(r) => match inspection.reader.read(r) {
                Ok(payload) => {
                    if let Err(why) = check_payload(*id, &payload) {
                        problems.push(format!("record {id}: {why}"));
                    }
                }
                Err(e) => problems.push(format!("record {id}: unreadable: {e}")),
            },
        }
    }
    if problems.is_empty() {
        println!(
            "verify-acks: ok: all {} acknowledged records are present with their exact payloads ({} live records, last LSN {})",
            ids.len(),
            records.len(),
            inspection.recovered.report.last_lsn.map_or("-".into(), |l| l.to_string())
        );
        return Ok(Outcome::Ok);
    }
    for p in problems.iter().take(PROBLEMS_SHOWN_MAX) {
        println!("verify-acks: LOST: {p}");
    }
    println!(
        "verify-acks: FAILED: {} of {} acknowledged records are missing or wrong: this disk or volume does not honour fdatasync",
        problems.len(),
        ids.len()
    );
    Ok(Outcome::Problem)
}

/// The ids of an ack log. A last line without its newline is accepted if it parses (the write of a line is
/// one syscall); anything else malformed is an error naming the line.
fn read_ack_log(path: &Path) -> anyhow::Result<Vec<u64>> {
    let file = std::fs::File::open(path).with_context(|| format!("--ack-log {}", path.display()))?;
    let mut ids = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), index + 1))?;
        if line.is_empty() {
            continue;
        }
        match line.trim().parse::<u64>() {
            Ok(id) => ids.push(id),
            Err(_) => bail!("{}: line {}: '{}' is not a record id", path.display(), index + 1, line),
        }
    }
    Ok(ids)
}
