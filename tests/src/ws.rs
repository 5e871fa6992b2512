//! A gateway WebSocket client that does nothing on its own (no heartbeats, no
//! reconnects): tests drive every frame. It checks the invariant every
//! session must keep: dispatch frames carry `s` increasing by one.
//!
//! Methods panic with a description when the gateway does not behave, so
//! tests read as a list of expectations.

use futures_util::{SinkExt, StreamExt};
use otako_common::close::CloseCode;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long to wait for something that must arrive.
pub const ARRIVE: Duration = Duration::from_secs(10);
/// How long to watch for something that must not arrive, after a positive
/// sync point.
pub const QUIET: Duration = Duration::from_millis(400);

/// How the token travels in the upgrade request.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `Authorization: <token>`
    Header(&'a str),
    /// `Authorization: Bearer <token>`
    Bearer(&'a str),
    /// `Sec-WebSocket-Protocol: otako.v1, otako.token.<token>` (browsers)
    Subprotocol(&'a str),
    /// No token at all.
    None,
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame holding JSON.
    Json(Value),
    /// A text frame that is not JSON (never valid from the gateway).
    Text(String),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code as sent (None when the frame had no code; a raw
    /// number, so a code outside the contract shows as itself) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    Ended(Option<String>),
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    label: String,
    /// The selected subprotocol, if any.
    pub protocol: Option<String>,
    /// The hello (op 10) `d`, once read.
    pub hello: Option<Value>,
    /// The READY `d`, once read.
    pub ready: Option<Value>,
    last_s: Option<u64>,
    /// The cursor of the last event frame (or READY's), to resume from.
    pub last_cursor: Option<String>,
    closed: bool,
}

impl WsClient {
    /// Opens the WebSocket; reads nothing. Panics if the upgrade fails.
    pub async fn connect(url: &str, auth: Auth<'_>, label: &str) -> WsClient {
        WsClient::try_connect(url, auth, label)
            .await
            .unwrap_or_else(|e| panic!("{label}: WebSocket upgrade at {url} failed: {e}"))
    }

    pub async fn try_connect(
        url: &str,
        auth: Auth<'_>,
        label: &str,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        let headers = req.headers_mut();
        match auth {
            Auth::Header(t) => {
                headers.insert(
                    "authorization",
                    HeaderValue::from_str(t).expect("token is a header value"),
                );
            }
            Auth::Bearer(t) => {
                headers.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {t}")).expect("token is a header value"),
                );
            }
            Auth::Subprotocol(t) => {
                headers.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_str(&format!("otako.v1, otako.token.{t}"))
                        .expect("token is a header value"),
                );
            }
            Auth::None => {}
        }
        let (ws, resp) = tokio::time::timeout(ARRIVE, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| {
                tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "upgrade timed out",
                ))
            })??;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(WsClient {
            ws,
            label: label.to_owned(),
            protocol,
            hello: None,
            ready: None,
            last_s: None,
            last_cursor: None,
            closed: false,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The next thing the server sends, or `None` if nothing comes within
    /// `timeout`. Pings are skipped (tungstenite answers them).
    pub async fn next_incoming(&mut self, timeout: Duration) -> Option<Incoming> {
        if self.closed {
            return Some(Incoming::Ended(Some("already closed".into())));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            let incoming = match msg {
                None => Incoming::Ended(None),
                Some(Err(e)) => Incoming::Ended(Some(e.to_string())),
                Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                    Ok(v) => Incoming::Json(v),
                    Err(_) => Incoming::Text(t.to_string()),
                },
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Pong(p))) => Incoming::Pong(p.to_vec()),
                Some(Ok(Message::Close(f))) => Incoming::Close(
                    f.as_ref().map(|f| u16::from(f.code)),
                    f.map(|f| f.reason.to_string()).unwrap_or_default(),
                ),
            };
            if matches!(incoming, Incoming::Ended(_) | Incoming::Close(..)) {
                self.closed = true;
            }
            if let Incoming::Json(v) = &incoming {
                self.check_sequence(v);
            }
            return Some(incoming);
        }
    }

    /// Dispatch frames (op 0) must number themselves 1, 2, 3, … per session.
    fn check_sequence(&mut self, v: &Value) {
        if v["op"] != 0 {
            return;
        }
        let s = v["s"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: dispatch frame without a numeric s: {v}", self.label));
        let want = self.last_s.map_or(1, |l| l + 1);
        assert_eq!(
            s, want,
            "{}: s must increase by one per frame: {v}",
            self.label
        );
        self.last_s = Some(s);
        // Every event frame carries its position in the history (the
        // contract's cursor), READY the position the session starts from.
        let cursor = if v["t"] == "READY" {
            &v["d"]["cursor"]
        } else {
            &v["cursor"]
        };
        let cursor = cursor
            .as_str()
            .unwrap_or_else(|| panic!("{}: dispatch frame without a cursor: {v}", self.label));
        assert!(
            cursor.len() <= 64
                && cursor
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
            "{}: a cursor is at most 64 characters of A-Z a-z 0-9 . _ ~ -: {v}",
            self.label
        );
        self.last_cursor = Some(cursor.to_owned());
    }

    /// The next JSON frame; panics on anything else or on timeout.
    pub async fn next_json(&mut self, timeout: Duration) -> Value {
        match self.next_incoming(timeout).await {
            Some(Incoming::Json(v)) => v,
            Some(other) => panic!("{}: expected a JSON frame, got {other:?}", self.label),
            None => panic!("{}: no frame within {timeout:?}", self.label),
        }
    }

    /// Reads the hello (op 10) and returns its `d`.
    pub async fn hello(&mut self) -> Value {
        let v = self.next_json(ARRIVE).await;
        assert_eq!(
            v["op"], 10,
            "{}: the first frame must be the hello: {v}",
            self.label
        );
        assert!(
            v["d"]["heartbeat_interval"].is_u64(),
            "{}: hello without heartbeat_interval: {v}",
            self.label
        );
        assert!(
            v["d"]["session_id"].is_string(),
            "{}: hello without session_id: {v}",
            self.label
        );
        self.hello = Some(v["d"].clone());
        v["d"].clone()
    }

    /// Reads READY (op 0, s 1) and returns its `d`.
    pub async fn ready(&mut self) -> Value {
        let v = self.next_json(ARRIVE).await;
        assert_eq!(v["op"], 0, "{}: expected READY: {v}", self.label);
        assert_eq!(v["t"], "READY", "{}: expected READY: {v}", self.label);
        assert_eq!(v["s"], 1, "{}: READY must have s 1: {v}", self.label);
        let d = &v["d"];
        assert!(
            d["session_id"].is_string() && d["user"]["id"].is_string() && d["channels"].is_array(),
            "{}: READY lacks session_id, user or channels: {v}",
            self.label
        );
        self.ready = Some(d.clone());
        d.clone()
    }

    /// Hello, then READY.
    pub async fn handshake(&mut self) -> Value {
        self.hello().await;
        self.ready().await
    }

    /// The channel ids READY listed.
    pub fn ready_channels(&self) -> Vec<String> {
        self.ready
            .as_ref()
            .and_then(|r| r["channels"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next dispatch frame (op 0); returns the whole frame (`t`, `s`, `d`).
    pub async fn next_dispatch(&mut self, timeout: Duration) -> Value {
        let v = self.next_json(timeout).await;
        assert_eq!(v["op"], 0, "{}: expected a dispatch frame: {v}", self.label);
        assert!(
            v["t"].is_string(),
            "{}: dispatch frame without t: {v}",
            self.label
        );
        v
    }

    /// The next dispatch, which must be of type `t`; returns its `d`.
    pub async fn expect_dispatch(&mut self, t: &str) -> Value {
        let v = self.next_dispatch(ARRIVE).await;
        assert_eq!(v["t"], t, "{}: unexpected event: {v}", self.label);
        v["d"].clone()
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_no_dispatch(&mut self, quiet: Duration) {
        if let Some(frame) = self.next_incoming(quiet).await {
            panic!("{}: expected nothing, got {frame:?}", self.label);
        }
    }

    /// Sends a heartbeat `{"op":1,"d":<last s>}`.
    pub async fn heartbeat(&mut self) {
        let d = self.last_s.map_or(Value::Null, Value::from);
        self.send_text(&serde_json::json!({"op": 1, "d": d}).to_string())
            .await;
    }

    /// Sends a heartbeat with the given `d`.
    pub async fn heartbeat_with(&mut self, d: Value) {
        self.send_text(&serde_json::json!({"op": 1, "d": d}).to_string())
            .await;
    }

    /// Sends a heartbeat and expects `{"op":11}` back.
    pub async fn heartbeat_acked(&mut self) {
        self.heartbeat().await;
        let v = self.next_json(ARRIVE).await;
        assert_eq!(
            v,
            serde_json::json!({"op": 11}),
            "{}: expected a heartbeat ack",
            self.label
        );
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    pub async fn send_ping(&mut self, payload: Vec<u8>) {
        self.send(Message::Ping(payload.into())).await;
    }

    async fn send(&mut self, msg: Message) {
        if let Err(e) = self.ws.send(msg).await {
            panic!("{}: sending failed: {e}", self.label);
        }
    }

    /// Reads until a close frame, which must carry `code`; returns its reason.
    pub async fn expect_close(&mut self, code: CloseCode, timeout: Duration) -> String {
        match self.next_incoming(timeout).await {
            Some(Incoming::Close(Some(c), reason)) if c == code.code() => reason,
            Some(other) => panic!("{}: expected close {code}, got {other:?}", self.label),
            None => panic!(
                "{}: expected close {code}, nothing came within {timeout:?}",
                self.label
            ),
        }
    }

    /// Expects the session to be refused with `code`: a hello (op 10) may
    /// come first (some checks need the database, after the upgrade), but
    /// nothing else. Returns the close reason.
    pub async fn expect_refused(&mut self, code: CloseCode) -> String {
        match self.next_incoming(ARRIVE).await {
            Some(Incoming::Json(v)) if v["op"] == 10 => self.expect_close(code, ARRIVE).await,
            Some(Incoming::Close(Some(c), reason)) if c == code.code() => reason,
            Some(other) => panic!(
                "{}: expected to be refused with {code}, got {other:?}",
                self.label
            ),
            None => panic!(
                "{}: expected to be refused with {code}, nothing came",
                self.label
            ),
        }
    }

    /// Closes from the client side (normal closure) and waits briefly for
    /// the server's answer.
    pub async fn close(mut self) {
        if self.closed {
            return;
        }
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WireCloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Asserts that none of `clients` receives anything for [`QUIET`], all
/// watched at once (after a positive sync point, so silence means something).
pub async fn expect_all_quiet<'a>(clients: impl IntoIterator<Item = &'a mut WsClient>) {
    futures_util::future::join_all(clients.into_iter().map(|c| c.expect_no_dispatch(QUIET))).await;
}
