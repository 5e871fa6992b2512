//! A session's TCP socket, shared by its two writers.
//!
//! The session's task reads and writes it through tungstenite; the hub's
//! routing path writes one whole frame to it with `try_write` when nothing
//! else is in flight (see `SessionHandle::offer`), which saves the session
//! task's wake-up for most events of a small channel. Both hold the same
//! `Arc<TcpStream>`: tokio's readiness calls take `&self`, so no lock is
//! needed for the socket itself; who may write when is the handle's rule.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The task's side of the socket, for tungstenite.
pub struct Shared(pub Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A false readiness (another reader took the bytes) is a WouldBlock:
            // tokio clears the readiness, and the next poll waits for more.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write goes to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when its last holder (task or handle) drops it;
        // a session's close frame has been written by then.
        Poll::Ready(Ok(()))
    }
}

/// A server-to-client WebSocket text frame (final, unmasked) around `text`,
/// with `s` spliced in by `fill`: header and payload in one buffer, so one
/// `write` puts the whole frame on the wire.
pub fn text_frame(len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x81); // FIN + text
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let start = out.len();
    fill(&mut out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "the payload is the length announced"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    fn parsed(bytes: &[u8]) -> (FrameHeader, u64, usize) {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        (header, len, cursor.position() as usize)
    }

    #[test]
    fn frames_of_every_length_class_parse_as_tungstenite_reads_them() {
        for len in [0usize, 1, 125, 126, 300, 0xFFFF, 0x1_0000] {
            let text = "x".repeat(len);
            let bytes = text_frame(len, |out| out.extend_from_slice(text.as_bytes()));
            let (header, payload_len, at) = parsed(&bytes);
            assert!(header.is_final);
            assert!(header.mask.is_none(), "server frames are not masked");
            assert_eq!(payload_len as usize, len);
            assert_eq!(&bytes[at..], text.as_bytes());
        }
    }
}
