//! `keel journal verify`: checks every frame and every segment's structure, read-only.
//! Exit 0: no corruption (a torn tail, the expected trace of a crash, is reported but is not corruption).
//! Without the key, an encrypted journal gets a structural check and a plain statement that its contents
//! were not authenticated.

use std::path::Path;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::{check_structure, inspect};
use keel_journal::{OpenError, RecoveryMode};

use crate::Outcome;

pub fn run(dir: &Path, keys: Option<&KeyRing>) -> anyhow::Result<Outcome> {
    match inspect(dir, RecoveryMode::Strict, keys, &mut |_| {}) {
        Ok(i) => {
            let r = &i.recovered.report;
            println!(
                "verify: ok: journal {} — {} segments, {} frames, {} bytes checked{}, last LSN {}, {} live records, {} prepared transactions",
                i.journal_id,
                r.segments_read,
                r.frames,
                r.bytes_read,
                if keys.is_some() { " and authenticated" } else { "" },
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
        Err(OpenError::KeyUnavailable { .. }) if keys.is_none() => structure_only(dir),
        Err(OpenError::Corrupt(first)) => {
            println!("verify: CORRUPT: {first}");
            // List every damaged range, not only the first.
            if let Ok(i) = inspect(dir, RecoveryMode::Salvage, keys, &mut |_| {}) {
                for s in &i.recovered.report.skipped {
                    println!("verify: damaged: {}:{} ({} bytes): {}", s.path.display(), s.offset, s.bytes, s.reason);
                }
            }
            Ok(Outcome::Problem)
        }
        Err(e) => Err(e.into()),
    }
}

fn structure_only(dir: &Path) -> anyhow::Result<Outcome> {
    match check_structure(dir) {
        Ok(s) => {
            println!(
                "verify: structure ok: {} segments ({} encrypted, needing key ids {:?}), {} sealed units and {} plaintext frames checked",
                s.segments, s.encrypted_segments, s.key_ids, s.units, s.plaintext_frames
            );
            for (path, at) in &s.unit_chain_stops {
                println!(
                    "verify: {}: unit headers stop validating at byte {at} (a torn or sealed-over tail, or damage: only the key can tell)",
                    path.display()
                );
            }
            println!("verify: NOT AUTHENTICATED: no key was given, so the encrypted contents could not be checked; pass --key-file");
            Ok(Outcome::Ok)
        }
        Err(OpenError::Corrupt(c)) => {
            println!("verify: CORRUPT: {c}");
            Ok(Outcome::Problem)
        }
        Err(e) => Err(e.into()),
    }
}
