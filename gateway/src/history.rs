//! The event history: one replicated JetStream stream that holds every event
//! the cluster delivers, in one sequence.
//!
//! The node that handles a dispatch request appends the loaded event
//! ([`History::append`]); every node follows the stream from the position its
//! hub last routed ([`History::follow`]), so when its NATS connection breaks,
//! or its server dies and the client moves to another server of the cluster,
//! the consumer is made again from that position: no gap, no repeat. A
//! resuming session reads the range it missed ([`History::read`]).
//!
//! Each stored event carries a `Nats-Msg-Id` that only the cluster can
//! compute from what names the event, and a signature with the cluster's
//! bus key over it, its subject and its body: the server drops a retry's
//! second append (and a replayed copy) within the duplicate window, nobody
//! outside the cluster can take the id a real event will use, and what
//! anyone else appends to the stream's subjects is dropped (and counted) by
//! every reader.

use crate::fanout::{Hub, Routing};
use crate::frame::Frame;
use crate::trust::reject;
use async_nats::jetstream::consumer::{pull, push, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use otako_common::bus::{BusError, BusKey, SIGNATURE_HEADER};
use otako_common::close::CloseCode;
use otako_common::event::Request;
use otako_common::history::{
    epoch_of, subject, Cursor, HistoryEvent, HISTORY_STREAM, HISTORY_SUBJECTS,
};
use otako_common::proto::COMMITTED_AT_HEADER;
use otako_common::telemetry;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, error, info, info_span, warn};

/// How far a stored event's signing time may be from the time the stream
/// stored it. An event is signed right before it is appended, so only clock
/// skew between nodes and servers fills this; a genuine event copied and
/// appended again later than this is refused as a replay (within it, the
/// duplicate window drops it by its message id).
const MAX_SKEW_MS: i64 = 60_000;

/// JetStream's answer to an append whose message id another append is
/// storing right now (error code 10158).
const IN_PROCESS: &str = "10158";
const APPEND_TRIES: u32 = 10;

/// JetStream's deduplication header.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// How long an append waits for the node's own consumer to deliver the
/// event before it asks the stream instead (a publish with an ack, which
/// answers for a retry the stream dropped as a duplicate too). Well under
/// the backend's 2 s per attempt, so the slow path still answers in time.
const OWN_DELIVERY_WAIT: Duration = Duration::from_millis(250);

/// How often the follower, once a whole period passed without deliveries,
/// asks the stream whether it holds events the node has not routed. A
/// consumer can stop delivering without async-nats noticing (it still
/// beats, or it was paused, or its making-again keeps failing): two checks
/// in a row that find the stream ahead of an unmoved position make it
/// again, so such a stall lasts two to three of these. The check is one
/// JetStream request per idle second per node, and none while events flow.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// What a stored event's signature names: its subject and message id.
fn signed_name(subject: &str, msg_id: &str) -> String {
    format!("{subject} {msg_id}")
}

/// How long one read of a resume's range may take in all.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the stream, from the node's settings.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub replicas: usize,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub duplicate_window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("could not set up the history stream: {0}")]
    Setup(String),
    #[error("could not append to the history: {0}")]
    Append(String),
    #[error("could not read the history: {0}")]
    Read(String),
    #[error("reading the history took longer than {READ_TIMEOUT:?}")]
    ReadTimeout,
}

/// Why a stored message is not an event of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Signature(#[from] BusError),
    #[error("signed but unreadable: {0}")]
    Malformed(String),
    #[error("stored under {actual}, but the event belongs under {expected}")]
    WrongSubject { actual: String, expected: String },
}

impl Rejected {
    fn kind(&self) -> &'static str {
        match self {
            Rejected::Signature(e) => e.kind(),
            Rejected::Malformed(_) | Rejected::WrongSubject { .. } => "forged",
        }
    }
}

/// One checked event read from the history.
pub struct Stored {
    pub routing: Routing,
    pub frame: Frame,
}

/// The history stream's consumer limit (see `History::open`).
const MAX_CONSUMERS: i32 = 10_000;

pub struct History {
    js: jetstream::Context,
    stream: stream::Stream,
    /// Changes when the stream is created anew; part of every cursor.
    pub epoch: String,
    key: BusKey,
    /// Appends waiting for their event to come back on this node's own
    /// consumer, by message id: that delivery shows the stream stored it,
    /// so the append needs no ack (one message less per event for the
    /// broker and for this node).
    awaiting: Mutex<Awaiting>,
}

/// The appends waiting on this node's consumer: message id -> the append's
/// ticket and where to send the position. The ticket lets an append take
/// out only its own entry, never a later append's of the same id.
#[derive(Default)]
struct Awaiting {
    next_ticket: u64,
    by_msg_id: HashMap<String, (u64, oneshot::Sender<u64>)>,
}

impl History {
    /// Opens the history stream, creating it on first use.
    pub async fn open(
        js: jetstream::Context,
        limits: HistoryLimits,
        key: BusKey,
    ) -> Result<History, HistoryError> {
        let config = stream::Config {
            name: HISTORY_STREAM.into(),
            subjects: vec![HISTORY_SUBJECTS.into()],
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            duplicate_window: limits.duplicate_window.min(limits.max_age),
            num_replicas: limits.replicas,
            storage: stream::StorageType::File,
            allow_direct: true,
            // Consumers of this stream: one per node that follows it, and
            // one or two per resume while it reads (deleted after). nats-server
            // 2.15 caps a stream that sets none at 1,000, which a cluster's
            // reconnect storm reaches (64 concurrent starts per node).
            max_consumers: MAX_CONSUMERS,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| HistoryError::Setup(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| HistoryError::Setup(e.to_string()))?;
        let epoch = epoch_of(info.created.unix_timestamp_nanos());
        info!(
            epoch,
            last_seq = info.state.last_sequence,
            "event history open"
        );
        Ok(History {
            js,
            stream,
            epoch,
            key,
            awaiting: Mutex::default(),
        })
    }

    pub fn cursor(&self, seq: u64) -> Cursor {
        Cursor::new(&self.epoch, seq)
    }

    /// The first and last positions the stream holds now.
    pub async fn bounds(&self) -> Result<(u64, u64), HistoryError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| HistoryError::Read(e.to_string()))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// When the stream stored the event at `seq` (unix ms); `None` if the
    /// stream no longer holds it.
    pub async fn stored_at_ms(&self, seq: u64) -> Result<Option<i64>, HistoryError> {
        match self.stream.direct_get(seq).await {
            Ok(m) => Ok(Some((m.time.unix_timestamp_nanos() / 1_000_000) as i64)),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(HistoryError::Read(e.to_string())),
        }
    }

    /// The last genuine member event concerning `user_id` in `channel_id`
    /// that the history holds: its position and whether it is an add.
    pub async fn last_member_event(
        &self,
        channel_id: i64,
        user_id: i64,
    ) -> Result<Option<(u64, bool)>, HistoryError> {
        let msg = match self
            .stream
            .direct_get_last_for_subject(subject(channel_id, Some(user_id)))
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(HistoryError::Read(e.to_string())),
        };
        match self.check(
            msg.sequence,
            msg.subject.as_str(),
            Some(&msg.headers),
            &msg.payload,
            unix_ms(&msg.time),
        ) {
            Ok((stored, _)) => Ok(Some((
                msg.sequence,
                stored.routing.t == otako_common::event::EventType::ChannelMemberAdd,
            ))),
            // Not the cluster's: it says nothing about the membership.
            Err(_) => Ok(None),
        }
    }

    /// Appends the loaded event of `request` and returns its position once
    /// the stream holds it: when this node's own consumer delivers it back
    /// (a replicated stream delivers only what a quorum has applied), else
    /// by an acknowledged publish. Waiting for the delivery instead of an
    /// ack saves a message per event: 3.4 % of the node's instructions per
    /// event, about 1.5 % of the broker's CPU and 5 % of the nodes' sleeps.
    /// `identity` names the event (the request's fingerprint: its id and
    /// what it names): a second append of the same identity within the
    /// duplicate window (a retry) gets the first append's position and is
    /// not stored twice, and a request that reuses the id for another event
    /// is another event.
    pub async fn append(
        &self,
        request: &Request,
        identity: &str,
        d: &RawValue,
        mut headers: HeaderMap,
    ) -> Result<u64, HistoryError> {
        let ev = &request.event;
        let body = serde_json::to_vec(&HistoryEvent {
            event_id: &request.event_id,
            t: ev.t(),
            channel_id: ev.channel_id(),
            user_id: ev.user_id(),
            d,
        })
        .expect("history events serialize");
        // Called inside the publish span: readers continue the trace from it.
        telemetry::inject_nats(&tracing::Span::current(), &mut headers);
        let subject = subject(ev.channel_id(), ev.user_id());
        let msg_id = self.key.keyed_id(identity);
        // The signature covers the message id too: a copy appended again
        // must keep it, so the stream's duplicate window drops the copy.
        let signature = self.key.sign(
            &signed_name(&subject, &msg_id),
            otako_common::bus::now_ms(),
            &body,
        );
        headers.insert(SIGNATURE_HEADER, signature.as_str());
        headers.insert(MSG_ID_HEADER, msg_id.as_str());
        let body = Bytes::from(body);
        if let Some(seq) = self
            .append_unacked(&subject, &msg_id, &headers, &body)
            .await
        {
            return Ok(seq);
        }
        metrics::counter!("otako_history_acked_appends_total").increment(1);
        let mut tries = 0;
        loop {
            tries += 1;
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await
                .map_err(|e| HistoryError::Append(e.to_string()))?
                .await;
            match ack {
                Ok(ack) => return Ok(ack.sequence),
                // The same event is being appended at this very moment (a
                // retry racing its first attempt on another node): once
                // that append lands, this one is its duplicate.
                Err(e) if tries < APPEND_TRIES && e.to_string().contains(IN_PROCESS) => {
                    tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
                }
                Err(e) => return Err(HistoryError::Append(e.to_string())),
            }
        }
    }

    /// Publishes the event without asking for an ack and waits for this
    /// node's consumer to deliver it back: its position then. `None` when it
    /// did not come within [`OWN_DELIVERY_WAIT`] (a retry the stream dropped
    /// as a duplicate, a consumer being made again, a broken link, no
    /// stream) or the same event is already awaited here; the caller then
    /// asks the stream.
    async fn append_unacked(
        &self,
        subject: &str,
        msg_id: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut awaiting = self.awaiting.lock().expect("not poisoned");
            if awaiting.by_msg_id.contains_key(msg_id) {
                return None;
            }
            awaiting.next_ticket += 1;
            let ticket = awaiting.next_ticket;
            awaiting.by_msg_id.insert(msg_id.to_owned(), (ticket, tx));
            ticket
        };
        // However this ends (no delivery in time, or the request dropped
        // mid-wait), the entry goes; a delivery already took its own.
        let _forget = Forget {
            awaiting: &self.awaiting,
            msg_id,
            ticket,
        };
        let sent = self
            .js
            .client()
            .publish_with_headers(subject.to_owned(), headers.clone(), body.clone())
            .await;
        let seq = match sent {
            Ok(()) => tokio::time::timeout(OWN_DELIVERY_WAIT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        seq
    }

    /// Hands a checked event's position to the append on this node that
    /// waits for it, if one does.
    fn delivered(&self, msg_id: Option<&str>, seq: u64) {
        let Some(msg_id) = msg_id else { return };
        let mut awaiting = self.awaiting.lock().expect("not poisoned");
        if awaiting.by_msg_id.is_empty() {
            return;
        }
        if let Some((_, tx)) = awaiting.by_msg_id.remove(msg_id) {
            let _ = tx.send(seq);
        }
    }

    /// Checks one stored message and turns it into an event for sessions.
    /// `stored_ms` is when the stream stored it.
    pub fn check<'a>(
        &self,
        seq: u64,
        msg_subject: &str,
        headers: Option<&HeaderMap>,
        payload: &'a [u8],
        stored_ms: i64,
    ) -> Result<(Stored, &'a str), Rejected> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let msg_id = header(MSG_ID_HEADER).unwrap_or_default();
        self.key.verify(
            &signed_name(msg_subject, msg_id),
            header(SIGNATURE_HEADER),
            payload,
            stored_ms,
            MAX_SKEW_MS,
        )?;
        let ev: HistoryEvent<'_> =
            serde_json::from_slice(payload).map_err(|e| Rejected::Malformed(e.to_string()))?;
        let expected = subject(ev.channel_id, ev.user_id);
        if expected != msg_subject {
            return Err(Rejected::WrongSubject {
                actual: msg_subject.to_owned(),
                expected,
            });
        }
        let mut frame = Frame::new(ev.t.as_str(), ev.d, &self.cursor(seq));
        frame.committed_at_us = headers
            .and_then(|h| h.get(COMMITTED_AT_HEADER))
            .and_then(|v| v.as_str().parse().ok());
        let stored = Stored {
            routing: Routing {
                t: ev.t,
                channel_id: ev.channel_id,
                user_id: ev.user_id,
            },
            frame,
        };
        Ok((stored, ev.event_id))
    }

    /// [`History::check`] for a message a consumer delivered.
    fn check_delivered<'a>(
        &self,
        seq: u64,
        msg: &'a jetstream::Message,
        stored_ms: i64,
    ) -> Result<(Stored, &'a str), Rejected> {
        self.check(
            seq,
            msg.subject.as_str(),
            msg.headers.as_ref(),
            &msg.payload,
            stored_ms,
        )
    }

    /// Routes every event of the history after the hub's last position to
    /// the hub, for as long as the node runs. The ordered consumer makes
    /// itself again after a reconnect, a server change or a missed idle
    /// heartbeat (two 5 s heartbeats: a dead link is noticed within 10 s),
    /// starting after the last position it delivered.
    pub async fn follow(self: std::sync::Arc<History>, hub: std::sync::Arc<Hub>) {
        loop {
            // Start *at* the last routed position when there is one: the
            // first message is then a repeat the hub drops, and the consumer
            // knows its position from the start (made again before it
            // delivered anything, it would start over from the beginning).
            let last = hub.last_seq();
            let deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: last.max(1),
            };
            let consumer = self
                .stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: self.js.client().new_inbox(),
                    filter_subject: HISTORY_SUBJECTS.into(),
                    deliver_policy,
                    ..Default::default()
                })
                .await;
            let mut messages = match consumer {
                Ok(c) => match c.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "could not read the history; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
                Err(e) => {
                    warn!(error = %e, "could not follow the history; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut check =
                tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stall = Stall::default();
            // Set by each delivery, cleared by each tick: a tick that finds it
            // set skips the check, so the stream is asked only after a whole
            // period without deliveries (a flag store per event, where
            // resetting the timer would re-arm it per event).
            let mut delivered = false;
            loop {
                tokio::select! {
                    biased;
                    next = messages.next() => match next {
                        Some(Ok(msg)) => {
                            delivered = true;
                            self.route(&hub, &msg);
                        }
                        // The consumer makes itself again on the next poll.
                        Some(Err(e)) => warn!(error = %e, "history consumer interrupted; catching up"),
                        None => break,
                    },
                    _ = check.tick() => {
                        if std::mem::take(&mut delivered) {
                            continue;
                        }
                        if self.stalled(&mut stall, hub.last_seq()).await {
                            warn!(
                                position = hub.last_seq(),
                                "the history holds events its consumer does not deliver; following it anew"
                            );
                            metrics::counter!("otako_history_follower_restarts_total").increment(1);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One idle check of the follower: whether the stream was ahead of
    /// `position` at this check and at the one before, with the position
    /// unmoved in between. A check the stream cannot answer (an election)
    /// decides nothing; the consumer's own recovery covers that time.
    async fn stalled(&self, stall: &mut Stall, position: u64) -> bool {
        if stall.position != Some(position) {
            *stall = Stall {
                position: Some(position),
                ahead: false,
            };
        }
        let last = match tokio::time::timeout(STALL_CHECK, self.bounds()).await {
            Ok(Ok((_, last))) => last,
            Ok(Err(e)) => {
                debug!(error = %e, "could not check the history's last position");
                return false;
            }
            Err(_) => return false,
        };
        let ahead = last > position;
        let stalled = ahead && stall.ahead;
        stall.ahead = ahead;
        stalled
    }

    fn route(&self, hub: &Hub, msg: &jetstream::Message) {
        let Ok(info) = msg.info() else {
            warn!("a history message without JetStream metadata; ignored");
            return;
        };
        let seq = info.stream_sequence;
        let last = hub.last_seq();
        if seq <= last {
            return;
        }
        if seq > last + 1 && last > 0 {
            // The consumer skipped positions: events the stream no longer
            // holds (or never delivered). This node's sessions cannot be
            // made whole here; they resume elsewhere, where the gap is
            // either replayed or reported as `resumed:false`.
            error!(
                from = last + 1,
                to = seq - 1,
                "the history skipped events; asking every session to reconnect"
            );
            metrics::counter!("otako_history_gaps_total").increment(1);
            hub.kick_all(CloseCode::Restart);
        }
        match self.check_delivered(seq, msg, unix_ms(&info.published)) {
            Ok((stored, event_id)) => {
                let span = info_span!(
                    target: telemetry::TRACE_ONLY,
                    "fanout.deliver",
                    otel.name = "deliver to sessions",
                    event_id,
                    channel_id = stored.routing.channel_id,
                    recipients = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                );
                telemetry::continue_from_nats(&span, msg.headers.as_ref());
                telemetry::record_trace_id(&span, msg.headers.as_ref());
                // Stored, whatever routing here does next: the append that
                // waits for it answers without waiting for this node's fan-out.
                let msg_id = msg.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER));
                self.delivered(msg_id.map(|v| v.as_str()), seq);
                let n = span.in_scope(|| hub.deliver(stored.routing, stored.frame));
                // As i64: the OpenTelemetry bridge exports u64 fields as strings.
                span.record("recipients", n as i64);
            }
            Err(rejected) => {
                reject("history", &rejected, rejected.kind());
                hub.skip(seq);
            }
        }
    }

    /// Reads the events after `after` through `through` on the subjects
    /// `filters` (all when empty), checked, in history order. Refuses to read
    /// more than `max_events` (the caller's bound on a replay).
    pub async fn read(
        &self,
        filters: Vec<String>,
        after: u64,
        through: u64,
        max_events: usize,
    ) -> Result<Option<Vec<Stored>>, HistoryError> {
        if through <= after {
            return Ok(Some(Vec::new()));
        }
        tokio::time::timeout(
            READ_TIMEOUT,
            self.read_inner(filters, after, through, max_events),
        )
        .await
        .map_err(|_| HistoryError::ReadTimeout)?
    }

    async fn read_inner(
        &self,
        filters: Vec<String>,
        after: u64,
        through: u64,
        max_events: usize,
    ) -> Result<Option<Vec<Stored>>, HistoryError> {
        let filters = if filters.is_empty() {
            vec![HISTORY_SUBJECTS.to_owned()]
        } else {
            filters
        };
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: filters,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| HistoryError::Read(e.to_string()))?;
        // The consumer lives for this read only: deleted when it ends, it
        // does not hold one of the stream's consumer places for the 30 s
        // an idle ordered consumer otherwise stays (10,000 resumes in a
        // storm would take them all).
        let _delete = DeleteConsumer {
            stream: self.stream.clone(),
            name: consumer.cached_info().name.clone(),
        };
        // The answer to the create already counts what the read will find.
        let pending = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(Some(out));
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| HistoryError::Read(e.to_string()))?;
        while let Some(next) = messages.next().await {
            let msg = next.map_err(|e| HistoryError::Read(e.to_string()))?;
            let info = msg.info().map_err(|e| HistoryError::Read(e.to_string()))?;
            let (seq, left) = (info.stream_sequence, info.pending);
            // An ordered consumer that async-nats makes again before it
            // delivered anything (a missed heartbeat, a server change)
            // starts over from the stream's first event: what precedes the
            // range is not the reader's.
            if seq <= after {
                continue;
            }
            if seq > through {
                break;
            }
            match self.check_delivered(seq, &msg, unix_ms(&info.published)) {
                Ok((stored, _)) => {
                    if out.len() == max_events {
                        return Ok(None);
                    }
                    out.push(stored);
                }
                Err(rejected) => reject("history", &rejected, rejected.kind()),
            }
            if seq == through || left == 0 {
                break;
            }
        }
        Ok(Some(out))
    }
}

/// What the follower's idle checks saw at one routed position.
#[derive(Default)]
struct Stall {
    /// The position the checks were made at.
    position: Option<u64>,
    /// Whether the last check found the stream holding events after it.
    ahead: bool,
}

/// Takes an append's entry out of [`History::awaiting`] when its wait ends.
struct Forget<'a> {
    awaiting: &'a Mutex<Awaiting>,
    msg_id: &'a str,
    ticket: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut awaiting) = self.awaiting.lock() {
            if awaiting
                .by_msg_id
                .get(self.msg_id)
                .is_some_and(|(ticket, _)| *ticket == self.ticket)
            {
                awaiting.by_msg_id.remove(self.msg_id);
            }
        }
    }
}

/// Deletes a read's consumer when the read ends, however it ends (a
/// timeout drops the read mid-way); the delete runs in the background so
/// the session start does not wait for it.
struct DeleteConsumer {
    stream: stream::Stream,
    name: String,
}

impl Drop for DeleteConsumer {
    fn drop(&mut self) {
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        tokio::spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                debug!(error = %e, consumer = name, "could not delete a history read's consumer");
            }
        });
    }
}

/// A JetStream timestamp in unix milliseconds.
fn unix_ms(t: &async_nats::datetime::DateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}
