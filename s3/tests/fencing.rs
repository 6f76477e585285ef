//! Fencing under contention: writers racing on one key through separate store handles (for the directory
//! backend, separate lock descriptors, which `flock` treats like separate processes). Exactly one
//! create-if-absent wins, and a counter advanced only by compare-and-swap loses no increment.

mod common;

use bytes::Bytes;
use keel_s3::dir::DirStore;
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

async fn race<S: ObjectStore + Clone + 'static>(stores: Vec<S>) {
    // Create-if-absent: one winner.
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            s.put("lease", PutBody::Bytes(Bytes::from(vec![i as u8])), PutCondition::IfAbsent).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::PreconditionFailed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one create-if-absent wins");

    // A counter: read, then compare-and-swap; retry on a failed condition.
    stores[0].put("counter", PutBody::Bytes(Bytes::from_static(b"0")), PutCondition::None).await.unwrap();
    let per_writer = 10;
    let (writers, first) = (stores.len(), stores[0].clone());
    let mut tasks = Vec::new();
    for s in stores {
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_writer {
                let g = s.get("counter").await.unwrap();
                let etag = g.meta.etag.clone();
                let n: u64 = std::str::from_utf8(&g.bytes().await.unwrap()).unwrap().parse().unwrap();
                let next = Bytes::from((n + 1).to_string());
                match s.put("counter", PutBody::Bytes(next), PutCondition::IfMatch(etag)).await {
                    Ok(_) => done += 1,
                    Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = first.get("counter").await.unwrap().bytes().await.unwrap();
    assert_eq!(std::str::from_utf8(&n).unwrap(), (per_writer * writers).to_string(), "no lost update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_fencing_under_contention() {
    let root = tempfile::tempdir().unwrap();
    let stores: Vec<DirStore> = (0..6).map(|_| DirStore::open(root.path()).unwrap()).collect();
    race(stores).await;
}

/// The same with each fallback for filesystems that refuse `RENAME_NOREPLACE` (NFS, FUSE).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_fencing_under_contention_with_each_fallback() {
    use keel_s3::dir::CreateIfAbsent;
    for how in [CreateIfAbsent::Link, CreateIfAbsent::Locked] {
        let root = tempfile::tempdir().unwrap();
        let open = |_| DirStore::open(root.path()).unwrap().with_create_if_absent(how);
        race((0..6).map(open).collect()).await;
    }
}

/// The in-process server (s3s-fs, with the per-key write locks `keel_s3::test_server` adds so that a
/// conditional put is atomic, as in S3).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_fencing_under_contention_in_process() {
    let server = common::start_in_process();
    let scratch = tempfile::tempdir().unwrap();
    let keys = common::key_files(scratch.path());
    let store = common::bucket_store(&format!("http://{}", server.addr), Some(keys), |_| {}).await;
    race(vec![store; 6]).await;
}

/// The external server (`.ci/run` starts moto through `.ci/moto_server.py`, which makes its conditional
/// writes atomic: plain moto's are not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_fencing_under_contention_external() {
    let Some(endpoint) = common::external_endpoint() else {
        eprintln!("KEEL_S3_TEST_ENDPOINT not set: skipped");
        return;
    };
    let store = common::bucket_store(&endpoint, None, |_| {}).await;
    race(vec![store; 6]).await;
}
