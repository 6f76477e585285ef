//! An S3 server in this process, for tests and benchmarks: `s3s-fs` (objects as files under a directory)
//! served over TCP on a loopback port, with request signatures checked against one key pair. Enabled by
//! the `test-server` feature.
//!
//! S3 makes each write of an object atomic; s3s-fs does not, and this server adds what tests depend on:
//! - s3s-fs checks a write's condition (`If-None-Match: *`, `If-Match`) and then writes, as two steps: two
//!   concurrent create-if-absent puts of one key could both succeed, where S3 lets exactly one win. Fencing
//!   (keel-backup's lease) depends on that, and a test of it found the difference.
//! - s3s-fs renames a put's body into place and then saves its checksums beside it, so a read in between,
//!   or a put whose client went away between the two steps, serves a body with the previous version's
//!   checksum (the SDK rejects it: "body checksum mismatch"). A lease test that drops a client mid-heartbeat
//!   found it.
//!
//! So every request that writes a key holds that key exclusively, reads hold it shared, and each request
//! runs as its own task: a client that goes away cannot stop a write halfway (S3 completes a put whose
//! body arrived whole, and keeps the old object if it did not).

use std::net::SocketAddr;
use std::path::Path;

pub const ACCESS_KEY: &str = "keel-test-access";
pub const SECRET_KEY: &str = "keel-test-secret-key-0123456789";

/// Starts the server on its own runtime thread (it runs until the process exits); returns its address.
pub fn start(root: &Path) -> std::io::Result<SocketAddr> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let service = {
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.build()
    };
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    std::thread::Builder::new().name("keel-test-s3".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
            let http = ConnBuilder::new(TokioExecutor::new());
            let keys = KeyLocks::default();
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let (service, keys) = (service.clone(), keys.clone());
                let atomic = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (service, lock) = (service.clone(), keys.of(req.uri().path()));
                    let reads = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
                    // A multipart upload's parts go to files of their own; only its completion writes the key.
                    let part = req.uri().query().is_some_and(|q| q.contains("partNumber="));
                    let task = tokio::spawn(async move {
                        let _held = match (reads, part) {
                            (true, _) => Held::Shared(lock.read_owned().await),
                            (false, false) => Held::Exclusive(lock.write_owned().await),
                            (false, true) => Held::Nothing,
                        };
                        hyper::service::Service::call(&service, req).await
                    });
                    async move {
                        match task.await {
                            Ok(response) => response,
                            // The server's runtime lives as long as the process, so a task ends by
                            // returning or panicking; a panic goes on as the connection's, as before.
                            Err(e) => std::panic::resume_unwind(
                                e.try_into_panic().unwrap_or_else(|e| Box::new(e.to_string())),
                            ),
                        }
                    }
                });
                let conn = http.serve_connection(TokioIo::new(socket), atomic).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
    })?;
    Ok(addr)
}

/// One lock per object path (the request's URI path: `/bucket/key`), created on first use. Locks no
/// request holds are dropped once the map grows past `KEY_LOCKS_PRUNE_AT`, so a long run over many keys
/// does not keep one per key ever touched.
#[derive(Clone, Default)]
struct KeyLocks(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, KeyLock>>>);

type KeyLock = std::sync::Arc<tokio::sync::RwLock<()>>;

const KEY_LOCKS_PRUNE_AT: usize = 4096;

impl KeyLocks {
    fn of(&self, path: &str) -> KeyLock {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= KEY_LOCKS_PRUNE_AT {
            // Held only by the map: no request holds or waits for it (a request keeps its clone, inside its
            // guard, until it is done), so a later request for the key may as well get a new one.
            map.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
        }
        map.entry(path.to_owned()).or_default().clone()
    }
}

/// Held for the whole request; never read.
#[allow(dead_code)]
enum Held {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
    Nothing,
}
