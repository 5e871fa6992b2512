//! The outbox and its dispatcher.
//!
//! Writes commit their event in the same transaction ([`enqueue`]); the
//! dispatcher sends pending events as NATS requests on `otako.dispatch` and
//! waits for EVENT_ROUNDTRIP. Events of one channel go strictly one after the
//! other (the next waits for the previous one's answer), which is what keeps
//! them in commit order at every session; different channels go in parallel,
//! so one failing channel never holds up the others.
//!
//! An attempt is spent only on an event that a live gateway failed or did
//! not answer in time. While no gateway is subscribed at all ("no
//! responders"), events wait in the outbox without spending attempts.
//! After `max_attempts`, an event is logged once and marked `dropped` (kept
//! for audit). State lives in the table, so whatever was not acknowledged
//! before a crash is sent after the restart, and a backoff in progress
//! (`next_attempt_at`) still holds after it.
//!
//! Only a reply signed with the cluster's bus key counts: any NATS client
//! can join the gateways' queue group, and an impostor's `success:true`
//! would otherwise mark an event delivered that no session ever got. An
//! unsigned, forged or stale reply is counted, logged once per kind, and
//! retried without spending an attempt.

use crate::lease::Leases;
use async_nats::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use otako_common::bus::{self, BusError, BusKey, SIGNATURE_HEADER};
use otako_common::event::{DispatchRequest, Event};
use otako_common::proto::{Roundtrip, COMMITTED_AT_HEADER, DISPATCH_SUBJECT};
use otako_common::service::PeerStatus;
use otako_common::telemetry;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{error, info_span, warn, Instrument};

/// Channels taken up per poll of the outbox.
const MAX_CHANNELS_PER_POLL: i64 = 10_000;
/// How often the outbox is read even without a wake-up (after a restart, for
/// rows written by another process, for backoffs that ran out).
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Wait between tries while no gateway is subscribed.
const NO_GATEWAY_WAIT: Duration = Duration::from_millis(200);
/// After a reply that fails its signature check, how long a genuine reply
/// may still take to arrive on the same inbox (an impostor that answers
/// every request races the real node), and then the wait before the retry.
const REJECTED_GRACE: Duration = Duration::from_millis(250);
const REJECTED_WAIT: Duration = Duration::from_millis(100);
/// How far a reply's signing time may be from the backend's clock.
const MAX_REPLY_AGE_MS: i64 = 60_000;

/// Serialises writes to one channel: call first in every transaction that
/// will enqueue an event for the channel. Rows and outbox ids of a channel are
/// then assigned in commit order, which is the order clients see.
pub async fn lock_channel(
    tx: &mut Transaction<'static, Postgres>,
    channel_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(channel_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records an event in the caller's transaction, with the current trace so
/// that its dispatch continues the request's trace.
pub async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    event: &Event,
) -> Result<i64, sqlx::Error> {
    let traceparent = telemetry::traceparent(&tracing::Span::current());
    sqlx::query_scalar(
        "INSERT INTO outbox (event_type, channel_id, data, traceparent) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(event.t().as_str())
    .bind(event.channel_id())
    .bind(event.to_data())
    .bind(traceparent)
    .fetch_one(&mut **tx)
    .await
}

/// Wakes the dispatcher for the channel of an event just committed: the
/// channel's worker starts (or goes on) without the dispatcher reading the
/// outbox to find it. That read was one statement per message on the API
/// path, of about a dozen (BENCHMARKS.md, latency-http); the outbox is
/// still read every `POLL` for what no commit here announced (other
/// replicas' rows, a restart's backlog, backoffs that ran out).
#[derive(Clone, Default)]
pub struct Wake {
    committed: Arc<Mutex<Vec<i64>>>,
    notify: Arc<Notify>,
}

impl Wake {
    /// An event of `channel_id` is committed.
    pub fn committed(&self, channel_id: i64) {
        self.committed
            .lock()
            .expect("not poisoned")
            .push(channel_id);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.committed.lock().expect("not poisoned"))
    }
}

/// The channels this replica's workers send, each with whether an event was
/// committed for it while its worker ran (the worker may have read the
/// outbox before that commit, so the channel is started again after it).
type Active = Arc<Mutex<HashMap<i64, bool>>>;

/// What a channel's worker knows of the channel's oldest pending event.
enum Head {
    /// Not read yet: the worker asks the outbox.
    Unread,
    /// As the statement that finished the previous event read it.
    Read(Option<Pending>),
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Pending {
    id: i64,
    event_type: String,
    channel_id: i64,
    data: Value,
    traceparent: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    /// Seconds until `next_attempt_at`, by the database's clock (which
    /// also wrote it); zero or less when the event is due.
    due_in_secs: f64,
}

/// The dispatcher's figures, read by `$SRV.STATS` and rendered as counters
/// by `/metrics`: one home for each.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_attempts: AtomicU64,
}

/// How hard an event is tried.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: u32,
    /// How long one attempt waits for its answer.
    pub timeout: Duration,
    /// The wait after the first failed attempt; it doubles per attempt.
    pub backoff: Duration,
}

#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    nats: async_nats::Client,
    /// Checks that a reply comes from a genuine gateway.
    bus_key: BusKey,
    policy: Policy,
    /// How many gateways answer pings; attempts wait while none does.
    gateways: watch::Receiver<PeerStatus>,
    pub stats: Arc<DispatchStats>,
    /// Kinds of rejected replies already logged: the first of each is.
    rejections_logged: Arc<Mutex<HashSet<&'static str>>>,
    /// Signalled whenever a gateway acknowledges an event: events backing
    /// off after an unanswered attempt retry at once rather than at the end
    /// of a backoff that doubled while the cluster recovered (a history
    /// leader's election takes about 6 s; the backoff reaches 30 s).
    answered: Arc<Notify>,
    /// Which channels this replica may send (see `lease.rs`).
    leases: Leases,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        bus_key: BusKey,
        policy: Policy,
        gateways: watch::Receiver<PeerStatus>,
        leases: Leases,
    ) -> Dispatcher {
        Dispatcher {
            pool,
            nats,
            bus_key,
            policy: Policy {
                max_attempts: policy.max_attempts.max(1),
                ..policy
            },
            gateways,
            stats: Arc::default(),
            rejections_logged: Arc::default(),
            answered: Arc::default(),
            leases,
        }
    }

    /// Waits while pings show that no gateway is there to ask.
    async fn wait_for_gateway(&self) {
        let mut rx = self.gateways.clone();
        let status = rx.borrow().clone();
        if status.known && status.nodes == 0 {
            tracing::debug!("no gateway answers; holding events in the outbox");
            let _ = rx.wait_for(|s| s.nodes > 0).await;
        }
    }

    fn gateways_gone(&self) -> bool {
        let s = self.gateways.borrow();
        s.known && s.nodes == 0
    }

    /// Runs one worker per channel with pending events: the channels that
    /// commits announce, and those a read of the outbox finds every `POLL`.
    /// Runs forever; database faults are retried.
    pub async fn run(self, wake: Wake) {
        let active: Active = Arc::default();
        let mut next_poll = Instant::now();
        loop {
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + POLL;
                match self.due_channels().await {
                    Ok(channels) => {
                        for channel_id in channels {
                            self.start(channel_id, false, &active, &wake);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "could not read the outbox; retrying");
                        next_poll = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            for channel_id in wake.take() {
                self.start(channel_id, true, &active, &wake);
            }
            let busy = active.lock().expect("not poisoned").len();
            metrics::gauge!("otako_outbox_channels_active").set(busy as f64);
            tokio::select! {
                () = tokio::time::sleep_until(next_poll) => {}
                () = wake.notify.notified() => {}
            }
        }
    }

    /// Channels with an event that is due and no other replica's live
    /// lease; a worker that finds its head event still backing off waits
    /// for it (see work_channel).
    async fn due_channels(&self) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT o.channel_id FROM outbox o \
             WHERE o.status = 'pending' AND o.next_attempt_at <= now() \
               AND NOT EXISTS (SELECT 1 FROM outbox_leases l \
                   WHERE l.channel_id = o.channel_id AND l.holder <> $2 \
                     AND l.expires_at > now()) \
             LIMIT $1",
        )
        .bind(MAX_CHANNELS_PER_POLL)
        .bind(self.leases.holder())
        .fetch_all(&self.pool)
        .await
    }

    /// Starts the channel's worker. A running one is told to look again
    /// before it ends when an event was just `committed` here; a poll that
    /// finds the channel busy leaves it be: the worker reads the outbox
    /// until nothing is pending, so restarting it after every poll would
    /// only spend a lease and two reads per busy channel each `POLL`.
    fn start(&self, channel_id: i64, committed: bool, active: &Active, wake: &Wake) {
        let mut workers = active.lock().expect("not poisoned");
        match workers.get_mut(&channel_id) {
            Some(again) => *again |= committed,
            None => {
                workers.insert(channel_id, false);
                let worker = self
                    .clone()
                    .work_channel(channel_id, active.clone(), wake.clone());
                tokio::spawn(worker);
            }
        }
    }

    /// Sends one channel's pending events, oldest first, one at a time, until
    /// none is left, while this replica holds the channel's lease. Writes to a
    /// channel are serialised ([`lock_channel`]), so id order is commit order
    /// and a late commit always sorts last.
    async fn work_channel(self, channel_id: i64, active: Active, wake: Wake) {
        let held = match self.leases.take(channel_id).await {
            Ok(held) => held,
            Err(e) => {
                warn!(error = %e, channel_id, "could not take the channel's lease; retrying");
                false
            }
        };
        if !held {
            // Another replica sends this channel's events.
            active.lock().expect("not poisoned").remove(&channel_id);
            return;
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewing = RenewWhileWorking(tokio::spawn(renew(
            self.leases.clone(),
            channel_id,
            lost.clone(),
        )));
        let mut head = Head::Unread;
        loop {
            if lost.load(Ordering::Acquire) {
                // Taken over after this replica could not renew in time: the
                // new holder starts at the oldest pending event.
                warn!(
                    channel_id,
                    "lost the channel's lease; another replica sends it"
                );
                break;
            }
            let next = match std::mem::replace(&mut head, Head::Unread) {
                Head::Read(next) => Ok(next),
                Head::Unread => self.head(channel_id).await,
            };
            match next {
                Ok(Some(event)) => {
                    // A backoff written before a restart still holds: the
                    // channel's head waits for it, and so do the events
                    // behind it (their order is the channel's order).
                    if event.due_in_secs > 0.0 {
                        let wait = Duration::from_secs_f64(event.due_in_secs.min(3600.0));
                        tokio::time::sleep(wait).await;
                    }
                    head = self.deliver(event, &lost).await;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, channel_id, "could not read the outbox; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        drop(renewing);
        if !lost.load(Ordering::Acquire) {
            if let Err(e) = self.leases.give_back(channel_id).await {
                // It runs out by itself within the TTL.
                warn!(error = %e, channel_id, "could not give the channel's lease back");
            }
        }
        let again = active.lock().expect("not poisoned").remove(&channel_id);
        if again == Some(true) && !lost.load(Ordering::Acquire) {
            // Committed after this worker's last read, perhaps: start again.
            wake.committed(channel_id);
        }
    }

    /// The channel's oldest pending event.
    async fn head(&self, channel_id: i64) -> Result<Option<Pending>, sqlx::Error> {
        sqlx::query_as(HEAD_SQL)
            .bind(channel_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Sends one event until it is acknowledged or out of attempts, or the
    /// channel's lease is `lost` (its new holder sends the event then). An
    /// outcome is recorded only on a pending row: the first replica to
    /// finish an event decides it. Returns the channel's next pending event
    /// as the finishing statement read it ([`Head::Unread`] when the lease
    /// was lost first and nothing was recorded).
    async fn deliver(&self, event: Pending, lost: &AtomicBool) -> Head {
        let mut attempts = event.attempts.max(0) as u32;
        let mut last_error = String::new();
        while attempts < self.policy.max_attempts {
            if lost.load(Ordering::Acquire) {
                return Head::Unread;
            }
            self.wait_for_gateway().await;
            let span = info_span!(
                "outbox.dispatch",
                otel.name = "dispatch attempt",
                event_id = event.id,
                t = %event.event_type,
                attempt = attempts + 1,
                trace_id = tracing::field::Empty,
            );
            telemetry::continue_from_traceparent(&span, event.traceparent.as_deref());
            if let Some(id) = telemetry::trace_id(&span, event.traceparent.as_deref()) {
                span.record("trace_id", id.as_str());
            }
            match self.attempt(&event).instrument(span).await {
                Ok(()) => {
                    self.answered.notify_waiters();
                    let next = self.finish(&event, "delivered", attempts + 1, None).await;
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return Head::Read(next);
                }
                // Nobody to ask: wait without spending an attempt.
                Err(AttemptError::NoGateway) => tokio::time::sleep(NO_GATEWAY_WAIT).await,
                // Only an impostor answered: the event is not at fault.
                Err(AttemptError::Rejected(_)) => tokio::time::sleep(REJECTED_WAIT).await,
                // The history is electing a leader (seconds): wait for it
                // without spending the event's attempts.
                Err(AttemptError::Unavailable(_)) => tokio::time::sleep(NO_GATEWAY_WAIT).await,
                // Unanswered while every gateway went away: not the
                // event's fault either.
                Err(e) if e.unanswered() && self.gateways_gone() => {}
                Err(e) => {
                    attempts += 1;
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    last_error = e.to_string();
                    let backoff = self.backoff_for(attempts);
                    // Listening before the attempt is recorded: an answer
                    // meanwhile counts.
                    let answered = self.answered.notified();
                    tokio::pin!(answered);
                    answered.as_mut().enable();
                    self.record_attempt(event.id, attempts, &last_error, backoff)
                        .await;
                    if attempts < self.policy.max_attempts {
                        if e.unanswered() {
                            // The cluster, not the event, was at fault: once
                            // a gateway answers again, so may this one.
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = answered => {}
                            }
                        } else {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
            }
        }
        error!(
            event_id = event.id,
            t = %event.event_type,
            channel_id = event.channel_id,
            data = %event.data,
            attempts,
            last_error,
            "dropping event: not delivered after the maximum number of attempts"
        );
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        Head::Read(
            self.finish(&event, "dropped", attempts, Some(&last_error))
                .await,
        )
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let exp = self
            .policy
            .backoff
            .saturating_mul(1u32 << (attempts - 1).min(16));
        let capped = exp.min(MAX_BACKOFF);
        // Up to 20% jitter, so retries of many channels do not beat in step.
        capped.mul_f64(1.0 + rand::random::<f64>() * 0.2)
    }

    /// One request and its answer. The reply inbox is this attempt's own,
    /// so replies to it are replies to this request; the first one whose
    /// signature holds decides.
    async fn attempt(&self, event: &Pending) -> Result<(), AttemptError> {
        let id = event.id.to_string();
        let request = DispatchRequest {
            t: event.event_type.clone(),
            d: event.data.clone(),
            op: 0,
            s: Value::String(id.clone()),
            event_id: Value::String(id),
        };
        let body = serde_json::to_vec(&request).expect("requests serialize");
        let mut headers = HeaderMap::new();
        telemetry::inject_nats(&tracing::Span::current(), &mut headers);
        headers.insert(
            COMMITTED_AT_HEADER,
            event.created_at.timestamp_micros().to_string().as_str(),
        );
        let inbox = self.nats.new_inbox();
        let mut replies = self.nats.subscribe(inbox.clone()).await?;
        self.nats
            .publish_with_reply_and_headers(DISPATCH_SUBJECT, inbox, headers, body.into())
            .await?;
        let deadline = Instant::now() + self.policy.timeout;
        let mut rejected: Option<(BusError, Instant)> = None;
        loop {
            let until = match &rejected {
                Some((_, at)) => deadline.min(*at + REJECTED_GRACE),
                None => deadline,
            };
            let reply = match tokio::time::timeout_at(until, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(AttemptError::Disconnected),
                Err(_) => {
                    return Err(match rejected {
                        Some((e, _)) => AttemptError::Rejected(e),
                        None => AttemptError::Timeout,
                    })
                }
            };
            if reply.status == Some(StatusCode::NO_RESPONDERS) {
                return Err(AttemptError::NoGateway);
            }
            let signature = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(SIGNATURE_HEADER))
                .map(|v| v.as_str());
            let checked = self.bus_key.verify(
                reply.subject.as_str(),
                signature,
                &reply.payload,
                bus::now_ms(),
                MAX_REPLY_AGE_MS,
            );
            if let Err(e) = checked {
                self.count_rejection(&e, event.id);
                rejected.get_or_insert((e, Instant::now()));
                continue;
            }
            let answer: Roundtrip = serde_json::from_slice(&reply.payload)?;
            return if answer.success {
                Ok(())
            } else if answer.unavailable {
                Err(AttemptError::Unavailable(
                    answer.error.unwrap_or_else(|| "history unavailable".into()),
                ))
            } else {
                Err(AttemptError::Refused(
                    answer
                        .error
                        .unwrap_or_else(|| "gateway answered success:false".into()),
                ))
            };
        }
    }

    /// Counts a reply that failed its signature check; logs the first of
    /// each kind (later ones are in the metric, not the log, so an attacker
    /// cannot flood it).
    fn count_rejection(&self, e: &BusError, event_id: i64) {
        let kind = e.kind();
        metrics::counter!("otako_bus_rejected_total", "subject" => "roundtrip", "kind" => kind)
            .increment(1);
        let first = self
            .rejections_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind);
        if first {
            warn!(
                event_id,
                kind,
                error = %e,
                "rejected a dispatch reply that no genuine gateway signed; retrying \
                 (later rejections of this kind are only counted in otako_bus_rejected_total)"
            );
        }
    }

    async fn record_attempt(&self, id: i64, attempts: u32, error: &str, backoff: Duration) {
        retry_db(|| {
            sqlx::query(
                "UPDATE outbox SET attempts = $2, last_error = $3, \
                 next_attempt_at = now() + make_interval(secs => $4) \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(attempts as i32)
            .bind(error)
            .bind(backoff.as_secs_f64())
            .execute(&self.pool)
        })
        .await;
    }

    /// Records the event's outcome and reads the channel's next pending
    /// event in one statement: a round trip and a database wake-up less per
    /// event than an update and a select. The select sees the snapshot from
    /// before the update, so it skips the finished row by its id; every
    /// other pending row of the channel has a larger one (the finished row
    /// was the head).
    async fn finish(
        &self,
        event: &Pending,
        status: &str,
        attempts: u32,
        error: Option<&str>,
    ) -> Option<Pending> {
        retry_db(|| {
            sqlx::query_as(FINISH_SQL)
                .bind(event.id)
                .bind(status)
                .bind(attempts as i32)
                .bind(error)
                .bind(event.channel_id)
                .fetch_optional(&self.pool)
        })
        .await
    }
}

/// The columns a [`Pending`] reads, as a literal for `concat!`.
macro_rules! pending_columns {
    () => {
        "id, event_type, channel_id, data, traceparent, attempts, created_at, \
         EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in_secs"
    };
}

/// [`Dispatcher::head`]'s statement.
const HEAD_SQL: &str = concat!(
    "SELECT ",
    pending_columns!(),
    " FROM outbox WHERE status = 'pending' AND channel_id = $1 ORDER BY id LIMIT 1"
);

/// [`Dispatcher::finish`]'s statement.
const FINISH_SQL: &str = concat!(
    "WITH finished AS (\
         UPDATE outbox SET status = $2, attempts = $3, \
             last_error = COALESCE($4, last_error), finished_at = now() \
         WHERE id = $1 AND status = 'pending') \
     SELECT ",
    pending_columns!(),
    " FROM outbox WHERE status = 'pending' AND channel_id = $5 AND id > $1 ORDER BY id LIMIT 1"
);

/// Why one attempt did not deliver an event.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no gateway is subscribed")]
    NoGateway,
    #[error("no answer in time")]
    Timeout,
    #[error("the NATS connection closed the reply subscription")]
    Disconnected,
    #[error("could not subscribe to the reply inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("could not send the request: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("unreadable reply: {0}")]
    Unreadable(#[from] serde_json::Error),
    /// A genuine gateway answered `success:false`, with its reason.
    #[error("{0}")]
    Refused(String),
    /// Only replies that fail the signature check came.
    #[error("reply rejected: {0}")]
    Rejected(BusError),
    /// A genuine gateway could not reach the event history (it elects a
    /// leader while a NATS server is replaced): not the event's fault.
    #[error("gateway unavailable: {0}")]
    Unavailable(String),
}

impl AttemptError {
    /// No answer at all (as opposed to an answer that said no).
    fn unanswered(&self) -> bool {
        matches!(self, AttemptError::Timeout | AttemptError::Disconnected)
    }
}

/// Renews a channel's lease every third of its TTL until aborted; sets
/// `lost` once another replica holds it. A renewal that fails on a
/// database fault is tried again at the next tick: nobody can take the
/// lease while the database is down either.
async fn renew(leases: Leases, channel_id: i64, lost: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(leases.ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match leases.take(channel_id).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => warn!(error = %e, channel_id, "could not renew the channel's lease"),
        }
    }
}

/// Stops the renewal when the worker ends, however it ends.
struct RenewWhileWorking(tokio::task::JoinHandle<()>);

impl Drop for RenewWhileWorking {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Retries a state update until the database takes it: an outcome that is
/// not recorded would be sent again after a restart, never lost.
async fn retry_db<F, Fut, T>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(done) => return done,
            Err(e) => {
                warn!(error = %e, "could not record dispatch state; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How much is waiting, for metrics and the health endpoint.
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<f64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 \
         FROM outbox WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
}
