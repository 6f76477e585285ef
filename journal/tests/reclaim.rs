//! Reclaim: dead segments go, live data and pending transactions pin what they need, and nothing deleted
//! comes back after a reopen.

use keel_journal::{Journal, Options, TxId};

const SEG: u64 = 64 * 1024;

fn options() -> Options {
    Options { segment_bytes: SEG, auto_maintenance: false, ..Options::default() }
}

fn segment_files(dir: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".kseg")?.parse().ok())
        .collect();
    v.sort();
    v
}

#[test]
fn a_queue_that_drains_frees_its_segments_and_lsns_keep_rising() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options()).unwrap();
    let body = vec![7u8; 4000];
    for id in 0..100 {
        j.add(id, 1, &body).unwrap();
    }
    for id in 0..90 {
        j.delete(id).unwrap();
    }
    let before = segment_files(dir.path());
    let report = j.reclaim().unwrap();
    assert!(report.segments.len() >= 4, "most of ~7 segments are dead: {report:?}");
    let after = segment_files(dir.path());
    assert_eq!(after.len(), before.len() - report.segments.len());
    for id in 90..100 {
        assert_eq!(j.read(id).unwrap(), body);
    }
    let last = j.sync().unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(rec.records.keys().copied().collect::<Vec<_>>(), (90..100).collect::<Vec<_>>());
    assert!(j.add(1000, 0, b"x").unwrap() > last, "LSNs continue past the reclaimed segments");
}

#[test]
fn one_live_record_pins_its_segment_and_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options()).unwrap();
    let body = vec![1u8; 4000];
    for id in 0..60 {
        j.add(id, 1, &body).unwrap();
    }
    for id in 1..60 {
        j.delete(id).unwrap();
    }
    // Record 0 lives in the first segment: nothing can go.
    assert!(j.reclaim().unwrap().segments.is_empty());
    let (live, bound) = j.live_by_segment();
    assert_eq!(live.values().map(|s| s.records).sum::<u64>(), 1);
    assert_eq!(bound, None);
    j.delete(0).unwrap();
    assert!(!j.reclaim().unwrap().segments.is_empty());
}

#[test]
fn a_transaction_spanning_segments_is_reclaimed_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), options()).unwrap();
    let body = vec![2u8; 4000];
    j.add(1, 1, b"x").unwrap();
    // Fill the first segment so the transaction starts in the second.
    for id in 100..116 {
        j.add(id, 1, &body).unwrap();
        j.delete(id).unwrap();
    }
    let tx = TxId::new(5).unwrap();
    j.delete_tx(tx, 1).unwrap();
    // Record 1 gets a newer version in a later segment while its delete is staged.
    for id in 200..216 {
        j.add(id, 1, &body).unwrap();
        j.delete(id).unwrap();
    }
    j.update(1, 1, b"newer").unwrap();
    for id in 300..332 {
        j.add(id, 1, &body).unwrap();
        j.delete(id).unwrap();
    }
    // Prepared and open: it pins the segment of its first frame.
    j.prepare(tx, b"xid").unwrap();
    let pinned = j.reclaim().unwrap();
    let (_, bound) = j.live_by_segment();
    assert!(bound.is_none() || pinned.segments.iter().all(|s| *s < 2), "{pinned:?}");
    j.commit(tx).unwrap();
    for id in 400..432 {
        j.add(id, 1, &body).unwrap();
        j.delete(id).unwrap();
    }
    j.reclaim().unwrap();
    drop(j);
    let (_j, rec) = Journal::open(dir.path(), options()).unwrap();
    assert!(rec.records.is_empty(), "the committed delete of record 1 holds: {:?}", rec.records);
    assert!(rec.prepared.is_empty());
}

#[test]
fn reclaim_runs_by_itself_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { auto_maintenance: true, ..options() };
    let (j, _) = Journal::open(dir.path(), opts).unwrap();
    let body = vec![3u8; 4000];
    for id in 0..200 {
        j.add(id, 1, &body).unwrap();
        j.delete(id).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while segment_files(dir.path()).len() > 4 {
        assert!(std::time::Instant::now() < deadline, "segments left: {:?}", segment_files(dir.path()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A journal whose head was reclaimed: segments 1.. gone, the horizon file written.
fn reclaimed_journal(dir: &std::path::Path) -> u64 {
    let (j, _) = Journal::open(dir, options()).unwrap();
    let body = vec![5u8; 4000];
    for id in 0..100 {
        j.add(id, 1, &body).unwrap();
    }
    for id in 0..95 {
        j.delete(id).unwrap();
    }
    let r = j.reclaim().unwrap();
    assert!(!r.segments.is_empty());
    *r.segments.last().unwrap()
}

#[test]
fn a_damaged_or_foreign_reclaim_horizon_stops_a_strict_open_and_salvage_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    reclaimed_journal(dir.path());
    let horizon = dir.path().join("RECLAIMED");
    let good = std::fs::read(&horizon).unwrap();
    let mut bad = good.clone();
    bad[33] ^= 1;
    std::fs::write(&horizon, &bad).unwrap();
    let e = Journal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(e, keel_journal::OpenError::Horizon { .. }), "{e}");
    assert!(e.to_string().contains("RECLAIMED") && e.to_string().contains("checksum"), "{e}");
    let salvage = Options { recovery: keel_journal::RecoveryMode::Salvage, ..options() };
    let (j, rec) = Journal::open(dir.path(), salvage).unwrap();
    assert_eq!(rec.records.keys().copied().collect::<Vec<_>>(), (95..100).collect::<Vec<_>>());
    drop(j);
    // A horizon copied from another journal is named as foreign.
    let other = tempfile::tempdir().unwrap();
    reclaimed_journal(other.path());
    std::fs::copy(other.path().join("RECLAIMED"), &horizon).unwrap();
    let e = Journal::open(dir.path(), options()).unwrap_err();
    assert!(e.to_string().contains("another journal"), "{e}");
}

#[test]
fn a_head_segment_missing_above_the_horizon_is_corruption_not_a_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    let horizon = reclaimed_journal(dir.path());
    let next = dir.path().join(format!("{:020}.kseg", horizon + 1));
    std::fs::remove_file(&next).unwrap();
    let e = Journal::open(dir.path(), options()).unwrap_err();
    match e {
        keel_journal::OpenError::Corrupt(c) => {
            assert!(
                matches!(c.what, keel_journal::CorruptionKind::MissingSegment { expected, .. } if expected == horizon + 1),
                "{c}"
            )
        }
        other => panic!("expected a missing segment, got {other}"),
    }
}
