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

fn full_scan(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let i = keel_journal::inspect::inspect(dir, RecoveryMode::Strict, None, &mut |_| {}).unwrap();
    i.recovered.records.iter().map(|(id, r)| (*id, i.reader.read(r).unwrap())).collect()
}

fn opened(dir: &Path) -> (BTreeMap<u64, Vec<u8>>, bool) {
    let options = Options { segment_bytes: 65536, auto_maintenance: false, ..Options::default() };
    let (j, rec) = Journal::open(dir, options).unwrap();
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
