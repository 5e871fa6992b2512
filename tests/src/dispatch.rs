//! Talking to the gateways the way the backend does: raw requests on
//! `otako.dispatch`, and reading the `OTAKO_ERRORS` logging sink.

use async_nats::jetstream;
use bytes::Bytes;
use otako_common::event::DispatchRequest;
use otako_common::proto::{Roundtrip, DISPATCH_SUBJECT, ERRORS_STREAM, TRACEPARENT_HEADER};
use serde_json::Value;
use std::time::Duration;

/// Plenty for one request: a gateway answers in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway's EVENT_ROUNDTRIP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The body exactly as received.
    pub raw: Value,
    /// The same, in the contract's shape (parsing checks the required fields).
    pub roundtrip: Roundtrip,
}

impl Reply {
    pub fn success(&self) -> bool {
        self.roundtrip.success
    }

    /// The node that handled the request (a field the gateway adds).
    pub fn node(&self) -> &str {
        self.roundtrip
            .node
            .as_deref()
            .unwrap_or_else(|| panic!("reply names no node: {}", self.raw))
    }
}

/// The seed's request body, in its field order:
/// `{"t":..,"d":..,"op":0,"s":..,"event_id":..}`.
pub fn event_body(t: &str, d: Value, s: Value, event_id: Value) -> Vec<u8> {
    serde_json::to_vec(&DispatchRequest {
        t: t.to_owned(),
        d,
        op: 0,
        s,
        event_id,
    })
    .expect("a request serializes")
}

/// A fresh event id no backend would use ("e2e-" and 16 hex digits).
pub fn fresh_event_id() -> String {
    format!("e2e-{:016x}", rand::random::<u64>())
}

#[derive(Clone)]
pub struct DispatchClient {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl DispatchClient {
    pub fn new(client: async_nats::Client) -> DispatchClient {
        let js = jetstream::new(client.clone());
        DispatchClient { client, js }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends `body` as it is and parses the reply; panics if none comes or
    /// it is not an EVENT_ROUNDTRIP.
    pub async fn send(&self, body: impl Into<Bytes>) -> Reply {
        self.send_with_headers(body, async_nats::HeaderMap::new())
            .await
    }

    /// Like [`DispatchClient::send`], with a W3C `traceparent` header.
    pub async fn send_traced(&self, body: impl Into<Bytes>, traceparent: &str) -> Reply {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TRACEPARENT_HEADER, traceparent);
        self.send_with_headers(body, headers).await
    }

    pub async fn send_with_headers(
        &self,
        body: impl Into<Bytes>,
        headers: async_nats::HeaderMap,
    ) -> Reply {
        let body: Bytes = body.into();
        let shown = String::from_utf8_lossy(&body).into_owned();
        let request = self
            .client
            .request_with_headers(DISPATCH_SUBJECT, headers, body);
        let msg = tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .unwrap_or_else(|_| panic!("no reply to {shown:?} within {REQUEST_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("request {shown:?} failed: {e}"));
        let raw: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&msg.payload)
            )
        });
        let roundtrip: Roundtrip = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("reply is not an EVENT_ROUNDTRIP ({e}): {raw}"));
        assert_eq!(roundtrip.t, "EVENT_ROUNDTRIP", "reply: {raw}");
        assert_eq!(roundtrip.op, 0, "reply: {raw}");
        Reply { raw, roundtrip }
    }

    /// Sends an event in the seed's shape.
    pub async fn send_event(&self, t: &str, d: Value, s: Value, event_id: Value) -> Reply {
        self.send(event_body(t, d, s, event_id)).await
    }

    /// Every record in `OTAKO_ERRORS`, oldest first (empty when the stream
    /// does not exist yet).
    pub async fn error_records(&self) -> Vec<Value> {
        let mut stream = match self.js.get_stream(ERRORS_STREAM).await {
            Ok(s) => s,
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Vec::new()
            }
            Err(e) => panic!("looking up {ERRORS_STREAM}: {e}"),
        };
        let state = stream
            .info()
            .await
            .unwrap_or_else(|e| panic!("reading {ERRORS_STREAM}'s info: {e}"))
            .state
            .clone();
        let mut records = Vec::new();
        if state.messages == 0 {
            return records;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let msg = match stream.get_raw_message(seq).await {
                Ok(m) => m,
                // A gap (deleted message) is not a record.
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    continue
                }
                Err(e) => panic!("reading {ERRORS_STREAM} #{seq}: {e}"),
            };
            let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                panic!(
                    "{ERRORS_STREAM} #{seq} is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&msg.payload)
                )
            });
            records.push(v);
        }
        records
    }

    /// Every record in `OTAKO_ERRORS` with whether its `Otako-Sig` is the
    /// cluster's (made with the bus key of [`crate::TEST_SECRET`]).
    pub async fn error_records_checked(&self) -> Vec<(Value, bool)> {
        let key = otako_common::bus::BusKey::from_secret(crate::TEST_SECRET);
        let stream = self
            .js
            .get_stream(ERRORS_STREAM)
            .await
            .unwrap_or_else(|e| panic!("looking up {ERRORS_STREAM}: {e}"));
        let state = stream.cached_info().state.clone();
        let mut records = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(msg) = stream.get_raw_message(seq).await else {
                continue;
            };
            let sig = msg
                .headers
                .get(otako_common::bus::SIGNATURE_HEADER)
                .map(|v| v.as_str().to_owned());
            let genuine = key
                .verify(
                    otako_common::proto::ERRORS_SUBJECT,
                    sig.as_deref(),
                    &msg.payload,
                    otako_common::bus::now_ms(),
                    i64::MAX / 2,
                )
                .is_ok();
            let v: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            records.push((v, genuine));
        }
        records
    }

    /// How many records `OTAKO_ERRORS` holds (0 when it does not exist yet).
    pub async fn error_count(&self) -> u64 {
        match self.js.get_stream(ERRORS_STREAM).await {
            Ok(mut stream) => {
                stream
                    .info()
                    .await
                    .unwrap_or_else(|e| panic!("reading {ERRORS_STREAM}'s info: {e}"))
                    .state
                    .messages
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                0
            }
            Err(e) => panic!("looking up {ERRORS_STREAM}: {e}"),
        }
    }

    /// The records of one event id.
    pub async fn error_records_for(&self, event_id: &Value) -> Vec<Value> {
        self.error_records()
            .await
            .into_iter()
            .filter(|r| &r["event_id"] == event_id)
            .collect()
    }
}
