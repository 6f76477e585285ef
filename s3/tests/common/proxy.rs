//! A fault-injecting TCP proxy between the S3 client and a server: each new connection takes the next
//! fault from a queue (none left: it passes traffic through untouched).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Forward this many bytes of the request, then drop the connection (mid-body for a large put).
    DropAfterRequestBytes(usize),
    /// Forward the whole request, let the server act on it, then drop the connection instead of
    /// returning the response: the client cannot know its request succeeded.
    DropResponse,
    /// Forward the whole request, then only this many bytes of the response (head included), then drop
    /// the connection: a body that breaks off after the response has begun.
    DropAfterResponseBytes(usize),
    /// Answer with this HTTP status without forwarding anything.
    Status(u16),
    /// Accept, then say nothing for this long.
    Stall(Duration),
}

#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<(VecDeque<Fault>, u64)>>);

impl Faults {
    pub fn push(&self, f: Fault) {
        self.0.lock().unwrap().0.push_back(f);
    }
    fn next(&self) -> Option<Fault> {
        let mut g = self.0.lock().unwrap();
        g.1 += 1;
        g.0.pop_front()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.0.lock().unwrap().1
    }
    pub fn pending(&self) -> usize {
        self.0.lock().unwrap().0.len()
    }
}

/// Starts the proxy on the current runtime; returns its address and the fault queue.
pub async fn start(upstream: SocketAddr) -> (SocketAddr, Faults) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let faults = Faults::default();
    let f = faults.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let fault = f.next();
            tokio::spawn(handle(client, upstream, fault));
        }
    });
    (addr, faults)
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, fault: Option<Fault>) {
    match fault {
        None => {
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Some(Fault::Status(code)) => {
            // Read the request head, answer, close.
            let mut buf = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(200), client.read(&mut buf)).await;
            let reason = if code == 503 { "Slow Down" } else { "Internal Error" };
            let body = format!(
                "<Error><Code>{}</Code><Message>injected</Message></Error>",
                if code == 503 { "SlowDown" } else { "InternalError" }
            );
            let resp = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = client.write_all(resp.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
        }
        Some(Fault::DropAfterRequestBytes(n)) => {
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            let mut left = n;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let Ok(k) = client.read(&mut buf[..left.min(64 * 1024)]).await else { return };
                if k == 0 {
                    return;
                }
                if server.write_all(&buf[..k]).await.is_err() {
                    return;
                }
                left -= k;
            }
            // Both sides just go away.
        }
        Some(Fault::DropAfterResponseBytes(n)) => {
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (mut sr, mut sw) = server.into_split();
            let (mut cr, mut cw) = client.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let mut left = n;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                match sr.read(&mut buf[..left.min(64 * 1024)]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        left -= k;
                    }
                }
            }
            up.abort();
            // Dropping both halves closes the client's connection mid-body.
        }
        Some(Fault::DropResponse) => {
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (mut sr, mut sw) = server.into_split();
            let (mut cr, _cw) = client.into_split();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => {
                            if sw.write_all(&buf[..k]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            // Wait for the server's answer (the request was processed), swallow it, and drop the client.
            let mut buf = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(30), sr.read(&mut buf)).await;
            up.abort();
        }
    }
}
