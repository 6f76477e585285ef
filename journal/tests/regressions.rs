//! Regression tests of data-loss defects (issue 24), each failing on the code before its fix.

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keel_journal::crypto::keys::KeyRing;
use keel_journal::inspect::inspect;
use keel_journal::vfs::{OpenMode, StdVfs, Vfs, VfsFile};
use keel_journal::{CorruptionKind, Journal, OpenError, Options, RecoveryMode, SyncPolicy};

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as u8).wrapping_mul(29) ^ (i as u8)).collect()
}

fn keys() -> KeyRing {
    KeyRing::parse(&format!("1:{}", "3c".repeat(32)), "test").unwrap()
}

/// Defect 1: a checkpoint taken with no active segment (here: the open that added a key sealed the
/// plaintext tail, then closed) left recovery with no segment list; an open with another segment size
/// then numbered the next segment 1 and renamed a zero-filled spare over segment 1.
#[test]
fn another_segment_size_after_a_checkpoint_with_no_active_segment_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |segment_bytes, keys: Option<KeyRing>| Options { segment_bytes, keys, ..Options::default() };
    let (j, _) = Journal::open(dir.path(), opts(64 * 1024, None)).unwrap();
    for id in 0..2000 {
        j.add(id, 1, &payload(id, 200)).unwrap();
    }
    j.close().unwrap();
    Journal::open(dir.path(), opts(64 * 1024, Some(keys()))).unwrap().0.close().unwrap();
    Journal::open(dir.path(), opts(128 * 1024, Some(keys()))).unwrap().0.close().unwrap();

    let (j, recovered) = Journal::open(dir.path(), opts(128 * 1024, Some(keys()))).unwrap();
    assert_eq!(recovered.records.len(), 2000, "every record survives the change of segment size");
    for (id, r) in &recovered.records {
        assert_eq!(j.read_version(r).unwrap(), payload(*id, 200), "record {id}");
    }
    drop(j);
    let scan = inspect(dir.path(), RecoveryMode::Strict, Some(&keys()), &mut |_| {}).unwrap();
    assert_eq!(scan.recovered.records.len(), 2000);
}

/// Defect 2: a flipped byte in an old, fdatasynced sync group was called a torn tail because the first
/// valid frame after it belonged to the same group, though later groups were fdatasynced after it: strict
/// open dropped every later acknowledged record. Any later frame of a later group proves corruption.
#[test]
fn damage_in_an_old_sync_group_of_the_newest_segment_is_corruption() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let keys = encrypted.then(keys);
        let opts = Options {
            segment_bytes: 1 << 20,
            sync: SyncPolicy::Interval(Duration::from_secs(10)),
            auto_maintenance: false,
            keys: keys.clone(),
            ..Options::default()
        };
        let (j, _) = Journal::open(dir.path(), opts.clone()).unwrap();
        for id in 0..8 {
            j.add(id, 1, &payload(id, 100)).unwrap();
        }
        j.sync().unwrap();
        for id in 100..110 {
            j.add(id, 1, &payload(id, 100)).unwrap();
            j.sync().unwrap();
        }
        let at = j.get(1).unwrap().location;
        j.close().unwrap();

        let path = segment_path(dir.path(), at.seq);
        let mut bytes = std::fs::read(&path).unwrap();
        // Into the payload of id 1 (plaintext), or into its unit's ciphertext (encrypted).
        let flip = (at.offset + 40 + u64::from(at.inner) + 10) as usize;
        bytes[flip] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        match Journal::open(dir.path(), opts.clone()) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!(c.path, path, "names the damaged file");
                assert!(c.offset <= flip as u64, "names an offset at or before the damage: {c}");
                assert!(
                    matches!(c.what, CorruptionKind::DamageBeforeSyncedData { .. }),
                    "says synced data follows: {c}"
                );
            }
            Ok((_, r)) => panic!(
                "encrypted={encrypted}: strict open succeeded with {} records and torn tail {:?}",
                r.records.len(),
                r.report.torn_tail
            ),
            Err(e) => panic!("encrypted={encrypted}: unexpected error {e}"),
        }
        // `keel journal verify` reads through the same recovery: it fails too.
        assert!(inspect(dir.path(), RecoveryMode::Strict, keys.as_ref(), &mut |_| {}).is_err());
    }
}

fn segment_path(dir: &Path, seq: u64) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "kseg")
                && p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) == Some(seq)
        })
        .expect("segment file")
}

/// Pauses the first creation of the reclaim horizon's temporary file until told to go on (or 2 s pass).
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<(bool, bool, bool)>, // (armed, paused, released)
    cv: Condvar,
}

#[derive(Debug)]
struct GatedVfs {
    gate: Arc<Gate>,
}

impl Vfs for GatedVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        if mode == OpenMode::CreateNew && path.file_name().is_some_and(|n| n == "RECLAIMED.tmp") {
            let mut s = self.gate.state.lock().unwrap();
            if s.0 {
                s.0 = false;
                s.1 = true;
                self.gate.cv.notify_all();
                let (s2, _) = self.gate.cv.wait_timeout_while(s, Duration::from_secs(2), |s| !s.2).unwrap();
                drop(s2);
            }
        }
        StdVfs.open(path, mode)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdVfs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdVfs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.sync_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdVfs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdVfs.create_dir_all(dir)
    }
}

/// Defect 7: two reclaims at once shared the horizon's temporary file and each wrote the bound it had
/// computed: a slower reclaim with a lower bound could write its horizon after a faster one had deleted
/// segments above it, and strict open then found segments missing.
#[test]
fn concurrent_reclaims_never_move_the_horizon_back() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let opts = Options {
        segment_bytes: 64 * 1024,
        auto_maintenance: false,
        vfs: Arc::new(GatedVfs { gate: gate.clone() }),
        ..Options::default()
    };
    let (j, _) = Journal::open(dir.path(), opts.clone()).unwrap();
    let j = Arc::new(j);
    for id in 0..40 {
        j.add(id, 1, &payload(id, 8000)).unwrap();
    }
    for id in 100..116 {
        j.add(id, 1, &payload(id, 8000)).unwrap();
    }
    j.add(200, 1, &payload(200, 8000)).unwrap();
    for id in 0..40 {
        j.delete(id).unwrap();
    }
    gate.state.lock().unwrap().0 = true;
    let first = {
        let j = j.clone();
        std::thread::spawn(move || j.reclaim())
    };
    {
        let s = gate.state.lock().unwrap();
        let (s, timeout) = gate.cv.wait_timeout_while(s, Duration::from_secs(10), |s| !s.1).unwrap();
        assert!(!timeout.timed_out(), "the first reclaim reached its horizon");
        drop(s);
    }
    for id in 100..116 {
        j.delete(id).unwrap();
    }
    let second = {
        let j = j.clone();
        let gate = gate.clone();
        std::thread::spawn(move || {
            let r = j.reclaim();
            gate.state.lock().unwrap().2 = true;
            gate.cv.notify_all();
            r
        })
    };
    let a = first.join().unwrap().unwrap();
    let b = second.join().unwrap().unwrap();
    assert!(!a.segments.is_empty() && !b.segments.is_empty(), "both reclaimed: {a:?} {b:?}");
    Arc::try_unwrap(j).unwrap().close().unwrap();

    let opts = Options { vfs: Arc::new(StdVfs), ..opts };
    let (_, recovered) = Journal::open(dir.path(), opts).expect("strict open after concurrent reclaims");
    assert_eq!(recovered.records.keys().copied().collect::<Vec<_>>(), vec![200]);
}

/// Found by the simulator: an open that drops spares of another size deletes them one by one, and a
/// power loss in between can leave a later spare behind an earlier one's deletion; the next open then
/// panicked ("spares continue the active segments").
#[test]
fn a_gap_among_the_spares_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 64 * 1024, spare_segments: 3, auto_maintenance: false, ..Options::default() };
    let (j, _) = Journal::open(dir.path(), opts.clone()).unwrap();
    for id in 0..10 {
        j.add(id, 1, &payload(id, 3000)).unwrap();
    }
    assert!(j.wait_for_spares(Duration::from_secs(10)));
    j.close().unwrap();
    let mut segments: Vec<u64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".kseg")?.parse().ok())
        .collect();
    segments.sort_unstable();
    let first_spare = segments[segments.len() - 3];
    std::fs::remove_file(segment_path(dir.path(), first_spare)).unwrap();

    let (j, recovered) = Journal::open(dir.path(), opts).unwrap();
    assert_eq!(recovered.records.len(), 10);
    for id in 10..40 {
        j.add(id, 1, &payload(id, 3000)).unwrap();
    }
    j.close().unwrap();
    let (_, recovered) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovered.records.len(), 40);
}

/// Found in review: salvage skips a newest segment whose header is damaged (but not a torn activation),
/// and open then numbered from the last segment it read, below the skipped one: the spares no longer
/// followed it ("spares continue the active segments" panicked), or a new segment was numbered over it.
#[test]
fn salvage_past_a_damaged_newest_header_numbers_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 64 * 1024, auto_maintenance: false, ..Options::default() };
    let (j, _) = Journal::open(dir.path(), opts.clone()).unwrap();
    for id in 0..40 {
        j.add(id, 1, &payload(id, 3000)).unwrap();
    }
    let newest = j.get(39).unwrap().location.seq;
    j.close().unwrap();
    let path = segment_path(dir.path(), newest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] ^= 0x01; // the journal id in the header
    std::fs::write(&path, &bytes).unwrap();
    assert!(Journal::open(dir.path(), opts.clone()).is_err(), "strict open refuses");

    let salvage = Options { recovery: RecoveryMode::Salvage, ..opts };
    let (j, recovered) = Journal::open(dir.path(), salvage.clone()).expect("salvage opens");
    assert!(!recovered.report.skipped.is_empty());
    let kept = recovered.records.len();
    assert!(kept > 0 && kept < 40, "{kept}");
    j.add(1000, 1, b"after salvage").unwrap();
    j.close().unwrap();
    let (j, recovered) = Journal::open(dir.path(), salvage).unwrap();
    assert_eq!(recovered.records.len(), kept + 1);
    assert_eq!(j.read(1000).unwrap(), b"after salvage");
}
