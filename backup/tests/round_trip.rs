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
    std::thread::sleep(std::time::Duration::from_millis(300));
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
