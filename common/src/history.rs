//! The event history's wire shape: the stream, its subjects, what each
//! stored event holds, and the cursor that names a position in it.
//!
//! One JetStream stream holds every event the cluster delivers, in one
//! sequence. Its subjects carry the channel, and member events also the user
//! concerned, so a reader can ask the server for one user's member events
//! (`otako.ev.*.u<user>`) or for chosen channels (`otako.ev.<channel>.>`)
//! without reading the rest.

use crate::event::EventType;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// The stream that holds the event history.
pub const HISTORY_STREAM: &str = "OTAKO_EVENTS";
/// Every subject of the history.
pub const HISTORY_SUBJECTS: &str = "otako.ev.>";

/// The subject an event is stored under.
pub fn subject(channel_id: i64, user_id: Option<i64>) -> String {
    match user_id {
        Some(u) => format!("otako.ev.{channel_id}.u{u}"),
        None => format!("otako.ev.{channel_id}.m"),
    }
}

/// Every event of one channel.
pub fn channel_filter(channel_id: i64) -> String {
    format!("otako.ev.{channel_id}.>")
}

/// The member events concerning one user, in every channel.
pub fn user_filter(user_id: i64) -> String {
    format!("otako.ev.*.u{user_id}")
}

/// What the handling node stores for each event: the loaded event as every
/// session receives it (`t`, `d`), with what routing needs beside it.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryEvent<'a> {
    pub event_id: &'a str,
    pub t: EventType,
    pub channel_id: i64,
    /// The user concerned, for member events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(borrow)]
    pub d: &'a RawValue,
}

/// Longest cursor the contract allows.
pub const MAX_CURSOR_LEN: usize = 64;

/// A position in the history: the stream's epoch (which changes when the
/// stream is created anew, so a position in a lost history is never taken
/// for one in the current) and a stream sequence. On the wire:
/// `<epoch>.<sequence>`, e.g. `m3k9x1q2.10452`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("a cursor is at most {MAX_CURSOR_LEN} characters")]
    TooLong,
    #[error("a cursor is <epoch>.<sequence>")]
    Shape,
    #[error("a cursor's epoch is 1-24 characters of a-z, A-Z, 0-9, _ and -")]
    Epoch,
    #[error("a cursor's sequence is a decimal number")]
    Sequence,
}

impl Cursor {
    pub fn new(epoch: &str, seq: u64) -> Cursor {
        Cursor {
            epoch: epoch.to_owned(),
            seq,
        }
    }

    /// Parses a cursor a client sent back; anything else is refused.
    pub fn parse(s: &str) -> Result<Cursor, CursorError> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let (epoch, seq) = s.split_once('.').ok_or(CursorError::Shape)?;
        let epoch_ok = (1..=24).contains(&epoch.len())
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !epoch_ok {
            return Err(CursorError::Epoch);
        }
        let seq_ok = (1..=20).contains(&seq.len()) && seq.bytes().all(|b| b.is_ascii_digit());
        if !seq_ok || (seq.len() > 1 && seq.starts_with('0')) {
            return Err(CursorError::Sequence);
        }
        let seq = seq.parse().map_err(|_| CursorError::Sequence)?;
        Ok(Cursor {
            epoch: epoch.to_owned(),
            seq,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// An epoch from the stream's creation time: base 36 of its unix
/// nanoseconds (13 characters until the year 2154).
pub fn epoch_of(created_unix_nanos: i128) -> String {
    let mut n = created_unix_nanos.max(0) as u128;
    let mut out = Vec::new();
    loop {
        let d = (n % 36) as u8;
        out.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_fit_the_contract() {
        let c = Cursor::new(&epoch_of(1_764_000_000_123_456_789), 10452);
        let text = c.to_string();
        assert!(text.len() <= MAX_CURSOR_LEN);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)));
        assert_eq!(Cursor::parse(&text), Ok(c));
        assert_eq!(Cursor::parse("e.0").unwrap().seq, 0);
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for (bad, why) in [
            ("", CursorError::Shape),
            ("abc", CursorError::Shape),
            (".5", CursorError::Epoch),
            ("a b.5", CursorError::Epoch),
            ("e.", CursorError::Sequence),
            ("e.-1", CursorError::Sequence),
            ("e.05", CursorError::Sequence),
            ("e.5.6", CursorError::Sequence),
            ("e.99999999999999999999", CursorError::Sequence),
            ("e.1x", CursorError::Sequence),
        ] {
            assert_eq!(Cursor::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            Cursor::parse(&format!("{}.1", "a".repeat(70))),
            Err(CursorError::TooLong)
        );
    }

    #[test]
    fn subjects_name_channel_and_user() {
        assert_eq!(subject(5, None), "otako.ev.5.m");
        assert_eq!(subject(5, Some(9)), "otako.ev.5.u9");
        assert_eq!(channel_filter(5), "otako.ev.5.>");
        assert_eq!(user_filter(9), "otako.ev.*.u9");
    }
}
