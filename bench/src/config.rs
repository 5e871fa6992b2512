//! Command-line flags. A scenario sets defaults for every knob of a run;
//! any flag given overrides its scenario's value.

use crate::seed::Layout;
use crate::workload::Rate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "otako-bench",
    version,
    about = "Measures the Otako gateway (sessions held, memory and CPU per session and \
             delivery, deliveries per second, end-to-end latency) and nats-server's \
             WebSocket listener doing the same work"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a benchmark and write its report (table, JSON, PNG).
    Run(Box<RunArgs>),
    /// A client process (started by `run`; speaks JSON lines on stdin/stdout).
    Clients,
    /// The kernel's floor for the latency scenario: the peer's job and the
    /// contract's path done by processes that only move bytes.
    Floor(crate::floor::FloorArgs),
    /// A process of the floor (started by `floor`).
    #[command(hide = true)]
    FloorHop(crate::floor::HopArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 19,000 idle sessions on one node; memory curve at 1k..19k.
    Idle,
    /// 100,000 sessions held by six nodes.
    Nodes,
    /// One channel of 10,000 sessions, messages as fast as delivered.
    Fanout,
    /// 1,000 messages/s over 1,000 channels of 10, two nodes, dispatch drive.
    Latency,
    /// As `latency`, through the backend's HTTP API.
    LatencyHttp,
    /// Direct messages: 2,000 messages/s over 20,000 channels of 2 (10,000
    /// users in 4 each, layout dm:4), two nodes, dispatch drive.
    Dm,
    /// A few hundred sessions for a few seconds: the test suite's check.
    Smoke,
    /// 10,000 sessions on one node drop at once and all resume together.
    Storm,
    /// A fixed number of events to channels of 10 on one node run under
    /// callgrind: instructions per event, not time.
    Instructions,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Nodes => "nodes",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::LatencyHttp => "latency-http",
            Scenario::Dm => "dm",
            Scenario::Smoke => "smoke",
            Scenario::Storm => "storm",
            Scenario::Instructions => "instructions",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drive {
    /// No messages: sessions are only held.
    None,
    /// Rows into PostgreSQL and requests on otako.dispatch, as the backend does.
    Dispatch,
    /// POST /channels/{id}/messages on the backend.
    Http,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "smoke")]
    pub scenario: Scenario,

    /// Otako sessions (one user each).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Gateway nodes to start.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// one, small:<members>, mix:<members> (everyone's channel plus small
    /// ones), or dm:<d> (channels of 2, each user in d; d even).
    #[arg(long)]
    pub layout: Option<Layout>,
    #[arg(long, value_enum)]
    pub drive: Option<Drive>,
    /// Messages per second, or max[:window] (closed loop).
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Seconds of sending before the measuring window.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds of the measuring window.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Message content size in bytes (the send stamp included).
    #[arg(long)]
    pub payload: Option<usize>,
    /// Session counts at which memory is read, comma-separated, or "none".
    #[arg(long)]
    pub rss_steps: Option<String>,
    /// Also run the same workload against nats-server's WebSocket listener.
    #[arg(long)]
    pub peer: Option<bool>,
    /// Also measure the workload's floor (`otako-bench floor`) after the
    /// systems, in the same run (default: on for latency, latency-http and
    /// dm).
    #[arg(long)]
    pub floor: Option<bool>,
    /// Client processes (each holds at most ~18,000 sessions).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Tokio worker threads of each gateway node the bench starts (default:
    /// the machine's cores shared out over the nodes, at least one each, as
    /// a node with a CPU limit of that many cores would pick for itself).
    #[arg(long)]
    pub gateway_threads: Option<usize>,
    /// Handshakes in progress at once, per client process (the storm's
    /// reconnect has no such bound: every session comes back at once).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// NATS's `default_max_consumers` for the stack the bench starts: the
    /// consumers a stream without a limit of its own may have (-1: no
    /// limit). Default: the server's (1,000 per stream since 2.15).
    #[arg(long, allow_negative_numbers = true)]
    pub nats_max_consumers: Option<i64>,
    /// `GOMAXPROCS` of the nats-servers the bench starts, the stack's and
    /// the peer's alike (default: Go's, every core of the machine).
    #[arg(long)]
    pub nats_procs: Option<usize>,
    /// Storm: events posted to each channel while its sessions are away,
    /// which each resume then replays.
    #[arg(long)]
    pub gap_events: Option<usize>,
    /// Instructions: events measured (sent one at a time, each delivered
    /// before the next goes out).
    #[arg(long)]
    pub events: Option<usize>,

    /// Where report.json and report.png go (default target/otako-bench/<scenario>).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Measure a running stack instead of starting one: a gateway's
    /// host:port (repeat for each node).
    #[arg(long = "gateway")]
    pub gateways: Vec<String>,
    /// Pids of the running gateways (default: every process named otako-gateway).
    #[arg(long = "gateway-pid")]
    pub gateway_pids: Vec<u32>,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long, env = "OTAKO_NATS_URL")]
    pub nats_url: Option<String>,
    /// The running backend, for the HTTP drive.
    #[arg(long)]
    pub backend_url: Option<String>,
    /// The running stack's token secret (default: the development secret).
    #[arg(long, env = "OTAKO_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// The workspace root (deploy/scripts); default: where this was built.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Where otako-gateway and otako-backend-shim are (default: beside this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// PostgreSQL data folder for the started stack (shared with the tests by default).
    #[arg(long)]
    pub pg_dir: Option<PathBuf>,
    #[arg(long, env = "OTAKO_TEST_PG_PORT", default_value_t = 54329)]
    pub pg_port: u16,
    /// Skip deploy/scripts/install-deps.sh.
    #[arg(long)]
    pub no_install: bool,
}
