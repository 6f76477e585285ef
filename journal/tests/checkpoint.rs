//! Checkpoints: `open` reads the newest valid one plus what follows it, and any damage to one falls back to
//! an older one or a full scan — never to wrong data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::{Journal, Options, RecoveryMode, TxId};

fn options(keys: Option<KeyRing>) -> Options {
    Options { segment_bytes: 64 * 1024, auto_maintenance: false, keys, ..Options::default() }
}

fn payload(id: u64) -> Vec<u8> {
    format!("PAYLOAD-{id:08}-").repeat(60).into_bytes()
}

fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kcp"))
        .collect();
    v.sort();
    v
}

/// Records and payloads as a full scan (the tools' read-only inspection, which ignores checkpoints) sees them.
fn full_scan(dir: &Path, keys: Option<&KeyRing>) -> BTreeMap<u64, Vec<u8>> {
    let i = keel_journal::inspect::inspect(dir, RecoveryMode::Strict, keys, &mut |_| {}).unwrap();
    i.recovered.records.iter().map(|(id, r)| (*id, i.reader.read(r).unwrap())).collect()
}

fn write_history(j: &Journal, from: u64, to: u64) {
    for id in from..to {
        j.add(id, 1, &payload(id)).unwrap();
        if id % 3 == 0 {
            j.delete(id).unwrap();
        }
        if id % 5 == 0 {
            j.update(id - 1, 2, &payload(id + 1000)).ok();
        }
    }
}

fn reopen_and_compare(dir: &Path, keys: Option<KeyRing>) -> keel_journal::RecoveryReport {
    let want = full_scan(dir, keys.as_ref());
    let (j, rec) = Journal::open(dir, options(keys)).unwrap();
    let got: BTreeMap<u64, Vec<u8>> = rec.records.iter().map(|(id, r)| (*id, j.read_version(r).unwrap())).collect();
    assert_eq!(got, want, "open agrees with a full scan");
    rec.report
}

#[test]
fn open_reads_the_checkpoint_and_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    write_history(&j, 1, 200);
    let tx = TxId::new(3).unwrap();
    j.add_tx(tx, 5000, 4, b"staged").unwrap();
    j.prepare(tx, b"xid-3").unwrap();
    let cp = j.checkpoint().unwrap().unwrap();
    assert!(cp.records > 100);
    write_history(&j, 200, 230);
    drop(j);
    let report = reopen_and_compare(dir.path(), None);
    assert!(report.checkpoint.is_some());
    assert!(report.segments_read <= 2, "only the segments after the checkpoint: {}", report.segments_read);
    let (_j, rec) = Journal::open(dir.path(), options(None)).unwrap();
    assert_eq!(rec.prepared.len(), 1);
    assert_eq!(rec.prepared[0].data, b"xid-3");
}

#[test]
fn a_damaged_checkpoint_falls_back_to_an_older_one_or_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    write_history(&j, 1, 100);
    j.checkpoint().unwrap().unwrap();
    write_history(&j, 100, 150);
    j.checkpoint().unwrap().unwrap();
    write_history(&j, 150, 160);
    drop(j);
    let cps = checkpoints(dir.path());
    assert_eq!(cps.len(), 2);
    // Damage the newest in the middle of its body: the older one is used.
    let mut bytes = std::fs::read(&cps[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&cps[1], &bytes).unwrap();
    let report = reopen_and_compare(dir.path(), None);
    assert_eq!(report.checkpoint.as_deref(), Some(cps[0].as_path()));
    assert_eq!(report.checkpoints_rejected.len(), 1);
    // Truncate the older one too: a full scan.
    let older = std::fs::read(&cps[0]).unwrap();
    std::fs::write(&cps[0], &older[..older.len() - 7]).unwrap();
    let report = reopen_and_compare(dir.path(), None);
    assert!(report.checkpoint.is_none());
    assert_eq!(report.checkpoints_rejected.len(), 2);
}

#[test]
fn a_checkpoint_that_lies_about_the_segments_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    write_history(&j, 1, 100);
    j.checkpoint().unwrap().unwrap();
    write_history(&j, 100, 120);
    drop(j);
    // A valid checkpoint from another journal is refused.
    let other = tempfile::tempdir().unwrap();
    let (j2, _) = Journal::open(other.path(), options(None)).unwrap();
    write_history(&j2, 1, 120);
    let foreign = j2.checkpoint().unwrap().unwrap();
    drop(j2);
    let cp = checkpoints(dir.path()).pop().unwrap();
    std::fs::copy(&foreign.path, &cp).unwrap();
    let report = reopen_and_compare(dir.path(), None);
    assert!(report.checkpoint.is_none());
    assert!(report.checkpoints_rejected[0].1.contains("another journal"), "{:?}", report.checkpoints_rejected);
}

#[test]
fn encrypted_checkpoints_hold_no_plaintext_and_need_the_key() {
    let keys = KeyRing::parse(&format!("1:{}", "3c".repeat(32)), "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(Some(keys.clone()))).unwrap();
    write_history(&j, 1, 100);
    let tx = TxId::new(3).unwrap();
    j.add_tx(tx, 5000, 4, b"staged").unwrap();
    j.prepare(tx, b"SECRET-XID-PAYLOAD").unwrap();
    let cp = j.checkpoint().unwrap().unwrap();
    drop(j);
    let bytes = std::fs::read(&cp.path).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"PAYLOAD-"), "no record payload in the checkpoint");
    assert!(!bytes.windows(10).any(|w| w == b"SECRET-XID"), "no prepare data in the checkpoint");
    let report = reopen_and_compare(dir.path(), Some(keys));
    assert_eq!(report.checkpoint.as_deref(), Some(cp.path.as_path()));
}

#[test]
fn a_leftover_temporary_checkpoint_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(None)).unwrap();
    write_history(&j, 1, 10);
    drop(j);
    let tmp = dir.path().join("00000000000000000099.kcp.tmp");
    std::fs::write(&tmp, b"half a checkpoint").unwrap();
    reopen_and_compare(dir.path(), None);
    assert!(!tmp.exists());
}

#[test]
fn with_a_checkpoint_a_missing_old_key_is_still_refused_at_open() {
    let k1 = format!("1:{}", "11".repeat(32));
    let k2 = format!("2:{}", "22".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options(Some(KeyRing::parse(&k1, "t").unwrap()))).unwrap();
    write_history(&j, 1, 100);
    drop(j);
    let both = KeyRing::parse(&format!("{k1}\n{k2}"), "t").unwrap();
    let (j, _) = Journal::open(dir.path(), options(Some(both))).unwrap();
    write_history(&j, 100, 150);
    j.checkpoint().unwrap().unwrap();
    drop(j);
    let e = Journal::open(dir.path(), options(Some(KeyRing::parse(&k2, "t").unwrap()))).unwrap_err();
    assert!(matches!(e, keel_journal::OpenError::KeyUnavailable { key_id: 1, .. }), "{e}");
}

/// A checkpoint after every sealed segment, were it not for the interval's growth; no compaction.
fn pacing_options(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        sync: keel_journal::SyncPolicy::Never,
        checkpoint_every_segments: 1,
        compaction: None,
        ..Options::default()
    }
}

/// Adds a live 16-byte record for each id; after every `sync_every`, syncs and pauses so that the
/// maintenance thread looks at the segments sealed meanwhile, as it would behind a slower writer.
fn add_small_records(j: &Journal, ids: std::ops::Range<u64>, sync_every: u64, pause: std::time::Duration) {
    for id in ids {
        j.add(id, 0, &id.to_le_bytes().repeat(2)).unwrap();
        if (id + 1) % sync_every == 0 {
            j.sync().unwrap();
            std::thread::sleep(pause);
        }
    }
    j.sync().unwrap();
}

/// A checkpoint rewrites the whole live index, so with a growing live set its interval must grow too, or
/// checkpoints would take a growing share of the disk: between two, at least 16 × the earlier one's bytes
/// of journal are written. Summed, checkpoints then cost at most 1/16 of the journal's bytes, plus the last.
#[test]
fn periodic_checkpoints_space_out_as_the_live_index_grows() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 * 1024;
    let (j, _) = Journal::open(dir.path(), pacing_options(segment_bytes)).unwrap();
    // 60 000 live records of 16 bytes: 56-byte frames, ~3.4 MB of journal over ~50 segments; the index
    // reaches ~2.4 MB, so a checkpoint per segment would write ~60 MB.
    add_small_records(&j, 0..60_000, 1_000, std::time::Duration::from_millis(2));
    let written = j.write_stats().activations * segment_bytes;
    let stats = j.maintenance_stats();
    let index_bytes = 60_000 * 41 + 4096;
    assert!(stats.checkpoints >= 2, "periodic checkpoints still happen: {stats:?}");
    assert!(
        stats.checkpoint_bytes <= written / 16 + index_bytes,
        "checkpoints wrote {} bytes for {written} bytes of journal: {stats:?}",
        stats.checkpoint_bytes
    );
    drop(j);
    let report = reopen_and_compare(dir.path(), None);
    assert!(report.checkpoint.is_some(), "close wrote a checkpoint");
}

/// The checkpoint an open started from paces the next periodic one, as if this process had written it:
/// a restart of a journal with a large live set does not bring on a checkpoint after the next few
/// segments, and then one after every few more until one was written (each rewriting the whole index).
#[test]
fn the_checkpoint_an_open_starts_from_paces_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 * 1024;
    {
        // 20 000 live records: a checkpoint of ~0.8 MB, written at close.
        let (j, _) = Journal::open(dir.path(), pacing_options(segment_bytes)).unwrap();
        add_small_records(&j, 0..20_000, 20_000, std::time::Duration::ZERO);
    }
    let (j, rec) = Journal::open(dir.path(), pacing_options(segment_bytes)).unwrap();
    assert!(rec.report.checkpoint.is_some(), "the open started from the close's checkpoint");
    // Four segments of new records: far less than 16 × the checkpoint's bytes.
    add_small_records(&j, 20_000..24_500, 500, std::time::Duration::from_millis(20));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(j.write_stats().activations >= 4, "{:?}", j.write_stats());
    assert_eq!(j.maintenance_stats().checkpoints, 0, "no checkpoint before 16 × the last one's bytes");
    drop(j);
    reopen_and_compare(dir.path(), None);
}

/// A checkpoint copies the index under the writer's lock and serializes it after letting go, while the
/// writer changes its own (copy-on-write) shards: each checkpoint must still be exactly the state at its
/// resume point, so an open from any of them agrees with a full scan.
#[test]
fn checkpoints_taken_while_writers_run_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { sync: keel_journal::SyncPolicy::Never, ..options(None) };
    let (j, _) = Journal::open(dir.path(), opts).unwrap();
    let j = std::sync::Arc::new(j);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (j, stop) = (j.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = w * 1_000_000 + n % 3_000;
                    match n % 4 {
                        0 | 1 => drop(j.add(id, 1, &payload(n))),
                        2 => drop(j.update(id, 2, &payload(n + 7))),
                        _ => drop(j.delete(id)),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let mut taken = 0;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        taken += usize::from(j.checkpoint().unwrap().is_some());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(taken > 0);
    // The newest checkpoint, then each older one alone (delete the newer), must agree with a full scan.
    drop(std::sync::Arc::into_inner(j).expect("writers joined"));
    loop {
        let report = reopen_and_compare(dir.path(), None);
        assert!(report.checkpoint.is_some());
        let mut all = checkpoints(dir.path());
        if all.len() < 2 {
            break;
        }
        std::fs::remove_file(all.pop().unwrap()).unwrap();
    }
}
