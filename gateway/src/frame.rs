//! One event, ready to be written to any session of this node.
//!
//! Each event is serialised once per node: a [`Frame`] holds the bytes
//! before and after the per-session sequence number `s`, and a session's
//! writer only splices its own `s` in between. The cursor is the same for
//! every session, so it sits in the shared part.

use otako_common::history::Cursor;
use serde_json::value::RawValue;

#[derive(Debug)]
pub struct Frame {
    /// The event's position in the history.
    pub seq: u64,
    prefix: Box<str>,
    suffix: Box<str>,
    /// Backend commit time (unix microseconds), for the commit-to-socket histogram.
    pub committed_at_us: Option<i64>,
}

impl Frame {
    pub fn new(t: &str, d: &RawValue, cursor: &Cursor) -> Frame {
        Frame {
            seq: cursor.seq,
            prefix: format!(r#"{{"op":0,"t":"{t}","s":"#).into(),
            suffix: format!(r#","cursor":"{cursor}","d":{}}}"#, d.get()).into(),
            committed_at_us: None,
        }
    }

    /// The whole WebSocket frame for one session, ready for one `write`.
    pub fn render_ws(&self, s: u64) -> Vec<u8> {
        let mut buf = itoa::Buffer::new();
        let s = buf.format(s);
        let len = self.prefix.len() + s.len() + self.suffix.len();
        crate::socket::text_frame(len, |out| {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(self.suffix.as_bytes());
        })
    }

    /// The frame text for one session.
    pub fn render(&self, s: u64) -> String {
        let mut buf = itoa::Buffer::new();
        let s = buf.format(s);
        let mut out = String::with_capacity(self.prefix.len() + s.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(s);
        out.push_str(&self.suffix);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splices_the_session_sequence_and_carries_the_cursor() {
        let d = RawValue::from_string(r#"{"id":"1"}"#.to_owned()).unwrap();
        let f = Frame::new("EVENT_MESSAGE_CREATE", &d, &Cursor::new("ep", 9));
        let text = f.render(42);
        assert_eq!(
            text,
            r#"{"op":0,"t":"EVENT_MESSAGE_CREATE","s":42,"cursor":"ep.9","d":{"id":"1"}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["s"], 42);
        assert_eq!(f.seq, 9);
        let ws = f.render_ws(42);
        assert_eq!(
            &ws[2..],
            text.as_bytes(),
            "the same text behind a 2-byte header"
        );
        assert_eq!(ws[..2], [0x81, text.len() as u8]);
    }
}
