//! Subjects, headers and the small wire types of the bus: replies and error
//! records. The events themselves are in [`crate::event`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Request-reply subject the backend sends events on.
pub const DISPATCH_SUBJECT: &str = "otako.dispatch";
/// Queue group the gateway nodes answer in, so one node handles each request.
pub const DISPATCH_QUEUE: &str = "otako-gateway";
/// The backend announces token revocations here; gateways close the
/// sessions that hold older tokens.
pub const REVOKE_SUBJECT: &str = "otako.revoke";
/// JetStream stream and subject of the logging sink for failed events.
pub const ERRORS_STREAM: &str = "OTAKO_ERRORS";
pub const ERRORS_SUBJECT: &str = "otako.errors";

/// Header carrying the backend's commit time in unix microseconds, so the
/// gateway can measure commit-to-socket latency.
pub const COMMITTED_AT_HEADER: &str = "Otako-Committed-At";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The gateway's answer to a dispatch request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roundtrip {
    pub t: String,
    pub event_id: Value,
    pub success: bool,
    pub op: u8,
    pub s: Value,
    /// Why the event failed; absent on success. The contract allows extra fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The gateway node that handled the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The event failed for want of the cluster's own parts (the event
    /// history has no leader while a NATS server is replaced), not through
    /// any fault of its own: a sender retries it without counting an attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unavailable: bool,
}

impl Roundtrip {
    pub const T: &'static str = "EVENT_ROUNDTRIP";

    pub fn new(event_id: Value, s: Value, result: Result<(), String>) -> Roundtrip {
        Roundtrip {
            t: Roundtrip::T.to_owned(),
            event_id,
            success: result.is_ok(),
            op: 0,
            s,
            error: result.err(),
            node: None,
            unavailable: false,
        }
    }
}

/// Timestamps on every wire: RFC 3339, UTC, microseconds.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One failed event as written to the `OTAKO_ERRORS` stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub event_id: Value,
    /// The request as received: an object, or a string when it was not JSON.
    pub event: Value,
    pub error: String,
    pub trace_id: Option<String>,
    pub node: String,
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_matches_contract() {
        let ok = Roundtrip::new("1".into(), "14".into(), Ok(()));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"t":"EVENT_ROUNDTRIP","event_id":"1","success":true,"op":0,"s":"14"}"#
        );
        let failed = Roundtrip::new(Value::Null, Value::Null, Err("bad".into()));
        assert!(!failed.success);
        assert_eq!(failed.error.as_deref(), Some("bad"));
    }
}
