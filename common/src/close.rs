//! How a client session ends: the contract's close codes, each with the
//! reason text the gateway sends and what a client should do about it.
//!
//! One enum for the gateway, the tests and the bench, so a code is written
//! as a number in exactly one place.

use std::fmt;

/// A WebSocket close code the gateway sends (CONTRACT.md, "Close codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed, or the session ended normally.
    Normal = 1000,
    /// The connection dropped without a close frame (never sent; reported).
    Abnormal = 1006,
    /// The node could not serve the session (database down, write failed).
    Internal = 1011,
    /// The node is shutting down; sent after op 7.
    Restart = 1012,
    /// The node is starting too many sessions at once; come back after a
    /// backoff.
    TryAgainLater = 1013,
    /// A frame other than a heartbeat.
    Rejected = 4001,
    /// Missing, malformed, tampered, expired or revoked token.
    AuthFailed = 4004,
    /// More heartbeats per interval than the contract allows.
    TooFrequent = 4008,
    /// No heartbeat for 1.5 intervals.
    HeartbeatTimeout = 4009,
    /// The user's cluster-wide session limit is reached.
    SessionLimit = 4010,
    /// The session's outbound queue overflowed.
    TooSlow = 4011,
}

impl CloseCode {
    pub const ALL: [CloseCode; 11] = [
        CloseCode::Normal,
        CloseCode::Abnormal,
        CloseCode::Internal,
        CloseCode::Restart,
        CloseCode::TryAgainLater,
        CloseCode::Rejected,
        CloseCode::AuthFailed,
        CloseCode::TooFrequent,
        CloseCode::HeartbeatTimeout,
        CloseCode::SessionLimit,
        CloseCode::TooSlow,
    ];

    pub const fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The reason text sent with the code when nothing more specific is known.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "closed",
            CloseCode::Abnormal => "connection lost",
            CloseCode::Internal => "the node could not serve this session, reconnect later",
            CloseCode::Restart => "node restarting, reconnect",
            CloseCode::TryAgainLater => "too many sessions starting, reconnect after a backoff",
            CloseCode::Rejected => "only heartbeats are accepted",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::TooFrequent => "heartbeats too frequent",
            CloseCode::HeartbeatTimeout => "heartbeat timed out",
            CloseCode::SessionLimit => "session limit reached",
            CloseCode::TooSlow => "too slow to keep up",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Why a session ends: the code, and the reason text sent with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: std::borrow::Cow<'static, str>,
}

impl Close {
    /// The code with its standard reason.
    pub const fn new(code: CloseCode) -> Close {
        Close {
            code,
            reason: std::borrow::Cow::Borrowed(code.reason()),
        }
    }

    pub fn with_reason(
        code: CloseCode,
        reason: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

impl From<CloseCode> for Close {
    fn from(code: CloseCode) -> Close {
        Close::new(code)
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(!c.reason().is_empty());
        }
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(4999), None);
        assert_eq!(CloseCode::TooSlow.code(), 4011);
        assert_eq!(
            Close::new(CloseCode::AuthFailed).to_string(),
            "4004 (authentication failed)"
        );
    }
}
