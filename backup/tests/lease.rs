//! The repository lease: one holder at a time among concurrent takers, an expired lease taken over (and
//! its old holder told so before it changes anything), a held one named in the error after the wait. On a
//! directory and on S3.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keel_backup::{BackupError, LeaseOptions};

fn one_holder_at_a_time(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(backend, dir.path());
    let held = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, held) = (store.clone(), held.clone());
            std::thread::spawn(move || {
                let repo = open_repo(&store);
                for _ in 0..3 {
                    let lease = repo
                        .lease("test", LeaseOptions { ttl: Duration::from_secs(10), wait: Duration::from_secs(60) })
                        .unwrap();
                    let from = Instant::now();
                    std::thread::sleep(Duration::from_millis(30));
                    lease.confirm().unwrap();
                    let to = Instant::now();
                    lease.release().unwrap();
                    held.lock().unwrap().push((from, to));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut spans = held.lock().unwrap().clone();
    assert_eq!(spans.len(), 12);
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two holders at once: {w:?}");
    }
}

fn expired_lease_is_taken_over(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(backend, dir.path());
    let (a, b) = (open_repo(&store), open_repo(&store));
    let short = LeaseOptions { ttl: Duration::from_millis(600), wait: Duration::from_millis(300) };
    let first = a.lease("first", short).unwrap();
    // Held and fresh: the second waits, then fails naming the holder.
    match b.lease("second", short) {
        Err(BackupError::Leased { holder, .. }) => assert!(holder.contains("first"), "{holder}"),
        other => panic!("{other:?}"),
    }
    // The holder dies without releasing: its process (here: its repository and runtime) goes away.
    std::mem::forget(first);
    drop(a);
    std::thread::sleep(Duration::from_millis(900));
    let began = Instant::now();
    let second =
        b.lease("second", LeaseOptions { ttl: Duration::from_secs(10), wait: Duration::from_secs(10) }).unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
    second.confirm().unwrap();
    second.release().unwrap();
}

fn stalled_holder_learns_it_lost_the_lease(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(backend, dir.path());
    let (a, b) = (open_repo(&store), open_repo(&store));
    let first = a.lease("first", LeaseOptions { ttl: Duration::from_secs(30), wait: Duration::from_secs(1) }).unwrap();
    // Another process takes the lease from under it (as after a pause longer than the TTL: its lease
    // expired and was taken over); here the lease object is simply removed first.
    use keel_s3::ObjectStore;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.delete("repo/lease")).unwrap();
    let second =
        b.lease("second", LeaseOptions { ttl: Duration::from_secs(10), wait: Duration::from_secs(5) }).unwrap();
    match first.confirm() {
        Err(BackupError::LeaseLost { .. }) => {}
        other => panic!("the first holder still thinks it holds the lease: {other:?}"),
    }
    drop(first); // must not delete the second holder's lease
    second.confirm().unwrap();
    second.release().unwrap();
}

#[test]
fn lease_on_a_directory() {
    one_holder_at_a_time(Backend::Dir);
    expired_lease_is_taken_over(Backend::Dir);
    stalled_holder_learns_it_lost_the_lease(Backend::Dir);
}

#[test]
fn lease_on_s3() {
    for b in backends().into_iter().skip(1) {
        one_holder_at_a_time(b);
        expired_lease_is_taken_over(b);
        stalled_holder_learns_it_lost_the_lease(b);
    }
}
