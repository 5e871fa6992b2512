//! The floor (`otako-bench floor`): what the kernel alone charges on this
//! machine for the latency scenario's work, measured with processes that
//! do nothing but move fixed bytes between loopback TCP sockets: one
//! thread each, blocking reads and writes, `poll(2)` where a process has
//! more than one input, `TCP_NODELAY` as the gateway and nats-server set.
//!
//! Two floors, each paced and spread over channels as the latency scenario
//! is, the bench holding the sessions' ends:
//!
//! - [`fanout`]: the peer's job. One process reads a message and writes a
//!   frame to each of the channel's members.
//! - [`path`]: the contract's path. A broker, nodes and a database stand-in
//!   pass each event along the hops Otako's event takes (request in through
//!   the broker, the node's query and row, the history append, its delivery
//!   to every node, the sessions' frames, the reply out through the broker).
//!
//! No real server can take the same messages through the same sockets for
//! less CPU than these do, so each bounds from below what its system can
//! spend per message here.

pub mod fanout;
pub mod path;

use crate::latency::{now_us, LatencySummary, Merged, Recorder};
use crate::measure;
use crate::process::die_with_parent;
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Channels; each message goes to one, in turn.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Sessions per channel.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Nodes of the path floor (the sessions alternate between them).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of sending before the measuring window.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds of the measuring window.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Bytes of each delivered frame.
    #[arg(long, default_value_t = FRAME_BYTES)]
    pub frame_bytes: usize,
}

/// A gateway's MESSAGE_CREATE frame in the latency scenario is about this
/// size; 100 bytes measured the same CPU here.
pub const FRAME_BYTES: usize = 300;

/// What both floors measured, for a run's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorResult {
    pub fanout: fanout::FanoutResult,
    pub path: path::PathResult,
}

impl FloorResult {
    pub async fn measure(args: &FloorArgs) -> Result<FloorResult, FloorError> {
        crate::process::raise_nofile_limit();
        Ok(FloorResult {
            fanout: fanout::run(args).await?,
            path: path::run(args).await?,
        })
    }

    pub fn table(&self) -> String {
        format!(
            "{}\n{}",
            fanout::table(&self.fanout),
            path::table(&self.path)
        )
    }
}

/// A floor process (`otako-bench floor-hop`, started by `floor`).
#[derive(Debug, Clone, Args)]
pub struct HopArgs {
    #[arg(long, value_enum)]
    pub role: Role,
    /// Sessions this process holds (fanout, node).
    #[arg(long, default_value_t = 0)]
    pub sessions: usize,
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Which node this is.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    #[arg(long, default_value_t = 300)]
    pub frame_bytes: usize,
    /// The broker's port (node).
    #[arg(long)]
    pub broker: Option<u16>,
    /// The database stand-in's port (node).
    #[arg(long)]
    pub db: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Fanout,
    Broker,
    Node,
    Db,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("floor socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("a floor process did not say its port: {0:?}")]
    NoPort(String),
    #[error("channel index {index} is past the {channels} channels")]
    BadChannel { index: usize, channels: usize },
    #[error("unknown path message tag {0}")]
    BadTag(u8),
    #[error("a node needs --broker and --db")]
    NoPeers,
    #[error(transparent)]
    Histogram(#[from] crate::latency::HistogramError),
    #[error("reading a floor process's CPU time: {0}")]
    Proc(#[from] measure::ProcError),
    #[error("the sessions read {got} bytes, not the {sent} the messages make")]
    Miscount { got: u64, sent: u64 },
    #[error("{got} replies came back for {sent} requests")]
    Replies { got: u64, sent: u64 },
}

/// Runs the floor process `args` names: binds its listener, says its port
/// on stdout, then serves until its input closes.
pub fn hop(args: &HopArgs) -> Result<(), FloorError> {
    crate::process::raise_nofile_limit();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::Write::flush(&mut std::io::stdout())?;
    match args.role {
        Role::Fanout => fanout::serve(listener, args),
        Role::Broker => path::broker(listener, args),
        Role::Node => path::node(listener, args),
        Role::Db => path::db(listener, args),
    }
}

/// A started floor process; it dies with the run, even one that fails
/// half-way.
pub struct Hop {
    child: Child,
    pub port: u16,
}

impl Hop {
    pub fn start(args: &[String]) -> Result<Hop, FloorError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("floor-hop")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let mut hop = Hop { child, port: 0 };
        hop.port = line
            .trim()
            .parse()
            .map_err(|_| FloorError::NoPort(line.clone()))?;
        Ok(hop)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and sleeps of a set of processes at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub sleeps: u64,
}

impl Usage {
    pub fn of(pids: &[u32]) -> Usage {
        Usage {
            cpu: measure::cpu_time_sum(pids),
            sleeps: measure::sleeps_sum(pids),
        }
    }

    /// CPU µs and sleeps per message since `earlier`.
    pub fn per_message_since(&self, earlier: &Usage, messages: u64) -> (f64, f64) {
        let n = messages.max(1) as f64;
        (
            (self.cpu - earlier.cpu).as_secs_f64() * 1e6 / n,
            (self.sleeps - earlier.sleeps) as f64 / n,
        )
    }
}

/// The machine over a window: busy and stolen cores, how late a 1 ms
/// sleep woke, and the load before.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MachineWindow {
    pub busy_cores: f64,
    pub stolen_cores: f64,
    pub wakeup_late_us: Option<LatencySummary>,
    pub loadavg_at_start: f64,
}

impl MachineWindow {
    pub fn between(
        a: &measure::MachineCpu,
        b: &measure::MachineCpu,
        wakeup_late_us: Option<LatencySummary>,
        load: f64,
    ) -> Self {
        let wall =
            b.at.zip(a.at)
                .map_or(0.0, |(b, a)| b.duration_since(a).as_secs_f64());
        let cores = |d: Duration| d.as_secs_f64() / wall.max(1e-9);
        MachineWindow {
            busy_cores: cores(b.busy_since(a)),
            stolen_cores: cores(b.stolen_since(a)),
            wakeup_late_us,
            loadavg_at_start: load,
        }
    }

    pub fn line(&self) -> String {
        let late = self.wakeup_late_us.map_or("-".into(), |w| {
            format!("{:.2} / {:.2} ms", w.p99 as f64 / 1e3, w.max as f64 / 1e3)
        });
        format!(
            "machine: {:.2} busy / {:.2} stolen cores, wake-up late p99 / max {late}, load {:.2} at start",
            self.busy_cores, self.stolen_cores, self.loadavg_at_start
        )
    }
}

/// Paces messages as the latency scenario does: `warmup` seconds' worth,
/// then the window's, each on its tick.
pub struct Pacer {
    ticks: tokio::time::Interval,
    pub warmup: u64,
    pub window: u64,
}

impl Pacer {
    pub fn new(args: &FloorArgs) -> Pacer {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Pacer {
            ticks,
            warmup: (args.warmup * args.rate) as u64,
            window: (args.seconds * args.rate) as u64,
        }
    }

    /// Sends `count` messages, each given its send stamp.
    pub async fn send(
        &mut self,
        count: u64,
        mut send: impl FnMut(i64) -> Result<(), FloorError>,
    ) -> Result<(), FloorError> {
        for _ in 0..count {
            self.ticks.tick().await;
            send(now_us())?;
        }
        Ok(())
    }
}

/// Send stamp to a session's read, for the messages sent in the window:
/// every frame starts with its message's send time (`latency::now_us`, Unix
/// µs, which all processes share), as the bench's real messages do.
pub struct Latencies {
    window: std::sync::Mutex<(i64, i64)>,
    recorder: std::sync::Mutex<Recorder>,
}

impl Latencies {
    pub fn new() -> Arc<Latencies> {
        Arc::new(Latencies {
            window: std::sync::Mutex::new((i64::MAX, i64::MAX)),
            recorder: Default::default(),
        })
    }

    /// Records the messages sent from now on, until `close`.
    pub fn open(&self) {
        *self.window.lock().expect("not poisoned") = (now_us(), i64::MAX);
    }

    pub fn close(&self) {
        self.window.lock().expect("not poisoned").1 = now_us();
    }

    fn record(&self, now: i64, sent: i64) {
        let (start, end) = *self.window.lock().expect("not poisoned");
        if (start..end).contains(&sent) {
            self.recorder
                .lock()
                .expect("not poisoned")
                .record(now, sent);
        }
    }

    pub fn summary(&self) -> Result<Option<LatencySummary>, FloorError> {
        let mut merged = Merged::default();
        merged.add(&self.recorder.lock().expect("not poisoned").export()?)?;
        Ok(merged.summary())
    }
}

/// The sessions' ends: connects `count` sockets, the k-th to `port_of(k)`,
/// each read by a task that records each frame's latency and returns the
/// bytes it read once its socket closes.
pub async fn hold_sessions(
    count: usize,
    port_of: impl Fn(usize) -> u16,
    frame_bytes: usize,
    latencies: &Arc<Latencies>,
) -> Result<tokio::task::JoinSet<u64>, FloorError> {
    let frame = frame_bytes.max(STAMP);
    let mut readers = tokio::task::JoinSet::new();
    for k in 0..count {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port_of(k))).await?;
        let latencies = latencies.clone();
        readers.spawn(async move {
            let mut buf = vec![0u8; 8192.max(2 * frame)];
            let (mut held, mut bytes) = (0, 0u64);
            while let Ok(n @ 1..) = socket.read(&mut buf[held..]).await {
                let now = now_us();
                bytes += n as u64;
                held += n;
                let whole = held - held % frame;
                for f in buf[..whole].chunks_exact(frame) {
                    latencies.record(now, stamp_of(f));
                }
                buf.copy_within(whole..held, 0);
                held -= whole;
            }
            bytes
        });
    }
    Ok(readers)
}

/// Bytes of a send stamp: the front of each frame and of each message
/// between the floor's processes.
pub const STAMP: usize = 8;

pub fn stamp_of(b: &[u8]) -> i64 {
    i64::from_le_bytes(b[..STAMP].try_into().expect("a stamp's 8 bytes"))
}

/// A frame of `frame_bytes` (at least a stamp) to stamp and send.
pub fn frame(frame_bytes: usize) -> Vec<u8> {
    vec![b'x'; frame_bytes.max(STAMP)]
}

/// Waits for every session to close (its process ended) and checks that
/// they read exactly `sent` bytes in all.
pub async fn count_sessions(
    mut readers: tokio::task::JoinSet<u64>,
    sent: u64,
) -> Result<(), FloorError> {
    let mut got = 0;
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(bytes) = readers.join_next().await {
            got += bytes.unwrap_or(0);
        }
    })
    .await;
    if counted.is_err() || got != sent {
        return Err(FloorError::Miscount { got, sent });
    }
    Ok(())
}

/// The latency of a floor's frames, as the bench reports a system's.
pub fn latency_line(l: Option<LatencySummary>) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    l.map_or("latency: none recorded".into(), |l| {
        format!(
            "latency p50 / p99 / p99.9 / max: {:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        )
    })
}

/// A socket's unread bytes, taken whole messages at a time.
pub struct Inbox {
    pub socket: TcpStream,
    buf: Vec<u8>,
    held: usize,
}

impl Inbox {
    pub fn new(socket: TcpStream) -> Inbox {
        Inbox {
            socket,
            buf: vec![0; 4096],
            held: 0,
        }
    }

    /// One read(2), then `each` for every whole `size`-byte message held.
    /// False once the peer has closed.
    pub fn read(
        &mut self,
        size: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), FloorError>,
    ) -> Result<bool, FloorError> {
        let n = self.socket.read(&mut self.buf[self.held..])?;
        if n == 0 {
            return Ok(false);
        }
        self.held += n;
        let whole = self.held - self.held % size;
        for message in self.buf[..whole].chunks_exact(size) {
            each(message)?;
        }
        self.buf.copy_within(whole..self.held, 0);
        self.held -= whole;
        Ok(true)
    }
}

/// Serves `inboxes` until any of them closes (the run is over): waits
/// until some are readable, reads each once and hands every whole
/// `size`-byte message to `handle` with the index of its inbox.
pub fn serve_inboxes(
    inboxes: &mut [Inbox],
    size: usize,
    mut handle: impl FnMut(usize, &[u8]) -> Result<(), FloorError>,
) -> Result<(), FloorError> {
    loop {
        let readable = ready(inboxes)?;
        for (from, (inbox, _)) in inboxes
            .iter_mut()
            .zip(readable)
            .enumerate()
            .filter(|(_, (_, r))| *r)
        {
            if !inbox.read(size, |m| handle(from, m))? {
                return Ok(());
            }
        }
    }
}

/// Blocks until at least one of `inboxes` is readable; which ones are.
fn ready(inboxes: &[Inbox]) -> Result<Vec<bool>, FloorError> {
    let mut fds: Vec<libc::pollfd> = inboxes
        .iter()
        .map(|i| libc::pollfd {
            fd: i.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
    Ok(fds.iter().map(|f| f.revents != 0).collect())
}
