//! The messages between the coordinator and its client processes: one JSON
//! object per line, commands on the child's stdin, replies on its stdout,
//! one reply per command.

use crate::latency::ExportedLatency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which system a client process's sessions talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// Otako gateway sessions (`/gateway`, token in `Authorization`).
    Otako,
    /// nats-server's WebSocket listener, speaking the NATS protocol.
    Peer,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Otako => "otako",
            System::Peer => "nats-ws",
        }
    }
}

/// One session a client process may open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Index in the whole run: names the user and picks the source address.
    pub index: u32,
    pub user_id: i64,
    /// Which gateway node (index into `Init::gateways`).
    pub gateway: u16,
    /// Channel indexes the user is in (the peer subscribes to one subject each).
    pub channels: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Init {
        /// Signs the sessions' tokens (sent here, not on the command line).
        secret: String,
        username_prefix: String,
        /// `host:port` of each gateway node.
        gateways: Vec<String>,
        /// `host:port` of the peer's WebSocket listener.
        peer: Option<String>,
        sessions: Vec<SessionSpec>,
    },
    /// Opens this process's next `count` sessions of `system`, at most
    /// `concurrency` handshakes at a time, and answers once each is ready
    /// (READY received, or the peer's PONG after SUB) or has failed.
    Open {
        system: System,
        count: usize,
        concurrency: usize,
        timeout_ms: u64,
    },
    /// Live counters (cheap; polled by the closed-loop driver).
    Progress,
    /// Starts a measuring window: clears the latency histograms.
    Reset,
    /// Everything measured since the last reset.
    Report,
    /// Closes every open session and waits for them to end.
    Close,
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Opened {
        opened: usize,
        failed: usize,
        held: u64,
        /// Failure reasons and how often each happened.
        errors: BTreeMap<String, u64>,
    },
    Progress {
        /// Deliveries received since the process started (never reset).
        received: u64,
        held: u64,
    },
    Report(ShardReport),
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardReport {
    pub held: u64,
    /// Session starts retried after close 1011.
    pub start_retries: u64,
    /// Deliveries received since the last reset.
    pub received: u64,
    /// Deliveries without a readable send stamp (not in the histograms).
    pub unstamped: u64,
    /// Sessions that ended, by close code or reason, since the process started.
    pub ended: BTreeMap<String, u64>,
    pub latency: ExportedLatency,
}
