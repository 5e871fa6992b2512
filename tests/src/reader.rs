//! A session read by a task of its own, so a test can post, kill or wait
//! while frames arrive, and then look at everything the session saw.

use crate::stack::Gateway;
use crate::ws::{Auth, Incoming, WsClient};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a background reader saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Dispatch frames after READY, in arrival order: `(t, d, when)`.
    pub events: Vec<(String, Value, Instant)>,
    /// How the session ended, once it has.
    pub end: Option<Incoming>,
}

impl Seen {
    /// Ids (`d.id`) of the events of type `t`, in arrival order.
    pub fn ids_of(&self, t: &str) -> Vec<i64> {
        self.events
            .iter()
            .filter(|(et, _, _)| et == t)
            .map(|(_, d, _)| {
                d["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{t} without a decimal string id: {d}"))
            })
            .collect()
    }

    pub fn count_of(&self, t: &str) -> usize {
        self.events.iter().filter(|(et, _, _)| et == t).count()
    }
}

/// A session read by a task of its own, heartbeating on time, so a test can
/// do other things while frames arrive. The reader keeps every dispatch it
/// reads (the harness checks that `s` grows by one).
pub struct Reader {
    pub label: String,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Reader {
    /// Starts reading an open session (HELLO and READY already read).
    pub fn spawn(mut client: WsClient, heartbeat_every: Duration) -> Reader {
        let label = client.label().to_owned();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut next_beat = Instant::now() + heartbeat_every;
            loop {
                let wait = next_beat.saturating_duration_since(Instant::now());
                match client.next_incoming(wait).await {
                    None => {
                        client.heartbeat().await;
                        next_beat = Instant::now() + heartbeat_every;
                    }
                    Some(Incoming::Json(v)) if v["op"] == 0 => {
                        let t = v["t"].as_str().unwrap_or_default().to_owned();
                        let mut s = shared.lock().await;
                        s.events.push((t, v["d"].clone(), Instant::now()));
                    }
                    // Heartbeat acks and anything else not a dispatch.
                    Some(Incoming::Json(_)) | Some(Incoming::Pong(_)) => {}
                    Some(end) => {
                        shared.lock().await.end = Some(end);
                        return;
                    }
                }
            }
        });
        Reader { label, seen, task }
    }

    /// Opens a session on `gw` and starts reading it.
    pub async fn open(gw: &Gateway, token: &str, label: &str, heartbeat_every: Duration) -> Reader {
        let mut c = WsClient::connect(&gw.ws_url(), Auth::Header(token), label).await;
        c.handshake().await;
        Reader::spawn(c, heartbeat_every)
    }

    /// A copy of what was seen so far.
    pub async fn seen(&self) -> Seen {
        self.seen.lock().await.clone()
    }

    /// Waits until `cond` holds for what was seen; panics naming `what` after
    /// `timeout`, with a summary of what was seen.
    pub async fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = self.seen.lock().await;
                if cond(&s) {
                    return;
                }
                if self.task.is_finished() && s.end.is_none() {
                    panic!(
                        "{}: the reading task failed (see its panic above) while waiting for {what}",
                        self.label
                    );
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{}: timed out after {timeout:?} waiting for {what}; saw {} events, end {:?}, last {:?}",
                        self.label,
                        s.events.len(),
                        s.end,
                        s.events.last().map(|(t, d, _)| (t, d))
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the reading task is still running (the session is open).
    pub fn is_open(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops reading (the socket is dropped without a close handshake).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
