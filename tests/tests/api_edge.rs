//! The backend's HTTP edge under connection attacks: headers sent slowly
//! are cut off at the header timeout, connections over the cap wait in the
//! accept backlog instead of taking file descriptors, and a normal request
//! is served meanwhile.

use otako_e2e::{wait, Stack};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Samples the process's open file descriptors until dropped; keeps the peak.
struct FdWatch {
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FdWatch {
    fn start(pid: u32) -> FdWatch {
        let peak = Arc::new(AtomicUsize::new(open_fds(pid)));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(open_fds(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        FdWatch { peak, task }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One attacking connection: sends `first` and then, if `trickle`, one more
/// header line every 500 ms, never ending the head. Returns how long after
/// connecting the server closed it (None: still open at `give_up`).
async fn attack(
    addr: std::net::SocketAddr,
    first: &'static [u8],
    trickle: bool,
    give_up: Duration,
    open: Arc<AtomicUsize>,
) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let started = Instant::now();
    open.fetch_add(1, Ordering::Relaxed);
    let _ = s.write_all(first).await;
    let mut buf = [0u8; 256];
    let closed = loop {
        if started.elapsed() >= give_up {
            break None;
        }
        let tick = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break Some(started.elapsed()),
                // The server may answer 408 before closing: read on.
                Ok(_) => {}
            },
            () = tick => {
                if trickle && s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break Some(started.elapsed());
                }
            }
        }
    };
    open.fetch_sub(1, Ordering::Relaxed);
    closed
}

async fn healthz(addr: std::net::SocketAddr, timeout: Duration) -> Result<u16, String> {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_header_connections_are_cut_off_at_the_header_timeout() {
    const CONNECTIONS: usize = 2000;
    let header_timeout = Duration::from_secs(2);
    let mut stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_HTTP_HEADER_TIMEOUT_MS", "2000")
        // Room for every attacker: this test is about the timeout.
        .backend_env("OTAKO_HTTP_MAX_CONNECTIONS", "4096")
        .build()
        .await;
    let backend = stack.backend.as_mut().unwrap();
    let addr = backend.addr;
    let pid = backend.proc().pid().expect("the backend runs");
    assert_eq!(healthz(addr, Duration::from_secs(5)).await, Ok(200));
    let baseline = open_fds(pid);
    let fds = FdWatch::start(pid);

    let open = Arc::new(AtomicUsize::new(0));
    let give_up = Duration::from_secs(30);
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(attack(
                addr,
                b"GET /healthz HTTP/1.1\r\nHost: otako\r\n",
                true,
                give_up,
                open.clone(),
            ))
        })
        .collect();
    wait::until_true(
        "most attackers to be connected",
        Duration::from_secs(20),
        || {
            let n = open.load(Ordering::Relaxed);
            async move { n >= CONNECTIONS / 2 }
        },
    )
    .await;
    // Served while the attack is on.
    let started = Instant::now();
    let status = healthz(addr, Duration::from_secs(10)).await;
    assert_eq!(status, Ok(200), "a normal request during the attack");
    let served_in = started.elapsed();

    let mut worst = Duration::ZERO;
    let mut still_open = 0;
    for a in attackers {
        match a.await.unwrap() {
            Some(d) => worst = worst.max(d),
            None => still_open += 1,
        }
    }
    assert_eq!(still_open, 0, "connections still open after {give_up:?}");
    // The timer starts when the backend first reads the connection, which on
    // two busy cores can be a few seconds after the client connected.
    assert!(
        worst <= header_timeout + Duration::from_secs(6),
        "the slowest connection was closed after {worst:?} (header timeout {header_timeout:?})"
    );
    assert!(
        fds.peak() >= baseline + CONNECTIONS / 2,
        "the attack reached the backend: peak {} fds, baseline {baseline}",
        fds.peak()
    );
    wait::until_true(
        "the backend's file descriptors to return to baseline",
        Duration::from_secs(10),
        || async move { open_fds(pid) <= baseline + 4 },
    )
    .await;
    println!(
        "slow headers: {CONNECTIONS} connections, fds {baseline} -> peak {} -> {}, \
         slowest closed after {worst:?}, normal request served in {served_in:?}",
        fds.peak(),
        open_fds(pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_in_the_backlog() {
    const CAP: usize = 100;
    const CONNECTIONS: usize = 200;
    let mut stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_HTTP_HEADER_TIMEOUT_MS", "2000")
        .backend_env("OTAKO_HTTP_MAX_CONNECTIONS", &CAP.to_string())
        .build()
        .await;
    let backend = stack.backend.as_mut().unwrap();
    let addr = backend.addr;
    let pid = backend.proc().pid().expect("the backend runs");
    assert_eq!(healthz(addr, Duration::from_secs(5)).await, Ok(200));
    let baseline = open_fds(pid);
    let fds = FdWatch::start(pid);

    // Idle connections that send nothing at all.
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (open, closed) = (open.clone(), closed.clone());
            tokio::spawn(async move {
                let d = attack(addr, b"", false, Duration::from_secs(30), open).await;
                closed.lock().unwrap().push(d);
            })
        })
        .collect();
    wait::until_true(
        "every attacker to be connected",
        Duration::from_secs(20),
        || {
            let n = open.load(Ordering::Relaxed) + closed.lock().unwrap().len();
            async move { n >= CONNECTIONS }
        },
    )
    .await;
    // Behind the whole queue, yet served once the idle ones time out.
    assert_eq!(
        healthz(addr, Duration::from_secs(20)).await,
        Ok(200),
        "a normal request behind {CONNECTIONS} idle connections"
    );
    for a in attackers {
        a.await.unwrap();
    }
    let closed = closed.lock().unwrap().clone();
    assert!(
        closed.iter().all(Option::is_some),
        "every idle connection is closed: {} still open",
        closed.iter().filter(|c| c.is_none()).count()
    );
    assert!(
        fds.peak() <= baseline + CAP + 8,
        "at most {CAP} connections held at once: peak {} fds, baseline {baseline}",
        fds.peak()
    );
    assert!(
        fds.peak() >= baseline + CAP / 2,
        "the cap was reached: peak {} fds, baseline {baseline}",
        fds.peak()
    );
}

/// Reads until the server closes the connection; returns what it sent and
/// how long that took (None: still open at `give_up`).
async fn read_until_closed(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    give_up: Duration,
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + give_up, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_slowly_is_cut_off_at_the_body_timeout() {
    let stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_HTTP_BODY_TIMEOUT_MS", "2000")
        .build()
        .await;
    let addr = stack.backend.as_ref().unwrap().addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /users HTTP/1.1\r\nHost: otako\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"username\": \"",
    )
    .await
    .unwrap();
    // One byte every 200 ms: 1,000 bytes would take over three minutes.
    let (mut reader, mut writer) = s.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (answer, closed) = read_until_closed(&mut reader, Duration::from_secs(20)).await;
    trickle.abort();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that does not arrive in time is answered 408: {answer:?}"
    );
    let closed = closed.expect("the connection is closed after the 408");
    assert!(
        closed <= Duration::from_secs(2) + Duration::from_secs(5),
        "closed after {closed:?} (body timeout 2 s)"
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_HTTP_HEADER_TIMEOUT_MS", "2000")
        .build()
        .await;
    let addr = stack.backend.as_ref().unwrap().addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: otako\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let closed = closed.expect("an idle connection does not stay open");
    assert!(
        closed <= Duration::from_secs(2) + Duration::from_secs(5),
        "closed after {closed:?} (header timeout 2 s)"
    );
}
