//! Point-in-time restore from a snapshot and the archive: restores to several LSNs and times each hold
//! exactly the records up to that point, plaintext and encrypted, on a directory and on S3.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use keel_backup::{ArchiveOptions, BackupError, CreateOptions, Progress, RestoreOptions, RestorePoint};
use keel_journal::TxId;

fn point_in_time(backend: Backend, encrypted: bool) {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(backend, repo_dir.path()));
    let jkeys = encrypted.then(journal_key);
    let load = Load::start(data.path(), jkeys.clone(), 2);
    let opts = ArchiveOptions {
        create: CreateOptions { journal_keys: jkeys.clone(), lease: quick_lease(), ..Default::default() },
        interval: Duration::from_millis(100),
    };
    // A transaction that commits after the archive's first rounds: a cut before its commit leaves it out.
    let tx = TxId::new(77).unwrap();
    let mut tx_lsns = None;
    // Rounds: (time after the round, its cut).
    let mut rounds = Vec::new();
    let mut acked_at_first_round = 0;
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(120));
        if i == 7 {
            // Enough was written between the first cut and the last for the cuts in between to differ.
            load.wait_for_acked(acked_at_first_round + 150);
        }
        if i == 2 {
            let add = load.journal.add_tx(tx, 1 << 50, 1, b"tx record").unwrap();
            let commit = load.journal.commit(tx).unwrap();
            tx_lsns = Some((add.0, commit.0));
        }
        let r = repo.archive_once(data.path(), &opts, &Progress::default()).unwrap();
        assert_eq!(r.snapshot.is_some(), i == 0, "round {i}: a base snapshot only first");
        std::thread::sleep(Duration::from_millis(5));
        rounds.push((keel_backup_now(), r.next_lsn));
        if i == 0 {
            acked_at_first_round = load.acked.lock().unwrap().len();
        }
    }
    let journal = load.stop();
    // Every acknowledged add, by LSN.
    let by_lsn: BTreeMap<u64, u64> = {
        let mut m = BTreeMap::new();
        journal.for_each_record(|id, r| {
            m.insert(r.lsn.0, id);
        });
        m
    };
    drop(journal);
    let (tx_add, tx_commit) = tx_lsns.unwrap();
    let first_cut = rounds[0].1;
    let last_cut = rounds.last().unwrap().1;
    assert!(last_cut > first_cut + 100, "the load wrote too little: {first_cut}..{last_cut}");
    let ropts = RestoreOptions { journal_keys: jkeys.clone(), ..Default::default() };
    let expect_upto = |n: u64| -> Vec<u64> {
        let mut ids: Vec<u64> = by_lsn.range(..=n).map(|(_, id)| *id).filter(|id| *id != 1 << 50).collect();
        ids.sort();
        ids
    };
    let check = |point: RestorePoint, n: u64| {
        let target = tempfile::tempdir().unwrap();
        let r = repo
            .restore(&point, target.path(), &ropts, &Progress::default())
            .unwrap_or_else(|e| panic!("{point:?}: {e}"));
        assert_eq!(r.next_lsn, n + 1, "{point:?}");
        let (j, rec) = keel_journal::Journal::open(&r.journal_dir, journal_options(jkeys.clone())).unwrap();
        let mut got: Vec<u64> = rec.records.keys().copied().filter(|id| *id != 1 << 50).collect();
        got.sort();
        assert_eq!(got, expect_upto(n), "{point:?}");
        assert_eq!(rec.records.contains_key(&(1 << 50)), n >= tx_commit, "{point:?}: the transaction");
        for id in got.iter().take(50) {
            assert_eq!(j.read(*id).unwrap(), payload(*id));
        }
    };
    // Inside the base snapshot, across archived segments, at a transaction's edges, at the very end.
    let mid = (first_cut + last_cut) / 2;
    for n in [first_cut - 1, first_cut / 2 + 1, first_cut + 1, mid, tx_add, tx_commit - 1, tx_commit, last_cut - 1] {
        check(RestorePoint::Lsn(n), n);
    }
    for (t, cut) in &rounds[1..] {
        check(RestorePoint::Time(*t), cut - 1);
    }
    let target = tempfile::tempdir().unwrap();
    match repo.restore(&RestorePoint::Lsn(last_cut + 10), target.path(), &ropts, &Progress::default()) {
        Err(BackupError::PointInTime { why, .. }) => assert!(why.contains("archived window ends at LSN"), "{why}"),
        other => panic!("restore past the archive: {other:?}"),
    }
    match repo.restore(&RestorePoint::Time(1000), tempfile::tempdir().unwrap().path(), &ropts, &Progress::default()) {
        Err(BackupError::PointInTime { why, .. }) => assert!(why.contains("no snapshot or archive point"), "{why}"),
        other => panic!("restore to 1970: {other:?}"),
    }
}

fn keel_backup_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn point_in_time_on_a_directory() {
    point_in_time(Backend::Dir, false);
}

#[test]
fn point_in_time_of_an_encrypted_journal() {
    point_in_time(Backend::Dir, true);
}

#[test]
fn point_in_time_on_s3() {
    for b in backends().into_iter().skip(1) {
        point_in_time(b, false);
    }
}
