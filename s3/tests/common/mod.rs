//! Test servers: an S3 server started in this process (`s3s-fs` over TCP, signatures checked), or an
//! external one named by the environment, and the stores to run the suite against.
//!
//! External endpoint: `KEEL_S3_TEST_ENDPOINT` (e.g. `http://127.0.0.1:5000`), with the usual
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_REGION`); the tests create their own buckets.

#![allow(dead_code)]

pub mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;

use keel_s3::s3::{S3Config, S3Store};

pub use keel_s3::test_server::{ACCESS_KEY, SECRET_KEY};

/// An `s3s-fs` server on a loopback port.
pub struct InProcess {
    pub addr: SocketAddr,
    /// Where the server keeps its buckets (`<root>/<bucket>/<key>`).
    pub root: tempfile::TempDir,
}

pub fn start_in_process() -> InProcess {
    let root = tempfile::tempdir().unwrap();
    let addr = keel_s3::test_server::start(root.path()).unwrap();
    InProcess { addr, root }
}

/// Credentials written to files, as a deployment mounts them.
pub fn key_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (a, s) = (dir.join("access-key"), dir.join("secret-key"));
    std::fs::write(&a, format!("{ACCESS_KEY}\n")).unwrap();
    std::fs::write(&s, format!("{SECRET_KEY}\n")).unwrap();
    (a, s)
}

/// A store on a fresh bucket of the server at `endpoint`.
pub async fn bucket_store(
    endpoint: &str,
    keys: Option<(PathBuf, PathBuf)>,
    tweak: impl FnOnce(&mut S3Config),
) -> S3Store {
    let bucket = format!("keel-test-{}", unique());
    let mut cfg = S3Config::new(&bucket);
    cfg.endpoint = Some(endpoint.to_owned());
    cfg.region = Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
    if let Some((a, s)) = keys {
        cfg.access_key_file = Some(a);
        cfg.secret_key_file = Some(s);
    }
    tweak(&mut cfg);
    let store = S3Store::connect(cfg).await.unwrap();
    store.client().create_bucket().bucket(&bucket).send().await.unwrap();
    store
}

pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}-{}", t & 0xffff_ffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// The external endpoint to run the suite against too, if the environment names one.
pub fn external_endpoint() -> Option<String> {
    std::env::var("KEEL_S3_TEST_ENDPOINT").ok().filter(|s| !s.is_empty())
}
