//! Backups of a journal that writers keep appending to, restored: every record acknowledged before the
//! backup began is there, nothing after the cut is. On a directory and on the in-process S3 server.

mod common;

use common::*;
use keel_backup::{CreateOptions, Progress, RestoreOptions, RestorePoint};

fn round_trip_under_load(backend: Backend, encrypted: bool) {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let store = store(backend, repo_dir.path());
    let repo = open_repo(&store);
    let jkeys = encrypted.then(journal_key);
    let load = Load::start(data.path(), jkeys.clone(), 3);
    load.wait_for_sealed_segments(1);
    let opts = CreateOptions { journal_keys: jkeys.clone(), lease: quick_lease(), ..Default::default() };
    let mut snaps = Vec::new();
    for _ in 0..3 {
        let before = load.snapshot_of_acked();
        let s = repo.create(data.path(), &opts, &Progress::default()).unwrap();
        assert!(s.new_bytes <= s.total_bytes + s.files.len() as u64 * 64);
        snaps.push((s, before));
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    load.stop();
    // The second and third snapshots store only what changed.
    assert!(
        snaps[1].0.new_bytes < snaps[1].0.total_bytes,
        "no deduplication: {} of {}",
        snaps[1].0.new_bytes,
        snaps[1].0.total_bytes
    );
    for (s, before) in &snaps {
        let target = tempfile::tempdir().unwrap();
        let r = repo
            .restore(
                &RestorePoint::Snapshot(s.id.clone()),
                target.path(),
                &RestoreOptions::default(),
                &Progress::default(),
            )
            .unwrap();
        assert_eq!(r.next_lsn, s.next_lsn);
        let n = check_restored(&r.journal_dir, jkeys.clone(), before, s.next_lsn);
        assert!(n >= before.len());
    }
}

#[test]
fn round_trip_under_load_on_a_directory() {
    round_trip_under_load(Backend::Dir, false);
}

#[test]
fn round_trip_under_load_on_s3() {
    for b in backends().into_iter().skip(1) {
        round_trip_under_load(b, false);
    }
}

#[test]
fn round_trip_of_an_encrypted_journal_keeps_its_segments_sealed() {
    round_trip_under_load(Backend::Dir, true);
}

#[test]
fn a_snapshot_after_a_rekey_stores_the_rewritten_segments_and_restores_under_the_new_key() {
    use keel_journal::crypto::keys::KeyRing;
    let k1 = format!("1:{}", "11".repeat(32));
    let k2 = format!("2:{}", "22".repeat(32));
    let old = KeyRing::parse(&k1, "k").unwrap();
    let both = KeyRing::parse(&format!("{k1}\n{k2}"), "k").unwrap();
    let new_only = KeyRing::parse(&k2, "k").unwrap();
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(Backend::Dir, repo_dir.path()));
    let (j, _) = keel_journal::Journal::open(data.path(), journal_options(Some(old.clone()))).unwrap();
    for id in 0..3000 {
        j.add(id, 1, &payload(id)).unwrap();
    }
    j.close().unwrap();
    let opts =
        |keys: &KeyRing| CreateOptions { journal_keys: Some(keys.clone()), lease: quick_lease(), ..Default::default() };
    let s1 = repo.create(data.path(), &opts(&old), &Progress::default()).unwrap();
    // Unchanged: the second snapshot stores nothing new (sealed segments reused without reading).
    let s2 = repo.create(data.path(), &opts(&old), &Progress::default()).unwrap();
    assert_eq!(s2.new_bytes, 0);
    assert_eq!(s2.files, s1.files);
    // Rekeyed: every segment file was rewritten with a new header; the old key can go.
    let (j, _) = keel_journal::Journal::open(data.path(), journal_options(Some(both.clone()))).unwrap();
    j.rekey().unwrap();
    j.close().unwrap();
    let s3 = repo.create(data.path(), &opts(&new_only), &Progress::default()).unwrap();
    assert!(s3.new_bytes > 0, "rewritten segments were not read again");
    for f in s3.files.iter().filter(|f| f.segment.is_some()) {
        let before = s1.files.iter().find(|g| g.path == f.path).unwrap();
        assert_ne!(f.chunks[0], before.chunks[0], "{}: the header chunk is the old one", f.path);
    }
    let target = tempfile::tempdir().unwrap();
    let ropts = RestoreOptions { journal_keys: Some(new_only.clone()), ..Default::default() };
    let r = repo.restore(&RestorePoint::Snapshot(s3.id.clone()), target.path(), &ropts, &Progress::default()).unwrap();
    let (j, rec) = keel_journal::Journal::open(&r.journal_dir, journal_options(Some(new_only))).unwrap();
    assert_eq!(rec.records.len(), 3000);
    assert_eq!(j.read(1234).unwrap(), payload(1234));
}
