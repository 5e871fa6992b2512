//! Client frames that are not valid WebSocket get the contract's 4001 close
//! (not a dropped connection), a client's close frame is answered, and pings
//! are held to the heartbeat rate.
//!
//! The frames are written byte by byte on a raw socket, since a WebSocket
//! library refuses to send them.

use otako_e2e::{Auth, CloseCode, Incoming, Stack, WsClient, ARRIVE};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket opened by hand: the upgrade, then HELLO and READY read past.
async fn raw_session(addr: std::net::SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /gateway HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The 101 response, then two text frames (HELLO, READY).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for _ in 0..2 {
        let (opcode, _) = read_frame(&mut s).await;
        assert_eq!(opcode, 1, "a text frame");
    }
    s
}

/// Reads one server frame (servers do not mask): opcode and payload.
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(ARRIVE, s.read_exact(&mut h))
        .await
        .expect("a frame within the timeout")
        .expect("the connection is open");
    let mut len = (h[1] & 0x7f) as usize;
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await.unwrap();
        len = u16::from_be_bytes(l) as usize;
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).await.unwrap();
        len = u64::from_be_bytes(l) as usize;
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0] & 0x0f, payload)
}

/// A client frame: `first` is FIN/RSV/opcode, masked unless `mask` is false.
fn frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut out = vec![first, (payload.len() as u8) | if mask { 0x80 } else { 0 }];
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The close code of the server's close frame.
async fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(s).await;
        if opcode == 8 {
            assert!(payload.len() >= 2, "a close frame with a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_are_not_valid_websocket_are_closed_with_4001() {
    let stack = Stack::builder().backend(false).build().await;
    let user = stack.db.insert_user("alice").await;
    let token = stack.token_for(user, "alice");
    let addr = stack.gateway(0).ws_addr;
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "text that is not UTF-8",
            frame(0x81, &[0xff, 0xfe, 0xfd], true),
        ),
        (
            "an unmasked frame",
            frame(0x81, br#"{"op":1,"d":null}"#, false),
        ),
        (
            "reserved bit 1 set",
            frame(0xc1, br#"{"op":1,"d":null}"#, true),
        ),
        ("an unknown opcode", frame(0x83, b"x", true)),
    ];
    for (what, bytes) in cases {
        let mut s = raw_session(addr, &token).await;
        s.write_all(&bytes).await.unwrap();
        assert_eq!(
            close_code(&mut s).await,
            CloseCode::Rejected.code(),
            "{what} is closed with 4001"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_frame_is_answered() {
    let stack = Stack::builder().backend(false).build().await;
    let user = stack.db.insert_user("alice").await;
    let token = stack.token_for(user, "alice");
    let mut s = raw_session(stack.gateway(0).ws_addr, &token).await;
    s.write_all(&frame(0x88, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(close_code(&mut s).await, 1000, "the close is echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_pings_than_heartbeats_allow_are_closed_with_4008() {
    let stack = Stack::builder()
        .backend(false)
        .heartbeat_ms(2_000)
        .build()
        .await;
    let user = stack.db.insert_user("alice").await;
    let token = stack.token_for(user, "alice");
    let mut c = WsClient::connect(&stack.gateway(0).ws_url(), Auth::Header(&token), "alice").await;
    c.handshake().await;
    // Four pings in an interval are answered...
    for _ in 0..4 {
        c.send_ping(b"p".to_vec()).await;
    }
    // ...the fifth closes the session.
    c.send_ping(b"p".to_vec()).await;
    let mut pongs = 0;
    loop {
        match c.next_incoming(Duration::from_secs(5)).await {
            Some(Incoming::Pong(_)) => pongs += 1,
            Some(Incoming::Close(code, _)) => {
                assert_eq!(code, Some(CloseCode::TooFrequent.code()));
                break;
            }
            other => panic!("expected pongs, then close 4008: {other:?}"),
        }
    }
    assert_eq!(pongs, 4, "the pings within the rate are answered");
}
