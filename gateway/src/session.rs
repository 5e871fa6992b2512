//! One client WebSocket session, from upgrade to close.
//!
//! A session is one task. It owns its socket and selects over: frames queued
//! for it by the hub, frames from the client, the heartbeat deadline, and a
//! kick from outside (too slow, revoked, over the limit, node draining).
//! Queued frames are written in batches (`feed` each, `flush` once): one
//! write() per batch instead of one per frame.

use crate::auth::{self, AuthError};
use crate::db;
use crate::fanout::{Frame, Kick, Registration};
use crate::limit::Lease;
use crate::server::Node;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use otako_common::token::Claims;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

/// A heartbeat is the only frame a client may send, so nothing bigger is read.
const MAX_CLIENT_FRAME: usize = 1024;
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
        .read_buffer_size(MAX_CLIENT_FRAME)
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
// for its largest await point for as long as it lives. So every step that
// holds a large future only briefly (the handshake, the database and KV
// round trips of the start, writes and closes) runs boxed: freed once done,
// it leaves an idle session holding little more than its select loop.

pub async fn serve(stream: TcpStream, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let Some((ws, claims)) = Box::pin(upgrade(stream, &node)).await else {
        return;
    };
    metrics::counter!("otako_sessions_opened_total").increment(1);
    let mut session = Session {
        node: node.clone(),
        ws,
        seq: 0,
        session_id: format!("{}-{:016x}", node.node_id, rand::random::<u64>()),
    };
    let code = session.run(claims).await;
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
    queue: mpsc::Receiver<Arc<Frame>>,
    _lease: Option<Lease>,
}

struct Session {
    node: Arc<Node>,
    ws: Ws,
    /// The `s` of the last dispatch frame sent.
    seq: u64,
    session_id: String,
}

impl Session {
    /// Runs the session to its end and returns the close code.
    async fn run(&mut self, claims: Claims) -> u16 {
        match Box::pin(self.start(claims)).await {
            Ok(started) => self.run_loop(started).await,
            Err(code) => code,
        }
    }

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
        let (registration, queue) = self
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
        if let Err(code) = self
            .node
            .limiter
            .admit(claims.user_id, &self.session_id)
            .await
        {
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
            queue,
            _lease: lease,
        })
    }

    /// Serves a started session until it ends; returns the close code.
    async fn run_loop(&mut self, started: Started) -> u16 {
        let Started {
            registration,
            mut queue,
            _lease,
        } = started;
        let handle = &registration.handle;
        let interval = self.node.heartbeat_interval;

        let mut deadline = Instant::now() + interval * 3 / 2;
        let mut window_start = Instant::now();
        let mut beats_in_window = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = handle.kicked.notified() => {
                    let code = handle.kick_code().unwrap_or(close::INTERNAL);
                    if code == Kick::Reconnect as u16 {
                        // A restart is no reason to lose what is already queued.
                        while let Ok(frame) = queue.try_recv() {
                            if self.write_batch(frame, &mut queue).await.is_err() {
                                break;
                            }
                        }
                    }
                    return self.kicked(code).await;
                }
                frame = queue.recv() => {
                    let Some(frame) = frame else { return close::INTERNAL };
                    if let Err(code) = self.write_batch(frame, &mut queue).await {
                        return self.end(code, "too slow to keep up").await;
                    }
                }
                incoming = self.ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if !is_heartbeat(&text) {
                            return self.end(close::REJECTED, "only heartbeats are accepted").await;
                        }
                        let now = Instant::now();
                        if now.duration_since(window_start) >= interval {
                            window_start = now;
                            beats_in_window = 0;
                        }
                        beats_in_window += 1;
                        if beats_in_window > MAX_HEARTBEATS_PER_INTERVAL {
                            return self.end(close::TOO_FREQUENT, "heartbeats too frequent").await;
                        }
                        deadline = now + interval * 3 / 2;
                        if self.send_now(r#"{"op":11}"#.to_owned()).await.is_err() {
                            return close::INTERNAL;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return self.end(close::REJECTED, "only heartbeats are accepted").await;
                    }
                    // tungstenite queues the pong; push it out now.
                    Some(Ok(Message::Ping(_))) => {
                        if timeout(WRITE_TIMEOUT, self.ws.flush()).await.is_err() {
                            return close::TOO_SLOW;
                        }
                    }
                    Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return 1000,
                    Some(Err(WsError::Capacity(_))) => {
                        return self.end(close::REJECTED, "frame too large").await;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "session read failed");
                        return 1006;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return self.end(close::HEARTBEAT_TIMEOUT, "heartbeat timed out").await;
                }
            }
        }
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    fn write_batch<'a>(
        &'a mut self,
        first: Arc<Frame>,
        queue: &'a mut mpsc::Receiver<Arc<Frame>>,
    ) -> BoxFuture<'a, Result<(), u16>> {
        Box::pin(self.write_batch_inner(first, queue))
    }

    async fn write_batch_inner(
        &mut self,
        first: Arc<Frame>,
        queue: &mut mpsc::Receiver<Arc<Frame>>,
    ) -> Result<(), u16> {
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
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
    use super::is_heartbeat;

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
