//! The same behavioural suite against every backend: the directory store, an S3 server started in this
//! process (`s3s-fs`), and — when `KEEL_S3_TEST_ENDPOINT` names one — an external S3 server (CI starts
//! moto's).

mod common;

use bytes::Bytes;
use futures::TryStreamExt;
use keel_s3::dir::DirStore;
use keel_s3::{AnyStore, ETag, ObjectStore, PutBody, PutCondition, StoreError};

fn data(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

async fn suite(store: &impl ObjectStore, scratch: &std::path::Path) {
    // Put, get, head.
    let a = data(1000, 1);
    let m = store.put("q/a", PutBody::Bytes(a.clone()), PutCondition::None).await.unwrap();
    assert_eq!(m.size, 1000);
    assert_eq!(store.get("q/a").await.unwrap().bytes().await.unwrap(), a);
    let h = store.head("q/a").await.unwrap();
    assert_eq!((h.size, h.crc32), (1000, Some(crc32fast::hash(&a))));
    assert!(matches!(store.get("q/missing").await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.head("q/missing").await, Err(StoreError::NotFound { .. })));

    // Ranges.
    let r = store.get_range("q/a", 10..20).await.unwrap().bytes().await.unwrap();
    assert_eq!(r, a.slice(10..20));
    let r = store.get_range("q/a", 990..5000).await.unwrap().bytes().await.unwrap();
    assert_eq!(r, a.slice(990..1000));

    // Fencing: create-if-absent, and its negative case.
    let lease = store.put("fence/lease", PutBody::Bytes(data(10, 2)), PutCondition::IfAbsent).await.unwrap();
    let again = store.put("fence/lease", PutBody::Bytes(data(10, 3)), PutCondition::IfAbsent).await;
    assert!(matches!(again, Err(StoreError::PreconditionFailed { .. })), "{again:?}");
    assert_eq!(
        store.get("fence/lease").await.unwrap().bytes().await.unwrap(),
        data(10, 2),
        "the loser changed nothing"
    );

    // Compare-and-swap: with the current etag, then the stale one must fail.
    let next =
        store.put("fence/lease", PutBody::Bytes(data(10, 4)), PutCondition::IfMatch(lease.etag.clone())).await.unwrap();
    assert_ne!(next.etag, lease.etag);
    let stale = store.put("fence/lease", PutBody::Bytes(data(10, 5)), PutCondition::IfMatch(lease.etag.clone())).await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })), "{stale:?}");
    assert_eq!(store.get("fence/lease").await.unwrap().bytes().await.unwrap(), data(10, 4));
    let absent = store.put("fence/none", PutBody::Bytes(data(1, 1)), PutCondition::IfMatch(ETag("\"x\"".into()))).await;
    assert!(matches!(absent, Err(StoreError::PreconditionFailed { .. })), "{absent:?}");

    // A file body, large enough for the S3 backend's multipart path when its threshold is low.
    let big = data(11 << 20, 7);
    let path = scratch.join("big");
    std::fs::write(&path, &big).unwrap();
    let m = store.put("blobs/big", PutBody::File(path.clone()), PutCondition::IfAbsent).await.unwrap();
    assert_eq!(m.size, big.len() as u64);
    let mut g = store.get("blobs/big").await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = g.next_chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, big);
    let again = store.put("blobs/big", PutBody::File(path), PutCondition::IfAbsent).await;
    assert!(matches!(again, Err(StoreError::PreconditionFailed { .. })), "{again:?}");

    // Listing, paginated lazily past one page.
    for i in 0..1005 {
        store.put(&format!("list/{i:05}"), PutBody::Bytes(Bytes::from_static(b"x")), PutCondition::None).await.unwrap();
    }
    let keys: Vec<String> = store.list("list/").map_ok(|m| m.key).try_collect().await.unwrap();
    assert_eq!(keys.len(), 1005);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
    let page = store.list_page("list/", None).await.unwrap();
    assert!(page.next.is_some() && page.objects.len() <= 1000);

    // Delete, single and batch; deleting what is absent succeeds.
    store.delete("q/a").await.unwrap();
    store.delete("q/a").await.unwrap();
    assert!(matches!(store.head("q/a").await, Err(StoreError::NotFound { .. })));
    let batch: Vec<String> = (0..1005).map(|i| format!("list/{i:05}")).collect();
    store.delete_many(&batch).await.unwrap();
    let left: Vec<_> = store.list("list/").try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Bad keys are refused before any I/O.
    for bad in ["", "/abs", "a/../b", "a//b", ".keel-lock"] {
        let r = store.put(bad, PutBody::Bytes(Bytes::new()), PutCondition::None).await;
        assert!(matches!(r, Err(StoreError::InvalidKey { .. })), "{bad:?}: {r:?}");
    }
}

#[tokio::test]
async fn directory_backend() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::open(root.path().join("store")).unwrap();
    suite(&store, root.path()).await;
    // The same through `AnyStore`, named as a tool's argument names it.
    let any = AnyStore::open(root.path().join("any").to_str().unwrap()).await.unwrap();
    assert!(matches!(any, AnyStore::Dir(_)));
    suite(&any, root.path()).await;
}

/// Issue 31, defect 8: NFS and many FUSE mounts refuse `RENAME_NOREPLACE`, so every conditional put
/// failed on exactly the shared volumes the directory backend serves. Each fallback passes the suite.
#[tokio::test]
async fn directory_backend_with_each_way_of_creating_if_absent() {
    use keel_s3::dir::CreateIfAbsent;
    for how in [CreateIfAbsent::Link, CreateIfAbsent::Locked] {
        let root = tempfile::tempdir().unwrap();
        let store = DirStore::open(root.path().join("store")).unwrap().with_create_if_absent(how);
        suite(&store, root.path()).await;
        assert_eq!(store.create_if_absent(), how);
    }
}

#[tokio::test]
async fn s3_backend_in_process_server() {
    let server = common::start_in_process();
    let scratch = tempfile::tempdir().unwrap();
    let keys = common::key_files(scratch.path());
    let endpoint = format!("http://{}", server.addr);
    // A low multipart threshold and S3's minimum part size, so that the 11 MiB file goes up as three
    // parts in parallel.
    let store = common::bucket_store(&endpoint, Some(keys), |c| {
        c.multipart_threshold = 1 << 20;
        c.part_bytes = 5 << 20;
    })
    .await;
    // Through `AnyStore`, as paging and the tools hold it.
    suite(&AnyStore::from(store), scratch.path()).await;
}

#[tokio::test]
async fn s3_backend_external_server() {
    let Some(endpoint) = common::external_endpoint() else {
        eprintln!("KEEL_S3_TEST_ENDPOINT not set: the external-server run is skipped (CI sets it)");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let store = common::bucket_store(&endpoint, None, |c| {
        c.multipart_threshold = 1 << 20;
        c.part_bytes = 5 << 20;
    })
    .await;
    suite(&store, scratch.path()).await;
}
