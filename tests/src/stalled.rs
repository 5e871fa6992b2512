//! A client that stops reading: its socket has a tiny receive buffer and,
//! after HELLO and READY, nothing is read until the test says so, so the
//! gateway's writes to it back up the way a slow client's do.

use crate::stack::Gateway;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
