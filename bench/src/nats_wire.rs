//! The client side of the NATS text protocol, as far as a subscriber needs
//! it: splitting the server's byte stream into INFO, MSG, PING, PONG, +OK
//! and -ERR.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp {
    Info,
    Msg { payload: Bytes },
    Ping,
    Pong,
    Ok,
    Err(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed MSG line")]
    BadMsg,
    #[error("unknown protocol line {0:?}")]
    Unknown(String),
}

/// Bytes from the server, possibly cut anywhere; ops come out whole.
#[derive(Default)]
pub struct ServerStream {
    buf: BytesMut,
    /// Size of the MSG payload whose line was read, while waiting for it.
    payload: Option<usize>,
}

fn line_end(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

impl ServerStream {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_op(&mut self) -> Result<Option<ServerOp>, WireError> {
        if let Some(n) = self.payload {
            if self.buf.len() < n + 2 {
                return Ok(None);
            }
            let payload = self.buf.split_to(n).freeze();
            self.buf.advance(2);
            self.payload = None;
            return Ok(Some(ServerOp::Msg { payload }));
        }
        let Some(end) = line_end(&self.buf) else {
            return Ok(None);
        };
        let line = self.buf.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let op = match line {
            _ if line.starts_with(b"MSG ") => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let size = line
                    .rsplit(|&c| c == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse::<usize>().ok())
                    .ok_or(WireError::BadMsg)?;
                self.payload = Some(size);
                return self.next_op();
            }
            b"PING" => ServerOp::Ping,
            b"PONG" => ServerOp::Pong,
            b"+OK" => ServerOp::Ok,
            _ if line.starts_with(b"INFO") => ServerOp::Info,
            _ if line.starts_with(b"-ERR") => {
                ServerOp::Err(String::from_utf8_lossy(&line[4..]).trim().to_owned())
            }
            _ => {
                return Err(WireError::Unknown(
                    String::from_utf8_lossy(line).into_owned(),
                ))
            }
        };
        Ok(Some(op))
    }
}

/// What a subscriber sends first: CONNECT, one SUB per subject, and a PING
/// whose PONG says the subscriptions are in place.
pub fn subscribe_preamble(subjects: &[String]) -> String {
    let mut s = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"otako-bench\",\"lang\":\"rust\",\"protocol\":1}\r\n",
    );
    for (i, subject) in subjects.iter().enumerate() {
        s.push_str(&format!("SUB {subject} {}\r\n", i + 1));
    }
    s.push_str("PING\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ops_cut_anywhere() {
        let wire = b"INFO {\"x\":1}\r\n+OK\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG c 2 r.x 3\r\nabc\r\nPONG\r\n-ERR 'slow'\r\n";
        for cut in 1..wire.len() {
            let mut s = ServerStream::default();
            let mut ops = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                s.feed(part);
                while let Some(op) = s.next_op().unwrap() {
                    ops.push(op);
                }
            }
            assert_eq!(
                ops,
                vec![
                    ServerOp::Info,
                    ServerOp::Ok,
                    ServerOp::Msg {
                        payload: Bytes::from_static(b"hello")
                    },
                    ServerOp::Ping,
                    ServerOp::Msg {
                        payload: Bytes::from_static(b"abc")
                    },
                    ServerOp::Pong,
                    ServerOp::Err("'slow'".into()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn preamble_subscribes_each_subject() {
        let p = subscribe_preamble(&["x.1".into(), "x.2".into()]);
        assert!(p.contains("SUB x.1 1\r\nSUB x.2 2\r\nPING\r\n"));
    }
}
