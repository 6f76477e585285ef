//! SIGKILL in the middle of `create`, `archive` and `prune`: this test binary runs itself again as a child
//! (`KEEL_BACKUP_CHILD` set) that performs the operation and is killed at a named step
//! (`KEEL_CRASH_AT`). Afterwards the repository is consistent (every snapshot it lists verifies), the
//! crashed run's lease expires on its own, and the next run completes and restores.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use keel_backup::{
    ArchiveOptions, CreateOptions, Progress, Repo, RestoreOptions, RestorePoint, Retention, VerifyOptions,
};

const CHILD: &str = "KEEL_BACKUP_CHILD";

fn child_lease() -> keel_backup::LeaseOptions {
    keel_backup::LeaseOptions { ttl: Duration::from_secs(2), wait: Duration::from_secs(30) }
}

fn child_repo(spec: &StoreSpec) -> Repo {
    open_repo(&spec.connect())
}

/// The child: `op data_dir repo_dir` in `KEEL_BACKUP_CHILD`.
#[test]
fn child_operation() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let mut parts = spec.split('|');
    let (op, data, spec) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let repo = child_repo(&StoreSpec::decode(spec));
    let create = CreateOptions { lease: child_lease(), parallel: 2, ..Default::default() };
    match op {
        "create" => {
            repo.create(Path::new(data), &create, &Progress::default()).unwrap();
        }
        "archive" => {
            let opts = ArchiveOptions { create, interval: Duration::from_millis(10) };
            repo.archive_once(Path::new(data), &opts, &Progress::default()).unwrap();
        }
        "restore" => {
            let target = Path::new(data).join("restore");
            let opts = RestoreOptions { force: true, parallel: 2, ..Default::default() };
            repo.restore(&RestorePoint::Snapshot("latest".into()), &target, &opts, &Progress::default()).unwrap();
        }
        "prune" => {
            let keep = Retention { keep_last: Some(1), ..Default::default() };
            repo.prune(&keep, child_lease(), false, &Progress::default()).unwrap();
        }
        _ => unreachable!(),
    }
    println!("done");
}

/// Runs `op` in a child killed at `crash_at`; returns whether it was killed (rather than finishing).
fn run_child(op: &str, data: &Path, spec: &StoreSpec, crash_at: &str) -> bool {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["child_operation", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{op}|{}|{}", data.display(), spec.encode()))
        .env("KEEL_CRASH_AT", crash_at)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(9) => true,
        None if status.success() => false,
        _ => panic!("child {op} at {crash_at}: {status:?}"),
    }
}

fn assert_consistent(repo: &Repo) {
    let report = repo
        .verify(&VerifyOptions { read_data: true, parallel: 4, ..Default::default() }, &Progress::default())
        .unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}

fn write_some(data: &Path, from: u64, n: u64) {
    let (j, _) = keel_journal::Journal::open(data, journal_options(None)).unwrap();
    for id in from..from + n {
        j.add(id, 1, &payload(id)).unwrap();
    }
    j.close().unwrap();
}

fn killed_create(backend: Backend) {
    for (point, makes_snapshot) in
        [("backup-chunk-stored:2", false), ("backup-before-manifest", false), ("backup-manifest-written", true)]
    {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let spec = new_store(backend, repo_dir.path());
        write_some(data.path(), 0, 3000);
        assert!(run_child("create", data.path(), &spec, point), "{point}: the child was not killed");
        let repo = child_repo(&spec);
        assert_eq!(repo.snapshot_names().unwrap().len(), usize::from(makes_snapshot), "{point}");
        assert_consistent(&repo);
        // The next run waits out the dead child's lease (2 s), reuses its chunks, and completes.
        write_some(data.path(), 3000, 500);
        let began = std::time::Instant::now();
        let opts = CreateOptions { lease: child_lease(), ..Default::default() };
        let snap = repo.create(data.path(), &opts, &Progress::default()).unwrap();
        assert!(began.elapsed() < Duration::from_secs(20), "{point}: a dead lease blocked for {:?}", began.elapsed());
        assert!(snap.new_bytes < snap.total_bytes, "{point}: the crashed run's chunks were not reused");
        assert_consistent(&repo);
        let target = tempfile::tempdir().unwrap();
        let r = repo
            .restore(
                &RestorePoint::Snapshot("latest".into()),
                target.path(),
                &RestoreOptions::default(),
                &Progress::default(),
            )
            .unwrap();
        let (_, rec) = keel_journal::Journal::open(&r.journal_dir, journal_options(None)).unwrap();
        assert_eq!(rec.records.len(), 3500, "{point}");
    }
}

#[test]
fn a_killed_create_leaves_the_repository_consistent_and_the_next_run_completes() {
    killed_create(Backend::Dir);
}

#[test]
fn a_killed_create_on_s3_leaves_the_repository_consistent_and_the_next_run_completes() {
    for b in backends().into_iter().skip(1) {
        killed_create(b);
    }
}

/// A data directory of `records` records and a directory repository holding one snapshot of it, made with
/// the lease the child processes use.
struct Snapshotted {
    data: tempfile::TempDir,
    _repo_dir: tempfile::TempDir,
    spec: StoreSpec,
    repo: Repo,
    create: CreateOptions,
}

fn snapshotted(records: u64) -> Snapshotted {
    let data = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let spec = new_store(Backend::Dir, repo_dir.path());
    write_some(data.path(), 0, records);
    let repo = child_repo(&spec);
    let create = CreateOptions { lease: child_lease(), ..Default::default() };
    repo.create(data.path(), &create, &Progress::default()).unwrap();
    Snapshotted { data, _repo_dir: repo_dir, spec, repo, create }
}

#[test]
fn a_killed_archive_or_prune_leaves_the_repository_consistent() {
    let Snapshotted { data, _repo_dir, spec, repo, create } = snapshotted(2000);
    write_some(data.path(), 2000, 2000);
    assert!(run_child("archive", data.path(), &spec, "backup-archive-entry-written"));
    assert_consistent(&repo);
    let opts = ArchiveOptions { create: create.clone(), interval: Duration::from_millis(10) };
    repo.archive_once(data.path(), &opts, &Progress::default()).unwrap();
    assert_consistent(&repo);
    // Everything written is reachable by point-in-time restore.
    let target = tempfile::tempdir().unwrap();
    let r = repo.restore(&RestorePoint::Lsn(3999), target.path(), &RestoreOptions::default(), &Progress::default());
    let r = r.unwrap();
    let (_, rec) = keel_journal::Journal::open(&r.journal_dir, journal_options(None)).unwrap();
    let (_, source) = keel_journal::Journal::open(data.path(), journal_options(None)).unwrap();
    let want = source.records.values().filter(|r| r.lsn.0 <= 3999).count();
    assert!(want > 3900);
    assert_eq!(rec.records.len(), want);
    // Three more snapshots, then a prune killed after its first batch of deletes.
    for k in 0..3 {
        write_some(data.path(), 4000 + k * 300, 300);
        repo.create(data.path(), &create, &Progress::default()).unwrap();
    }
    assert!(run_child("prune", data.path(), &spec, "backup-prune-batch-deleted"));
    assert_consistent(&repo);
    let keep = Retention { keep_last: Some(1), ..Default::default() };
    repo.prune(&keep, child_lease(), false, &Progress::default()).unwrap();
    assert_eq!(repo.snapshot_names().unwrap().len(), 1);
    assert_consistent(&repo);
}

#[test]
fn a_killed_restore_is_finished_by_running_it_again() {
    let Snapshotted { data: _data, _repo_dir, spec, repo, .. } = snapshotted(3000);
    let scratch = tempfile::tempdir().unwrap();
    assert!(run_child("restore", scratch.path(), &spec, "backup-restore-chunk-written:2"));
    let target = scratch.path().join("restore");
    // Half a restore is not a journal the broker should start on...
    let point = RestorePoint::Snapshot("latest".into());
    match repo.restore(&point, &target, &RestoreOptions::default(), &Progress::default()) {
        Err(keel_backup::BackupError::TargetNotEmpty { .. }) => {}
        other => panic!("a restore into the half-restored target: {other:?}"),
    }
    // ...and `--force` finishes it.
    let forced = RestoreOptions { force: true, ..Default::default() };
    let r = repo.restore(&point, &target, &forced, &Progress::default()).unwrap();
    let (j, rec) = keel_journal::Journal::open(&r.journal_dir, journal_options(None)).unwrap();
    assert_eq!(rec.records.len(), 3000);
    assert_eq!(j.read(2999).unwrap(), payload(2999));
}
