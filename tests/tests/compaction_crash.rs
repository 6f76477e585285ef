//! Crash tests for compaction, reclaim and checkpoints: a real `keel journal compact` process is killed
//! (SIGKILL, via the library's named crash points) at each phase, and the journal must then hold exactly
//! the records it held before — nothing acknowledged lost, nothing deleted back — by a full scan and by a
//! checkpoint-assisted open alike. Random kills during compaction under load are in `crash.rs`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use keel_journal::{Journal, Options, RecoveryMode};
use keel_tests::{keel, keel_bin, stderr, stdout};

const SEGMENT_BYTES: &str = "65536";

/// Retries while the journal's LOCK is held: the other test in this binary spawns processes, and a child
/// holds a copy of every open descriptor (the lock's included) from fork until exec closes it.
fn unlocked<T>(mut f: impl FnMut() -> Result<T, keel_journal::OpenError>) -> T {
    for _ in 0..100 {
        match f() {
            Err(keel_journal::OpenError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
            other => return other.unwrap(),
        }
    }
    panic!("the journal stayed locked");
}

fn full_scan(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let i = unlocked(|| keel_journal::inspect::inspect(dir, RecoveryMode::Strict, None, &mut |_| {}));
    i.recovered.records.iter().map(|(id, r)| (*id, i.reader.read(r).unwrap())).collect()
}

fn opened(dir: &Path) -> (BTreeMap<u64, Vec<u8>>, bool) {
    let options = Options { segment_bytes: 65536, auto_maintenance: false, ..Options::default() };
    let (j, rec) = unlocked(|| Journal::open(dir, options.clone()));
    let map = rec.records.iter().map(|(id, r)| (*id, j.read_version(r).unwrap())).collect();
    (map, rec.report.checkpoint.is_some())
}

/// A journal where nine records in ten were deleted again, without any background compaction.
fn sparse_journal(dir: &Path, ack_log: &Path) {
    let out = keel(&[
        "journal",
        "stress",
        "--dir",
        dir.to_str().unwrap(),
        "--ack-log",
        ack_log.to_str().unwrap(),
        "--count",
        "3000",
        "--size",
        "2000",
        "--writers",
        "4",
        "--segment-bytes",
        SEGMENT_BYTES,
        "--delete-percent",
        "90",
        "--no-compaction",
        "--sync",
        "never",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn sigkill_at_every_phase_of_compaction_keeps_exactly_the_records() {
    let points = [
        "compact-relocated:1",
        "compact-relocated:2",
        "compact-synced",
        "reclaim-deleted:1",
        "reclaim-deleted:5",
        "checkpoint-written",
        "checkpoint-renamed",
    ];
    let work = tempfile::tempdir().unwrap();
    for point in points {
        let dir = work.path().join(point.replace(':', "-"));
        let ack_log = work.path().join(format!("{}.acks", point.replace(':', "-")));
        sparse_journal(&dir, &ack_log);
        let before = full_scan(&dir);
        assert!(before.len() > 100, "{point}: {} live records", before.len());
        let status = Command::new(keel_bin())
            .args(["journal", "compact", "--dir", dir.to_str().unwrap(), "--segment-bytes", SEGMENT_BYTES])
            .env("KEEL_CRASH_AT", point)
            .output()
            .unwrap();
        assert_eq!(status.status.signal(), Some(9), "{point}: the crash point was reached: {}", stdout(&status));
        assert_eq!(full_scan(&dir), before, "{point}: a full scan finds exactly the records");
        let verify = keel(&["journal", "verify", "--dir", dir.to_str().unwrap()]);
        assert!(verify.status.success(), "{point}: {}{}", stdout(&verify), stderr(&verify));
        let (after, _) = opened(&dir);
        assert_eq!(after, before, "{point}: open finds exactly the records");
        let acks =
            keel(&["journal", "verify-acks", "--dir", dir.to_str().unwrap(), "--ack-log", ack_log.to_str().unwrap()]);
        assert!(acks.status.success(), "{point}: {}", stdout(&acks));
        // Finishing the interrupted compaction gets there too, and the next open starts from a checkpoint.
        let done = keel(&["journal", "compact", "--dir", dir.to_str().unwrap(), "--segment-bytes", SEGMENT_BYTES]);
        assert!(done.status.success(), "{point}: {}{}", stdout(&done), stderr(&done));
        let (after, from_checkpoint) = opened(&dir);
        assert_eq!(after, before, "{point}: after a completed compaction");
        assert!(from_checkpoint, "{point}: compact leaves a checkpoint");
        assert_eq!(full_scan(&dir), before);
    }
}

/// Transactions whose records straddle segment boundaries, most records deleted again: a reclaim then
/// removes a run of segments whose middle cuts through transactions. Killed between its steps, the journal
/// must still replay every transaction whole.
#[test]
fn sigkill_in_the_middle_of_a_reclaim_never_splits_a_transaction() {
    let work = tempfile::tempdir().unwrap();
    for point in ["reclaim-horizon", "reclaim-deleted:1", "reclaim-deleted:4"] {
        let dir = work.path().join(point.replace(':', "-"));
        {
            let options = Options { segment_bytes: 65536, auto_maintenance: false, ..Options::default() };
            let (j, _) = Journal::open(&dir, options).unwrap();
            let body = vec![0x42u8; 1500];
            for t in 0..200u64 {
                let tx = keel_journal::TxId::new(t + 1).unwrap();
                for k in 0..5 {
                    j.add_tx(tx, t * 10 + k, 1, &body).unwrap();
                }
                if t % 2 == 0 {
                    j.prepare(tx, b"xid").unwrap();
                }
                j.commit(tx).unwrap();
                for k in 0..5 {
                    if (t * 10 + k) % 20 != 0 {
                        j.delete(t * 10 + k).unwrap();
                    }
                }
            }
        }
        let before = full_scan(&dir);
        let out = Command::new(keel_bin())
            .args(["journal", "compact", "--dir", dir.to_str().unwrap(), "--segment-bytes", SEGMENT_BYTES])
            .env("KEEL_CRASH_AT", point)
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(9), "{point} reached: {}{}", stdout(&out), stderr(&out));
        let verify = keel(&["journal", "verify", "--dir", dir.to_str().unwrap()]);
        assert!(verify.status.success(), "{point}: {}{}", stdout(&verify), stderr(&verify));
        assert_eq!(full_scan(&dir), before, "{point}");
        assert_eq!(opened(&dir).0, before, "{point}");
    }
}
