//! One client WebSocket session, from upgrade to close.
//!
//! A session is one task. It owns its socket and selects over two things:
//! frames from the client, and a wake-up from its hub handle, which stands
//! for frames queued by the hub and for kicks from outside (too slow,
//! revoked, over the limit, node draining, and a missed heartbeat, which the
//! node's sweep finds: see `server::heartbeat_sweep`). Queued frames are
//! written in batches (`feed` each, `flush` once): one write() per batch
//! instead of one per frame.

use crate::auth::{self, AuthError};
use crate::db;
use crate::fanout::{now_ms, Kick, Registration, SessionHandle};
use crate::limit::Lease;
use crate::server::Node;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use otako_common::token::Claims;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

/// A heartbeat is the only frame a client may send, so nothing bigger is read.
const MAX_CLIENT_FRAME: usize = 1024;
/// What tungstenite allocates up front to read into, per session, for its
/// whole life. A heartbeat is about 30 bytes on the wire; a larger frame (up
/// to MAX_CLIENT_FRAME) makes tungstenite reserve room for it when its
/// header arrives, so this caps nothing, it only sizes the idle buffer.
const READ_BUFFER: usize = 128;
/// At most this many heartbeats per interval (the contract's 4).
const MAX_HEARTBEATS_PER_INTERVAL: u32 = 4;
/// Frames written per flush at most, so one busy session cannot hog its task.
const MAX_BATCH: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that accepts no bytes for this long is too slow.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn ws_config() -> WebSocketConfig {
    // Small buffers keep an idle session cheap: tungstenite would otherwise
    // reserve 128 KiB of read buffer for every connection.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_CLIENT_FRAME))
        .max_frame_size(Some(MAX_CLIENT_FRAME))
}

/// Close codes of the contract.
pub mod close {
    pub const REJECTED: u16 = 4001;
    pub const AUTH_FAILED: u16 = 4004;
    pub const TOO_FREQUENT: u16 = 4008;
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
    pub const SESSION_LIMIT: u16 = 4010;
    pub const TOO_SLOW: u16 = 4011;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame {
    op: u8,
    #[allow(dead_code)]
    d: Option<u64>,
}

/// Whether a text frame is a heartbeat `{"op":1,"d":<s or null>}`.
fn is_heartbeat(text: &str) -> bool {
    matches!(
        serde_json::from_str::<ClientFrame>(text),
        Ok(ClientFrame { op: 1, .. })
    )
}

type Ws = WebSocketStream<TcpStream>;

// Memory per idle session is what limits a node, and an async fn keeps room
// for its largest await point for as long as it lives (its arguments too,
// even once moved out). So every step that holds a large future only
// briefly (the handshake, the database and KV round trips of the start,
// writes and closes) runs boxed: freed once done, it leaves an idle session
// holding little more than its socket and its select loop. Nesting async
// fns costs too (each level keeps its own arguments and locals), hence one
// level, `serve`, around `run_loop`; `the_idle_session_task_stays_small`
// below keeps count.

pub async fn serve(stream: TcpStream, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let Some((ws, claims)) = Box::pin(upgrade(stream, &node)).await else {
        return;
    };
    metrics::counter!("otako_sessions_opened_total").increment(1);
    let session_id = format!("{}-{:016x}", node.node_id, rand::random::<u64>());
    let mut session = Session {
        node,
        ws,
        seq: 0,
        session_id,
    };
    let started = Box::pin(session.start(claims)).await;
    let code = match started {
        Ok(started) => session.run_loop(started).await,
        Err(code) => code,
    };
    metrics::counter!("otako_sessions_closed_total", "code" => code.to_string()).increment(1);
}

/// The WebSocket handshake and the token check; a bad token is closed with 4004.
async fn upgrade(stream: TcpStream, node: &Node) -> Option<(Ws, Claims)> {
    let mut token = None;
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        auth::handshake(&mut token),
        Some(ws_config()),
    );
    let mut ws = match timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            debug!("handshake timed out");
            return None;
        }
    };
    match auth::verify(&node.token_key, token.as_deref()) {
        Ok(claims) => Some((ws, claims)),
        Err(e) => {
            close(&mut ws, close::AUTH_FAILED, &e.to_string()).await;
            None
        }
    }
}

/// What a started session holds until it ends.
struct Started {
    registration: Registration,
    _lease: Option<Lease>,
}

/// What woke a session's task.
enum Event {
    /// Its hub handle: frames queued, or a kick.
    Woken,
    Heartbeat,
    Ping,
    /// A pong or a raw frame: nothing to do.
    Nothing,
    /// Close with this code and reason.
    Reject(u16, &'static str),
    /// The client went away; the session ends with this code.
    Gone(u16),
}

impl Event {
    fn from_client(incoming: Option<Result<Message, WsError>>) -> Event {
        match incoming {
            Some(Ok(Message::Text(text))) if is_heartbeat(&text) => Event::Heartbeat,
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                Event::Reject(close::REJECTED, "only heartbeats are accepted")
            }
            Some(Ok(Message::Ping(_))) => Event::Ping,
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Event::Nothing,
            Some(Ok(Message::Close(_))) | None => Event::Gone(1000),
            Some(Err(WsError::Capacity(_))) => Event::Reject(close::REJECTED, "frame too large"),
            Some(Err(e)) => {
                debug!(error = %e, "session read failed");
                Event::Gone(1006)
            }
        }
    }
}

/// Heartbeats counted per interval, to refuse more than the contract allows.
struct BeatWindow {
    /// When the current interval began ([`now_ms`]).
    start_ms: u64,
    beats: u32,
}

impl BeatWindow {
    fn starting_now() -> BeatWindow {
        BeatWindow {
            start_ms: now_ms(),
            beats: 0,
        }
    }

    /// Counts one heartbeat; false if it is one too many for its interval.
    fn allow(&mut self, interval: Duration) -> bool {
        let now = now_ms();
        if now.saturating_sub(self.start_ms) >= interval.as_millis() as u64 {
            self.start_ms = now;
            self.beats = 0;
        }
        self.beats += 1;
        self.beats <= MAX_HEARTBEATS_PER_INTERVAL
    }
}

struct Session {
    node: Arc<Node>,
    ws: Ws,
    /// The `s` of the last dispatch frame sent.
    seq: u64,
    session_id: String,
}

impl Session {
    /// HELLO, registration, the channel list, the session limit, READY.
    async fn start(&mut self, claims: Claims) -> Result<Started, u16> {
        let interval = self.node.heartbeat_interval;
        let hello = serde_json::json!({"op": 10, "d": {
            "heartbeat_interval": interval.as_millis() as u64,
            "session_id": self.session_id,
        }});
        if self.send_now(hello.to_string()).await.is_err() {
            return Err(close::INTERNAL);
        }
        // Register before reading the channel list, so a member-add that
        // lands while the list loads is not lost.
        let id = self.node.next_session_id();
        let registration = self
            .node
            .hub
            .register(id, claims.user_id, claims.generation);

        let start = timeout(
            Duration::from_secs(5),
            db::session_start(&self.node.pool, claims.user_id),
        )
        .await;
        let start = match start {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return Err(self.end(close::AUTH_FAILED, "user does not exist").await),
            Ok(Err(e)) => {
                warn!(error = %e, "could not load the session's channels");
                let reason = "database unavailable, reconnect later";
                return Err(self.end(close::INTERNAL, reason).await);
            }
            Err(_) => {
                let reason = "database timed out, reconnect later";
                return Err(self.end(close::INTERNAL, reason).await);
            }
        };
        if start.token_generation != claims.generation {
            let reason = AuthError::Revoked.to_string();
            return Err(self.end(close::AUTH_FAILED, &reason).await);
        }
        // Boxed on its own: the KV compare-and-set loop is a ~9 KiB future,
        // and inline it would make every session still waiting for the
        // database above hold that much too during a connect storm.
        let admit = Box::pin(self.node.limiter.admit(claims.user_id, &self.session_id));
        if let Err(code) = admit.await {
            return Err(self.end(code, "session limit reached").await);
        }
        let lease = self.node.limiter.lease(claims.user_id, &self.session_id);
        self.node
            .hub
            .join_channels(&registration.handle, &start.channels);
        let channels: Vec<String> = self
            .node
            .hub
            .channels_of(id)
            .iter()
            .map(i64::to_string)
            .collect();
        self.seq = 1;
        let ready = serde_json::json!({"op": 0, "t": "READY", "s": 1, "d": {
            "session_id": self.session_id,
            "user": {"id": claims.user_id.to_string(), "username": claims.username},
            "channels": channels,
        }});
        if self.send_now(ready.to_string()).await.is_err() {
            return Err(close::INTERNAL);
        }
        debug!(session = %self.session_id, user = claims.user_id, "session ready");
        Ok(Started {
            registration,
            _lease: lease,
        })
    }

    /// Serves a started session until it ends; returns the close code.
    async fn run_loop(&mut self, started: Started) -> u16 {
        // Locals here live as long as the session: kept few and small.
        let handle = &started.registration.handle;
        handle.heartbeat_due_within(self.heartbeat_timeout());
        let mut beats = BeatWindow::starting_now();
        loop {
            // Only the wait is inside the select: its futures and the frame
            // read are gone before anything below awaits, so the task does
            // not keep room for both.
            let event = tokio::select! {
                biased;
                _ = handle.woken() => Event::Woken,
                incoming = self.ws.next() => Event::from_client(incoming),
            };
            match event {
                Event::Woken => {
                    if let Some(code) = handle.kick_code() {
                        if code == Kick::Reconnect as u16 {
                            // A restart is no reason to lose what is already queued.
                            while handle.has_queued() {
                                if self.write_queued(handle).await.is_err() {
                                    break;
                                }
                            }
                        }
                        return self.kicked(code).await;
                    }
                    if let Err(code) = self.write_queued(handle).await {
                        return self.end(code, "too slow to keep up").await;
                    }
                }
                Event::Heartbeat => {
                    if !beats.allow(self.node.heartbeat_interval) {
                        return self
                            .end(close::TOO_FREQUENT, "heartbeats too frequent")
                            .await;
                    }
                    handle.heartbeat_due_within(self.heartbeat_timeout());
                    if self.send_now(r#"{"op":11}"#.to_owned()).await.is_err() {
                        return close::INTERNAL;
                    }
                }
                // tungstenite queues the pong; push it out now.
                Event::Ping => {
                    if self.flush().await.is_err() {
                        return close::TOO_SLOW;
                    }
                }
                Event::Nothing => {}
                Event::Reject(code, reason) => return self.end(code, reason).await,
                Event::Gone(code) => return code,
            }
        }
    }

    /// A client that sends no heartbeat for this long is closed with 4009.
    fn heartbeat_timeout(&self) -> Duration {
        self.node.heartbeat_interval * 3 / 2
    }

    /// Writes up to MAX_BATCH queued frames, then flushes once. A wake-up
    /// that finds the queue empty writes nothing.
    fn write_queued<'a>(&'a mut self, handle: &'a SessionHandle) -> BoxFuture<'a, Result<(), u16>> {
        Box::pin(async move {
            let mut batch = Vec::new();
            handle.take(MAX_BATCH, &mut batch);
            if batch.is_empty() {
                return Ok(());
            }
            let write = async {
                for frame in &batch {
                    self.seq += 1;
                    self.ws.feed(Message::text(frame.render(self.seq))).await?;
                }
                self.ws.flush().await
            };
            match timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(close::INTERNAL),
                Err(_) => return Err(close::TOO_SLOW),
            }
            let now_us = chrono::Utc::now().timestamp_micros();
            for frame in &batch {
                if let Some(at) = frame.committed_at_us {
                    self.node
                        .commit_to_socket
                        .record((now_us - at).max(0) as f64 / 1e6);
                }
            }
            Ok(())
        })
    }

    /// Pushes out what tungstenite has buffered (a pong).
    fn flush(&mut self) -> BoxFuture<'_, Result<(), ()>> {
        Box::pin(async move {
            match timeout(WRITE_TIMEOUT, self.ws.flush()).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(()),
            }
        })
    }

    fn send_now(&mut self, text: String) -> BoxFuture<'_, Result<(), ()>> {
        Box::pin(async move {
            match timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text))).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(()),
            }
        })
    }

    fn kicked(&mut self, code: u16) -> BoxFuture<'_, u16> {
        Box::pin(self.kicked_inner(code))
    }

    async fn kicked_inner(&mut self, code: u16) -> u16 {
        match Kick::from_code(code) {
            Some(Kick::Reconnect) => {
                let _ = timeout(CLOSE_TIMEOUT, self.ws.send(Message::text(r#"{"op":7}"#))).await;
                self.end(close::RESTART, "node restarting, reconnect").await
            }
            Some(Kick::TooSlow) => self.end(close::TOO_SLOW, "too slow to keep up").await,
            Some(Kick::Revoked) => self.end(close::AUTH_FAILED, "token was revoked").await,
            Some(Kick::OverLimit) => {
                self.end(close::SESSION_LIMIT, "session limit reached")
                    .await
            }
            Some(Kick::HeartbeatTimeout) => {
                self.end(close::HEARTBEAT_TIMEOUT, "heartbeat timed out")
                    .await
            }
            None => self.end(close::INTERNAL, "closed").await,
        }
    }

    fn end<'a>(&'a mut self, code: u16, reason: &'a str) -> BoxFuture<'a, u16> {
        Box::pin(async move {
            close(&mut self.ws, code, reason).await;
            if code != close::RESTART {
                info!(session = %self.session_id, code, reason, "session closed");
            }
            code
        })
    }
}

/// Sends a close frame, giving a client that does not read a short grace.
async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::{is_heartbeat, serve, BeatWindow};
    use std::time::Duration;

    /// The size of the future a two-argument async fn returns.
    fn future_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_idle_session_task_stays_small() {
        // An idle session's task is this future plus 104 bytes of tokio's
        // (header, ids, trailer), rounded up to a multiple of 128: up to
        // 792 bytes it is an 896-byte allocation per session. It was 1,208
        // (a 1,408-byte task) with the start nested and a timer in the
        // loop; now the socket (320 bytes) and the select loop are most of
        // it. If a change must grow it, the cost is 128 bytes per session.
        let size = future_size(serve);
        assert!(size <= 792, "the session future grew to {size} bytes");
    }

    #[test]
    fn more_than_four_heartbeats_in_an_interval_are_refused() {
        let interval = Duration::from_millis(50);
        let mut w = BeatWindow::starting_now();
        assert!((0..4).all(|_| w.allow(interval)));
        assert!(!w.allow(interval));
        std::thread::sleep(interval + Duration::from_millis(5));
        assert!(w.allow(interval), "a new interval counts from zero");
    }

    #[test]
    fn only_heartbeats_pass() {
        assert!(is_heartbeat(r#"{"op":1,"d":null}"#));
        assert!(is_heartbeat(r#"{"op":1,"d":42}"#));
        assert!(!is_heartbeat(r#"{"op":2,"d":null}"#));
        assert!(!is_heartbeat(r#"{"op":1,"d":null,"x":1}"#));
        assert!(!is_heartbeat(r#"{"op":1,"d":"s"}"#));
        assert!(!is_heartbeat("hello"));
    }
}
