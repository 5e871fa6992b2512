//! Helpers of the session tests (issue #3, `tests/tests/sessions_*.rs`):
//! reading a gateway's `/metrics` and memory, a client that stops reading,
//! and a session that reads in the background while the test does other
//! things.

use crate::stack::Gateway;
use crate::ws::{Auth, Incoming, WsClient};
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The gateway's Prometheus text (`/metrics` on the admin port).
pub async fn metrics_text(gw: &Gateway) -> String {
    let url = gw.admin_url("/metrics");
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"))
}

/// The sum of the samples of metric `name` whose labels include every pair
/// of `labels` (0 when there is none, as for a counter never incremented).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match key.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
        if all {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// One metric of one gateway, read now.
pub async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_in(&metrics_text(gw).await, name, labels)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no {field}"))
}

/// A client that opens a session over a socket with a tiny receive buffer,
/// reads HELLO and READY, and then reads nothing until told to.
pub struct StalledClient {
    ws: WebSocketStream<TcpStream>,
    pub label: String,
    pub ready: Value,
}

impl StalledClient {
    pub async fn connect(gw: &Gateway, token: &str, label: &str) -> StalledClient {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        // Set before connecting, so the window the client announces is tiny
        // from the start; the kernel doubles it and applies its minimum.
        socket
            .set_recv_buffer_size(4096)
            .expect("setting SO_RCVBUF");
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(gw.ws_addr))
            .await
            .unwrap_or_else(|_| panic!("{label}: connecting timed out"))
            .unwrap_or_else(|e| panic!("{label}: connecting: {e}"));
        let mut req = gw
            .ws_url()
            .into_client_request()
            .expect("a valid gateway URL");
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(token).expect("token is a header value"),
        );
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(req, stream),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: the upgrade timed out"))
        .unwrap_or_else(|e| panic!("{label}: the upgrade failed: {e}"));
        let hello = next_json(&mut ws, label).await;
        assert_eq!(
            hello["op"], 10,
            "{label}: the first frame is HELLO: {hello}"
        );
        let ready = next_json(&mut ws, label).await;
        assert_eq!(ready["t"], "READY", "{label}: expected READY: {ready}");
        StalledClient {
            ws,
            label: label.to_owned(),
            ready: ready["d"].clone(),
        }
    }

    /// Reads everything the server still sends, until the connection ends
    /// or `timeout` passes. Returns the dispatch frames read, the close code
    /// (if a close frame came), and whether the connection ended.
    pub async fn drain(mut self, timeout: Duration) -> (usize, Option<u16>, bool) {
        let deadline = Instant::now() + timeout;
        let (mut frames, mut code) = (0usize, None);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return (frames, code, false),
                Ok(None) | Ok(Some(Err(_))) => return (frames, code, true),
                Ok(Some(Ok(Message::Text(_)))) => frames += 1,
                Ok(Some(Ok(Message::Close(f)))) => code = f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

async fn next_json(ws: &mut WebSocketStream<TcpStream>, label: &str) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {t}"))
            }
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            other => panic!("{label}: expected a JSON frame, got {other:?}"),
        }
    }
}

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
