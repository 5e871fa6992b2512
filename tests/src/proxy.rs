//! A TCP proxy on loopback that can be cut and restored, to make the database
//! "die" for one process only: the PostgreSQL server is shared by every test
//! running in parallel, so it is never stopped.
//!
//! While cut, every connection that was open is closed (both ways) and new
//! ones are accepted and closed at once, so a client sees its connection
//! break without waiting for a timeout; `restore` forwards again.
//!
//! The proxy also notes when bytes last went through, so a test can wait
//! until a client's pooled connections are idle (`wait_quiet`): a pool
//! tests its connections when they come back to it, and a cut during that
//! test would take a connection out of the pool before it is reused.

use crate::env::postgres_port;
use crate::wait;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// Whether the proxy is cut, and how many cuts there were. Both change
    /// together under this lock, so a connection is either counted in `open`
    /// before a cut (and closed by it) or refused.
    state: Mutex<State>,
    /// The number of cuts so far: each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// Connections being forwarded (or connecting upstream).
    open: watch::Sender<usize>,
    /// When bytes last went through, either way.
    last_traffic: Mutex<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    cut: bool,
    cuts: u64,
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

impl Proxy {
    /// A proxy to the shared PostgreSQL server, forwarding.
    pub async fn to_postgres() -> Proxy {
        Proxy::start(([127, 0, 0, 1], postgres_port()).into()).await
    }

    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy's port");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                cut: false,
                cuts: 0,
            }),
            cuts: watch::Sender::new(0),
            open: watch::Sender::new(0),
            last_traffic: Mutex::new(Instant::now()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections forwarded right now.
    pub fn open_connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Waits until no byte has gone through for `quiet` (so every
    /// connection has been idle at least that long); panics if that does not
    /// happen within `quiet` plus ten seconds.
    pub async fn wait_quiet(&self, quiet: Duration) {
        let what = format!("no traffic through the proxy for {quiet:?}");
        wait::until_true(&what, quiet + Duration::from_secs(10), || async {
            self.shared.since_traffic() >= quiet
        })
        .await;
    }

    /// Closes every open connection both ways and closes new ones on accept;
    /// returns once every connection that was open is closed.
    pub async fn cut(&self) {
        {
            let mut state = self.shared.lock();
            state.cut = true;
            state.cuts += 1;
            self.shared.cuts.send_replace(state.cuts);
        }
        let mut open = self.shared.open.subscribe();
        open.wait_for(|n| *n == 0)
            .await
            .expect("the proxy owns the sender");
    }

    /// Forwards new connections again (the ones cut stay closed).
    pub fn restore(&self) {
        self.shared.lock().cut = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // End the forwarding tasks too.
        let mut state = self.shared.lock();
        state.cut = true;
        state.cuts += 1;
        self.shared.cuts.send_replace(state.cuts);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.last_traffic.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn since_traffic(&self) -> Duration {
        self.last_traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, say: do not spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let admitted = {
            let state = shared.lock();
            if state.cut {
                None
            } else {
                shared.open.send_modify(|n| *n += 1);
                Some(state.cuts)
            }
        };
        match admitted {
            // Closed at once: the client sees its connection end.
            None => drop(client),
            Some(cuts) => {
                let guard = OpenGuard(shared.clone());
                tokio::spawn(forward(client, cuts, guard));
            }
        }
    }
}

/// Forwards until either side closes or the proxy is cut (dropping both
/// sockets closes them).
async fn forward(client: TcpStream, cuts_at_start: u64, guard: OpenGuard) {
    let shared = &guard.0;
    let mut cuts = shared.cuts.subscribe();
    tokio::select! {
        _ = cuts.wait_for(|c| *c != cuts_at_start) => {}
        _ = async {
            let Ok(server) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, shared),
                pump(server_read, client_write, shared),
            );
        } => {}
    }
    // Both sockets are dropped (closed) by now; the guard goes last.
    drop(guard);
}

/// Copies one way until end of stream or an error, then closes the write side.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shared.touch();
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                shared.touch();
            }
        }
    }
    let _ = to.shutdown().await;
}
