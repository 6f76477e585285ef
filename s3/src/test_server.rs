//! An S3 server in this process, for tests and benchmarks: `s3s-fs` (objects as files under a directory)
//! served over TCP on a loopback port, with request signatures checked against one key pair. Enabled by
//! the `test-server` feature.
//!
//! s3s-fs checks a write's condition (`If-None-Match: *`, `If-Match`) and then writes, as two steps: two
//! concurrent create-if-absent puts of one key can both succeed, where S3 lets exactly one win. Fencing
//! (keel-backup's lease) depends on that atomicity, and a test of it found the difference; so this server
//! runs conditional writes one at a time, as S3 behaves.

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
            let conditional = std::sync::Arc::new(tokio::sync::Mutex::new(()));
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let (service, conditional) = (service.clone(), conditional.clone());
                let atomic = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (service, conditional) = (service.clone(), conditional.clone());
                    async move {
                        let h = req.headers();
                        let is_conditional = (h.contains_key(hyper::header::IF_NONE_MATCH)
                            || h.contains_key(hyper::header::IF_MATCH))
                            && req.method() != hyper::Method::GET
                            && req.method() != hyper::Method::HEAD;
                        let _one_at_a_time = match is_conditional {
                            true => Some(conditional.lock_owned().await),
                            false => None,
                        };
                        hyper::service::Service::call(&service, req).await
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
