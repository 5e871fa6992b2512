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
//! - [`nats`]: the same path's broker messages through nats-server itself,
//!   its clients doing nothing: what the broker the contract names costs
//!   before any gateway work.
//!
//! A real server that takes the same messages through the same sockets
//! cannot spend less CPU than these do, short of handling several events
//! per wake-up (which 1 ms apart they rarely allow), so each bounds from
//! below what its system can spend per message here.

pub mod fanout;
mod inbox;
pub mod nats;
pub mod path;
mod sessions;
mod window;

pub use inbox::{serve_inboxes, Inbox};
pub use sessions::{
    count_sessions, frame, hold_sessions, latency_line, stamp_of, Latencies, STAMP,
};
pub use window::{MachineWindow, Pacer, Usage};

use crate::measure;
use crate::process::die_with_parent;
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

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
    /// `GOMAXPROCS` of the nats-server the broker's floor starts (the
    /// stack's setting; unset, Go's own).
    #[arg(long)]
    pub nats_procs: Option<usize>,
}

#[cfg(test)]
impl FloorArgs {
    /// A run of a fraction of a second for tests: three channels of two,
    /// 500 msg/s, 10 messages of warm-up and 50 in the window.
    pub fn short(nodes: usize, frame_bytes: usize) -> FloorArgs {
        FloorArgs {
            channels: 3,
            members: 2,
            nodes,
            rate: 500.0,
            warmup: 0.02,
            seconds: 0.1,
            frame_bytes,
            nats_procs: None,
        }
    }
}

/// A gateway's MESSAGE_CREATE frame in the latency scenario is about this
/// size; 100 bytes measured the same CPU here.
pub const FRAME_BYTES: usize = 300;

/// What both floors measured, for a run's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorResult {
    pub fanout: fanout::FanoutResult,
    pub path: path::PathResult,
    /// None when nats-server could not be measured; the other floors stand.
    pub nats: Option<nats::NatsPathResult>,
}

impl FloorResult {
    pub async fn measure(args: &FloorArgs) -> Result<FloorResult, FloorError> {
        crate::process::raise_nofile_limit();
        Ok(FloorResult {
            fanout: fanout::run(args).await?,
            path: path::run(args).await?,
            nats: nats::run(args)
                .await
                .inspect_err(|e| eprintln!("[otako-bench] no floor of nats-server: {e}"))
                .ok(),
        })
    }

    pub fn table(&self) -> String {
        format!(
            "{}\n{}\n{}",
            fanout::table(&self.fanout),
            path::table(&self.path),
            self.nats.as_ref().map_or(String::new(), nats::table),
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
    #[arg(long, default_value_t = FRAME_BYTES)]
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
    #[error("the broker heard from node {0}, past the nodes it serves")]
    BadNode(u8),
    #[error("the broker did not hear from every node and the driver")]
    Unheard,
    #[error(transparent)]
    Histogram(#[from] crate::latency::HistogramError),
    #[error("reading a floor process's CPU time: {0}")]
    Proc(#[from] measure::ProcError),
    #[error("the sessions read {got} bytes, not the {sent} the messages make")]
    Miscount { got: u64, sent: u64 },
    #[error("{got} replies came back for {sent} requests")]
    Replies { got: u64, sent: u64 },
    #[error("a node received {got} of the {sent} events")]
    Undelivered { got: u64, sent: u64 },
    #[error("nats-server: {0}")]
    Nats(String),
}

/// Waits until `replies` counts every one of the `sent` requests (10 s at
/// most, checked every 5 ms); fewer fail the run.
pub async fn all_answered(
    replies: &std::sync::atomic::AtomicU64,
    sent: u64,
) -> Result<(), FloorError> {
    use std::sync::atomic::Ordering;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while replies.load(Ordering::Relaxed) < sent && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let got = replies.load(Ordering::Relaxed);
    if got != sent {
        return Err(FloorError::Replies { got, sent });
    }
    Ok(())
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
