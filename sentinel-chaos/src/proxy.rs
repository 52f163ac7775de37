//! A loopback TCP proxy between the workers and the server that loses replies: now and then it
//! reads a chunk of the server's answer and, instead of passing it on, closes both connections.
//! The server has applied the command; the client never hears of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Result;
use crate::rng::Rng;

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Connections dropped right after a server reply arrived.
    pub drops: AtomicU64,
}

struct Dropper {
    enabled: AtomicBool,
    mean_gap: Duration,
    next: Mutex<(Instant, Rng)>,
    stats: ProxyStats,
}

impl Dropper {
    /// Whether to drop this reply: at most one drop per random gap (exponential, `mean_gap`).
    async fn should_drop(&self) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if now < next.0 {
            return false;
        }
        let gap = next.1.exponential(self.mean_gap);
        next.0 = now + gap;
        true
    }
}

/// A running proxy; dropping it stops accepting (open connections end with their peers).
pub struct Proxy {
    port: u16,
    dropper: Arc<Dropper>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("port", &self.port).finish()
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`, dropping a reply
    /// about every `mean_gap` while enabled.
    pub async fn start(upstream: u16, mean_gap: Duration, seed: u64) -> Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let dropper = Arc::new(Dropper {
            enabled: AtomicBool::new(true),
            mean_gap,
            next: Mutex::new((Instant::now() + mean_gap, Rng::new(seed))),
            stats: ProxyStats::default(),
        });
        let d = dropper.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                d.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(pipe(client, upstream, d.clone()));
            }
        });
        Ok(Proxy {
            port,
            dropper,
            accept,
        })
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Turns reply dropping on or off (connections keep flowing either way).
    pub fn set_dropping(&self, on: bool) {
        self.dropper.enabled.store(on, Ordering::Relaxed);
    }

    /// What it did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.dropper.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(client: TcpStream, upstream: u16, dropper: Arc<Dropper>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return; // the server is down (restarting): the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dropper.should_drop().await {
            dropper.stats.drops.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_and_drops_replies() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let upstream = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(upstream, Duration::from_secs(3600), 1)
            .await
            .unwrap();
        let port = proxy.port();
        assert_eq!(format!("{proxy:?}"), format!("Proxy {{ port: {port} }}"));
        // Dropping is on, and the first gap (an hour) has not passed: replies flow.
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        round_trip(&mut c, b"ping").await;

        // The next gap due, and dropping off: replies still flow.
        proxy.dropper.next.lock().await.0 = Instant::now();
        proxy.set_dropping(false);
        round_trip(&mut c, b"pong").await;

        // Dropping on: the reply is lost, the connection closed.
        proxy.set_dropping(true);
        c.write_all(b"lost").await.unwrap();
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest).await;
        assert!(read.is_err() || rest.is_empty(), "{rest:?}");
        assert_eq!(proxy.stats().drops.load(Ordering::Relaxed), 1);

        // A drop starts a new gap: the next reply, on a new connection, flows.
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        round_trip(&mut c, b"next").await;
        assert_eq!(proxy.stats().drops.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.stats().connections.load(Ordering::Relaxed), 2);

        // Dropped, the proxy stops accepting.
        drop(proxy);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after the drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn round_trip(c: &mut TcpStream, message: &[u8; 4]) {
        c.write_all(message).await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, message);
    }
}
