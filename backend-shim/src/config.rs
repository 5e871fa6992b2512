//! Command-line flags, each also an environment variable (see CONTRACT.md).

use clap::{Parser, Subcommand};
use otako_common::cli::CommonArgs;
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

    /// How often the gateways are pinged ($SRV.PING.otako-gateway).
    #[arg(long, env = "OTAKO_PING_INTERVAL_MS", default_value_t = 5000)]
    pub ping_interval_ms: u64,

    /// Lifetime of issued tokens.
    #[arg(long, env = "OTAKO_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub token_ttl_secs: i64,
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
}
