//! `keel journal verify`: checks every frame and every segment's structure, read-only.
//! Exit 0: no corruption (a torn tail, the expected trace of a crash, is reported but is not corruption).

use std::path::Path;

use keel_journal::inspect::inspect;
use keel_journal::{OpenError, RecoveryMode};

use crate::Outcome;

pub fn run(dir: &Path) -> anyhow::Result<Outcome> {
    match inspect(dir, RecoveryMode::Strict, None, &mut |_| {}) {
        Ok(i) => {
            let r = &i.recovered.report;
            println!(
                "verify: ok: journal {} — {} segments, {} frames, {} bytes checked, last LSN {}, {} live records, {} prepared transactions",
                i.journal_id,
                r.segments_read,
                r.frames,
                r.bytes_read,
                r.last_lsn.map_or("-".into(), |l| l.to_string()),
                i.recovered.records.len(),
                i.recovered.prepared.len()
            );
            if let Some(t) = &r.torn_tail {
                println!(
                    "verify: torn tail of {} bytes at {}:{}: unacknowledged bytes of an interrupted write; the next open discards them",
                    t.bytes,
                    t.path.display(),
                    t.offset
                );
            }
            if let Some(p) = &r.torn_activation {
                println!(
                    "verify: {} is a torn activation (its header never became durable); the next open removes it",
                    p.display()
                );
            }
            Ok(Outcome::Ok)
        }
        Err(OpenError::Corrupt(first)) => {
            println!("verify: CORRUPT: {first}");
            // List every damaged range, not only the first.
            if let Ok(i) = inspect(dir, RecoveryMode::Salvage, None, &mut |_| {}) {
                for s in &i.recovered.report.skipped {
                    println!("verify: damaged: {}:{} ({} bytes): {}", s.path.display(), s.offset, s.bytes, s.reason);
                }
            }
            Ok(Outcome::Problem)
        }
        Err(e) => Err(e.into()),
    }
}
