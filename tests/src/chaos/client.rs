//! A client that behaves as the protocol says (docs/protocol.md): it
//! heartbeats on the interval HELLO gives (the first one jittered), treats a
//! missing ACK as a dead connection, and on every close, whatever the code,
//! opens a new session on a live node with the last cursor it received,
//! after a backoff with full jitter (at once, jittered, after 1012). When
//! READY says `resumed:false` to a session that asked to resume, it
//! refetches recent history over HTTP and counts those messages as received.
//!
//! It records every message it receives, with the session and cursor it
//! came with, for the count at the end.

use super::{Clock, LiveNodes};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// The first retry waits up to this long; each further one doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest a retry waits.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How long the WebSocket upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the HTTP refetch of one channel keeps retrying.
const REFETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages a refetch asks for per channel.
const REFETCH_LIMIT: usize = 100;

/// One user's client.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: usize,
    pub user_id: i64,
    pub username: String,
    pub token: String,
    /// The channels the user is a member of for the whole run (others come
    /// and go).
    pub channels: Vec<i64>,
    /// Whether the client reads through a tiny socket buffer and stops
    /// reading while the run says so (the slow-clients fault), so its
    /// session's queue overflows.
    pub slow: bool,
}

/// A message that arrived over the WebSocket.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub message_id: i64,
    pub channel_id: i64,
    /// When it arrived (run seconds).
    pub at: f64,
    /// From the message's timestamp to its arrival.
    pub delay_ms: f64,
    /// Index into the client's sessions.
    pub session: usize,
    pub s: u64,
    pub cursor: String,
}

/// One session, from the upgrade to its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionRecord {
    pub node: String,
    pub opened: f64,
    pub ready: Option<f64>,
    /// The cursor it asked to resume from.
    pub resume_from: Option<String>,
    pub resumed: Option<bool>,
    pub ready_cursor: Option<String>,
    pub last_cursor: Option<String>,
    pub ended: Option<f64>,
    /// The close code the server sent; 1006 when the connection ended
    /// without a close frame, 1005 for a close frame without a code, none
    /// when the client itself closed (a missing ACK, the run's end).
    pub close: Option<u16>,
    pub reason: String,
    /// Whether op 7 came before the close.
    pub op7: bool,
    /// Event frames received (READY not counted).
    pub events: u64,
}

/// A refetch over HTTP after `resumed:false`.
#[derive(Debug, Clone, Serialize)]
pub struct Refetch {
    pub at: f64,
    pub session: usize,
    pub messages: usize,
    /// Whether every channel's page was read.
    pub complete: bool,
}

/// What a client saw; shared with the run, which reads it to decide when
/// every client has caught up.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub deliveries: Vec<Delivery>,
    /// Message ids read by refetches.
    pub refetched: HashSet<i64>,
    pub refetches: Vec<Refetch>,
    pub sessions: Vec<SessionRecord>,
    /// Every message id received either way.
    pub received: HashSet<i64>,
    /// Event frames other than message creates.
    pub other_events: u64,
    /// Frames that break the protocol (a sequence gap, no cursor, ...).
    pub protocol_errors: Vec<String>,
    /// Upgrades that failed or timed out.
    pub connect_failures: u64,
    /// Whether a session got READY at least once.
    pub ready_once: bool,
    /// The user's channels as the protocol has the client keep them: READY's
    /// list, then each member event concerning the user applied to it.
    pub channels: BTreeSet<i64>,
}

impl ClientLog {
    fn session(&mut self, i: usize) -> &mut SessionRecord {
        &mut self.sessions[i]
    }
}

fn lock(log: &Mutex<ClientLog>) -> std::sync::MutexGuard<'_, ClientLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a session ended.
enum End {
    /// The run is over.
    Stopped,
    /// The upgrade did not succeed.
    ConnectFailed,
    /// The session was open and ended; `code` as in [`SessionRecord::close`].
    Closed { was_ready: bool, code: Option<u16> },
}

/// What a client holds across its sessions.
struct Client {
    spec: ClientSpec,
    clock: Clock,
    log: Arc<Mutex<ClientLog>>,
    http: reqwest::Client,
    api_base: String,
    rng: StdRng,
    /// The last cursor received: READY's, then each event's.
    cursor: Option<String>,
    /// True while a slow client must not read.
    stall: watch::Receiver<bool>,
}

/// What every client shares with the run.
#[derive(Debug, Clone)]
pub struct Shared {
    pub nodes: LiveNodes,
    pub clock: Clock,
    /// True once the run is over.
    pub stop: watch::Receiver<bool>,
    /// True while the slow clients must not read.
    pub stall: watch::Receiver<bool>,
    /// The HTTP API, for refetches.
    pub api_base: String,
}

/// Runs one client until the run is over.
pub async fn run(spec: ClientSpec, shared: Shared, log: Arc<Mutex<ClientLog>>, seed: u64) {
    let Shared {
        nodes,
        clock,
        mut stop,
        stall,
        api_base,
    } = shared;
    let mut client = Client {
        spec,
        clock,
        log,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client"),
        api_base,
        rng: StdRng::seed_from_u64(seed),
        cursor: None,
        stall,
    };
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let end = match nodes.pick() {
            Some((node, url)) => client.session(&node, &url, &mut stop).await,
            None => End::ConnectFailed,
        };
        let delay = match end {
            End::Stopped => return,
            End::ConnectFailed => client.backoff(attempt),
            End::Closed { was_ready, code } => {
                if was_ready {
                    attempt = 0;
                }
                if code == Some(1012) {
                    // The node is going away and others are up: come back
                    // at once, spread over the first backoff step.
                    client.jitter(BACKOFF_BASE)
                } else {
                    client.backoff(attempt)
                }
            }
        };
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Client {
    /// Full jitter: anything from nothing to the exponential step.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let step = BACKOFF_BASE
            .saturating_mul(1u32 << attempt.min(16))
            .min(BACKOFF_CAP);
        self.jitter(step)
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        up_to.mul_f64(self.rng.random::<f64>())
    }

    async fn session(&mut self, node: &str, url: &str, stop: &mut watch::Receiver<bool>) -> End {
        let resume_from = self.cursor.clone();
        let url = match &resume_from {
            Some(c) => format!("{url}?resume={c}"),
            None => url.to_owned(),
        };
        let Ok(mut req) = url.as_str().into_client_request() else {
            lock(&self.log).connect_failures += 1;
            return End::ConnectFailed;
        };
        let Ok(token) = HeaderValue::from_str(&self.spec.token) else {
            lock(&self.log).connect_failures += 1;
            return End::ConnectFailed;
        };
        req.headers_mut().insert("authorization", token);
        let slow = self.spec.slow;
        let upgrade = async move {
            let addr: SocketAddr = req.uri().authority()?.as_str().parse().ok()?;
            let socket = TcpSocket::new_v4().ok()?;
            if slow {
                // Before connecting, so the window announced is tiny from the
                // start: the session's queue fills instead of socket buffers.
                socket.set_recv_buffer_size(4096).ok()?;
            }
            let stream = socket.connect(addr).await.ok()?;
            let _ = stream.set_nodelay(true);
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
                .await
                .ok()
        };
        let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, upgrade).await {
            Ok(Some((ws, _))) => ws,
            _ => {
                lock(&self.log).connect_failures += 1;
                return End::ConnectFailed;
            }
        };
        let index = {
            let mut log = lock(&self.log);
            log.sessions.push(SessionRecord {
                node: node.to_owned(),
                opened: self.clock.now(),
                resume_from: resume_from.clone(),
                ..SessionRecord::default()
            });
            log.sessions.len() - 1
        };
        let mut s = Session {
            index,
            last_s: 0,
            interval: None,
            next_heartbeat: Instant::now(),
            awaiting_ack: false,
            ready: false,
        };
        let mut stall = self.stall.clone();
        loop {
            let heartbeat_due = s.interval.is_some();
            let stalled = self.spec.slow && *stall.borrow();
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    self.finish(index, None, "the run ended");
                    return End::Stopped;
                }
                changed = stall.changed(), if self.spec.slow => {
                    if changed.is_err() {
                        continue;
                    }
                    if !*stall.borrow() {
                        // Reading again: the ACKs are in the backlog.
                        s.awaiting_ack = false;
                        if let Some(i) = s.interval {
                            s.next_heartbeat = Instant::now() + i;
                        }
                    }
                }
                _ = tokio::time::sleep_until(s.next_heartbeat), if heartbeat_due => {
                    if s.awaiting_ack && !stalled {
                        // No ACK within an interval: a zombie connection.
                        self.finish(index, None, "no heartbeat ACK within an interval");
                        return s.closed(None);
                    }
                    let d = if s.last_s == 0 { Value::Null } else { Value::from(s.last_s) };
                    let beat = serde_json::json!({"op": 1, "d": d}).to_string();
                    if let Err(e) = ws.send(Message::text(beat)).await {
                        self.finish(index, Some(1006), &format!("sending a heartbeat: {e}"));
                        return s.closed(Some(1006));
                    }
                    s.awaiting_ack = true;
                    s.next_heartbeat += s.interval.unwrap_or_default();
                }
                msg = ws.next(), if !stalled => match msg {
                    None => {
                        self.finish(index, Some(1006), "ended without a close frame");
                        return s.closed(Some(1006));
                    }
                    Some(Err(e)) => {
                        self.finish(index, Some(1006), &e.to_string());
                        return s.closed(Some(1006));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = match frame {
                            Some(f) => (u16::from(f.code), f.reason.to_string()),
                            None => (1005, String::new()),
                        };
                        self.finish(index, Some(code), &reason);
                        return s.closed(Some(code));
                    }
                    Some(Ok(Message::Text(text))) => self.frame(&mut s, &text),
                    Some(Ok(Message::Binary(_))) => {
                        lock(&self.log).protocol_errors.push("a binary frame".into());
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    fn finish(&self, index: usize, code: Option<u16>, reason: &str) {
        let now = self.clock.now();
        let mut log = lock(&self.log);
        let rec = log.session(index);
        rec.ended = Some(now);
        rec.close = code;
        rec.reason = reason.to_owned();
    }

    /// Handles one server frame.
    fn frame(&mut self, s: &mut Session, text: &str) {
        let now = self.clock.now();
        let label = format!("{} session {}", self.spec.username, s.index);
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            lock(&self.log)
                .protocol_errors
                .push(format!("{label}: not JSON: {text}"));
            return;
        };
        match v["op"].as_u64() {
            Some(10) => {
                let ms = v["d"]["heartbeat_interval"].as_u64().unwrap_or(30_000);
                let interval = Duration::from_millis(ms);
                s.interval = Some(interval);
                s.next_heartbeat = Instant::now() + interval.mul_f64(self.rng.random::<f64>());
            }
            Some(11) => s.awaiting_ack = false,
            Some(7) => lock(&self.log).session(s.index).op7 = true,
            Some(0) => self.dispatch(s, &v, now, &label),
            _ => lock(&self.log)
                .protocol_errors
                .push(format!("{label}: unexpected frame {v}")),
        }
    }

    fn dispatch(&mut self, s: &mut Session, v: &Value, now: f64, label: &str) {
        let mut log = lock(&self.log);
        let seq = v["s"].as_u64().unwrap_or(0);
        if seq != s.last_s + 1 {
            log.protocol_errors
                .push(format!("{label}: s went from {} to {seq}: {v}", s.last_s));
        }
        s.last_s = seq;
        let d = &v["d"];
        if v["t"] == "READY" {
            let resumed = d["resumed"].as_bool();
            let Some(cursor) = d["cursor"].as_str() else {
                log.protocol_errors
                    .push(format!("{label}: READY without a cursor: {v}"));
                return;
            };
            let channels: Vec<i64> = d["channels"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
                .unwrap_or_default();
            // READY's list already holds what a replay changes; the replayed
            // member events applied to it leave it as it is.
            log.channels = channels.iter().copied().collect();
            let asked = log.session(s.index).resume_from.is_some();
            let rec = log.session(s.index);
            rec.ready = Some(now);
            rec.resumed = resumed;
            rec.ready_cursor = Some(cursor.to_owned());
            log.ready_once = true;
            self.cursor = Some(cursor.to_owned());
            s.ready = true;
            if asked && resumed != Some(true) {
                drop(log);
                self.refetch(s.index, channels);
            }
            return;
        }
        let Some(cursor) = v["cursor"].as_str() else {
            log.protocol_errors
                .push(format!("{label}: an event frame without a cursor: {v}"));
            return;
        };
        self.cursor = Some(cursor.to_owned());
        let rec = log.session(s.index);
        rec.events += 1;
        rec.last_cursor = Some(cursor.to_owned());
        if v["t"] != "EVENT_MESSAGE_CREATE" {
            log.other_events += 1;
            let user = d["user_id"].as_str().and_then(|i| i.parse::<i64>().ok());
            let channel = d["channel_id"].as_str().and_then(|i| i.parse::<i64>().ok());
            if let (Some(user), Some(channel)) = (user, channel) {
                if user == self.spec.user_id {
                    if v["t"] == "EVENT_CHANNEL_MEMBER_ADD" {
                        log.channels.insert(channel);
                    } else if v["t"] == "EVENT_CHANNEL_MEMBER_REMOVE" {
                        log.channels.remove(&channel);
                    }
                }
            }
            return;
        }
        let id = d["id"].as_str().and_then(|i| i.parse::<i64>().ok());
        let channel = d["channel_id"].as_str().and_then(|i| i.parse::<i64>().ok());
        let (Some(id), Some(channel)) = (id, channel) else {
            log.protocol_errors
                .push(format!("{label}: a message without ids: {v}"));
            return;
        };
        let delay_ms = d["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - self.clock.at(t.to_utc())) * 1e3)
            .unwrap_or(f64::NAN);
        log.deliveries.push(Delivery {
            message_id: id,
            channel_id: channel,
            at: now,
            delay_ms,
            session: s.index,
            s: seq,
            cursor: cursor.to_owned(),
        });
        log.received.insert(id);
    }

    /// Reads the newest page of each channel over HTTP in the background
    /// (the session keeps reading meanwhile) and counts it as received.
    fn refetch(&self, session: usize, channels: Vec<i64>) {
        let http = self.http.clone();
        let base = self.api_base.clone();
        let token = self.spec.token.clone();
        let log = self.log.clone();
        let clock = self.clock;
        tokio::spawn(async move {
            let mut messages = 0;
            let mut complete = true;
            for channel in channels {
                let url = format!("{base}/channels/{channel}/messages?limit={REFETCH_LIMIT}");
                match fetch_page(&http, &url, &token).await {
                    Some(ids) => {
                        messages += ids.len();
                        let mut log = lock(&log);
                        for id in ids {
                            log.refetched.insert(id);
                            log.received.insert(id);
                        }
                    }
                    None => complete = false,
                }
            }
            lock(&log).refetches.push(Refetch {
                at: clock.now(),
                session,
                messages,
                complete,
            });
        });
    }
}

/// One page of message ids, retried while the API is unavailable.
async fn fetch_page(http: &reqwest::Client, url: &str, token: &str) -> Option<Vec<i64>> {
    let deadline = Instant::now() + REFETCH_TIMEOUT;
    let mut wait = Duration::from_millis(100);
    loop {
        let resp = http.get(url).header("authorization", token).send().await;
        if let Ok(resp) = resp {
            if resp.status() == 200 {
                if let Ok(Value::Array(items)) = resp.json::<Value>().await {
                    return Some(
                        items
                            .iter()
                            .filter_map(|m| m["id"].as_str()?.parse().ok())
                            .collect(),
                    );
                }
            }
        }
        if Instant::now() + wait > deadline {
            return None;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// The state of one open session.
struct Session {
    index: usize,
    last_s: u64,
    /// From HELLO; heartbeats start once it is known.
    interval: Option<Duration>,
    next_heartbeat: Instant,
    awaiting_ack: bool,
    ready: bool,
}

impl Session {
    fn closed(&self, code: Option<u16>) -> End {
        End::Closed {
            was_ready: self.ready,
            code,
        }
    }
}
