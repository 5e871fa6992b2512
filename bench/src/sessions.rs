//! The two kinds of client session the bench holds, one task each: an
//! Otako gateway session (HELLO, READY, dispatches, heartbeats) and a NATS
//! subscriber on nats-server's WebSocket listener (the peer). Both count
//! what they receive and record each delivery's latency from the send stamp
//! at the head of the message content.

use crate::latency::{self, Recorder};
use crate::nats_wire::{self, ServerOp, ServerStream};
use crate::resuming::CatchUp;
use crate::wsclient::{self, Frame, Opcode, Upgrade, WsConn, WsError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The source address of session `index`: 127.0.0.2 to 127.0.0.251, so that
/// the bench is not limited to one address's ~28k ephemeral ports.
pub fn source_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (2 + index % 250) as u8)
}

/// What every session of one client process adds to.
#[derive(Default)]
pub struct Tally {
    /// Deliveries since the process started.
    pub received_total: AtomicU64,
    pub held: AtomicU64,
    /// Session starts retried after close 1011 (the node could not start
    /// the session), as the protocol tells clients to.
    pub start_retries: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    recorder: Recorder,
    received: u64,
    unstamped: u64,
    ended: BTreeMap<String, u64>,
}

impl Tally {
    fn delivered(&self, stamp: Option<i64>) {
        self.received_total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock();
        w.received += 1;
        match stamp {
            Some(sent) => w.recorder.record(latency::now_us(), sent),
            None => w.unstamped += 1,
        }
    }

    fn ended(&self, why: String) {
        *self.window.lock().ended.entry(why).or_default() += 1;
    }

    /// Forgets how earlier sessions ended (between systems).
    pub fn clear_ended(&self) {
        self.window.lock().ended.clear();
    }

    pub fn reset_window(&self) {
        let mut w = self.window.lock();
        w.recorder.reset();
        w.received = 0;
        w.unstamped = 0;
    }

    pub fn report(&self) -> Result<crate::control::ShardReport, latency::HistogramError> {
        let w = self.window.lock();
        Ok(crate::control::ShardReport {
            held: self.held.load(Ordering::Relaxed),
            start_retries: self.start_retries.load(Ordering::Relaxed),
            received: w.received,
            unstamped: w.unstamped,
            ended: w.ended.clone(),
            latency: w.recorder.export()?,
        })
    }
}

/// How a session ended or failed to start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Ws(#[from] WsError),
    #[error("closed by the server with {0}")]
    Closed(u16),
    #[error("timed out before ready")]
    Timeout,
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    #[error("nats: {0}")]
    Nats(String),
}

impl SessionError {
    /// A short label to count failures by.
    pub fn label(&self) -> String {
        match self {
            SessionError::Ws(WsError::Connect(e)) => format!("connect: {}", e.kind()),
            SessionError::Ws(WsError::Io(e)) => format!("io: {}", e.kind()),
            SessionError::Ws(WsError::Eof) => "eof".into(),
            SessionError::Closed(code) => format!("close {code}"),
            other => other.to_string(),
        }
    }
}

/// Waits for the next whole frame.
async fn next_frame(conn: &mut WsConn) -> Result<Frame, SessionError> {
    loop {
        if let Some(f) = conn.next_frame()? {
            return Ok(f);
        }
        conn.fill().await?;
    }
}

/// Times a session start answered with close 1011 is tried again.
const START_RETRIES: u32 = 3;

/// The last cursor a session received (READY's, then each event's): where
/// it resumes from once it is gone. Shared with its client process, which
/// reads it after the session was dropped.
pub type CursorSlot = Arc<Mutex<String>>;

pub struct OtakoSession {
    pub addr: SocketAddr,
    pub bind: Ipv4Addr,
    pub token: String,
    pub cursor: CursorSlot,
}

/// What READY said, and when the start's steps were done (unix µs): the
/// upgrade answered, then HELLO (which the node sends once it has a start
/// slot for the session), then READY.
pub struct Ready {
    pub interval: Duration,
    pub cursor: String,
    pub resumed: bool,
    pub upgraded_us: i64,
    pub hello_us: i64,
    pub ready_us: i64,
}

/// Runs one Otako session until `stop`, the server closes it, or it fails;
/// `ready` learns whether it reached READY within `ready_timeout`.
pub async fn run_otako(
    s: OtakoSession,
    tally: &Tally,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
    ready_timeout: Duration,
) {
    let mut attempt = 0u32;
    let (mut conn, r) = loop {
        match timeout(ready_timeout, otako_start(&s, None)).await {
            Ok(Ok(x)) => break x,
            // 1011: reconnect with backoff, as the protocol asks clients to.
            Ok(Err(SessionError::Closed(1011))) if attempt < START_RETRIES => {
                attempt += 1;
                tally.start_retries.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_millis(500 << attempt);
                tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>())).await;
            }
            Ok(Err(e)) => {
                let _ = ready.send(Err(e.label()));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err(SessionError::Timeout.label()));
                return;
            }
        }
    };
    *s.cursor.lock() = r.cursor;
    tally.held.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    let mut seen = Seen::new(s.cursor, None);
    hold(&mut conn, r.interval, tally, &stop, &mut seen).await;
}

/// Runs a session that has its READY until `stop`, the server closes it,
/// or it fails, counting it as held meanwhile; returns why it ended.
pub async fn hold(
    conn: &mut WsConn,
    interval: Duration,
    tally: &Tally,
    stop: &CancellationToken,
    seen: &mut Seen,
) -> String {
    let why = otako_loop(conn, interval, tally, stop, seen).await;
    tally.held.fetch_sub(1, Ordering::Relaxed);
    if stop.is_cancelled() {
        conn.close(1000).await;
    }
    tally.ended(why.clone());
    why
}

/// Upgrade (with the cursor to resume from, if any), HELLO, READY.
pub async fn otako_start(
    s: &OtakoSession,
    resume: Option<&str>,
) -> Result<(WsConn, Ready), SessionError> {
    // A cursor is made of URL-safe characters only (A-Z a-z 0-9 . _ ~ -).
    let path = match resume {
        Some(c) => format!("/gateway?resume={c}"),
        None => "/gateway".to_owned(),
    };
    let mut conn = wsclient::connect(&Upgrade {
        addr: s.addr,
        bind: s.bind,
        path: &path,
        headers: &[("Authorization", &s.token)],
    })
    .await?;
    let upgraded_us = latency::now_us();
    let mut hello = None;
    loop {
        let f = next_frame(&mut conn).await?;
        match f.opcode {
            Opcode::Close => return Err(SessionError::Closed(f.close_code().unwrap_or(1005))),
            Opcode::Text => {}
            _ => continue,
        }
        let v: serde_json::Value = serde_json::from_slice(&f.payload)
            .map_err(|_| SessionError::Unexpected("not JSON".into()))?;
        match (v["op"].as_u64(), v["t"].as_str()) {
            (Some(10), _) => {
                hello = v["d"]["heartbeat_interval"]
                    .as_u64()
                    .map(|ms| (Duration::from_millis(ms), latency::now_us()));
            }
            (Some(0), Some("READY")) => {
                let (interval, hello_us) =
                    hello.ok_or(SessionError::Unexpected("READY before HELLO".into()))?;
                let ready = Ready {
                    interval,
                    cursor: v["d"]["cursor"].as_str().unwrap_or_default().to_owned(),
                    resumed: v["d"]["resumed"].as_bool().unwrap_or(false),
                    upgraded_us,
                    hello_us,
                    ready_us: latency::now_us(),
                };
                return Ok((conn, ready));
            }
            _ => return Err(SessionError::Unexpected(v.to_string())),
        }
    }
}

/// What a session keeps of the frames it received.
pub struct Seen {
    /// The `s` of the last dispatch, for heartbeats.
    last_s: u64,
    cursor: CursorSlot,
    /// A resumed session still counting the events it missed.
    catch_up: Option<CatchUp>,
}

impl Seen {
    pub fn new(cursor: CursorSlot, catch_up: Option<CatchUp>) -> Seen {
        Seen {
            last_s: 1,
            cursor,
            catch_up,
        }
    }
}

/// Receives until the end; returns why it ended.
async fn otako_loop(
    conn: &mut WsConn,
    interval: Duration,
    tally: &Tally,
    stop: &CancellationToken,
    seen: &mut Seen,
) -> String {
    // The first heartbeat waits interval × random(0..1), as clients should.
    let mut next_beat = Instant::now() + interval.mul_f64(rand::random::<f64>());
    loop {
        // What is in the buffer first: frames that came in the same read
        // as READY (a resume's replay follows it at once) wait there, and
        // the socket may have nothing more to say for a while.
        loop {
            match conn.next_frame() {
                Ok(Some(f)) => {
                    if let Err(e) = otako_frame(conn, &f, seen, tally).await {
                        return e.label();
                    }
                }
                Ok(None) => break,
                Err(e) => return SessionError::from(e).label(),
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return "closed by the bench".into(),
            r = conn.fill() => {
                if let Err(e) = r {
                    return SessionError::from(e).label();
                }
            }
            _ = sleep_until(next_beat) => {
                next_beat += interval;
                let beat = format!("{{\"op\":1,\"d\":{}}}", seen.last_s);
                if let Err(e) = conn.send(Opcode::Text, beat.as_bytes()).await {
                    return SessionError::from(e).label();
                }
            }
        }
    }
}

const DISPATCH_PREFIX: &[u8] = br#"{"op":0,"t":"EVENT_"#;
const CONTENT_KEY: &str = r#""content":""#;
const CURSOR_KEY: &str = r#""cursor":""#;

async fn otako_frame(
    conn: &mut WsConn,
    f: &Frame,
    seen: &mut Seen,
    tally: &Tally,
) -> Result<(), SessionError> {
    match f.opcode {
        Opcode::Text if f.payload.starts_with(DISPATCH_PREFIX) => {
            let text = std::str::from_utf8(&f.payload)
                .map_err(|_| SessionError::Unexpected("dispatch is not UTF-8".into()))?;
            // `s` comes first and `cursor` right after it, so neither search
            // reads far into the frame.
            let after_s = text.find(r#""s":"#).map_or(0, |i| i + 4);
            if let Some(s) = leading_number(&text[after_s..]) {
                seen.last_s = s;
            }
            let cursor = quoted_after(&text[after_s..], CURSOR_KEY);
            if let Some(c) = cursor {
                let mut slot = seen.cursor.lock();
                slot.clear();
                slot.push_str(c);
            }
            let stamp = text
                .find(CONTENT_KEY)
                .and_then(|i| latency::parse_stamp(&f.payload[i + CONTENT_KEY.len()..]));
            if let Some(c) = &mut seen.catch_up {
                c.event(cursor, stamp);
            }
            tally.delivered(stamp);
            Ok(())
        }
        // Heartbeat ACKs and anything else the gateway adds are not deliveries.
        Opcode::Text | Opcode::Binary | Opcode::Pong => Ok(()),
        Opcode::Ping => Ok(conn.send(Opcode::Pong, &f.payload).await?),
        Opcode::Close => Err(SessionError::Closed(f.close_code().unwrap_or(1005))),
        Opcode::Continuation => Err(SessionError::Unexpected("stray continuation".into())),
    }
}

/// The string value that follows `key` (which ends with the opening quote).
fn quoted_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

pub struct PeerSession {
    pub addr: SocketAddr,
    pub bind: Ipv4Addr,
    pub subjects: Vec<String>,
}

/// Runs one NATS-over-WebSocket subscriber, like [`run_otako`].
pub async fn run_peer(
    s: PeerSession,
    tally: &Tally,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
    ready_timeout: Duration,
) {
    let mut wire = ServerStream::default();
    let start = timeout(ready_timeout, peer_start(&s, &mut wire)).await;
    let mut conn = match start {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e.label()));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(SessionError::Timeout.label()));
            return;
        }
    };
    tally.held.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    let why = peer_loop(&mut conn, &mut wire, tally, &stop).await;
    tally.held.fetch_sub(1, Ordering::Relaxed);
    if stop.is_cancelled() {
        conn.close(1000).await;
    }
    tally.ended(why);
}

/// Upgrade, INFO, CONNECT + SUB + PING, then the PONG that says the
/// subscriptions are live.
async fn peer_start(s: &PeerSession, wire: &mut ServerStream) -> Result<WsConn, SessionError> {
    let mut conn = wsclient::connect(&Upgrade {
        addr: s.addr,
        bind: s.bind,
        path: "/",
        headers: &[],
    })
    .await?;
    let mut subscribed = false;
    loop {
        let f = next_frame(&mut conn).await?;
        match f.opcode {
            Opcode::Text | Opcode::Binary => wire.feed(&f.payload),
            Opcode::Close => return Err(SessionError::Closed(f.close_code().unwrap_or(1005))),
            Opcode::Ping => conn.send(Opcode::Pong, &f.payload).await?,
            _ => {}
        }
        while let Some(op) = wire
            .next_op()
            .map_err(|e| SessionError::Nats(e.to_string()))?
        {
            match op {
                ServerOp::Info if !subscribed => {
                    subscribed = true;
                    let pre = nats_wire::subscribe_preamble(&s.subjects);
                    conn.send(Opcode::Binary, pre.as_bytes()).await?;
                }
                ServerOp::Pong if subscribed => return Ok(conn),
                ServerOp::Ping => conn.send(Opcode::Binary, b"PONG\r\n").await?,
                ServerOp::Err(e) => return Err(SessionError::Nats(e)),
                _ => {}
            }
        }
    }
}

async fn peer_loop(
    conn: &mut WsConn,
    wire: &mut ServerStream,
    tally: &Tally,
    stop: &CancellationToken,
) -> String {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return "closed by the bench".into(),
            r = conn.fill() => {
                if let Err(e) = r {
                    return SessionError::from(e).label();
                }
                if let Err(e) = peer_frames(conn, wire, tally).await {
                    return e.label();
                }
            }
        }
    }
}

async fn peer_frames(
    conn: &mut WsConn,
    wire: &mut ServerStream,
    tally: &Tally,
) -> Result<(), SessionError> {
    while let Some(f) = conn.next_frame()? {
        match f.opcode {
            Opcode::Text | Opcode::Binary => wire.feed(&f.payload),
            Opcode::Ping => conn.send(Opcode::Pong, &f.payload).await?,
            Opcode::Close => return Err(SessionError::Closed(f.close_code().unwrap_or(1005))),
            _ => {}
        }
    }
    while let Some(op) = wire
        .next_op()
        .map_err(|e| SessionError::Nats(e.to_string()))?
    {
        match op {
            ServerOp::Msg { payload } => tally.delivered(latency::parse_stamp(&payload)),
            ServerOp::Ping => conn.send(Opcode::Binary, b"PONG\r\n").await?,
            ServerOp::Err(e) => return Err(SessionError::Nats(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_loopback() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_address(249), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(source_address(250), Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn numbers_after_keys() {
        assert_eq!(leading_number("42,\"d\""), Some(42));
        assert_eq!(leading_number("x"), None);
        let frame = r#"{"op":0,"t":"EVENT_MESSAGE_CREATE","s":42,"cursor":"ep.9","d":{}}"#;
        assert_eq!(quoted_after(frame, CURSOR_KEY), Some("ep.9"));
        assert_eq!(quoted_after(r#"{"s":3,"d":{}}"#, CURSOR_KEY), None);
    }
}
