//! Through a fault-injecting proxy: dropped connections (mid-body, and after the server acted but before
//! the client heard), 500 and 503 answers, and stalls. Retries must neither lose nor duplicate: the object
//! ends up exactly as put, once, and a create-if-absent whose first attempt landed still succeeds.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::proxy::{self, Fault};
use futures::TryStreamExt;
use keel_s3::s3::S3Store;
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

async fn store_via(
    proxy: std::net::SocketAddr,
    bucket_of: &S3Store,
    keys: (std::path::PathBuf, std::path::PathBuf),
) -> S3Store {
    let bucket = bucket_of.client().list_buckets().send().await.unwrap();
    let name = bucket.buckets().last().and_then(|b| b.name()).unwrap().to_owned();
    let mut cfg = keel_s3::s3::S3Config::new(name);
    cfg.endpoint = Some(format!("http://{proxy}"));
    cfg.region = Some("us-east-1".into());
    cfg.access_key_file = Some(keys.0);
    cfg.secret_key_file = Some(keys.1);
    cfg.attempt_timeout = Duration::from_secs(2);
    cfg.multipart_threshold = 1 << 20;
    cfg.part_bytes = 5 << 20;
    S3Store::connect(cfg).await.unwrap()
}

/// The in-process server, a store on a fresh bucket that reaches it directly, and the fault proxy in front
/// of it (clients through the proxy come from `store_via`).
struct Proxied {
    _server: common::InProcess,
    scratch: tempfile::TempDir,
    keys: (std::path::PathBuf, std::path::PathBuf),
    direct: S3Store,
    addr: std::net::SocketAddr,
    faults: proxy::Faults,
}

async fn proxied() -> Proxied {
    let server = common::start_in_process();
    let scratch = tempfile::tempdir().unwrap();
    let keys = common::key_files(scratch.path());
    let direct = common::bucket_store(&format!("http://{}", server.addr), Some(keys.clone()), |_| {}).await;
    let (addr, faults) = proxy::start(server.addr).await;
    Proxied { _server: server, scratch, keys, direct, addr, faults }
}

fn body(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_lose_and_duplicate_nothing() {
    let Proxied { _server, scratch, keys, direct, addr, faults } = proxied().await;

    let cases: Vec<(&str, Vec<Fault>)> = vec![
        ("503 slow down", vec![Fault::Status(503), Fault::Status(503)]),
        ("500", vec![Fault::Status(500)]),
        ("connection dropped mid-body", vec![Fault::DropAfterRequestBytes(40_000)]),
        ("stall past the attempt timeout", vec![Fault::Stall(Duration::from_secs(5))]),
        ("response lost after the server acted", vec![Fault::DropResponse]),
    ];
    for (i, (name, fs)) in cases.into_iter().enumerate() {
        // A fresh client per case, so that its first request opens a new connection (which takes the fault).
        let store = store_via(addr, &direct, keys.clone()).await;
        let key = format!("case-{i}");
        let data = body(200_000, i as u8);
        for f in fs {
            faults.push(f);
        }
        let m = store.put(&key, PutBody::Bytes(data.clone()), PutCondition::IfAbsent).await;
        let m = m.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(faults.pending(), 0, "{name}: every fault was hit");
        assert_eq!(m.size, data.len() as u64, "{name}");
        let got = direct.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, data, "{name}: the object is exactly what was put");
    }
    // Exactly one object per case: nothing duplicated under another name, no stray upload.
    let listed: Vec<_> = direct.list("case-").try_collect().await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");

    // A multipart upload with a part's connection dropped mid-body: retried, the object is whole.
    let big = body(11 << 20, 9);
    let path = scratch.path().join("big");
    std::fs::write(&path, &big).unwrap();
    let store = store_via(addr, &direct, keys.clone()).await;
    faults.push(Fault::DropAfterRequestBytes(1 << 20));
    faults.push(Fault::Status(503));
    store.put("big", PutBody::File(path), PutCondition::None).await.unwrap();
    assert_eq!(direct.get("big").await.unwrap().bytes().await.unwrap(), big);
    // (s3s-fs does not implement ListMultipartUploads; where the server does, none may be left open.)
    if let Ok(uploads) = direct.client().list_multipart_uploads().bucket(direct_bucket(&direct).await).send().await {
        assert!(uploads.uploads().is_empty(), "no multipart upload left open");
    }

    // A real precondition failure is not mistaken for a retry of our own: it stays an error.
    let store = store_via(addr, &direct, keys.clone()).await;
    let lost = store.put("case-0", PutBody::Bytes(body(10, 1)), PutCondition::IfAbsent).await;
    assert!(matches!(lost, Err(StoreError::PreconditionFailed { .. })), "{lost:?}");
}

/// A response whose body breaks off after it began (the SDK's own retries have ended by then): a plain
/// streamed read reports it as an interrupted body, `get_all` reads the object again and returns it whole,
/// and a body that keeps breaking off ends, after a bounded number of attempts, in that same error. A CI
/// run once failed on exactly this, from the in-process server under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_off_is_read_again_whole() {
    let Proxied { _server, scratch: _scratch, keys, direct, addr, faults } = proxied().await;
    let data = body(2 << 20, 7);
    direct.put("obj", PutBody::Bytes(data.clone()), PutCondition::None).await.unwrap();
    let cut = Fault::DropAfterResponseBytes(300_000);

    // Without a retry: the error says what happened.
    let store = store_via(addr, &direct, keys.clone()).await;
    faults.push(cut);
    let e = store.get("obj").await.unwrap().bytes().await.unwrap_err();
    assert!(e.is_interrupted_body(), "{e}");
    assert!(e.to_string().contains("obj"), "names the object: {e}");
    assert_eq!(faults.pending(), 0);

    // `get_all`: cut twice, then whole.
    let store = store_via(addr, &direct, keys.clone()).await;
    let before = faults.connections();
    faults.push(cut);
    faults.push(cut);
    let (meta, got) = store.get_all("obj").await.unwrap();
    assert_eq!(faults.pending(), 0, "both cuts were hit");
    assert!(faults.connections() - before >= 3, "read again on new connections");
    assert_eq!(meta.size, data.len() as u64);
    assert!(got == data, "the object is whole");

    // Cut every time: a bounded number of attempts, then the error.
    let store = store_via(addr, &direct, keys.clone()).await;
    for _ in 0..8 {
        faults.push(cut);
    }
    let e = store.get_all("obj").await.unwrap_err();
    assert!(e.is_interrupted_body(), "{e}");
    let left = faults.pending();
    assert!(left > 0 && left < 8, "gave up after a few attempts ({} of 8 cuts used)", 8 - left);
}

async fn direct_bucket(s: &S3Store) -> String {
    let b = s.client().list_buckets().send().await.unwrap();
    b.buckets().last().and_then(|b| b.name()).unwrap().to_owned()
}

#[tokio::test]
async fn bad_configuration_is_one_clear_error() {
    let server = common::start_in_process();
    let scratch = tempfile::tempdir().unwrap();
    let keys = common::key_files(scratch.path());
    let endpoint = format!("http://{}", server.addr);

    let mut cfg = keel_s3::s3::S3Config::new("b");
    cfg.endpoint = Some("localhost:9000".into());
    let e = S3Store::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("bad endpoint URL") && e.to_string().contains("http://"), "{e}");

    let mut cfg = keel_s3::s3::S3Config::new("b");
    cfg.access_key_file = Some(scratch.path().join("nope"));
    cfg.secret_key_file = Some(keys.1.clone());
    let e = S3Store::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("access key id file") && e.to_string().contains("nope"), "{e}");

    // Wrong bucket.
    let mut cfg = keel_s3::s3::S3Config::new("no-such-bucket");
    cfg.endpoint = Some(endpoint.clone());
    cfg.access_key_file = Some(keys.0.clone());
    cfg.secret_key_file = Some(keys.1.clone());
    let s = S3Store::connect(cfg).await.unwrap();
    let e = s.list_page("", None).await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");

    // Wrong secret: access denied, naming the resource.
    let bad = scratch.path().join("bad-secret");
    std::fs::write(&bad, "not-the-secret").unwrap();
    let direct = common::bucket_store(&endpoint, Some(keys.clone()), |_| {}).await;
    let bucket = direct_bucket(&direct).await;
    let mut cfg = keel_s3::s3::S3Config::new(&bucket);
    cfg.endpoint = Some(endpoint.clone());
    cfg.access_key_file = Some(keys.0.clone());
    cfg.secret_key_file = Some(bad);
    cfg.max_attempts = 1;
    let s = S3Store::connect(cfg).await.unwrap();
    let e = s.put("k", PutBody::Bytes(Bytes::from_static(b"x")), PutCondition::None).await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
    assert!(e.to_string().contains(&bucket), "{e}");

    // Nothing listening: a connection error after the retries, naming the operation and key.
    let mut cfg = keel_s3::s3::S3Config::new(&bucket);
    cfg.endpoint = Some("http://127.0.0.1:1".into());
    cfg.access_key_file = Some(keys.0);
    cfg.secret_key_file = Some(keys.1);
    cfg.max_attempts = 2;
    let s = S3Store::connect(cfg).await.unwrap();
    let e = s.head("some/key").await.unwrap_err();
    assert!(e.to_string().contains("head") && e.to_string().contains("some/key"), "{e}");
}

/// Issue 31, defect 9: after a retried conditional put was refused, one HEAD decided whether the object
/// was the put's own, and a HEAD that failed counted as "not ours": a put that took effect was reported as
/// a failed condition. Now an unreadable answer is `Indeterminate`, and a readable one decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_landed_is_never_reported_as_a_failed_condition() {
    let Proxied { _server, scratch: _scratch, keys, direct, addr, faults } = proxied().await;
    let store_with_two_attempts = || async {
        let bucket = direct.client().list_buckets().send().await.unwrap();
        let name = bucket.buckets().last().and_then(|b| b.name()).unwrap().to_owned();
        let mut cfg = keel_s3::s3::S3Config::new(name);
        cfg.endpoint = Some(format!("http://{addr}"));
        cfg.region = Some("us-east-1".into());
        cfg.access_key_file = Some(keys.0.clone());
        cfg.secret_key_file = Some(keys.1.clone());
        cfg.attempt_timeout = Duration::from_secs(2);
        cfg.max_attempts = 2;
        S3Store::connect(cfg).await.unwrap()
    };
    for (i, head_failures) in [2usize, 1].into_iter().enumerate() {
        let store = store_with_two_attempts().await;
        let key = format!("landed-{i}");
        let data = body(1000, i as u8);
        // The put lands but its answer is lost; the retry is refused (412); then the HEAD fails as often.
        faults.push(Fault::DropResponse);
        faults.push(Fault::Status(412));
        for _ in 0..head_failures {
            faults.push(Fault::Status(500));
        }
        let r = store.put(&key, PutBody::Bytes(data.clone()), PutCondition::IfAbsent).await;
        assert_eq!(faults.pending(), 0);
        assert_eq!(direct.get(&key).await.unwrap().bytes().await.unwrap(), data, "the put took effect");
        match (head_failures, r) {
            (2, Err(StoreError::Indeterminate { .. })) => {}
            (1, Ok(m)) => assert_eq!(m.size, 1000),
            (_, r) => panic!("{head_failures} failed HEADs: {r:?}"),
        }
    }
}

/// Issue 31, defect 10: a multipart upload whose creation's answer was lost. The SDK's retry creates a
/// second upload and the first stays open, its parts billed, with an id Keel never saw. After creating its
/// upload, Keel aborts the older open uploads of the same key. Needs a server that lists multipart uploads
/// (s3s-fs does not): runs against `KEEL_S3_TEST_ENDPOINT` (moto in CI), through the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_multipart_creation_leaves_no_upload_open() {
    let Some(endpoint) = common::external_endpoint() else {
        eprintln!("skipped: needs KEEL_S3_TEST_ENDPOINT (a server that lists multipart uploads)");
        return;
    };
    let upstream: std::net::SocketAddr =
        endpoint.trim_start_matches("http://").trim_end_matches('/').parse().expect("endpoint as http://IP:PORT");
    let direct = common::bucket_store(&endpoint, None, |_| {}).await;
    let (addr, faults) = proxy::start(upstream).await;
    let mut cfg = keel_s3::s3::S3Config::new(direct.bucket());
    cfg.endpoint = Some(format!("http://{addr}"));
    cfg.region = Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
    cfg.attempt_timeout = Duration::from_secs(2);
    cfg.multipart_threshold = 1 << 20;
    cfg.part_bytes = 5 << 20;
    let store = S3Store::connect(cfg).await.unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let big = body(6 << 20, 3);
    let path = scratch.path().join("big");
    std::fs::write(&path, &big).unwrap();
    // The first request on the new connection is the creation: the server creates the upload, the client
    // never hears, and the SDK creates another.
    faults.push(Fault::DropResponse);
    store.put("big", PutBody::File(path), PutCondition::None).await.unwrap();
    assert_eq!(faults.pending(), 0, "the fault was hit");
    assert_eq!(direct.get("big").await.unwrap().bytes().await.unwrap(), big);
    let uploads = direct.client().list_multipart_uploads().bucket(direct.bucket()).send().await.unwrap();
    let open: Vec<_> = uploads.uploads().iter().map(|u| (u.key(), u.upload_id())).collect();
    assert!(open.is_empty(), "no multipart upload left open: {open:?}");
}
