//! The DISPATCH responder: one node of the queue group takes each request on
//! `otako.dispatch`, loads the full row, publishes it once on the firehose
//! and answers with EVENT_ROUNDTRIP.
//!
//! Nothing in the request is trusted but the ids: the loaded row must belong
//! to the channel the event names.

use crate::db::{self, DbError};
use crate::fanout::FanoutEvent;
use crate::sink::{self, ErrorSink};
use async_nats::{HeaderMap, Message};
use otako_common::proto::{
    self, EventDataError, EventType, MemberRef, MessageRef, Roundtrip, COMMITTED_AT_HEADER,
    FANOUT_SUBJECT, TRACEPARENT_HEADER,
};
use otako_common::telemetry;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{info_span, warn, Instrument, Span};

/// How long this node remembers the events it published, so a retry that
/// comes back to it is answered without a second publish. Retries that reach
/// another node are published again and dropped by every receiving node,
/// which remembers routed event ids just as long (`fanout::DEDUP_WINDOW`).
const DELIVERED_TTL: Duration = Duration::from_secs(15 * 60);

/// Connections kept for loading message rows: more than one so a slow query
/// does not hold up the others; a handful, so most of the pool is left for
/// session starts.
const MESSAGE_LOADERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("event_id must be a string or a number")]
    BadEventId,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("op must be 0")]
    BadOp,
    #[error("bad d: {0}")]
    BadData(#[from] EventDataError),
    #[error("message {0} does not exist")]
    NoSuchMessage(i64),
    #[error("message {id} belongs to channel {actual}, not channel {named}")]
    WrongChannel { id: i64, actual: i64, named: i64 },
    #[error("message {0} is not deleted")]
    NotDeleted(i64),
    #[error("channel {0} does not exist")]
    NoSuchChannel(i64),
    #[error("user {0} does not exist")]
    NoSuchUser(i64),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("could not publish the event to the fan-out subject: {0}")]
    Publish(String),
}

/// What happened to an event that did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Published,
    /// Delivered before (a retry): answered, not delivered again.
    AlreadyDelivered,
    /// A later write made it moot (the message was deleted before its create
    /// went out, the member was removed again): nothing to deliver.
    Superseded,
}

pub struct Dispatcher {
    nats: async_nats::Client,
    pool: PgPool,
    messages: db::MessageLoader,
    sink: ErrorSink,
    delivered_here: moka::sync::Cache<String, ()>,
    node_id: String,
    /// Requests answered and failed, for `$SRV.STATS`.
    pub handled: AtomicU64,
    pub failed: AtomicU64,
}

impl Dispatcher {
    pub fn new(
        nats: async_nats::Client,
        pool: PgPool,
        sink: ErrorSink,
        node_id: String,
    ) -> Dispatcher {
        Dispatcher {
            nats,
            messages: db::MessageLoader::spawn(pool.clone(), MESSAGE_LOADERS),
            pool,
            sink,
            delivered_here: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(DELIVERED_TTL)
                .build(),
            node_id,
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Handles one request and answers it.
    pub async fn handle(&self, msg: Message) {
        let span = info_span!(
            "dispatch.handle",
            otel.name = "gateway dispatch",
            event_id = tracing::field::Empty,
            t = tracing::field::Empty,
            success = tracing::field::Empty,
            node = %self.node_id,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_from_nats(&span, msg.headers.as_ref());
        telemetry::record_trace_id(&span, msg.headers.as_ref());
        self.handle_in(msg, span.clone()).instrument(span).await
    }

    async fn handle_in(&self, msg: Message, span: Span) {
        let started = Instant::now();
        let parsed: Result<Value, _> = serde_json::from_slice(&msg.payload);
        let (event_id, s, t_label) = match &parsed {
            Ok(v) => (
                v.get("event_id").cloned().unwrap_or(Value::Null),
                v.get("s").cloned().unwrap_or(Value::Null),
                v.get("t")
                    .and_then(Value::as_str)
                    .and_then(EventType::parse)
                    .map_or("unknown", EventType::as_str),
            ),
            Err(_) => (Value::Null, Value::Null, "unknown"),
        };
        match &event_id {
            Value::String(id) => span.record("event_id", id.as_str()),
            other => span.record("event_id", other.to_string().as_str()),
        };
        span.record("t", t_label);

        let result = match &parsed {
            Ok(v) => self.process(v, msg.headers.as_ref()).await,
            Err(e) => Err(EventError::NotJson(e.to_string())),
        };
        span.record("success", result.is_ok());
        self.handled.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("otako_dispatch_requests_total", "t" => t_label).increment(1);
        metrics::histogram!("otako_dispatch_duration_seconds", "t" => t_label)
            .record(started.elapsed().as_secs_f64());

        if let Err(err) = &result {
            metrics::counter!("otako_dispatch_failed_total", "t" => t_label).increment(1);
            self.failed.fetch_add(1, Ordering::Relaxed);
            let event = match parsed {
                Ok(v) => v,
                Err(_) => Value::String(String::from_utf8_lossy(&msg.payload).into_owned()),
            };
            self.log_failure(&event_id, event, err, &span, msg.headers.as_ref())
                .await;
        }

        if let Some(reply) = msg.reply {
            let mut body =
                Roundtrip::new(event_id, s, result.map(|_| ()).map_err(|e| e.to_string()));
            body.node = Some(self.node_id.clone());
            let body = serde_json::to_vec(&body).expect("roundtrip serializes");
            let sent = self
                .nats
                .publish(reply, body.into())
                .instrument(info_span!(
                    target: telemetry::TRACE_ONLY,
                    "dispatch.reply",
                    otel.name = "roundtrip reply"
                ))
                .await;
            if let Err(e) = sent {
                warn!(error = %e, "could not send the roundtrip reply");
            }
        }
    }

    async fn process(&self, v: &Value, headers: Option<&HeaderMap>) -> Result<Outcome, EventError> {
        let obj = v.as_object().ok_or(EventError::NotObject)?;
        let t_str = obj.get("t").and_then(Value::as_str).unwrap_or_default();
        let t = EventType::parse(t_str).ok_or_else(|| EventError::UnknownType(t_str.to_owned()))?;
        if obj.get("op").and_then(Value::as_u64) != Some(0) {
            return Err(EventError::BadOp);
        }
        let event_id = match obj.get("event_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(EventError::BadEventId),
        };
        let key = sink::event_key(&event_id);
        if self.delivered_here.contains_key(&key) {
            return Ok(Outcome::AlreadyDelivered);
        }
        let d = obj.get("d").unwrap_or(&Value::Null);
        let loaded = async { self.load(t, d).await }
            .instrument(info_span!(
                target: telemetry::TRACE_ONLY,
                "dispatch.load",
                otel.name = "load from database"
            ))
            .await?;
        let Some((channel_id, user_id, payload)) = loaded else {
            return Ok(Outcome::Superseded);
        };
        self.publish(&event_id, t, channel_id, user_id, payload, headers)
            .instrument(info_span!(
                target: telemetry::TRACE_ONLY,
                "dispatch.publish",
                otel.name = "fan-out publish"
            ))
            .await?;
        self.mark_delivered(key);
        Ok(Outcome::Published)
    }

    /// Loads the event's row and renders the clients' `d`. `None` when a later
    /// write superseded the event.
    async fn load(
        &self,
        t: EventType,
        d: &Value,
    ) -> Result<Option<(i64, Option<i64>, String)>, EventError> {
        match t {
            EventType::MessageCreate | EventType::MessageUpdate | EventType::MessageDelete => {
                let r = MessageRef::from_data(d)?;
                let m = self
                    .messages
                    .load(r.id)
                    .await?
                    .ok_or(EventError::NoSuchMessage(r.id))?;
                if m.channel_id != r.channel_id {
                    return Err(EventError::WrongChannel {
                        id: r.id,
                        actual: m.channel_id,
                        named: r.channel_id,
                    });
                }
                if t == EventType::MessageDelete {
                    if !m.deleted {
                        return Err(EventError::NotDeleted(r.id));
                    }
                    return Ok(Some((r.channel_id, None, r.to_data().to_string())));
                }
                if m.deleted {
                    return Ok(None);
                }
                let payload = serde_json::to_string(&m.object).expect("message serializes");
                Ok(Some((r.channel_id, None, payload)))
            }
            EventType::ChannelMemberAdd | EventType::ChannelMemberRemove => {
                let r = MemberRef::from_data(d)?;
                let m = db::membership(&self.pool, r.channel_id, r.user_id).await?;
                if !m.channel_exists {
                    return Err(EventError::NoSuchChannel(r.channel_id));
                }
                if !m.user_exists {
                    return Err(EventError::NoSuchUser(r.user_id));
                }
                let current = m.is_member == (t == EventType::ChannelMemberAdd);
                Ok(current.then(|| (r.channel_id, Some(r.user_id), r.to_data().to_string())))
            }
        }
    }

    async fn publish(
        &self,
        event_id: &str,
        t: EventType,
        channel_id: i64,
        user_id: Option<i64>,
        payload: String,
        request_headers: Option<&HeaderMap>,
    ) -> Result<(), EventError> {
        let d = RawValue::from_string(payload).expect("rendered JSON is valid");
        let body = serde_json::to_vec(&FanoutEvent {
            event_id,
            t,
            channel_id,
            user_id,
            d: &d,
        })
        .expect("fan-out event serializes");
        let mut headers = HeaderMap::new();
        telemetry::inject_nats(&Span::current(), &mut headers);
        if let Some(at) = request_headers.and_then(|h| h.get(COMMITTED_AT_HEADER)) {
            headers.insert(COMMITTED_AT_HEADER, at.as_str());
        }
        // The reply goes out on this same connection after this publish, so a
        // sender that got success:true knows the event reached the server.
        // This node's sessions get the event back from the server like every
        // other node's. Routing it here directly (a `no_echo` connection) was
        // tried: in a NATS cluster the previous event of the channel, handled
        // by another node, can still be crossing a route then, and would reach
        // this node's sessions after this one (sessions_membership caught it).
        self.nats
            .publish_with_headers(FANOUT_SUBJECT, headers, body.into())
            .await
            .map_err(|e| EventError::Publish(e.to_string()))
    }

    fn mark_delivered(&self, key: String) {
        self.delivered_here.insert(key, ());
    }

    async fn log_failure(
        &self,
        event_id: &Value,
        event: Value,
        err: &EventError,
        span: &Span,
        headers: Option<&HeaderMap>,
    ) {
        let key = match event_id {
            Value::String(s) if !s.is_empty() => sink::event_key(s),
            Value::Number(n) => sink::event_key(&n.to_string()),
            // No usable id: the body itself identifies the event.
            _ => sink::event_key(&event.to_string()),
        };
        let traceparent = headers
            .and_then(|h| h.get(TRACEPARENT_HEADER))
            .map(|v| v.as_str().to_owned());
        let record = proto::ErrorRecord {
            event_id: event_id.clone(),
            event,
            error: err.to_string(),
            trace_id: telemetry::trace_id(span, traceparent.as_deref()),
            node: self.node_id.clone(),
            at: db::rfc3339(chrono::Utc::now()),
        };
        match self.sink.record_once(&key, &record).await {
            Ok(true) => {
                warn!(error = %err, event_id = %event_id, "event failed; logged to the error sink")
            }
            Ok(false) => {
                warn!(error = %err, event_id = %event_id, "event failed again; already logged")
            }
            Err(e) => {
                warn!(error = %err, sink_error = %e, event_id = %event_id, "event failed and could not be logged; a retry will try again")
            }
        }
    }
}
