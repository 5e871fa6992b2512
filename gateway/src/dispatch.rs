//! The DISPATCH responder: one node of the queue group takes each request on
//! `otako.dispatch`, parses it once, loads the full row, appends the event to
//! the history and answers with a signed EVENT_ROUNDTRIP.
//!
//! Nothing in the request is trusted but the ids: the loaded row must belong
//! to the channel the event names. The reply goes out only after the history
//! holds the event (see [`History::append`]), so `success:true` means every
//! node will route the event, whatever fails next.

use crate::db::{self, DbError};
use crate::history::{History, HistoryError};
use crate::sink::{self, ErrorSink};
use async_nats::{HeaderMap, Message};
use otako_common::bus::{BusKey, SIGNATURE_HEADER};
use otako_common::event::{
    Event, EventType, MemberRef, MessageRef, Received, Request, RequestError,
};
use otako_common::proto::{self, Roundtrip, COMMITTED_AT_HEADER, TRACEPARENT_HEADER};
use otako_common::telemetry;
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::{info_span, warn, Instrument, Span};

/// Connections kept for loading message rows: more than one so a slow query
/// does not hold up the others; a handful, so most of the pool is left for
/// session starts.
const MESSAGE_LOADERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Request(#[from] RequestError),
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
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// What happened to an event that did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// In the history at this position (a retry gets the first position).
    Appended(u64),
    /// A later write made it moot (the message was deleted before its create
    /// went out, the member was removed again): nothing to deliver.
    Superseded,
}

pub struct Dispatcher {
    nats: async_nats::Client,
    pool: PgPool,
    messages: db::MessageLoader,
    history: Arc<History>,
    sink: ErrorSink,
    key: BusKey,
    node_id: String,
    pub stats: Arc<DispatchStats>,
    /// `otako_dispatch_duration_seconds{t}`, one per entry of [`LABELS`],
    /// resolved once: a lookup per request costs more than the record.
    durations: [metrics::Histogram; LABELS.len()],
}

/// Requests answered and failed, by event type: the one home of these
/// figures. `$SRV.STATS` reports the totals and `/metrics` renders each as
/// `otako_dispatch_requests_total` / `otako_dispatch_failed_total{t}`.
#[derive(Debug, Default)]
pub struct DispatchStats {
    handled: [AtomicU64; LABELS.len()],
    failed: [AtomicU64; LABELS.len()],
}

/// The `t` labels: each event type, then requests whose `t` is none.
const LABELS: [&str; 6] = [
    EventType::MessageCreate.as_str_const(),
    EventType::MessageUpdate.as_str_const(),
    EventType::MessageDelete.as_str_const(),
    EventType::ChannelMemberAdd.as_str_const(),
    EventType::ChannelMemberRemove.as_str_const(),
    "unknown",
];

/// The index of `t_label` in [`LABELS`].
fn label_index(t_label: &str) -> usize {
    LABELS
        .iter()
        .position(|l| *l == t_label)
        .unwrap_or(LABELS.len() - 1)
}

impl DispatchStats {
    fn count(&self, t_label: &str, failed: bool) {
        let i = label_index(t_label);
        self.handled[i].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn handled(&self) -> u64 {
        self.handled.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn failed(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Hands the figures to the Prometheus recorder, at scrape time.
    pub fn export(&self) {
        for (i, t) in LABELS.iter().enumerate() {
            metrics::counter!("otako_dispatch_requests_total", "t" => *t)
                .absolute(self.handled[i].load(Ordering::Relaxed));
            metrics::counter!("otako_dispatch_failed_total", "t" => *t)
                .absolute(self.failed[i].load(Ordering::Relaxed));
        }
    }
}

impl Dispatcher {
    pub fn new(
        nats: async_nats::Client,
        pool: PgPool,
        history: Arc<History>,
        sink: ErrorSink,
        key: BusKey,
        node_id: String,
    ) -> Dispatcher {
        Dispatcher {
            nats,
            messages: db::MessageLoader::spawn(pool.clone(), MESSAGE_LOADERS),
            pool,
            history,
            sink,
            key,
            node_id,
            stats: Arc::default(),
            durations: LABELS
                .map(|t| metrics::histogram!("otako_dispatch_duration_seconds", "t" => t)),
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
        let received = Received::parse(&msg.payload);
        let t_label = received.t_label();
        match &received.echo.event_id {
            serde_json::Value::String(id) => span.record("event_id", id.as_str()),
            other => span.record("event_id", other.to_string().as_str()),
        };
        span.record("t", t_label);

        let result = match &received.request {
            Ok(request) => self.process(request, msg.headers.as_ref()).await,
            Err(e) => Err(EventError::Request(e.clone())),
        };
        span.record("success", result.is_ok());
        let unavailable = matches!(result, Err(EventError::History(_)));
        self.stats.count(t_label, result.is_err());
        self.durations[label_index(t_label)].record(started.elapsed().as_secs_f64());

        if let Err(err) = &result {
            self.log_failure(&received, err, &span, msg.headers.as_ref())
                .await;
        }

        if let Some(reply) = msg.reply {
            let mut body = Roundtrip::new(
                received.echo.event_id,
                received.echo.s,
                result.map(|_| ()).map_err(|e| e.to_string()),
            );
            body.node = Some(self.node_id.clone());
            body.unavailable = unavailable;
            let body = serde_json::to_vec(&body).expect("roundtrip serializes");
            // Signed for the request's own inbox: the backend accepts no
            // answer that a node outside the cluster made, or that was meant
            // for another request.
            let mut headers = HeaderMap::new();
            let signature = self
                .key
                .sign(reply.as_str(), otako_common::bus::now_ms(), &body);
            headers.insert(SIGNATURE_HEADER, signature.as_str());
            let sent = self
                .nats
                .publish_with_headers(reply, headers, body.into())
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

    async fn process(
        &self,
        request: &Request,
        headers: Option<&HeaderMap>,
    ) -> Result<Outcome, EventError> {
        let loaded = async { self.load(request).await }
            .instrument(info_span!(
                target: telemetry::TRACE_ONLY,
                "dispatch.load",
                otel.name = "load from database"
            ))
            .await?;
        let Some(payload) = loaded else {
            return Ok(Outcome::Superseded);
        };
        let d = RawValue::from_string(payload).expect("rendered JSON is valid");
        let mut out = HeaderMap::new();
        if let Some(at) = headers.and_then(|h| h.get(COMMITTED_AT_HEADER)) {
            out.insert(COMMITTED_AT_HEADER, at.as_str());
        }
        let seq = self
            .history
            .append(request, &request.fingerprint(), &d, out)
            .instrument(info_span!(
                target: telemetry::TRACE_ONLY,
                "dispatch.publish",
                otel.name = "fan-out publish"
            ))
            .await?;
        Ok(Outcome::Appended(seq))
    }

    /// Loads the event's row and renders the clients' `d`. `None` when a later
    /// write superseded the event.
    async fn load(&self, request: &Request) -> Result<Option<String>, EventError> {
        match request.event {
            Event::MessageCreate(r) | Event::MessageUpdate(r) => {
                let m = self.load_message(r).await?;
                if m.is_deleted() {
                    return Ok(None);
                }
                Ok(Some(
                    serde_json::to_string(&m.to_object()).expect("message serializes"),
                ))
            }
            Event::MessageDelete(r) => {
                if !self.load_message(r).await?.is_deleted() {
                    return Err(EventError::NotDeleted(r.id));
                }
                Ok(Some(r.data_json()))
            }
            Event::MemberAdd(r) => self.load_member(request, r, true).await,
            Event::MemberRemove(r) => self.load_member(request, r, false).await,
        }
    }

    async fn load_message(
        &self,
        r: MessageRef,
    ) -> Result<otako_common::message::MessageRow, EventError> {
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
        Ok(m)
    }

    /// A member event is delivered when the membership is what it says, or
    /// when it is a committed outbox row: an add dispatched after the remove
    /// that followed it is still a fact of the channel's order (the remove
    /// comes right behind it), and dropping it would lose the channel's
    /// messages in between. A request that is neither (no such row, and the
    /// membership says otherwise) is moot and delivers nothing, so nobody
    /// can make a session join a channel by dispatching an add.
    async fn load_member(
        &self,
        request: &Request,
        r: MemberRef,
        added: bool,
    ) -> Result<Option<String>, EventError> {
        let m = db::membership(&self.pool, r.channel_id, r.user_id).await?;
        if !m.channel_exists {
            return Err(EventError::NoSuchChannel(r.channel_id));
        }
        if !m.user_exists {
            return Err(EventError::NoSuchUser(r.user_id));
        }
        let data = r.to_data();
        let current = m.is_member == added
            || db::is_outbox_event(
                &self.pool,
                &request.event_id,
                request.event.t().as_str(),
                &data,
            )
            .await?;
        Ok(current.then(|| data.to_string()))
    }

    async fn log_failure(
        &self,
        received: &Received,
        err: &EventError,
        span: &Span,
        headers: Option<&HeaderMap>,
    ) {
        let key = sink::event_key(&received.failure_identity());
        let traceparent = headers
            .and_then(|h| h.get(TRACEPARENT_HEADER))
            .map(|v| v.as_str().to_owned());
        let record = proto::ErrorRecord {
            event_id: received.echo.event_id.clone(),
            event: received.body(),
            error: err.to_string(),
            trace_id: telemetry::trace_id(span, traceparent.as_deref()),
            node: self.node_id.clone(),
            at: proto::rfc3339(chrono::Utc::now()),
        };
        let event_id = &received.echo.event_id;
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
