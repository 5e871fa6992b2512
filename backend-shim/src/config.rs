//! Command-line flags, each also an environment variable (see CONTRACT.md).

use crate::limits::{Limits, Rate};
use clap::{Parser, Subcommand};
use otako_common::cli::CommonArgs;
use otako_common::http::LimitArgs;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "otako-backend-shim",
    version,
    // The shared flag has no help of its own: each side names the other.
    mut_arg("token_secret", |arg| arg.help("Secret that signs session tokens (shared with the gateways)")),
    about = "Stands in for Otako's HTTP API: writes, the outbox, and dispatch to the gateways"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// NATS, database, token secret, dev mode, --migrate and log format: the
    /// same flags as the gateway's.
    #[command(flatten)]
    pub common: CommonArgs,

    #[arg(long, env = "OTAKO_HTTP_LISTEN", default_value = "0.0.0.0:8000")]
    pub http_listen: SocketAddr,

    /// Attempts per event before it is dropped (the seed's X).
    #[arg(long, env = "OTAKO_DISPATCH_MAX_ATTEMPTS", default_value_t = 5)]
    pub dispatch_max_attempts: u32,

    /// How long one attempt waits for EVENT_ROUNDTRIP.
    #[arg(long, env = "OTAKO_DISPATCH_TIMEOUT_MS", default_value_t = 2000)]
    pub dispatch_timeout_ms: u64,

    /// Backoff after the first failed attempt; it doubles per attempt (capped at 30 s).
    #[arg(long, env = "OTAKO_DISPATCH_BACKOFF_MS", default_value_t = 250)]
    pub dispatch_backoff_ms: u64,

    /// How long a replica's hold on a channel's outbox lasts without
    /// renewal: a replica that dies hands its channels to the others within
    /// this plus one outbox poll (milliseconds).
    #[arg(long, env = "OTAKO_OUTBOX_LEASE_MS", default_value_t = 5_000)]
    pub outbox_lease_ms: u64,

    /// How often the gateways are pinged ($SRV.PING.otako-gateway).
    #[arg(long, env = "OTAKO_PING_INTERVAL_MS", default_value_t = 5000)]
    pub ping_interval_ms: u64,

    /// Lifetime of issued tokens.
    #[arg(long, env = "OTAKO_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub token_ttl_secs: i64,

    /// Header and body timeouts and the connection cap of the HTTP listener.
    #[command(flatten)]
    pub http: LimitArgs,

    /// Messages one user may post per second, on average (0: no limit).
    #[arg(long, env = "OTAKO_MESSAGE_RATE_PER_S", default_value_t = 5.0)]
    pub message_rate_per_s: f64,

    /// Messages one user may post at once before the rate applies (0: no limit).
    #[arg(long, env = "OTAKO_MESSAGE_BURST", default_value_t = 20)]
    pub message_burst: u32,

    /// Member additions and removals one user may make per second (0: no limit).
    #[arg(long, env = "OTAKO_MEMBER_RATE_PER_S", default_value_t = 2.0)]
    pub member_rate_per_s: f64,

    /// Member changes one user may make at once (0: no limit).
    #[arg(long, env = "OTAKO_MEMBER_BURST", default_value_t = 30)]
    pub member_burst: u32,

    /// Accounts one source address may create per second (0: no limit).
    #[arg(long, env = "OTAKO_SIGNUP_RATE_PER_S", default_value_t = 0.1)]
    pub signup_rate_per_s: f64,

    /// Accounts one source address may create at once (0: no limit).
    #[arg(long, env = "OTAKO_SIGNUP_BURST", default_value_t = 10)]
    pub signup_burst: u32,
    /// Gateway WebSocket URLs the chat page at `/` connects to
    /// (comma-separated), served at `/config.json`.
    #[arg(
        long,
        env = "OTAKO_PUBLIC_GATEWAY_URLS",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/gateway"
    )]
    pub public_gateway_urls: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations and exit.
    Migrate,
}

impl Args {
    pub fn dispatch_timeout(&self) -> Duration {
        Duration::from_millis(self.dispatch_timeout_ms.max(1))
    }

    pub fn dispatch_backoff(&self) -> Duration {
        Duration::from_millis(self.dispatch_backoff_ms)
    }

    pub fn outbox_lease(&self) -> Duration {
        Duration::from_millis(self.outbox_lease_ms.max(300))
    }

    pub fn limits(&self) -> Limits {
        Limits::new(
            Rate {
                per_s: self.message_rate_per_s,
                burst: self.message_burst,
            },
            Rate {
                per_s: self.member_rate_per_s,
                burst: self.member_burst,
            },
            Rate {
                per_s: self.signup_rate_per_s,
                burst: self.signup_burst,
            },
        )
    }
}
