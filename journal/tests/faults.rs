//! fdatasync failure and a full disk, through the fault-injecting filesystem seam.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_journal::crypto::keys::KeyRing;
use keel_journal::vfs::fault::{Faults, FaultyVfs};
use keel_journal::{AppendError, Journal, Options};

/// No background maintenance: the faults are aimed at the write path, and the tests count its syncs.
fn options(faults: &Arc<Faults>) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        vfs: Arc::new(FaultyVfs::new(faults.clone())),
        auto_maintenance: false,
        ..Options::default()
    }
}

fn payload(id: u64) -> Vec<u8> {
    vec![id as u8; 1000]
}

fn reopen_plain(dir: &std::path::Path) -> keel_journal::Recovered {
    let opts = Options { segment_bytes: 64 * 1024, ..Options::default() };
    let (j, rec) = Journal::open(dir, opts).unwrap();
    for (id, r) in &rec.records {
        assert_eq!(j.read_version(r).unwrap(), payload(*id));
    }
    rec
}

#[test]
fn failed_fdatasync_poisons_the_journal_and_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (j, _) = Journal::open(dir.path(), options(&faults)).unwrap();
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    for id in 0..10 {
        j.add(id, 0, &payload(id)).unwrap();
    }
    faults.fail_syncs();
    let e = j.add(10, 0, &payload(10)).unwrap_err();
    assert!(matches!(e, AppendError::Poisoned { op: "fdatasync", .. }), "{e}");
    assert!(e.to_string().contains("reopen"), "says what to do: {e}");
    let syncs_after = faults.syncs();
    for id in 11..20 {
        assert!(matches!(j.add(id, 0, &payload(id)), Err(AppendError::Poisoned { .. })));
    }
    assert!(matches!(j.sync(), Err(AppendError::Poisoned { .. })));
    assert!(j.poisoned().is_some());
    assert_eq!(faults.syncs(), syncs_after, "no fsync is attempted after the failure");
    drop(j);
    assert_eq!(faults.syncs(), syncs_after, "not even by close");
    let rec = reopen_plain(dir.path());
    for id in 0..10 {
        assert!(rec.records.contains_key(&id), "acknowledged record {id} survived");
    }
    for id in 11..20 {
        assert!(!rec.records.contains_key(&id), "refused record {id} was never written");
    }
}

#[test]
fn every_concurrent_caller_gets_the_poison_and_none_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (j, _) = Journal::open(dir.path(), options(&faults)).unwrap();
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    let j = Arc::new(j);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (j, acked) = (j.clone(), acked.clone());
            std::thread::spawn(move || {
                for k in 0.. {
                    let id = t * 1_000_000 + k;
                    match j.add(id, 0, &payload(id)) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(AppendError::Poisoned { .. }) => return,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    // Some appends acknowledged before the fdatasyncs start failing (a fixed sleep proves nothing on a busy
    // disk).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 20 {
        assert!(std::time::Instant::now() < deadline, "no appends acknowledged in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    faults.fail_syncs();
    for t in threads {
        t.join().unwrap();
    }
    drop(j);
    let rec = reopen_plain(dir.path());
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for id in acked.iter() {
        assert!(rec.records.contains_key(id), "acknowledged {id} survived");
    }
}

#[test]
fn full_disk_fails_appends_that_need_space_and_writing_resumes_when_freed() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (j, _) = Journal::open(dir.path(), options(&faults)).unwrap();
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    faults.set_disk_full(true);
    let mut acked = Vec::new();
    let mut id = 0u64;
    // The active segment and the ready spare fill up; then appends fail with ENOSPC.
    let failed_id = loop {
        match j.add(id, 0, &payload(id)) {
            Ok(_) => acked.push(id),
            Err(AppendError::NoSpace { .. }) => break id,
            Err(e) => panic!("unexpected {e}"),
        }
        id += 1;
        assert!(id < 1000, "the disk never filled");
    };
    assert!(acked.len() > 60, "the ready spare was used before failing");
    let e = j.add(failed_id, 0, &payload(failed_id)).unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(j.poisoned().is_none(), "ENOSPC does not poison");
    faults.set_disk_full(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match j.add(failed_id, 0, &payload(failed_id)) {
            Ok(_) => break,
            Err(AppendError::NoSpace { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("writing did not resume: {e}"),
        }
    }
    acked.push(failed_id);
    for id in 5000..5100 {
        j.add(id, 0, &payload(id)).unwrap();
        acked.push(id);
    }
    drop(j);
    let rec = reopen_plain(dir.path());
    let got: Vec<u64> = rec.records.keys().copied().collect();
    acked.sort();
    assert_eq!(got, acked);
}

#[test]
fn failed_in_place_write_leaves_no_trace_and_the_next_write_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (j, _) = Journal::open(dir.path(), options(&faults)).unwrap();
    j.add(1, 0, &payload(1)).unwrap();
    faults.fail_next_in_place_writes(1);
    assert!(matches!(j.add(2, 0, &payload(2)), Err(AppendError::NoSpace { .. })));
    // The failed add left no trace in the writer's model either: the same id can be added now.
    let lsn3 = j.add(3, 0, &payload(3)).unwrap();
    let lsn2 = j.add(2, 0, &payload(2)).unwrap();
    assert_eq!(lsn2.0, lsn3.0 + 1, "the failed write's LSN was reused: no gap");
    drop(j);
    let rec = reopen_plain(dir.path());
    assert_eq!(rec.records.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// Segments large enough that 32 writers of 16 KiB records make batches that overlap their fdatasync.
const LARGE_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

fn large_batch_options(faults: &Arc<Faults>) -> Options {
    Options { segment_bytes: LARGE_SEGMENT_BYTES, ..options(faults) }
}

fn big(id: u64) -> Vec<u8> {
    vec![(id % 251) as u8; 16 * 1024]
}

/// Waits until the writer has overlapped `n` fdatasyncs with the next batch's write.
fn wait_for_overlaps(j: &Journal, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while j.write_stats().overlapped_fdatasyncs < n {
        assert!(Instant::now() < deadline, "no overlapped fdatasync: {:?}", j.write_stats());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reopens without faults, with the large-batch segment size.
fn reopen_large(dir: &std::path::Path, keys: Option<KeyRing>) -> (Journal, keel_journal::Recovered) {
    Journal::open(dir, Options { segment_bytes: LARGE_SEGMENT_BYTES, keys, ..Options::default() }).unwrap()
}

/// A failed fdatasync while the leader overlaps it with the next batch's write (large batches): every
/// caller gets the poison, nothing written after the failure is acknowledged, no fdatasync follows it, and
/// every acknowledged record survives.
#[test]
fn failed_overlapped_fdatasync_poisons_and_nothing_after_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (j, _) = Journal::open(dir.path(), large_batch_options(&faults)).unwrap();
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    let j = Arc::new(j);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let (j, acked) = (j.clone(), acked.clone());
            std::thread::spawn(move || {
                for k in 0.. {
                    let id = t * 1_000_000 + k;
                    match j.add(id, 0, &big(id)) {
                        Ok(lsn) => acked.lock().unwrap().push((id, lsn)),
                        Err(AppendError::Poisoned { .. }) => return,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    wait_for_overlaps(&j, 5);
    faults.fail_syncs();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = faults.syncs();
    assert!(matches!(j.sync(), Err(AppendError::Poisoned { .. })));
    drop(j);
    assert_eq!(faults.syncs(), syncs, "no fdatasync after the failure, not even by close");
    let (j, rec) = reopen_large(dir.path(), None);
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for (id, _) in acked.iter() {
        let r = rec.records.get(id).unwrap_or_else(|| panic!("acknowledged {id} survived"));
        assert_eq!(j.read_version(r).unwrap(), big(*id));
    }
}

/// Writes that fail with ENOSPC while an overlapped fdatasync is in flight: the failed batch is reverted
/// and zeroed, the batch before it is still acknowledged once its fdatasync returns, and writing goes on.
/// Recovery holds exactly the acknowledged records.
#[test]
fn failed_write_during_an_overlapped_fdatasync_loses_only_its_own_batch() {
    failed_write_during_an_overlapped_fdatasync(None);
}

/// The same, encrypted: the failed write was one sealed unit, and the next write seals its frames again
/// at the same offset under a fresh nonce.
#[test]
fn failed_write_during_an_overlapped_fdatasync_encrypted() {
    let keys = KeyRing::parse(&format!("1:{}", "7d".repeat(32)), "test").unwrap();
    failed_write_during_an_overlapped_fdatasync(Some(keys));
}

fn failed_write_during_an_overlapped_fdatasync(keys: Option<KeyRing>) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let opts = Options { keys: keys.clone(), ..large_batch_options(&faults) };
    let (j, _) = Journal::open(dir.path(), opts).unwrap();
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    let j = Arc::new(j);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Writers go on until told to stop, so the fault always meets appends however fast the disk is.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let (j, acked, failed, stop) = (j.clone(), acked.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                for k in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let id = t * 1_000_000 + k;
                    match j.add(id, 0, &big(id)) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(AppendError::NoSpace { .. }) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    wait_for_overlaps(&j, 5);
    // One: a second failure would hit the zeroing of the first, which stops the journal by design.
    faults.fail_next_in_place_writes(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while failed.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Some more batches after the failed one, to show that writing goes on.
    let acked_at_failure = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < acked_at_failure + 64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(j.poisoned().is_none(), "ENOSPC does not poison");
    assert!(acked.lock().unwrap().len() >= acked_at_failure + 64, "writing went on after the failure");
    assert!(failed.load(std::sync::atomic::Ordering::Relaxed) > 0, "some appends failed");
    Arc::into_inner(j).unwrap().close().unwrap();
    let (j, rec) = reopen_large(dir.path(), keys);
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let got: Vec<u64> = rec.records.keys().copied().collect();
    assert_eq!(got, acked, "exactly the acknowledged records");
    for (id, r) in &rec.records {
        assert_eq!(j.read_version(r).unwrap(), big(*id));
    }
}

/// A disk too slow to zero-fill the next spare in time: roll-overs wait for it (appends stall but none
/// fails), and `write_stats` says how often and for how long; with a spare ready, an activation waits
/// for nothing.
#[test]
fn roll_overs_that_wait_for_a_spare_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let j = Journal::open(dir.path(), options(&faults)).unwrap().0;
    assert!(j.wait_for_spares(Duration::from_secs(30)));
    j.add(0, 0, &payload(0)).unwrap();
    let s = j.write_stats();
    assert_eq!((s.activations, s.spare_waits, s.spare_wait_time), (1, 0, Duration::ZERO));

    // Each spare's zero-fill now takes at least 40 ms; a 64 KiB segment holds ~60 of these records.
    faults.delay_extending_writes(Duration::from_millis(40));
    for id in 1..400 {
        j.add(id, 0, &payload(id)).unwrap();
    }
    let s = j.write_stats();
    assert!(s.activations >= 6, "{s:?}");
    assert!(s.spare_waits >= 3 && s.spare_waits < s.activations, "{s:?}");
    assert!(s.spare_wait_time >= Duration::from_millis(10) * s.spare_waits as u32, "{s:?}");
    j.close().unwrap();
    assert_eq!(reopen_plain(dir.path()).records.len(), 400);
}
