//! One client WebSocket session, from upgrade to close.
//!
//! A session is one task. It reads its socket and selects over two things:
//! frames from the client, and a wake-up from its hub handle, which stands
//! for frames queued by the hub and for kicks from outside (too slow,
//! revoked or expired, over the limit, node draining, and a missed
//! heartbeat, which the node's sweep finds: see `heartbeat.rs`). Queued
//! frames are written in batches (`feed` each, `flush` once): one write()
//! per batch instead of one per frame. Once the session is live, the hub's
//! routing path also writes to the socket, one whole frame at a time, when
//! nothing is queued and the task is not writing (`SessionHandle::offer`);
//! the task takes the socket over (`hold`) before each write of its own.
//!
//! A session that comes with a cursor joins its channels live first and
//! then replays what it missed up to that seam (`resume.rs`); live frames
//! wait in its queue meanwhile, and any frame at or before what the replay
//! covered is skipped, so the seam has no gap and no repeat.

use crate::auth::{self, AuthError, Upgrade};
use crate::db;
use crate::fanout::Registration;
use crate::frame::Frame;
use crate::handle::{SessionHandle, Takeover};
use crate::heartbeat::{self, Beat, BeatWindow};
use crate::history::HistoryError;
use crate::limit::Lease;
use crate::node::Node;
use crate::resume::{self, NotResumed, Seam};
use crate::socket::Shared;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use otako_common::client_frame::is_heartbeat;
use otako_common::close::{Close, CloseCode};
use otako_common::token::Claims;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
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
/// Frames written per flush at most, so one busy session cannot hog its task.
const MAX_BATCH: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that accepts no bytes for this long is too slow.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The database part of a start.
const START_DB_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session start waits for the history's end, and then for this
/// node to route up to it.
const START_HISTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// The session limit's part of a start (NATS KV round trips).
const START_LIMIT_TIMEOUT: Duration = Duration::from_secs(5);

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

type Ws = WebSocketStream<Shared>;

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
    let stream = Shared(Arc::new(stream));
    let Some((ws, who)) = Box::pin(upgrade(stream, &node)).await else {
        return;
    };
    metrics::counter!("otako_sessions_opened_total").increment(1);
    let session_id = format!("{}-{:016x}", node.node_id, rand::random::<u64>());
    let mut session = Session {
        node,
        ws,
        seq: 0,
        floor: 0,
        session_id,
    };
    let started = Box::pin(session.start(who)).await;
    let code = match started {
        Ok(started) => session.run_loop(started).await,
        Err(code) => code,
    };
    metrics::counter!("otako_sessions_closed_total", "code" => code.to_string()).increment(1);
}

/// Who connected, and where the session resumes from. Boxed: the idle
/// session's task then holds a pointer, not the claims and the cursor.
struct Who {
    claims: Claims,
    resume: Option<String>,
}

/// The WebSocket handshake and the token check; a bad token is closed with 4004.
async fn upgrade(stream: Shared, node: &Node) -> Option<(Ws, Box<Who>)> {
    let mut request = Upgrade::default();
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        auth::handshake(&mut request),
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
    match auth::verify(&node.token_key, request.token.as_deref()) {
        Ok(claims) => Some((
            ws,
            Box::new(Who {
                claims,
                resume: request.resume,
            }),
        )),
        Err(e) => {
            let close = Close::with_reason(CloseCode::AuthFailed, e.to_string());
            send_close(&mut ws, &close).await;
            None
        }
    }
}

/// What a started session holds until it ends.
struct Started {
    registration: Registration,
    _lease: Lease,
}

/// What woke a session's task.
enum Event {
    /// Its hub handle: frames queued, or a kick.
    Woken,
    Heartbeat,
    Ping,
    /// A pong or a raw frame: nothing to do.
    Nothing,
    /// Close with 4001 and this reason.
    Reject(&'static str),
    /// The client sent a close frame; answer it.
    Closing,
    /// The connection is gone.
    Gone,
}

impl Event {
    fn from_client(incoming: Option<Result<Message, WsError>>) -> Event {
        let rejected = Event::Reject;
        match incoming {
            Some(Ok(Message::Text(text))) if is_heartbeat(&text) => Event::Heartbeat,
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                rejected("only heartbeats are accepted")
            }
            Some(Ok(Message::Ping(_))) => Event::Ping,
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Event::Nothing,
            Some(Ok(Message::Close(_))) => Event::Closing,
            None => Event::Gone,
            Some(Err(WsError::Capacity(_))) => rejected("frame too large"),
            Some(Err(WsError::Utf8(_))) => rejected("text frame is not valid UTF-8"),
            Some(Err(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
            ))) => Event::Gone,
            Some(Err(WsError::Protocol(e))) => {
                debug!(error = %e, "client broke the WebSocket protocol");
                rejected("not a valid WebSocket frame")
            }
            Some(Err(e)) => {
                debug!(error = %e, "session read failed");
                Event::Gone
            }
        }
    }
}

struct Session {
    node: Arc<Node>,
    ws: Ws,
    /// The `s` of the last dispatch frame sent.
    seq: u64,
    /// The history position this session already has everything up to: a
    /// queued frame at or before it came in the replay, or (for a fresh
    /// session) before READY's cursor, and is skipped.
    floor: u64,
    session_id: String,
}

/// A frame the client did not take within the write timeout, or a broken
/// connection: the session ends.
#[derive(Debug, thiserror::Error)]
#[error("the client did not take a frame in time, or the connection broke")]
struct WriteFailed;

/// How a start ended for the READY frame.
struct Resumed {
    resumed: bool,
    cursor: String,
    replay: Vec<Arc<Frame>>,
    /// What the session has once the replay is written (see `Session::floor`).
    floor: u64,
}

impl Session {
    /// A start slot, HELLO, registration, the channel list, the session
    /// limit, the replay of a resume, READY.
    async fn start(&mut self, who: Box<Who>) -> Result<Started, CloseCode> {
        let Who { claims, resume } = *who;
        let node = self.node.clone();
        let Ok(Ok(permit)) = timeout(node.start_queue, node.starts.acquire()).await else {
            metrics::counter!("otako_session_starts_refused_total").increment(1);
            return Err(self.end(Close::new(CloseCode::TryAgainLater)).await);
        };
        let interval = node.heartbeat_interval;
        let hello = serde_json::json!({"op": 10, "d": {
            "heartbeat_interval": interval.as_millis() as u64,
            "session_id": self.session_id,
        }});
        if self.send_now(hello.to_string()).await.is_err() {
            return Err(CloseCode::Internal);
        }
        // Register before reading the channel list, so a member-add that
        // lands while the list loads is not lost.
        let id = node.next_session_id();
        let registration = node.hub.register(SessionHandle::new(
            id,
            claims.user_id,
            claims.generation,
            claims.expires_at,
        ));

        let start = timeout(
            START_DB_TIMEOUT,
            db::session_start(&node.pool, claims.user_id),
        )
        .await;
        let start = match start {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => {
                let close = Close::with_reason(CloseCode::AuthFailed, "user does not exist");
                return Err(self.end(close).await);
            }
            Ok(Err(e)) => {
                warn!(error = %e, "could not load the session's channels");
                let close = Close::with_reason(
                    CloseCode::Internal,
                    "database unavailable, reconnect later",
                );
                return Err(self.end(close).await);
            }
            Err(_) => {
                let close =
                    Close::with_reason(CloseCode::Internal, "database timed out, reconnect later");
                return Err(self.end(close).await);
            }
        };
        if start.token_generation != claims.generation {
            let close = Close::with_reason(CloseCode::AuthFailed, AuthError::Revoked.to_string());
            return Err(self.end(close).await);
        }
        let (at_history, bounds) = match self.catch_up(&start, claims.user_id).await {
            Ok(caught_up) => caught_up,
            Err(close) => return Err(self.end(close).await),
        };
        match timeout(
            START_LIMIT_TIMEOUT,
            node.limiter.admit(claims.user_id, &self.session_id),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let close = Close::with_reason(CloseCode::SessionLimit, e.to_string());
                return Err(self.end(close).await);
            }
            // The limiter's rule for a fault: admit, rather than hold the
            // start slot for as long as NATS takes to answer.
            Err(_) => warn!(user = claims.user_id, "session limit timed out; admitting"),
        }
        let lease = node.limiter.lease(claims.user_id, &self.session_id);
        let (seam, joined) = node.hub.join_channels(&registration.handle, &at_history);
        let seam = Seam {
            seq: seam,
            channels: &joined,
            bounds,
        };
        let outcome = match self.resume_from(resume, claims.user_id, seam).await {
            Ok(outcome) => outcome,
            Err(close) => return Err(self.end(close).await),
        };
        let channels: Vec<String> = node
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
            "cursor": outcome.cursor,
            "resumed": outcome.resumed,
        }});
        if self.send_now(ready.to_string()).await.is_err() {
            return Err(CloseCode::Internal);
        }
        drop(permit);
        for chunk in outcome.replay.chunks(MAX_BATCH) {
            if let Err(code) = self.write_frames(chunk).await {
                return Err(self.end(Close::new(code)).await);
            }
        }
        // Live frames queued meanwhile that the replay already covered are
        // skipped from here on, and the routing path may write from now.
        self.floor = outcome.floor;
        registration
            .handle
            .go_live(self.ws.get_ref().0.clone(), self.seq, self.floor);
        debug!(session = %self.session_id, user = claims.user_id, resumed = outcome.resumed, "session ready");
        Ok(Started {
            registration,
            _lease: lease,
        })
    }

    /// Of the channels with a membership change for the user still pending
    /// in the outbox, those whose change the history already holds (the
    /// outbox marks a row delivered only after the gateway's answer, so a
    /// pending row may be in the history already). A history fault counts as
    /// not there: the database's view then stands.
    async fn pending_in_history(&self, start: &db::SessionStart, user_id: i64) -> Vec<i64> {
        let mut out = Vec::new();
        for c in start.pending() {
            let pending_add = start.pending_adds.contains(&c);
            match self.node.history.last_member_event(c, user_id).await {
                Ok(Some((_, is_add))) if is_add == pending_add => out.push(c),
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "could not read the history for a pending change");
                    out.push(c);
                }
            }
        }
        out
    }

    /// The session's channels as the history has them, not as the database
    /// has them ahead of it (see `db::SessionStart`), once this node has
    /// routed the history as far as it reached when they were read; with the
    /// history's bounds.
    ///
    /// The list is the membership as of the history's end, which runs ahead
    /// of this node's position while the node catches up (after its NATS
    /// link broke, or under load): joined at an earlier seam, the session
    /// would get a just-added channel's events from before the add, and miss
    /// a just-removed channel's last events. Past the wait's bound the client
    /// is told to come back (1013).
    async fn catch_up(
        &self,
        start: &db::SessionStart,
        user_id: i64,
    ) -> Result<(Vec<i64>, (u64, u64)), Close> {
        let later = try_again_later;
        let timed_out = || later("event history timed out, reconnect later");
        let in_history = timeout(
            START_HISTORY_TIMEOUT,
            self.pending_in_history(start, user_id),
        )
        .await
        .map_err(|_| timed_out())?;
        let channels = start.channels_at_history(|c| in_history.contains(&c));
        let bounds = match timeout(START_HISTORY_TIMEOUT, self.node.history.bounds()).await {
            Ok(Ok(bounds)) => bounds,
            Ok(Err(e)) => {
                warn!(error = %e, "could not read the event history's end for a session start");
                return Err(later("event history unavailable, reconnect later"));
            }
            Err(_) => return Err(timed_out()),
        };
        timeout(START_HISTORY_TIMEOUT, self.node.hub.caught_up(bounds.1))
            .await
            .map_err(|_| later("node catching up with the event history, reconnect later"))?;
        Ok((channels, bounds))
    }

    /// Replays what a resuming session missed, or says why it starts fresh.
    /// A history that cannot be read now is no reason to start fresh (the
    /// client would refetch over HTTP what a retry replays): the client is
    /// told to come back (1013) and resume then.
    async fn resume_from(
        &self,
        cursor: Option<String>,
        user_id: i64,
        seam: Seam<'_>,
    ) -> Result<Resumed, Close> {
        let history = &self.node.history;
        let fresh = Resumed {
            resumed: false,
            cursor: history.cursor(seam.seq).to_string(),
            replay: Vec::new(),
            // A member event routed while the session loaded joined it to
            // the channel (READY lists it) and queued frames at or before
            // the seam: they precede READY's cursor.
            floor: seam.seq,
        };
        let Some(cursor) = cursor else {
            return Ok(fresh);
        };
        let seam_seq = seam.seq;
        match resume::replay(history, &cursor, user_id, seam, self.node.resume).await {
            Ok(replay) => {
                metrics::counter!("otako_resumes_total", "outcome" => "resumed").increment(1);
                Ok(Resumed {
                    resumed: true,
                    floor: replay.cursor.seq.max(seam_seq),
                    cursor: replay.cursor.to_string(),
                    replay: replay.frames,
                })
            }
            Err(why) => {
                metrics::counter!("otako_resumes_total", "outcome" => why.label()).increment(1);
                // A read that ran out of time is the replay's bound (a gap
                // too long to read): that one starts fresh, or it would
                // come back to the same bound.
                let passing = matches!(&why, NotResumed::History(e) if !matches!(e, HistoryError::ReadTimeout));
                if let (true, NotResumed::History(e)) = (passing, &why) {
                    warn!(session = %self.session_id, error = %e, "could not read the history for a resume");
                    return Err(try_again_later("event history unavailable, resume later"));
                }
                debug!(session = %self.session_id, reason = %why, "not resumed");
                Ok(fresh)
            }
        }
    }

    /// Serves a started session until it ends; returns the close code.
    async fn run_loop(&mut self, started: Started) -> CloseCode {
        // Locals here live as long as the session: kept few and small.
        let handle = &started.registration.handle;
        handle.heartbeat_due_within(heartbeat::timeout(self.node.heartbeat_interval));
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
                    if let Some(code) = handle.kicked() {
                        if code == CloseCode::Restart {
                            // A restart is no reason to lose what is already queued.
                            while handle.has_queued() {
                                if self.write_queued(handle).await.is_err() {
                                    break;
                                }
                            }
                        }
                        if self.hold(handle).await.is_err() {
                            return CloseCode::TooSlow;
                        }
                        return self.kicked(code).await;
                    }
                    if let Err(code) = self.write_queued(handle).await {
                        return self.end(Close::new(code)).await;
                    }
                }
                Event::Nothing => continue,
                Event::Gone => return CloseCode::Abnormal,
                // Whatever the task writes now, it writes with the socket
                // taken over from the routing path.
                _ if self.hold(handle).await.is_err() => return CloseCode::TooSlow,
                Event::Heartbeat => {
                    if !beats.allow(Beat::Heartbeat, self.node.heartbeat_interval) {
                        return self.end(Close::new(CloseCode::TooFrequent)).await;
                    }
                    handle.heartbeat_due_within(heartbeat::timeout(self.node.heartbeat_interval));
                    if self.send_now(r#"{"op":11}"#.to_owned()).await.is_err() {
                        return CloseCode::Internal;
                    }
                    handle.hand_back(self.seq);
                }
                // tungstenite queues the pong; push it out now.
                Event::Ping => {
                    if !beats.allow(Beat::Ping, self.node.heartbeat_interval) {
                        let close =
                            Close::with_reason(CloseCode::TooFrequent, "pings too frequent");
                        return self.end(close).await;
                    }
                    if self.flush().await.is_err() {
                        return CloseCode::TooSlow;
                    }
                    handle.hand_back(self.seq);
                }
                Event::Reject(reason) => {
                    return self
                        .end(Close::with_reason(CloseCode::Rejected, reason))
                        .await
                }
                Event::Closing => {
                    // tungstenite queued the answer to the client's close.
                    let _ = self.flush().await;
                    return CloseCode::Normal;
                }
            }
        }
    }

    /// Takes the socket over from the routing path (see `SessionHandle`)
    /// and finishes the frame it left half-written, if any. The caller hands
    /// it back when it goes on serving.
    fn hold<'a>(&'a mut self, handle: &'a SessionHandle) -> BoxFuture<'a, Result<(), WriteFailed>> {
        Box::pin(self.settle(handle.take_over()))
    }

    /// Goes on from where the routing path left the socket: numbers after
    /// its last frame, and writes the end of a frame it started straight to
    /// the socket (tungstenite has nothing buffered: its writes always
    /// finish before the routing path may write again).
    async fn settle(&mut self, took: Takeover) -> Result<(), WriteFailed> {
        use tokio::io::AsyncWriteExt;
        self.seq = took.s;
        let Some(rest) = took.rest else {
            return Ok(());
        };
        match timeout(WRITE_TIMEOUT, self.ws.get_mut().write_all(&rest)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    /// Writes up to MAX_BATCH queued frames, then flushes once. A wake-up
    /// that finds the queue empty writes nothing.
    fn write_queued<'a>(
        &'a mut self,
        handle: &'a SessionHandle,
    ) -> BoxFuture<'a, Result<(), CloseCode>> {
        Box::pin(async move {
            let mut batch = Vec::new();
            let took = handle.take(MAX_BATCH, &mut batch);
            self.settle(took).await.map_err(|_| CloseCode::TooSlow)?;
            self.write_frames(&batch).await?;
            handle.hand_back(self.seq);
            Ok(())
        })
    }

    /// Writes `frames` (skipping those the session already has), then
    /// flushes once.
    fn write_frames<'a>(
        &'a mut self,
        frames: &'a [Arc<Frame>],
    ) -> BoxFuture<'a, Result<(), CloseCode>> {
        Box::pin(async move {
            let floor = self.floor;
            if frames.iter().all(|f| f.seq <= floor) {
                return Ok(());
            }
            let write = async {
                for frame in frames {
                    if frame.seq > floor {
                        self.seq += 1;
                        self.ws.feed(Message::text(frame.render(self.seq))).await?;
                    }
                }
                self.ws.flush().await
            };
            match timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CloseCode::Internal),
                Err(_) => return Err(CloseCode::TooSlow),
            }
            let now_us = chrono::Utc::now().timestamp_micros();
            for frame in frames {
                self.node.hub.record_written(frame, 1, now_us);
            }
            Ok(())
        })
    }

    /// Pushes out what tungstenite has buffered (a pong, a close reply).
    fn flush(&mut self) -> BoxFuture<'_, Result<(), WriteFailed>> {
        Box::pin(async move {
            match timeout(WRITE_TIMEOUT, self.ws.flush()).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(WriteFailed),
            }
        })
    }

    fn send_now(&mut self, text: String) -> BoxFuture<'_, Result<(), WriteFailed>> {
        Box::pin(async move {
            match timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text))).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(WriteFailed),
            }
        })
    }

    /// Closes a session the node kicked; a restart sends op 7 first.
    fn kicked(&mut self, code: CloseCode) -> BoxFuture<'_, CloseCode> {
        Box::pin(async move {
            if code == CloseCode::Restart {
                let _ = timeout(CLOSE_TIMEOUT, self.ws.send(Message::text(r#"{"op":7}"#))).await;
            }
            let close = match code {
                CloseCode::AuthFailed => {
                    Close::with_reason(code, "token was revoked or has expired")
                }
                other => Close::new(other),
            };
            self.end(close).await
        })
    }

    fn end(&mut self, close: Close) -> BoxFuture<'_, CloseCode> {
        Box::pin(async move {
            send_close(&mut self.ws, &close).await;
            if close.code != CloseCode::Restart {
                info!(session = %self.session_id, code = close.code.code(), reason = %close.reason, "session closed");
            }
            close.code
        })
    }
}

/// Sends a close frame, giving a client that does not read a short grace.
/// A 1013 close: the start cannot go on now, and the client comes back
/// after a backoff (docs/protocol.md).
fn try_again_later(why: &str) -> Close {
    metrics::counter!("otako_session_starts_refused_total").increment(1);
    Close::with_reason(CloseCode::TryAgainLater, why.to_owned())
}

async fn send_close(ws: &mut Ws, close: &Close) {
    let frame = CloseFrame {
        code: WsCloseCode::from(close.code.code()),
        reason: close.reason.to_string().into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::serve;

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
}
