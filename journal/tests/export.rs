//! `export::capture` of a journal being written, and `export::truncate_after`, plaintext and encrypted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::export::{capture, truncate_after, Capture, SegmentSource};
use keel_journal::{Journal, Lsn, Options, TxId};

fn keys() -> KeyRing {
    KeyRing::parse(&format!("1:{}", "5a".repeat(32)), "test").unwrap()
}

fn options(keys: Option<KeyRing>) -> Options {
    let compaction = keel_journal::CompactionPolicy {
        live_ratio_below: 0.6,
        min_segments: 1,
        bytes_per_sec: u64::MAX,
        trim_bytes_per_sec: u64::MAX,
        ..Default::default()
    };
    Options { segment_bytes: 64 * 1024, keys, compaction: Some(compaction), ..Options::default() }
}

fn payload(id: u64) -> Vec<u8> {
    format!("record {id} ").repeat(1 + (id % 7) as usize).into_bytes()
}

/// Writes a capture into `dir` as a restore would.
fn materialise(c: &Capture, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("KEEL-JOURNAL"), &c.identity).unwrap();
    if let Some(h) = &c.horizon {
        std::fs::write(dir.join("RECLAIMED"), h).unwrap();
    }
    for s in &c.segments {
        let mut bytes = vec![0u8; s.segment_bytes as usize];
        let n = s.copy_bytes() as usize;
        s.read_at(&mut bytes[..n], 0).unwrap();
        if let SegmentSource::Tail(t) = &s.source {
            assert_eq!(t.len(), n);
        }
        std::fs::write(dir.join(format!("{:020}.kseg", s.seq)), bytes).unwrap();
    }
}

fn capture_under_load(keys: Option<KeyRing>) {
    let src = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(src.path(), options(keys.clone())).unwrap();
    let journal = Arc::new(journal);
    // id -> lsn of every acknowledged add; deletes of even ids once written keep reclaim busy.
    let acked = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (journal, acked, stop) = (journal.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = w << 40 | i;
                    let lsn = journal.add(id, 1, &payload(id)).unwrap();
                    if i % 2 == 1 {
                        // Dead records, so that reclaim and compaction run during the captures.
                        journal.delete(id).unwrap();
                    } else {
                        acked.lock().unwrap().insert(id, lsn.0);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut reclaimed = false;
    // At least 5 captures, and on until one saw a reclaimed head (a busy disk may take longer to get there).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for round in 0.. {
        if round >= 5 && (reclaimed || std::time::Instant::now() > deadline) {
            break;
        }
        let before: BTreeMap<u64, u64> = acked.lock().unwrap().clone();
        let c = capture(src.path(), keys.as_ref()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        materialise(&c, dst.path());
        let (restored, rec) = Journal::open(dst.path(), options(keys.clone())).unwrap();
        for (id, lsn) in &before {
            let r = rec.records.get(id).unwrap_or_else(|| panic!("round {round}: acked id {id} (lsn {lsn}) missing"));
            assert_eq!(r.lsn.0, *lsn);
            assert_eq!(restored.read(*id).unwrap(), payload(*id));
        }
        for r in rec.records.values() {
            assert!(r.lsn < c.next_lsn, "round {round}: lsn {} at or after the cut {}", r.lsn.0, c.next_lsn.0);
        }
        assert_eq!(rec.report.last_lsn.map_or(0, |l| l.0 + 1), c.next_lsn.0, "round {round}");
        reclaimed |= c.horizon.is_some();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(reclaimed, "no capture saw a reclaimed head; the test did not test that");
}

#[test]
fn capture_of_a_journal_under_load_restores_exactly_up_to_its_cut() {
    capture_under_load(None);
}

#[test]
fn capture_of_an_encrypted_journal_under_load_restores_exactly_up_to_its_cut() {
    capture_under_load(Some(keys()));
}

fn truncate(keys: Option<KeyRing>) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options(keys.clone())).unwrap();
    let mut lsns = Vec::new();
    for id in 0..400u64 {
        // Batches of async appends share units (encrypted) and sync groups.
        let pending: Vec<_> =
            (0..4).map(|k| (id * 4 + k, journal.add_async(id * 4 + k, 1, &payload(id * 4 + k)))).collect();
        for (id, p) in pending {
            lsns.push((id, p.wait().unwrap().0));
        }
    }
    let tx = TxId::new(9).unwrap();
    let tx_lsn = journal.add_tx(tx, 1 << 50, 1, b"in tx").unwrap().0;
    let commit = journal.commit(tx).unwrap().0;
    journal.close().unwrap();
    let last = commit;
    for cut in [lsns[0].1, lsns[777].1, lsns[1200].1 + 1, tx_lsn, lsns.last().unwrap().1, last] {
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        truncate_after(copy.path(), Lsn(cut), keys.as_ref()).unwrap();
        let (j, rec) = Journal::open(copy.path(), options(keys.clone())).unwrap();
        let expect: Vec<u64> = lsns.iter().filter(|(_, l)| *l <= cut).map(|(id, _)| *id).collect();
        let mut got: Vec<u64> = rec.records.keys().copied().filter(|id| *id < 1 << 50).collect();
        got.sort();
        assert_eq!(got, expect, "cut at {cut}");
        assert_eq!(rec.records.contains_key(&(1 << 50)), cut >= commit, "cut at {cut}");
        // The cut journal takes new writes after its end.
        // (cut + 2 when the segment is full: its seal takes cut + 1.)
        let lsn = j.add(1 << 51, 1, b"after").unwrap();
        assert!(lsn.0 == cut + 1 || lsn.0 == cut + 2, "cut at {cut}, next write at {}", lsn.0);
    }
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    let err = truncate_after(copy.path(), Lsn(last + 5), keys.as_ref()).unwrap_err().to_string();
    assert!(err.contains("is not in this journal"), "{err}");
}

#[test]
fn truncate_after_keeps_exactly_the_frames_up_to_the_lsn() {
    truncate(None);
}

#[test]
fn truncate_after_an_encrypted_journal_reseals_the_cut_unit() {
    truncate(Some(keys()));
}

#[test]
fn damage_in_the_newest_segment_that_persists_is_reported_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options(None)).unwrap();
    for id in 0..40u64 {
        journal.add(id, 1, &payload(id)).unwrap();
    }
    journal.close().unwrap();
    // The newest segment: flip a byte of an early frame, before later fdatasynced groups.
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kseg"))
        .filter(|p| std::fs::read(p).unwrap()[..8] != [0u8; 8])
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[256 + 60] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let err = capture(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains(newest.file_name().unwrap().to_str().unwrap()), "{err}");
}

/// The child of the test below: cuts the journal named by `KEEL_EXPORT_CHILD` at LSN 150.
#[test]
fn child_truncate() {
    let Ok(dir) = std::env::var("KEEL_EXPORT_CHILD") else { return };
    truncate_after(Path::new(&dir), Lsn(150), None).unwrap();
}

#[test]
fn truncate_after_killed_between_its_steps_leaves_a_journal_that_opens_and_finishes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options(None)).unwrap();
    let mut lsns = Vec::new();
    for id in 0..1500u64 {
        lsns.push((id, journal.add(id, 1, &payload(id)).unwrap().0));
    }
    journal.close().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_truncate", "--exact", "--nocapture", "--test-threads", "1"])
        .env("KEEL_EXPORT_CHILD", dir.path())
        .env("KEEL_CRASH_AT", "export-truncate-later-deleted")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the child was not killed at its crash point");
    // Later segments are gone, the cut segment is whole: the journal opens, ending past LSN 150.
    {
        let (_, rec) = Journal::open(dir.path(), options(None)).unwrap();
        assert!(rec.report.last_lsn.unwrap().0 > 150);
        assert!(rec.report.last_lsn.unwrap().0 < lsns.last().unwrap().1, "later segments were not deleted");
    }
    truncate_after(dir.path(), Lsn(150), None).unwrap();
    let (_, rec) = Journal::open(dir.path(), options(None)).unwrap();
    let want: Vec<u64> = lsns.iter().filter(|(_, l)| *l <= 150).map(|(id, _)| *id).collect();
    assert_eq!(rec.records.keys().copied().collect::<Vec<_>>(), want);
}
