//! Regression tests of backup defects (issue 24), each failing before its fix.

mod common;

use common::*;
use keel_backup::{CreateOptions, Progress, RestoreOptions, RestorePoint};
use keel_journal::Journal;

/// A data directory whose journal holds records `0..n`, and a repository with a snapshot of it.
fn journal_with_snapshot(n: u64) -> (tempfile::TempDir, tempfile::TempDir, keel_backup::Repo) {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(Backend::Dir, repo_dir.path()));
    let (j, _) = Journal::open(data.path(), journal_options(None)).unwrap();
    for id in 0..n {
        j.add(id, 1, &payload(id)).unwrap();
    }
    j.close().unwrap();
    let opts = CreateOptions { lease: quick_lease(), ..Default::default() };
    repo.create(data.path(), &opts, &Progress::default()).unwrap();
    (data, repo_dir, repo)
}

/// Defect 8: `restore --force` into a non-empty directory left the old journal's later segments,
/// checkpoints and reclaim horizon beside the restored files.
#[test]
fn restore_with_force_replaces_the_old_contents() {
    let (data, _repo_dir, repo) = journal_with_snapshot(100);

    // The journal moves on: more segments, deletes, a reclaim, a checkpoint at close.
    let (j, _) = Journal::open(data.path(), journal_options(None)).unwrap();
    for id in 100..1500 {
        j.add(id, 1, &payload(id)).unwrap();
    }
    for id in 0..50 {
        j.delete(id).unwrap();
    }
    j.reclaim().unwrap();
    j.close().unwrap();
    std::fs::write(data.path().join("not-ours"), b"a file the restore must not keep").unwrap();

    let ropts = RestoreOptions { force: true, ..Default::default() };
    let r = repo.restore(&RestorePoint::Snapshot("latest".into()), data.path(), &ropts, &Progress::default()).unwrap();
    let (j, recovered) = Journal::open(&r.journal_dir, journal_options(None)).expect("the restored journal opens");
    assert_eq!(recovered.records.keys().copied().collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
    for id in [0, 57, 99] {
        assert_eq!(j.read(id).unwrap(), payload(id));
    }
    drop(j);
    let names: Vec<String> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "not-ours" || n.starts_with(".keel-replaced")), "{names:?}");
}

/// Found in review: `--force` emptied the target before the restore point was resolved, so a mistyped
/// snapshot left the live journal's directory empty; and a move aside cut short was taken as complete.
#[test]
fn restore_with_force_touches_nothing_until_the_point_resolves_and_finishes_an_interrupted_move() {
    let (_data, _repo_dir, repo) = journal_with_snapshot(20);
    let ropts = RestoreOptions { force: true, ..Default::default() };
    let listing = |p: &std::path::Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };

    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("old-a"), b"a").unwrap();
    std::fs::write(target.path().join("old-b"), b"b").unwrap();
    let before = listing(target.path());
    let bad =
        repo.restore(&RestorePoint::Snapshot("no-such-snapshot".into()), target.path(), &ropts, &Progress::default());
    assert!(bad.is_err());
    assert_eq!(listing(target.path()), before, "a restore point that does not resolve moves nothing");

    // A move aside cut short: one entry moved, one not.
    std::fs::create_dir(target.path().join(".keel-replacing")).unwrap();
    std::fs::rename(target.path().join("old-a"), target.path().join(".keel-replacing/old-a")).unwrap();
    let r =
        repo.restore(&RestorePoint::Snapshot("latest".into()), target.path(), &ropts, &Progress::default()).unwrap();
    let names = listing(target.path());
    assert!(!names.iter().any(|n| n.starts_with("old-") || n.starts_with(".keel-")), "{names:?}");
    let (_, recovered) = Journal::open(&r.journal_dir, journal_options(None)).unwrap();
    assert_eq!(recovered.records.len(), 20);
}

/// Issue 24, defect 9: `archive` trusted the chunk list of its previous entry for a segment, so after
/// `verify --remove-damaged` deleted damaged chunks, the next entry named them again (never stored
/// again) and a restore from it failed. Chunk lists made before a removal are no longer trusted.
#[test]
fn archive_after_removing_damaged_chunks_stores_them_again() {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(Backend::Dir, repo_dir.path()));
    let aopts = keel_backup::ArchiveOptions {
        create: CreateOptions { lease: quick_lease(), ..Default::default() },
        interval: std::time::Duration::ZERO,
    };
    // Segments larger than a chunk, and a writer that stays open, so that the open segment's first chunk
    // is the same from one round to the next.
    let jopts = keel_journal::Options { segment_bytes: 16 << 20, ..journal_options(None) };
    let (j, _) = Journal::open(data.path(), jopts).unwrap();
    let append = |ids: std::ops::Range<u64>| {
        for id in ids {
            j.add(id, 1, &vec![id as u8; 4000]).unwrap();
        }
    };
    // Two rounds, so that the open segment has an entry of its own.
    for ids in [0..1200, 1200..1210] {
        append(ids);
        repo.archive_once(data.path(), &aopts, &Progress::default()).unwrap();
    }

    // Every stored chunk damaged, then removed by verify.
    fn chunk_files(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                chunk_files(&p, out);
            } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    let mut chunks = Vec::new();
    chunk_files(&repo_dir.path().join("repo/data"), &mut chunks);
    assert!(!chunks.is_empty());
    let sizes: std::collections::HashMap<_, _> =
        chunks.iter().map(|c| (c.clone(), std::fs::metadata(c).unwrap().len())).collect();
    for c in &chunks {
        let mut b = std::fs::read(c).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        std::fs::write(c, b).unwrap();
    }
    let vopts = keel_backup::VerifyOptions {
        read_data: true,
        remove_damaged: true,
        lease: quick_lease(),
        ..Default::default()
    };
    let report = repo.verify(&vopts, &Progress::default()).unwrap();
    assert!(!report.removed.is_empty(), "{report:?}");

    // The open segment's first chunk (a whole 4 MiB, the same in every round) is among the removed.
    let big: Vec<_> = chunks.iter().filter(|c| sizes[*c] >= 4 << 20).collect();
    assert_eq!(big.len(), 1, "one full chunk");
    let big = big[0].clone();
    assert!(!big.exists(), "removed");

    // The open segment grows; the next round archives it again, from its start: its first chunk must be
    // stored again rather than named from the previous entry.
    append(1210..1220);
    repo.archive_once(data.path(), &aopts, &Progress::default()).unwrap();
    assert!(big.exists(), "the first chunk of the open segment was stored again");
}
