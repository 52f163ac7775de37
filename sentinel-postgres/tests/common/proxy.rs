//! A TCP proxy in front of PostgreSQL that counts round trips, by reading the frontend protocol.
//!
//! Every request the client then waits on ends with a `Sync` message (extended protocol) or is a
//! simple `Query`; the proxy classifies each by what came since the previous `Sync`:
//!
//! - **statement**: a `Sync` after an `Execute`, or a simple `Query`: one statement run;
//! - **prepare**: a `Sync` after a `Parse` but no `Execute`: sqlx preparing a statement the first
//!   time a connection sees it (cached afterwards);
//! - **ping**: a bare `Sync`: sqlx's pool checks a connection that way when it is returned (off
//!   the caller's path) and, if configured, before handing it out.
//!
//! Counting the wire instead of assuming is what makes "one statement, one round trip" checkable.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sentinel_postgres::PostgresStore;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Round trips seen so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Statements run (extended-protocol executions and simple queries).
    pub statements: u64,
    /// Prepare-only exchanges.
    pub prepares: u64,
    /// Bare syncs (pool liveness pings).
    pub pings: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            statements: self.statements - earlier.statements,
            prepares: self.prepares - earlier.prepares,
            pings: self.pings - earlier.pings,
        }
    }

    /// Round trips a caller waited on: statements and prepares.
    pub fn waited(self) -> u64 {
        self.statements + self.prepares
    }
}

#[derive(Debug, Default)]
struct Counters {
    statements: AtomicU64,
    prepares: AtomicU64,
    pings: AtomicU64,
    /// While set, new connections are closed at once (a server that refuses them).
    refusing: AtomicBool,
    /// Connections closed at once while refusing.
    refused: AtomicU64,
    /// The stall switches of the open connections that sent a `LISTEN`.
    listeners: std::sync::Mutex<Vec<Arc<AtomicBool>>>,
}

/// The running proxy; dropping it stops accepting (open connections end with their peers).
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.refusing.load(Ordering::SeqCst) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let counters = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = relay(client, server, counters).await;
                    }
                });
            }
        });
        Ok(CountingProxy {
            addr,
            counters,
            accept,
        })
    }

    /// A pool of `max` connections (with [`PostgresStore::pool_options`]) to the server of
    /// `options`, through a new proxy, in clear whatever TLS features sqlx was built with: the
    /// proxy reads the protocol.
    pub async fn pool(
        options: &PgConnectOptions,
        max: u32,
    ) -> Result<(PgPool, Self), Box<dyn std::error::Error>> {
        let upstream = (options.get_host(), options.get_port())
            .to_socket_addrs()?
            .next()
            .ok_or("the server's address does not resolve")?;
        let proxy = Self::start(upstream).await?;
        let pool = PostgresStore::pool_options()
            .max_connections(max)
            .connect_with(
                options
                    .clone()
                    .host("127.0.0.1")
                    .port(proxy.port())
                    .ssl_mode(PgSslMode::Disable),
            )
            .await?;
        Ok((pool, proxy))
    }

    /// The port to connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on (`true`) or no longer, closes new connections at once, as a server that
    /// refuses them; open connections are left alone.
    pub fn refuse(&self, refuse: bool) {
        self.counters.refusing.store(refuse, Ordering::SeqCst);
    }

    /// The connections closed at once so far (see [`CountingProxy::refuse`]).
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// The connections that sent a `LISTEN` so far forward nothing more either way (what is sent
    /// is lost) and stay open: flows a NAT forgot without resetting them. Later connections are
    /// not touched.
    pub fn stall_listeners(&self) {
        for stalled in self.counters.listeners.lock().unwrap().drain(..) {
            stalled.store(true, Ordering::SeqCst);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        Counts {
            statements: self.counters.statements.load(Ordering::SeqCst),
            prepares: self.counters.prepares.load(Ordering::SeqCst),
            pings: self.counters.pings.load(Ordering::SeqCst),
        }
    }
}

async fn relay(client: TcpStream, server: TcpStream, counters: Arc<Counters>) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let stall = Arc::new(AtomicBool::new(false));
    let stalled = {
        let stall = Arc::clone(&stall);
        move || stall.load(Ordering::SeqCst)
    };
    let down = tokio::spawn({
        let stalled = stalled.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = server_read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if !stalled() && client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
        }
    });
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = client_read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &counters);
        if std::mem::take(&mut parser.listened) {
            counters.listeners.lock().unwrap().push(Arc::clone(&stall));
        }
        if !stalled() {
            server_write.write_all(&buf[..n]).await?;
        }
    }
    let _ = server_write.shutdown().await;
    let _ = down.await;
    Ok(())
}

/// Splits the frontend byte stream into messages: untyped startup packets (`SSLRequest`,
/// `StartupMessage`) first, then typed ones (one type byte, an i32 length that counts itself).
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
    started: bool,
    saw_parse: bool,
    saw_execute: bool,
    /// Whether a simple query starting with `LISTEN` went by.
    listened: bool,
}

const PROTOCOL_3: u32 = 196_608;

impl Parser {
    fn feed(&mut self, bytes: &[u8], counters: &Counters) {
        self.pending.extend_from_slice(bytes);
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.pending.len() < header {
                return;
            }
            let at = header - 4;
            let len = u32::from_be_bytes([
                self.pending[at],
                self.pending[at + 1],
                self.pending[at + 2],
                self.pending[at + 3],
            ]) as usize;
            let total = at + len;
            if len < 4 || self.pending.len() < total {
                return;
            }
            if self.started {
                self.listened |=
                    self.pending[0] == b'Q' && self.pending[5..total].starts_with(b"LISTEN");
                self.message(self.pending[0], counters);
            } else if len >= 8 {
                let code = u32::from_be_bytes([
                    self.pending[4],
                    self.pending[5],
                    self.pending[6],
                    self.pending[7],
                ]);
                self.started = code == PROTOCOL_3;
            }
            self.pending.drain(..total);
        }
    }

    fn message(&mut self, kind: u8, counters: &Counters) {
        match kind {
            b'P' => self.saw_parse = true,
            b'E' => self.saw_execute = true,
            b'Q' => {
                counters.statements.fetch_add(1, Ordering::SeqCst);
            }
            b'S' => {
                let counter = if self.saw_execute {
                    &counters.statements
                } else if self.saw_parse {
                    &counters.prepares
                } else {
                    &counters.pings
                };
                counter.fetch_add(1, Ordering::SeqCst);
                self.saw_parse = false;
                self.saw_execute = false;
            }
            _ => {}
        }
    }
}
