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
    /// Drops every open session at once without a close frame: the sockets
    /// just close, as when a client's network or process goes away. Each
    /// Otako session's last cursor is kept for [`Command::Storm`].
    Drop,
    /// Brings back every dropped Otako session at once, each resuming from
    /// its last cursor, and answers once each is live (READY with
    /// `resumed: true` and every missed event received), back but not
    /// resumed, or given up at `timeout_ms`.
    Storm {
        /// When the storm starts (unix µs); outcomes count from here.
        start_us: i64,
        /// The missed events were sent at or after this (unix µs).
        since_us: i64,
        /// Events posted to each channel while the sessions were away.
        gap_events: u32,
        timeout_ms: u64,
    },
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
    /// One outcome per session brought back.
    Stormed {
        sessions: Vec<ResumeOutcome>,
    },
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

/// How one session of a reconnect storm came back. Times are µs after the
/// storm's start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// The session's index in the run.
    pub index: u32,
    /// Upgrades tried (1 when the first one was let in).
    pub attempts: u32,
    /// Why the earlier attempts failed ("close 1013", "eof", ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retried: BTreeMap<String, u32>,
    /// The attempt that was let in: when its upgrade was answered, when
    /// HELLO came (the node had a start slot for it), and READY.
    pub upgraded_us: Option<u64>,
    pub hello_us: Option<u64>,
    pub ready_us: Option<u64>,
    /// READY's `resumed`.
    pub resumed: Option<bool>,
    /// For a session not resumed: the cursor it sent, and READY's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_resumed: Option<(String, String)>,
    /// Missed events expected: the gap's events of the session's channels.
    pub expected: u32,
    /// Missed events received.
    pub replayed: u32,
    /// Other events received: sent before the gap, so the old session
    /// should have had them already.
    pub older: u32,
    /// Events at or before a position the session already had.
    pub repeated: u32,
    /// When the last missed event arrived.
    pub live_us: Option<u64>,
    /// Why it is not back (given up, or ended before its replay was in).
    pub failed: Option<String>,
}
