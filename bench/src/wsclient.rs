//! A lean WebSocket client for many thousands of receive-mostly sessions.
//!
//! It does only what the bench needs, cheaply: an HTTP/1.1 upgrade from a
//! socket bound to a chosen loopback source address (so more than 64k
//! connections fit), then reading server frames out of one small growable
//! buffer without copying, and writing small masked client frames. Frames
//! are handed out as [`Bytes`] split off the read buffer; once they are
//! dropped the buffer's memory is reused.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use std::net::{Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial read buffer; it grows for larger frames.
const READ_BUFFER: usize = 2048;
/// Largest upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest server frame accepted.
const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("connection closed by the server")]
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }
}

/// One complete message (fragments already joined).
#[derive(Debug)]
pub struct Frame {
    pub opcode: Opcode,
    pub payload: Bytes,
}

impl Frame {
    /// The close code of a close frame, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == Opcode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct WsConn {
    stream: TcpStream,
    buf: BytesMut,
    /// A fragmented message being collected.
    partial: Option<(Opcode, BytesMut)>,
    mask: [u8; 4],
}

/// What to connect to and how.
pub struct Upgrade<'a> {
    pub addr: SocketAddr,
    /// Local address to bind before connecting (port chosen by the kernel).
    pub bind: Ipv4Addr,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

pub async fn connect(up: &Upgrade<'_>) -> Result<WsConn, WsError> {
    let socket = TcpSocket::new_v4().map_err(WsError::Connect)?;
    socket
        .bind(SocketAddr::new(up.bind.into(), 0))
        .map_err(WsError::Connect)?;
    let stream = socket.connect(up.addr).await.map_err(WsError::Connect)?;
    stream.set_nodelay(true).map_err(WsError::Connect)?;
    let mut conn = WsConn {
        stream,
        buf: BytesMut::with_capacity(READ_BUFFER),
        partial: None,
        mask: rand::random(),
    };
    conn.handshake(up).await?;
    Ok(conn)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl WsConn {
    async fn handshake(&mut self, up: &Upgrade<'_>) -> Result<(), WsError> {
        let key = STANDARD.encode(rand::random::<[u8; 16]>());
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            up.path, up.addr
        );
        for (k, v) in up.headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return Err(WsError::Protocol("upgrade response too long"));
            }
            self.fill().await?;
        };
        let head = self.buf.split_to(end);
        let status = head[..].split(|&b| b == b'\r').next().unwrap_or_default();
        let status = String::from_utf8_lossy(status);
        if !status.starts_with("HTTP/1.1 101") {
            return Err(WsError::Refused(status.into_owned()));
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer (cancel-safe: use it in
    /// `select!`); fails with [`WsError::Eof`] when the server closed.
    pub async fn fill(&mut self) -> Result<(), WsError> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_BUFFER);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(WsError::Eof),
            _ => Ok(()),
        }
    }

    /// The next complete message in the buffer, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WsError> {
        loop {
            let Some((fin, opcode, payload)) = self.parse_one()? else {
                return Ok(None);
            };
            match (opcode, fin, self.partial.as_mut()) {
                // Control frames may come between fragments.
                (Opcode::Close | Opcode::Ping | Opcode::Pong, _, _) => {
                    return Ok(Some(Frame { opcode, payload }))
                }
                (Opcode::Continuation, _, None) => {
                    return Err(WsError::Protocol("continuation without a start"))
                }
                (Opcode::Continuation, fin, Some((_, acc))) => {
                    acc.extend_from_slice(&payload);
                    if fin {
                        let (opcode, acc) = self.partial.take().expect("checked above");
                        return Ok(Some(Frame {
                            opcode,
                            payload: acc.freeze(),
                        }));
                    }
                }
                (_, true, _) => return Ok(Some(Frame { opcode, payload })),
                (_, false, _) => {
                    self.partial = Some((opcode, BytesMut::from(&payload[..])));
                }
            }
        }
    }

    fn parse_one(&mut self) -> Result<Option<(bool, Opcode, Bytes)>, WsError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = Opcode::from_bits(b[0] & 0x0f).ok_or(WsError::Protocol("bad opcode"))?;
        let masked = b[1] & 0x80 != 0;
        let (len, mut header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if len > MAX_FRAME {
            return Err(WsError::Protocol("frame too large"));
        }
        let mask = if masked {
            if b.len() < header + 4 {
                return Ok(None);
            }
            let m = [b[header], b[header + 1], b[header + 2], b[header + 3]];
            header += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < header + len {
            self.buf.reserve(header + len - b.len());
            return Ok(None);
        }
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i & 3];
            }
        }
        Ok(Some((fin, opcode, payload.freeze())))
    }

    /// Sends one unfragmented, masked client frame.
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), WsError> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode.bits());
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&self.mask);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ self.mask[i & 3]),
        );
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Sends a close frame (best effort) and shuts the socket down.
    pub async fn close(&mut self, code: u16) {
        let _ = self.send(Opcode::Close, &code.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers the upgrade and then sends `frames` raw.
    async fn serve(frames: Vec<u8>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while find(&head, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).await.unwrap();
                head.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await
                .unwrap();
            s.write_all(&frames).await.unwrap();
            // Echo what the client sends, so the test can read its frames back.
            let n = s.read(&mut b).await.unwrap();
            s.write_all(&b[..n]).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn reads_frames_and_fragments() {
        let mut raw = vec![0x81, 5];
        raw.extend_from_slice(b"hello");
        // "ab" + "cd" as two fragments, a ping between them.
        raw.extend_from_slice(&[0x01, 2, b'a', b'b', 0x89, 0, 0x80, 2, b'c', b'd']);
        let long = vec![b'x'; 300];
        raw.extend_from_slice(&[0x82, 126, 1, 44]);
        raw.extend_from_slice(&long);
        let addr = serve(raw).await;
        let mut c = connect(&Upgrade {
            addr,
            bind: Ipv4Addr::new(127, 0, 0, 2),
            path: "/",
            headers: &[("Authorization", "t")],
        })
        .await
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            while let Some(f) = c.next_frame().unwrap() {
                got.push(f);
            }
            if got.len() < 4 {
                c.fill().await.unwrap();
            }
        }
        assert_eq!(&got[0].payload[..], b"hello");
        assert_eq!(got[1].opcode, Opcode::Ping);
        assert_eq!(
            (got[2].opcode, &got[2].payload[..]),
            (Opcode::Text, &b"abcd"[..])
        );
        assert_eq!(got[3].payload.len(), 300);
        // A masked client frame, echoed back verbatim: check the mask applies.
        c.send(Opcode::Text, b"{\"op\":1}").await.unwrap();
        c.fill().await.unwrap();
        let echoed = c.next_frame().unwrap().unwrap();
        assert_eq!(&echoed.payload[..], b"{\"op\":1}");
    }
}
