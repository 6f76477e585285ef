//! `keel journal verify-acks`: every id in the ack log must be a live record with exactly the payload
//! `stress` derived from it. Read-only.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::RecoveryMode;

use super::stress::check_payload;
use crate::Outcome;

const PROBLEMS_SHOWN_MAX: usize = 20;

/// An ack log: ids whose add was acknowledged, ids about to be deleted, ids whose delete was acknowledged.
#[derive(Default)]
struct AckLog {
    added: Vec<u64>,
    deleting: HashSet<u64>,
    deleted: HashSet<u64>,
}

pub fn run(dir: &Path, keys: Option<&KeyRing>, ack_log: &Path) -> anyhow::Result<Outcome> {
    let log = read_ack_log(ack_log)?;
    let inspection = inspect(dir, RecoveryMode::Strict, keys, &mut |_| {})?;
    let records = &inspection.recovered.records;
    let mut problems = Vec::new();
    for id in &log.added {
        let deleted = log.deleted.contains(id);
        let maybe = log.deleting.contains(id) && !deleted;
        match records.get(id) {
            None if deleted || maybe => {}
            None => problems.push(format!("record {id} was acknowledged but is missing")),
            Some(_) if deleted => problems.push(format!("record {id} was deleted (acknowledged) but came back")),
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
    // A delete acknowledged for an id the log never added (a log cut at its start) must hold too.
    let added: HashSet<u64> = log.added.iter().copied().collect();
    for id in log.deleted.iter().filter(|id| !added.contains(id)) {
        if records.contains_key(id) {
            problems.push(format!("record {id} was deleted (acknowledged) but is present"));
        }
    }
    let ids = &log.added;
    if problems.is_empty() {
        let deleted_added = ids.iter().filter(|id| log.deleted.contains(id)).count();
        println!(
            "verify-acks: ok: all {} acknowledged records are present with their exact payloads and all {} acknowledged deletes hold ({} live records, last LSN {})",
            ids.len() - deleted_added,
            log.deleted.len(),
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
fn read_ack_log(path: &Path) -> anyhow::Result<AckLog> {
    let file = std::fs::File::open(path).with_context(|| format!("--ack-log {}", path.display()))?;
    let mut log = AckLog::default();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), index + 1))?;
        if line.is_empty() {
            continue;
        }
        let line = line.trim();
        let (set, digits) = if let Some(d) = line.strip_prefix('~') {
            (Some(&mut log.deleting), d)
        } else if let Some(d) = line.strip_prefix('-') {
            (Some(&mut log.deleted), d)
        } else {
            (None, line)
        };
        match (digits.parse::<u64>(), set) {
            (Ok(id), None) => log.added.push(id),
            (Ok(id), Some(set)) => {
                set.insert(id);
            }
            (Err(_), _) => bail!("{}: line {}: '{}' is not a record id, ~id or -id", path.display(), index + 1, line),
        }
    }
    Ok(log)
}
