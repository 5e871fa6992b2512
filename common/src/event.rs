//! The events the backend dispatches, typed from end to end.
//!
//! The backend commits an [`Event`]; the gateway parses each request on
//! `otako.dispatch` once, with [`Received::parse`], into a [`Request`] that
//! carries the same [`Event`]. Ids are decimal strings on the wire and `i64`
//! inside the programs; parsing is strict (`"3"`, never `3` or `"03"`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The names of the events, as `t` carries them.
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
        self.as_str_const()
    }

    /// [`EventType::as_str`], usable in constants.
    pub const fn as_str_const(self) -> &'static str {
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

    pub fn is_member_event(self) -> bool {
        matches!(
            self,
            EventType::ChannelMemberAdd | EventType::ChannelMemberRemove
        )
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

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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

    /// [`MessageRef::to_data`] as text, in one allocation instead of a map.
    pub fn data_json(self) -> String {
        format!(
            r#"{{"id":"{}","channel_id":"{}"}}"#,
            self.id, self.channel_id
        )
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

    /// [`MemberRef::to_data`] as text, in one allocation instead of a map.
    pub fn data_json(self) -> String {
        format!(
            r#"{{"channel_id":"{}","user_id":"{}"}}"#,
            self.channel_id, self.user_id
        )
    }
}

/// One event, with the ids it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    MessageCreate(MessageRef),
    MessageUpdate(MessageRef),
    MessageDelete(MessageRef),
    MemberAdd(MemberRef),
    MemberRemove(MemberRef),
}

impl Event {
    /// Builds the event a request's `t` and `d` name.
    pub fn from_parts(t: EventType, d: &Value) -> Result<Event, EventDataError> {
        Ok(match t {
            EventType::MessageCreate => Event::MessageCreate(MessageRef::from_data(d)?),
            EventType::MessageUpdate => Event::MessageUpdate(MessageRef::from_data(d)?),
            EventType::MessageDelete => Event::MessageDelete(MessageRef::from_data(d)?),
            EventType::ChannelMemberAdd => Event::MemberAdd(MemberRef::from_data(d)?),
            EventType::ChannelMemberRemove => Event::MemberRemove(MemberRef::from_data(d)?),
        })
    }

    pub fn t(&self) -> EventType {
        match self {
            Event::MessageCreate(_) => EventType::MessageCreate,
            Event::MessageUpdate(_) => EventType::MessageUpdate,
            Event::MessageDelete(_) => EventType::MessageDelete,
            Event::MemberAdd(_) => EventType::ChannelMemberAdd,
            Event::MemberRemove(_) => EventType::ChannelMemberRemove,
        }
    }

    pub fn channel_id(&self) -> i64 {
        match self {
            Event::MessageCreate(m) | Event::MessageUpdate(m) | Event::MessageDelete(m) => {
                m.channel_id
            }
            Event::MemberAdd(m) | Event::MemberRemove(m) => m.channel_id,
        }
    }

    /// The user a member event concerns.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Event::MemberAdd(m) | Event::MemberRemove(m) => Some(m.user_id),
            _ => None,
        }
    }

    /// The request's `d`: ids only.
    pub fn to_data(&self) -> Value {
        match self {
            Event::MessageCreate(m) | Event::MessageUpdate(m) | Event::MessageDelete(m) => {
                m.to_data()
            }
            Event::MemberAdd(m) | Event::MemberRemove(m) => m.to_data(),
        }
    }

    /// [`Event::to_data`] rendered, byte for byte what `to_data().to_string()`
    /// gives (the fingerprint of a retry must not change between versions).
    pub fn data_json(&self) -> String {
        match self {
            Event::MessageCreate(m) | Event::MessageUpdate(m) | Event::MessageDelete(m) => {
                m.data_json()
            }
            Event::MemberAdd(m) | Event::MemberRemove(m) => m.data_json(),
        }
    }
}

/// A request on `otako.dispatch`, in the seed's field order. The backend
/// builds it from an [`Event`]; tests also send bodies the gateway must refuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub t: String,
    pub d: Value,
    pub op: u8,
    pub s: Value,
    pub event_id: Value,
}

impl DispatchRequest {
    /// The request for `event`, with `event_id` and `s` both set to `id` (the
    /// backend's outbox row id).
    pub fn new(id: i64, event: &Event) -> DispatchRequest {
        let id = Value::String(id.to_string());
        DispatchRequest {
            t: event.t().as_str().to_owned(),
            d: event.to_data(),
            op: 0,
            s: id.clone(),
            event_id: id,
        }
    }
}

/// Why a dispatch request is refused before anything is loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("event_id must be a non-empty string or a number")]
    BadEventId,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("op must be 0")]
    BadOp,
    #[error("bad d: {0}")]
    BadData(#[from] EventDataError),
}

/// What the reply echoes back: `event_id` and `s` with their values and
/// types as received (null when absent or the body is not JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    pub event_id: Value,
    pub s: Value,
}

/// A valid dispatch request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// As text, whether it came as a string or a number.
    pub event_id: String,
    pub event: Event,
}

impl Request {
    /// What tells this request from any other: its event id *and* the event
    /// it names. A request that reuses another event's id with a different
    /// `t` or `d` is a different event, never a retry of the first, so
    /// deduplication keyed on this cannot be poisoned by guessing ids.
    /// SHA-256 of a fixed rendering, as 64 hex digits.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.event_id.as_bytes());
        h.update([0]);
        h.update(self.event.t().as_str().as_bytes());
        h.update([0]);
        h.update(self.event.data_json().as_bytes());
        hex(&h.finalize())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// A dispatch request as received: parsed once, whether valid or not.
#[derive(Debug, Clone)]
pub struct Received {
    pub echo: Echo,
    body: Body,
    pub request: Result<Request, RequestError>,
}

/// What [`Received::body`] renders for the error record.
#[derive(Debug, Clone)]
enum Body {
    /// The JSON value, or the text when the body is not JSON.
    Parsed(Value),
    /// A request of the plain shape, kept as bytes: it becomes a `Value`
    /// only on the failure path.
    Plain(Box<[u8]>),
}

/// The shape every request of the backend has: the five fields, ids and
/// `s` as strings without escapes, nothing else. It parses by borrowing,
/// without a `Value` tree (whose maps are hashed `IndexMap`s here: about 20
/// allocations per request); any other body takes the general path below,
/// which gives the same request or the precise refusal.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    t: &'a str,
    #[serde(borrow)]
    d: PlainData<'a>,
    op: u64,
    s: &'a str,
    event_id: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainData<'a> {
    #[serde(default)]
    id: Option<&'a str>,
    channel_id: &'a str,
    #[serde(default)]
    user_id: Option<&'a str>,
}

impl Plain<'_> {
    /// The request, when it is valid as it stands; `None` sends the body to
    /// the general path.
    fn request(&self) -> Option<Request> {
        let t = EventType::parse(self.t)?;
        if self.op != 0 || self.event_id.is_empty() {
            return None;
        }
        let channel_id = parse_id(self.d.channel_id)?;
        let event = match (t.is_member_event(), self.d.id, self.d.user_id) {
            (false, Some(id), None) => {
                let r = MessageRef {
                    id: parse_id(id)?,
                    channel_id,
                };
                match t {
                    EventType::MessageCreate => Event::MessageCreate(r),
                    EventType::MessageUpdate => Event::MessageUpdate(r),
                    _ => Event::MessageDelete(r),
                }
            }
            (true, None, Some(user_id)) => {
                let r = MemberRef {
                    channel_id,
                    user_id: parse_id(user_id)?,
                };
                match t {
                    EventType::ChannelMemberAdd => Event::MemberAdd(r),
                    _ => Event::MemberRemove(r),
                }
            }
            _ => return None,
        };
        Some(Request {
            event_id: self.event_id.to_owned(),
            event,
        })
    }
}

impl Received {
    pub fn parse(payload: &[u8]) -> Received {
        if let Ok(plain) = serde_json::from_slice::<Plain>(payload) {
            if let Some(request) = plain.request() {
                return Received {
                    echo: Echo {
                        event_id: Value::String(plain.event_id.to_owned()),
                        s: Value::String(plain.s.to_owned()),
                    },
                    body: Body::Plain(payload.into()),
                    request: Ok(request),
                };
            }
        }
        Received::parse_general(payload)
    }

    /// The general path alone: any body, valid or not. Public so the fuzz
    /// target can check that [`Received::parse`] agrees with it everywhere.
    #[doc(hidden)]
    pub fn parse_general(payload: &[u8]) -> Received {
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return Received {
                    echo: Echo {
                        event_id: Value::Null,
                        s: Value::Null,
                    },
                    body: Body::Parsed(Value::String(
                        String::from_utf8_lossy(payload).into_owned(),
                    )),
                    request: Err(RequestError::NotJson(e.to_string())),
                }
            }
        };
        let field = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
        let echo = Echo {
            event_id: field("event_id"),
            s: field("s"),
        };
        let request = Received::request(&value);
        Received {
            echo,
            body: Body::Parsed(value),
            request,
        }
    }

    /// The body for the error record: the JSON value as received, or the
    /// text when it is not JSON.
    pub fn body(&self) -> Value {
        match &self.body {
            Body::Parsed(v) => v.clone(),
            Body::Plain(raw) => serde_json::from_slice(raw).expect("parsed once already"),
        }
    }

    fn request(v: &Value) -> Result<Request, RequestError> {
        let obj = v.as_object().ok_or(RequestError::NotObject)?;
        let t_str = obj.get("t").and_then(Value::as_str).unwrap_or_default();
        let t = EventType::parse(t_str).ok_or_else(|| RequestError::UnknownType(t_str.into()))?;
        if obj.get("op").and_then(Value::as_u64) != Some(0) {
            return Err(RequestError::BadOp);
        }
        let event_id = match obj.get("event_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(RequestError::BadEventId),
        };
        let event = Event::from_parts(t, obj.get("d").unwrap_or(&Value::Null))?;
        Ok(Request { event_id, event })
    }

    /// The event type for metric labels: "unknown" unless `t` is one.
    pub fn t_label(&self) -> &'static str {
        match &self.request {
            Ok(r) => r.event.t().as_str(),
            Err(_) => self
                .body()
                .get("t")
                .and_then(Value::as_str)
                .and_then(EventType::parse)
                .map_or("unknown", EventType::as_str),
        }
    }

    /// The text the failure log's once-per-event key derives from: the
    /// event id when there is a usable one, else the whole body.
    pub fn failure_identity(&self) -> String {
        match &self.echo.event_id {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => self.body().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#;

    #[test]
    fn the_seed_request_parses_once_into_its_event() {
        let r = Received::parse(SEED.as_bytes());
        assert_eq!(r.echo.event_id, Value::String("1".into()));
        assert_eq!(r.echo.s, Value::String("14".into()));
        let req = r.request.unwrap();
        assert_eq!(req.event_id, "1");
        assert_eq!(
            req.event,
            Event::MessageCreate(MessageRef {
                id: 3,
                channel_id: 1
            })
        );
        assert_eq!(req.event.channel_id(), 1);
        assert_eq!(req.event.user_id(), None);
    }

    #[test]
    fn a_request_built_from_an_event_is_the_seed_shape() {
        let ev = Event::MessageCreate(MessageRef {
            id: 3,
            channel_id: 1,
        });
        let body = serde_json::to_string(&DispatchRequest::new(1, &ev)).unwrap();
        assert_eq!(
            body,
            r#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"1","event_id":"1"}"#
        );
        let back = Received::parse(body.as_bytes()).request.unwrap();
        assert_eq!(back.event, ev);
    }

    #[test]
    fn refusals_keep_the_echo() {
        let r = Received::parse(b"not json");
        assert!(matches!(r.request, Err(RequestError::NotJson(_))));
        assert_eq!(r.echo.event_id, Value::Null);
        assert_eq!(r.body(), Value::String("not json".into()));
        assert_eq!(r.failure_identity(), "\"not json\"");

        let r = Received::parse(br#"{"t":"EVENT_NOPE","d":{},"op":0,"s":7,"event_id":7}"#);
        assert_eq!(
            r.request,
            Err(RequestError::UnknownType("EVENT_NOPE".into()))
        );
        assert_eq!(r.echo.s, Value::from(7));
        assert_eq!(r.failure_identity(), "7");
        assert_eq!(r.t_label(), "unknown");

        let r = Received::parse(
            br#"{"t":"EVENT_CHANNEL_MEMBER_ADD","d":{"channel_id":"1"},"op":0,"s":"1","event_id":"1"}"#,
        );
        assert_eq!(
            r.request,
            Err(RequestError::BadData(EventDataError::Missing("user_id")))
        );
        assert_eq!(r.t_label(), "EVENT_CHANNEL_MEMBER_ADD");
        let r = Received::parse(
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{},"op":1,"s":"1","event_id":"1"}"#,
        );
        assert_eq!(r.request, Err(RequestError::BadOp));
        let r = Received::parse(br#"[1]"#);
        assert_eq!(r.request, Err(RequestError::NotObject));
        let r =
            Received::parse(br#"{"t":"EVENT_MESSAGE_CREATE","d":{},"op":0,"s":"1","event_id":""}"#);
        assert_eq!(r.request, Err(RequestError::BadEventId));
    }

    #[test]
    fn a_reused_event_id_with_another_event_has_another_fingerprint() {
        let a = Received::parse(SEED.as_bytes()).request.unwrap();
        let retry = Received::parse(SEED.as_bytes()).request.unwrap();
        assert_eq!(a.fingerprint(), retry.fingerprint());
        let other = SEED.replace(r#""id":"3""#, r#""id":"4""#);
        let b = Received::parse(other.as_bytes()).request.unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let other_t = SEED.replace("MESSAGE_CREATE", "MESSAGE_UPDATE");
        let c = Received::parse(other_t.as_bytes()).request.unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }

    /// The plain shape's fast path gives what the general path gives, for
    /// the bodies it takes and for those it hands on.
    #[test]
    fn the_fast_path_agrees_with_the_general_path() {
        let bodies: &[&[u8]] = &[
            SEED.as_bytes(),
            br#"{"t":"EVENT_CHANNEL_MEMBER_ADD","d":{"channel_id":"1","user_id":"2"},"op":0,"s":"5","event_id":"5"}"#,
            br#"{"event_id":"5","s":"5","op":0,"d":{"user_id":"2","channel_id":"1"},"t":"EVENT_CHANNEL_MEMBER_REMOVE"}"#,
            br#"{"t":"EVENT_MESSAGE_DELETE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1","extra":1}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1","user_id":"2"},"op":0,"s":"14","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":14,"event_id":1}"#,
            br#"{"t":"EVENT_MESSAGE\u005fCREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"\u0033","channel_id":"1"},"op":0,"s":"1\n","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0.0,"s":"14","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","t":"EVENT_MESSAGE_UPDATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"03","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":""}"#,
            br#"{"t":"EVENT_CHANNEL_MEMBER_ADD","d":{"id":"3","channel_id":"1","user_id":"2"},"op":0,"s":"5","event_id":"5"}"#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"} "#,
            br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":null,"channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#,
        ];
        for body in bodies {
            let fast = Received::parse(body);
            let general = Received::parse_general(body);
            let text = String::from_utf8_lossy(body);
            assert_eq!(fast.echo, general.echo, "{text}");
            assert_eq!(fast.request, general.request, "{text}");
            assert_eq!(fast.body(), general.body(), "{text}");
            assert_eq!(fast.t_label(), general.t_label(), "{text}");
            assert_eq!(
                fast.failure_identity(),
                general.failure_identity(),
                "{text}"
            );
        }
        assert!(matches!(
            Received::parse(SEED.as_bytes()).body,
            Body::Plain(_)
        ));
    }

    /// The fingerprint hashes `d` as `to_data` renders it, so a retry that
    /// reaches a node of another version is still the same event.
    #[test]
    fn the_rendered_data_is_the_values_rendering() {
        let m = MessageRef {
            id: 3,
            channel_id: i64::MAX,
        };
        let u = MemberRef {
            channel_id: 1,
            user_id: 22,
        };
        for ev in [
            Event::MessageCreate(m),
            Event::MessageUpdate(m),
            Event::MessageDelete(m),
            Event::MemberAdd(u),
            Event::MemberRemove(u),
        ] {
            assert_eq!(ev.data_json(), ev.to_data().to_string());
        }
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
