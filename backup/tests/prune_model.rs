//! Prune against a model: random sequences of writes, snapshots, archive rounds and prunes (each prune
//! with a backup running concurrently in another thread). After every step, every snapshot the repository
//! lists verifies (no retained snapshot lost an object), the snapshots a prune's rules keep are still
//! there, and the newest snapshot restores with every record written before it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keel_backup::{
    ArchiveOptions, CreateOptions, Progress, Repo, RestoreOptions, RestorePoint, Retention, VerifyOptions,
};
use keel_journal::{Journal, Options};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write(u64),
    Delete(u64),
    Create,
    Archive,
    Prune { keep_last: Option<usize>, keep_daily: Option<usize>, keep_within_ms: Option<u64> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..400).prop_map(Op::Write),
        1 => (1u64..200).prop_map(Op::Delete),
        3 => Just(Op::Create),
        1 => Just(Op::Archive),
        2 => (proptest::option::of(0usize..4), proptest::option::of(1usize..3), proptest::option::of(0u64..400))
            .prop_filter("a rule", |(a, b, c)| a.is_some() || b.is_some() || c.is_some())
            .prop_map(|(keep_last, keep_daily, keep_within_ms)| Op::Prune { keep_last, keep_daily, keep_within_ms }),
    ]
}

fn create_opts() -> CreateOptions {
    CreateOptions { lease: quick_lease(), parallel: 2, ..Default::default() }
}

fn verify(repo: &Repo) {
    let r = repo.verify(&VerifyOptions { parallel: 4, ..Default::default() }, &Progress::default()).unwrap();
    assert_eq!(r.problems, Vec::<String>::new());
}

fn run(ops: Vec<Op>, backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(open_repo(&store(backend, repo_dir.path())));
    let (journal, _) = Journal::open(data.path(), journal_options(None)).unwrap();
    // The model: live records (id -> payload id) now, and as of each snapshot.
    let mut live = BTreeMap::<u64, ()>::new();
    let mut at_snapshot = BTreeMap::<String, BTreeMap<u64, ()>>::new();
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Write(n) => {
                for _ in 0..n {
                    journal.add(next_id, 1, &payload(next_id)).unwrap();
                    live.insert(next_id, ());
                    next_id += 1;
                }
            }
            Op::Delete(n) => {
                let doomed: Vec<u64> = live.keys().take(n as usize).copied().collect();
                for id in doomed {
                    journal.delete(id).unwrap();
                    live.remove(&id);
                }
            }
            Op::Create => {
                let s = repo.create(data.path(), &create_opts(), &Progress::default()).unwrap();
                at_snapshot.insert(s.id, live.clone());
            }
            Op::Archive => {
                let opts = ArchiveOptions { create: create_opts(), interval: Duration::from_millis(1) };
                let r = repo.archive_once(data.path(), &opts, &Progress::default()).unwrap();
                if let Some(id) = r.snapshot {
                    at_snapshot.insert(id, live.clone());
                }
            }
            Op::Prune { keep_last, keep_daily, keep_within_ms } => {
                let policy = Retention {
                    keep_last,
                    keep_daily,
                    keep_weekly: None,
                    keep_within: keep_within_ms.map(Duration::from_millis),
                };
                let before: Vec<String> = repo.snapshot_names().unwrap().into_iter().rev().map(|l| l.id).collect();
                // A backup runs concurrently with the prune; the lease orders them.
                let concurrent = {
                    let (repo, dir) = (repo.clone(), data.path().to_path_buf());
                    std::thread::spawn(move || repo.create(&dir, &create_opts(), &Progress::default()).unwrap())
                };
                repo.prune(&policy, quick_lease(), false, &Progress::default()).unwrap();
                let extra = concurrent.join().unwrap();
                at_snapshot.insert(extra.id.clone(), live.clone());
                let after: Vec<String> = repo.snapshot_names().unwrap().into_iter().map(|l| l.id).collect();
                // Whatever the order, the newest `keep_last` (at least 1) of those before are kept, unless
                // the concurrent backup ran first and took one of the places.
                let must = keep_last.unwrap_or(0).max(1).saturating_sub(1);
                for id in before.iter().take(must) {
                    assert!(after.contains(id), "prune {policy:?} removed {id}, among the newest {must} before it");
                }
                assert!(after.contains(&extra.id), "the concurrent backup's snapshot was pruned");
                at_snapshot.retain(|id, _| after.contains(id));
            }
        }
        verify(&repo);
    }
    // The newest snapshot restores with exactly what was live when it was taken.
    if let Some(latest) = repo.snapshot_names().unwrap().last() {
        let target = tempfile::tempdir().unwrap();
        let point = RestorePoint::Snapshot(latest.id.clone());
        let r = repo.restore(&point, target.path(), &RestoreOptions::default(), &Progress::default()).unwrap();
        let (_, rec) = Journal::open(&r.journal_dir, journal_options(None)).unwrap();
        let got: Vec<u64> = rec.records.keys().copied().collect();
        let want: Vec<u64> = at_snapshot[&latest.id].keys().copied().collect();
        assert_eq!(got, want);
    }
    drop(journal);
}

fn repo_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        n += if e.path().is_dir() { repo_bytes(&e.path()) } else { e.metadata().unwrap().len() };
    }
    n
}

#[test]
fn prune_removes_old_snapshots_and_the_chunks_only_they_used() {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(Backend::Dir, repo_dir.path()));
    let opts = Options { compaction: Some(Default::default()), ..journal_options(None) };
    let (journal, _) = Journal::open(data.path(), opts).unwrap();
    for round in 0..3u64 {
        // Replace every record: the old segments die and are reclaimed.
        for id in 0..2000 {
            if round > 0 {
                journal.delete(id).unwrap();
            }
            journal.add(id, 1, &payload(id + round)).unwrap();
        }
        journal.reclaim().unwrap();
        repo.create(data.path(), &create_opts(), &Progress::default()).unwrap();
    }
    let before = repo_bytes(repo_dir.path());
    let dry = repo
        .prune(&Retention { keep_last: Some(1), ..Default::default() }, quick_lease(), true, &Progress::default())
        .unwrap();
    assert_eq!(repo_bytes(repo_dir.path()), before, "a dry run deletes nothing");
    let r = repo
        .prune(&Retention { keep_last: Some(1), ..Default::default() }, quick_lease(), false, &Progress::default())
        .unwrap();
    assert_eq!((r.removed_snapshots.len(), r.removed_chunks), (dry.removed_snapshots.len(), dry.removed_chunks));
    assert_eq!(r.removed_snapshots.len(), 2);
    assert!(r.removed_chunks > 0 && r.removed_bytes > 0, "{r:?}");
    assert!(repo_bytes(repo_dir.path()) < before);
    verify(&repo);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 20, ..ProptestConfig::default() })]
    #[test]
    fn prune_never_loses_an_object_of_a_retained_snapshot(ops in proptest::collection::vec(op(), 1..10)) {
        run(ops, Backend::Dir);
    }
}

proptest! {
    // Fewer cases over HTTP: each step is a few hundred requests.
    #![proptest_config(ProptestConfig { cases: 6, max_shrink_iters: 10, ..ProptestConfig::default() })]
    #[test]
    fn prune_never_loses_an_object_on_s3(ops in proptest::collection::vec(op(), 1..8)) {
        for b in backends().into_iter().skip(1) {
            run(ops.clone(), b);
        }
    }
}
