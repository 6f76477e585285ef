//! A missing, truncated or tampered object makes `verify` and `restore` fail naming it; a wrong key is a
//! clear error; drills succeed, and fail with the right reason and metrics. On a directory and on S3.

mod common;

use common::*;
use keel_backup::{
    BackupError, Create, CreateOptions, DrillFailure, DrillOptions, Progress, Repo, RestoreOptions, RestorePoint,
    Snapshot, VerifyOptions,
};
use keel_s3::{AnyStore, ObjectStore, PutBody, PutCondition};

/// A repository with one snapshot of a small journal.
fn backed_up(backend: Backend, dir: &std::path::Path) -> (AnyStore, Repo, Snapshot, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let load = Load::start(data.path(), None, 2);
    load.wait_for_sealed_segments(1);
    load.stop();
    let store = store(backend, dir);
    let repo = open_repo(&store);
    let opts = CreateOptions { lease: quick_lease(), ..Default::default() };
    let snap = repo.create(data.path(), &opts, &Progress::default()).unwrap();
    (store, repo, snap, data)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn a_chunk(snap: &Snapshot) -> String {
    let c = snap.files.iter().flat_map(|f| &f.chunks).find(|c| c.id.is_some()).unwrap();
    format!("repo/{}", c.object_name().unwrap())
}

fn restore_err(repo: &Repo, snap: &Snapshot) -> String {
    let target = tempfile::tempdir().unwrap();
    let e = repo
        .restore(
            &RestorePoint::Snapshot(snap.id.clone()),
            target.path(),
            &RestoreOptions::default(),
            &Progress::default(),
        )
        .unwrap_err();
    e.to_string()
}

fn verify_problems(repo: &Repo, read_data: bool) -> Vec<String> {
    repo.verify(&VerifyOptions { read_data, parallel: 4, ..Default::default() }, &Progress::default()).unwrap().problems
}

fn damage_suite(backend: Backend) {
    // Sound: verify finds nothing, a drill succeeds.
    let dir = tempfile::tempdir().unwrap();
    let (store, repo, snap, data) = backed_up(backend, dir.path());
    assert_eq!(verify_problems(&repo, true), Vec::<String>::new());
    let scratch = tempfile::tempdir().unwrap();
    let report = repo.drill(&scratch.path().join("drill"), &DrillOptions::default(), &Progress::default());
    assert!(report.ok, "{report:?}");
    assert_eq!(report.frames, report.expected_frames);
    assert!(report.records > 0 && report.restore_bytes > 0);
    let metrics = report.prometheus();
    assert!(metrics.contains("keel_drill_success{repository=") && metrics.contains("} 1\n"), "{metrics}");
    assert!(metrics.contains("reason=\"damaged\"} 0"), "{metrics}");

    // Missing chunk.
    let key = a_chunk(&snap);
    let saved = rt().block_on(async { store.get(&key).await.unwrap().bytes().await.unwrap() });
    rt().block_on(store.delete(&key)).unwrap();
    let problems = verify_problems(&repo, false);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&key) && problems[0].contains("missing"), "{problems:?}");
    let e = restore_err(&repo, &snap);
    assert!(e.contains(&key), "{e}");
    let report = repo.drill(&scratch.path().join("drill-missing"), &DrillOptions::default(), &Progress::default());
    assert_eq!(report.failure, Some(DrillFailure::Damaged), "{report:?}");
    assert!(
        report.prometheus().contains("keel_drill_success{repository=")
            && report.prometheus().contains("reason=\"damaged\"} 1")
    );
    assert!(report.error.as_deref().unwrap().contains(&key));

    // Truncated chunk (rewritten through the store, so that the store's own checksum passes: only
    // the repository's checks can catch it).
    let put =
        |bytes: Vec<u8>| rt().block_on(store.put(&key, PutBody::Bytes(bytes.into()), PutCondition::None)).unwrap();
    put(saved[..saved.len() - 100].to_vec());
    let problems = verify_problems(&repo, false);
    assert!(problems.len() == 1 && problems[0].contains(&key), "{problems:?}");
    assert!(restore_err(&repo, &snap).contains(&key));

    // Tampered chunk: same size, one byte changed; found by reading it.
    let mut tampered = saved.to_vec();
    tampered[saved.len() / 2] ^= 0x01;
    put(tampered);
    assert_eq!(verify_problems(&repo, false), Vec::<String>::new(), "existence and size are intact");
    let problems = verify_problems(&repo, true);
    assert!(
        problems.len() == 1 && problems[0].contains(&key) && problems[0].contains("authentication"),
        "{problems:?}"
    );
    let e = restore_err(&repo, &snap);
    assert!(e.contains(&key) && e.contains("authentication"), "{e}");
    // Heal: remove the damaged chunk, then store it again from the data, which still has those bytes.
    let heal = VerifyOptions {
        read_data: true,
        remove_damaged: true,
        parallel: 4,
        lease: quick_lease(),
        ..Default::default()
    };
    let r = repo.verify(&heal, &Progress::default()).unwrap();
    assert_eq!(r.removed, vec![key.clone()]);
    let problems = verify_problems(&repo, false);
    assert!(problems.len() == 1 && problems[0].contains("missing"), "{problems:?}");
    let again = CreateOptions { check_all: true, lease: quick_lease(), ..Default::default() };
    repo.create(data.path(), &again, &Progress::default()).unwrap();
    assert_eq!(verify_problems(&repo, true), Vec::<String>::new(), "the first snapshot is whole again");
    let restored = tempfile::tempdir().unwrap();
    repo.restore(
        &RestorePoint::Snapshot(snap.id.clone()),
        restored.path(),
        &RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(rt().block_on(async { store.get(&key).await.unwrap().bytes().await.unwrap() }).len(), saved.len());

    // Tampered manifest.
    let mkey = format!("repo/{}", snap.object_name());
    let manifest = rt().block_on(async { store.get(&mkey).await.unwrap().bytes().await.unwrap() });
    let mut bad = manifest.to_vec();
    bad[40] ^= 0x80;
    rt().block_on(store.put(&mkey, PutBody::Bytes(bad.into()), PutCondition::None)).unwrap();
    let problems = verify_problems(&repo, false);
    assert!(problems.iter().any(|p| p.contains(&mkey)), "{problems:?}");
    assert!(restore_err(&repo, &snap).contains(&mkey));
    rt().block_on(store.put(&mkey, PutBody::Bytes(manifest), PutCondition::None)).unwrap();

    // Wrong key: a clear error at open, before anything is read; a drill reports `key`.
    let wrong = keel_journal::crypto::keys::KeyRing::parse(&format!("1:{}", "cd".repeat(32)), "wrong").unwrap();
    match Repo::open_in(store.clone(), "repo", wrong.clone(), Create::Never) {
        Err(BackupError::WrongKey { key_id: 1, .. }) => {}
        other => panic!("wrong key: {other:?}"),
    }
    let other_id = keel_journal::crypto::keys::KeyRing::parse(&format!("2:{}", "cd".repeat(32)), "wrong").unwrap();
    match Repo::open_in(store.clone(), "repo", other_id, Create::Never) {
        Err(BackupError::KeyMissing { key_id: 1, .. }) => {}
        other => panic!("key not in ring: {other:?}"),
    }
    assert_eq!(
        DrillFailure::of(&Repo::open_in(store.clone(), "repo", wrong, Create::Never).unwrap_err()),
        DrillFailure::Key
    );
    // No repository at all.
    match Repo::open_in(store.clone(), "elsewhere", repo_key(), Create::Never) {
        Err(BackupError::NoRepository { .. }) => {}
        other => panic!("no repository: {other:?}"),
    }
}

#[test]
fn damage_on_a_directory() {
    damage_suite(Backend::Dir);
}

#[test]
fn damage_on_s3() {
    for b in backends().into_iter().skip(1) {
        damage_suite(b);
    }
}

#[test]
fn restore_refuses_a_non_empty_target_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, repo, snap, _data) = backed_up(Backend::Dir, dir.path());
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("something"), b"x").unwrap();
    let point = RestorePoint::Snapshot(snap.id.clone());
    match repo.restore(&point, target.path(), &RestoreOptions::default(), &Progress::default()) {
        Err(BackupError::TargetNotEmpty { .. }) => {}
        other => panic!("{other:?}"),
    }
    let forced = RestoreOptions { force: true, ..Default::default() };
    repo.restore(&point, target.path(), &forced, &Progress::default()).unwrap();
}

#[test]
fn a_drill_of_an_encrypted_journal_without_its_key_fails_with_reason_key() {
    let data = tempfile::tempdir().unwrap();
    let load = Load::start(data.path(), Some(journal_key()), 1);
    load.wait_for_acked(50);
    load.stop();
    let dir = tempfile::tempdir().unwrap();
    let repo = open_repo(&store(Backend::Dir, dir.path()));
    let opts = CreateOptions { journal_keys: Some(journal_key()), lease: quick_lease(), ..Default::default() };
    repo.create(data.path(), &opts, &Progress::default()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let report = repo.drill(&scratch.path().join("d"), &DrillOptions::default(), &Progress::default());
    assert_eq!(report.failure, Some(DrillFailure::Key), "{report:?}");
    let ok = DrillOptions { journal_keys: Some(journal_key()), ..Default::default() };
    let report = repo.drill(&scratch.path().join("e"), &ok, &Progress::default());
    assert!(report.ok, "{report:?}");
}
