//! Command-line flags, each also an environment variable (see CONTRACT.md).

use crate::history::HistoryLimits;
use crate::resume::ResumeLimits;
use clap::{Parser, Subcommand};
use otako_common::cli::CommonArgs;
use std::net::SocketAddr;
use std::time::Duration;

/// A retry of an event is recognised for this long (the contract's at
/// least 10 minutes).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Parser)]
#[command(
    name = "otako-gateway",
    version,
    // The shared flag has no help of its own: each side names the other.
    mut_arg("token_secret", |arg| arg.help("Secret that signs session tokens (shared with the backend)")),
    about = "Otako's dispatch-only WebSocket gateway"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// NATS, database, token secret, dev mode, --migrate and log format: the
    /// same flags as the backend's.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Header and body timeouts and the connection cap of the admin listener.
    #[command(flatten)]
    pub http: otako_common::http::LimitArgs,

    /// Client WebSocket listener (the socket is at /gateway).
    #[arg(long, env = "OTAKO_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub gateway_listen: SocketAddr,

    /// Admin listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "OTAKO_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// This node's name in logs, error records and NATS; defaults to the hostname.
    #[arg(long, env = "OTAKO_NODE_ID")]
    pub node_id: Option<String>,

    /// Sessions one user may hold across the whole cluster.
    #[arg(long, env = "OTAKO_MAX_SESSIONS_PER_USER", default_value_t = 10)]
    pub max_sessions_per_user: u32,

    #[arg(long, env = "OTAKO_HEARTBEAT_INTERVAL_MS", default_value_t = 30_000)]
    pub heartbeat_interval_ms: u64,

    /// On shutdown, reconnect requests (op 7) are spread over this window so
    /// clients do not all reconnect at once.
    #[arg(long, env = "OTAKO_DRAIN_WINDOW_MS", default_value_t = 10_000)]
    pub drain_window_ms: u64,

    /// Frames a session may have queued before it counts as too slow (4011).
    #[arg(long, env = "OTAKO_SESSION_QUEUE", default_value_t = 512)]
    pub session_queue: usize,

    /// Dispatch requests handled at once by this node.
    #[arg(long, env = "OTAKO_DISPATCH_CONCURRENCY", default_value_t = 64)]
    pub dispatch_concurrency: usize,

    /// Replicas of the gateway's JetStream state (error stream, KV buckets);
    /// set to the NATS cluster size, at most 5.
    #[arg(long, env = "OTAKO_JETSTREAM_REPLICAS", default_value_t = 1)]
    pub jetstream_replicas: usize,

    /// A cursor at most this old resumes (seconds).
    #[arg(long, env = "OTAKO_RESUME_WINDOW_S", default_value_t = 600)]
    pub resume_window_s: u64,

    /// A resume that would replay more events than this starts fresh
    /// instead (`resumed:false`).
    #[arg(long, env = "OTAKO_RESUME_MAX_EVENTS", default_value_t = 10_000)]
    pub resume_max_events: usize,

    /// How long the event history keeps events (seconds); at least the
    /// resume window and the 10-minute retry guarantee.
    #[arg(long, env = "OTAKO_HISTORY_MAX_AGE_S", default_value_t = 900)]
    pub history_max_age_s: u64,

    /// Bytes the event history may hold; past it the oldest events go.
    #[arg(long, env = "OTAKO_HISTORY_MAX_BYTES", default_value_t = 1 << 30)]
    pub history_max_bytes: i64,

    /// Session starts (database, session limit, replay) in progress at once;
    /// more wait, and after `start_queue_ms` are closed with 1013.
    #[arg(long, env = "OTAKO_MAX_CONCURRENT_STARTS", default_value_t = 64)]
    pub max_concurrent_starts: usize,

    /// How long a session start waits for a start slot before it is closed
    /// with 1013 (milliseconds).
    #[arg(long, env = "OTAKO_START_QUEUE_MS", default_value_t = 10_000)]
    pub start_queue_ms: u64,

    /// How often the node compares its sessions' token generations with the
    /// database, closing revoked ones even if it missed the revocation
    /// notice (milliseconds).
    #[arg(long, env = "OTAKO_TOKEN_RECHECK_MS", default_value_t = 30_000)]
    pub token_recheck_ms: u64,

    /// How often the backend is pinged ($SRV.PING.otako-backend-shim).
    #[arg(long, env = "OTAKO_PING_INTERVAL_MS", default_value_t = 5000)]
    pub ping_interval_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations and exit.
    Migrate,
}

impl Args {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(100))
    }

    pub fn resume_limits(&self) -> ResumeLimits {
        ResumeLimits {
            window: Duration::from_secs(self.resume_window_s),
            max_events: self.resume_max_events.max(1),
        }
    }

    pub fn history_limits(&self) -> HistoryLimits {
        // The history keeps what a resume and a retry's deduplication need.
        let max_age = Duration::from_secs(self.history_max_age_s.max(self.resume_window_s));
        HistoryLimits {
            replicas: self.jetstream_replicas,
            max_age,
            max_bytes: self.history_max_bytes,
            duplicate_window: DUPLICATE_WINDOW.min(max_age),
        }
    }

    pub fn drain_window(&self) -> Duration {
        Duration::from_millis(self.drain_window_ms)
    }

    pub fn node_id(&self) -> String {
        if let Some(id) = self.node_id.clone().filter(|s| !s.is_empty()) {
            return id;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("gw-{:08x}", rand::random::<u32>()))
    }
}
