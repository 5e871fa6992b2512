//! The DISPATCH connection's wire types (see `shared/CONTRACT.md`).
//!
//! Every id on the wire is a decimal string; inside the programs ids are `i64`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Request-reply subject the backend sends events on.
pub const DISPATCH_SUBJECT: &str = "otako.dispatch";
/// Queue group the gateway nodes answer in, so one node handles each request.
pub const DISPATCH_QUEUE: &str = "otako-gateway";
/// Node-wide firehose: the handling node publishes each loaded event here once,
/// and every gateway node routes it to its own sessions.
pub const FANOUT_SUBJECT: &str = "otako.fanout";
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

/// The events the backend may dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "EVENT_MESSAGE_CREATE")]
    MessageCreate,
    #[serde(rename = "EVENT_MESSAGE_UPDATE")]
    MessageUpdate,
    #[serde(rename = "EVENT_MESSAGE_DELETE")]
    MessageDelete,
    #[serde(rename = "EVENT_CHANNEL_MEMBER_ADD")]
    ChannelMemberAdd,
    #[serde(rename = "EVENT_CHANNEL_MEMBER_REMOVE")]
    ChannelMemberRemove,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::MessageCreate,
        EventType::MessageUpdate,
        EventType::MessageDelete,
        EventType::ChannelMemberAdd,
        EventType::ChannelMemberRemove,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageCreate => "EVENT_MESSAGE_CREATE",
            EventType::MessageUpdate => "EVENT_MESSAGE_UPDATE",
            EventType::MessageDelete => "EVENT_MESSAGE_DELETE",
            EventType::ChannelMemberAdd => "EVENT_CHANNEL_MEMBER_ADD",
            EventType::ChannelMemberRemove => "EVENT_CHANNEL_MEMBER_REMOVE",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A request on `otako.dispatch`, in the seed's field order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub t: String,
    pub d: Value,
    pub op: u8,
    pub s: Value,
    pub event_id: Value,
}

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
        }
    }
}

/// `d` of message events: the message and the channel it must belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef {
    pub id: i64,
    pub channel_id: i64,
}

/// `d` of member events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    pub channel_id: i64,
    pub user_id: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDataError {
    #[error("d must be an object")]
    NotAnObject,
    #[error("d.{0} is missing")]
    Missing(&'static str),
    #[error("d.{0} must be a positive decimal id string")]
    BadId(&'static str),
}

/// Parses a decimal id string (`"42"`); ids are positive.
pub fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|&id| id > 0)
}

fn id_field(d: &Value, name: &'static str) -> Result<i64, EventDataError> {
    let obj = d.as_object().ok_or(EventDataError::NotAnObject)?;
    match obj.get(name) {
        None | Some(Value::Null) => Err(EventDataError::Missing(name)),
        Some(Value::String(s)) => parse_id(s).ok_or(EventDataError::BadId(name)),
        Some(_) => Err(EventDataError::BadId(name)),
    }
}

impl MessageRef {
    pub fn from_data(d: &Value) -> Result<MessageRef, EventDataError> {
        Ok(MessageRef {
            id: id_field(d, "id")?,
            channel_id: id_field(d, "channel_id")?,
        })
    }

    pub fn to_data(self) -> Value {
        serde_json::json!({"id": self.id.to_string(), "channel_id": self.channel_id.to_string()})
    }
}

impl MemberRef {
    pub fn from_data(d: &Value) -> Result<MemberRef, EventDataError> {
        Ok(MemberRef {
            channel_id: id_field(d, "channel_id")?,
            user_id: id_field(d, "user_id")?,
        })
    }

    pub fn to_data(self) -> Value {
        serde_json::json!({"channel_id": self.channel_id.to_string(), "user_id": self.user_id.to_string()})
    }
}

/// A message as clients and the HTTP API show it (the contract's message object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageObject {
    pub id: String,
    pub channel_id: String,
    pub author: Author,
    pub content: String,
    pub nonce: Option<String>,
    pub timestamp: String,
    pub edited_timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Author {
    pub id: String,
    pub username: String,
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
    fn seed_request_round_trips_in_field_order() {
        let seed = r#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#;
        let req: DispatchRequest = serde_json::from_str(seed).unwrap();
        assert_eq!(serde_json::to_string(&req).unwrap(), seed);
        assert_eq!(
            MessageRef::from_data(&req.d).unwrap(),
            MessageRef {
                id: 3,
                channel_id: 1
            }
        );
    }

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

    #[test]
    fn ids_are_strict_decimal_strings() {
        assert_eq!(parse_id("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.0",
            " 1",
            "99999999999999999999",
            "abc",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        let d = serde_json::json!({"id": 3, "channel_id": "1"});
        assert_eq!(MessageRef::from_data(&d), Err(EventDataError::BadId("id")));
        let d = serde_json::json!({"channel_id": "1"});
        assert_eq!(
            MemberRef::from_data(&d),
            Err(EventDataError::Missing("user_id"))
        );
        assert_eq!(
            MemberRef::from_data(&Value::String("x".into())),
            Err(EventDataError::NotAnObject)
        );
    }

    #[test]
    fn event_types_parse_their_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("EVENT_NOPE"), None);
    }
}
