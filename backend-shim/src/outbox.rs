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
//! before a crash is sent after the restart.

use async_nats::{HeaderMap, RequestErrorKind};
use chrono::{DateTime, Utc};
use otako_common::proto::{
    DispatchRequest, EventType, Roundtrip, COMMITTED_AT_HEADER, DISPATCH_SUBJECT,
};
use otako_common::service::PeerStatus;
use otako_common::telemetry;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{error, info_span, warn, Instrument};

/// Channels taken up per poll of the outbox.
const MAX_CHANNELS_PER_POLL: i64 = 10_000;
/// How often the outbox is read even without a wake-up (after a restart, for
/// rows written by another process).
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Wait between tries while no gateway is subscribed.
const NO_GATEWAY_WAIT: Duration = Duration::from_millis(200);

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
    t: EventType,
    channel_id: i64,
    data: Value,
) -> Result<i64, sqlx::Error> {
    let traceparent = telemetry::traceparent(&tracing::Span::current());
    sqlx::query_scalar(
        "INSERT INTO outbox (event_type, channel_id, data, traceparent) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(t.as_str())
    .bind(channel_id)
    .bind(data)
    .bind(traceparent)
    .fetch_one(&mut **tx)
    .await
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
}

/// Live figures for `$SRV.STATS`.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_attempts: AtomicU64,
}

#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    nats: async_nats::Client,
    max_attempts: u32,
    timeout: Duration,
    backoff: Duration,
    /// How many gateways answer pings; attempts wait while none does.
    gateways: watch::Receiver<PeerStatus>,
    pub stats: Arc<DispatchStats>,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        max_attempts: u32,
        timeout: Duration,
        backoff: Duration,
        gateways: watch::Receiver<PeerStatus>,
    ) -> Dispatcher {
        Dispatcher {
            pool,
            nats,
            max_attempts: max_attempts.max(1),
            timeout,
            backoff,
            gateways,
            stats: Arc::default(),
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

    /// Finds channels with pending events and runs one worker per channel.
    /// Runs forever; database faults are retried.
    pub async fn run(self, wake: Arc<Notify>) {
        let active: Arc<Mutex<HashSet<i64>>> = Arc::default();
        loop {
            let channels: Result<Vec<i64>, _> = sqlx::query_scalar(
                "SELECT DISTINCT channel_id FROM outbox WHERE status = 'pending' LIMIT $1",
            )
            .bind(MAX_CHANNELS_PER_POLL)
            .fetch_all(&self.pool)
            .await;
            match channels {
                Ok(channels) => {
                    for channel_id in channels {
                        if active.lock().expect("not poisoned").insert(channel_id) {
                            let worker =
                                self.clone()
                                    .work_channel(channel_id, active.clone(), wake.clone());
                            tokio::spawn(worker);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "could not read the outbox; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            let busy = active.lock().expect("not poisoned").len();
            metrics::gauge!("otako_outbox_channels_active").set(busy as f64);
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
        }
    }

    /// Sends one channel's pending events, oldest first, one at a time, until
    /// none is left. Writes to a channel are serialised ([`lock_channel`]), so
    /// id order is commit order and a late commit always sorts last.
    async fn work_channel(
        self,
        channel_id: i64,
        active: Arc<Mutex<HashSet<i64>>>,
        wake: Arc<Notify>,
    ) {
        loop {
            let next: Result<Option<Pending>, _> = sqlx::query_as(
                "SELECT id, event_type, channel_id, data, traceparent, attempts, created_at \
                 FROM outbox WHERE status = 'pending' AND channel_id = $1 ORDER BY id LIMIT 1",
            )
            .bind(channel_id)
            .fetch_optional(&self.pool)
            .await;
            match next {
                Ok(Some(event)) => self.deliver(event).await,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, channel_id, "could not read the outbox; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        active.lock().expect("not poisoned").remove(&channel_id);
        // An event committed while this worker was finishing is picked up by
        // the next poll; ask for it now rather than at the next tick.
        wake.notify_one();
    }

    /// Sends one event until it is acknowledged or out of attempts.
    async fn deliver(&self, event: Pending) {
        let mut attempts = event.attempts.max(0) as u32;
        let mut last_error = String::new();
        while attempts < self.max_attempts {
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
                    self.finish(event.id, "delivered", attempts + 1, None).await;
                    metrics::counter!("otako_outbox_delivered_total").increment(1);
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Unanswered while every gateway went away: not the
                // event's fault, so no attempt is spent.
                Err(AttemptError::Failed(_)) if self.gateways_gone() => continue,
                Err(AttemptError::NoGateway) => {
                    // Nobody to ask: wait without spending an attempt.
                    tokio::time::sleep(NO_GATEWAY_WAIT).await;
                    continue;
                }
                Err(AttemptError::Failed(e)) => {
                    attempts += 1;
                    metrics::counter!("otako_outbox_failed_attempts_total").increment(1);
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    last_error = e;
                    let backoff = self.backoff_for(attempts);
                    self.record_attempt(event.id, attempts, &last_error, backoff)
                        .await;
                    if attempts < self.max_attempts {
                        tokio::time::sleep(backoff).await;
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
        metrics::counter!("otako_outbox_dropped_total").increment(1);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.finish(event.id, "dropped", attempts, Some(&last_error))
            .await;
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let exp = self.backoff.saturating_mul(1u32 << (attempts - 1).min(16));
        let capped = exp.min(MAX_BACKOFF);
        // Up to 20% jitter, so retries of many channels do not beat in step.
        capped.mul_f64(1.0 + rand::random::<f64>() * 0.2)
    }

    async fn attempt(&self, event: &Pending) -> Result<(), AttemptError> {
        let t = event.event_type.clone();
        let id = event.id.to_string();
        let request = DispatchRequest {
            t,
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
        let reply = tokio::time::timeout(
            self.timeout,
            self.nats
                .request_with_headers(DISPATCH_SUBJECT, headers, body.into()),
        )
        .await;
        let reply = match reply {
            Err(_) => return Err(AttemptError::Failed("no answer in time".into())),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                return Err(AttemptError::NoGateway)
            }
            Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => {
                return Err(AttemptError::Failed("no answer in time".into()))
            }
            Ok(Err(e)) => return Err(AttemptError::Failed(format!("request failed: {e}"))),
            Ok(Ok(msg)) => msg,
        };
        let answer: Roundtrip = serde_json::from_slice(&reply.payload)
            .map_err(|e| AttemptError::Failed(format!("unreadable reply: {e}")))?;
        if answer.success {
            Ok(())
        } else {
            Err(AttemptError::Failed(
                answer
                    .error
                    .unwrap_or_else(|| "gateway answered success:false".into()),
            ))
        }
    }

    async fn record_attempt(&self, id: i64, attempts: u32, error: &str, backoff: Duration) {
        retry_db(|| {
            sqlx::query(
                "UPDATE outbox SET attempts = $2, last_error = $3, \
                 next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
            )
            .bind(id)
            .bind(attempts as i32)
            .bind(error)
            .bind(backoff.as_secs_f64())
            .execute(&self.pool)
        })
        .await;
    }

    async fn finish(&self, id: i64, status: &str, attempts: u32, error: Option<&str>) {
        retry_db(|| {
            sqlx::query(
                "UPDATE outbox SET status = $2, attempts = $3, last_error = COALESCE($4, last_error), \
                 finished_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(attempts as i32)
            .bind(error)
            .execute(&self.pool)
        })
        .await;
    }
}

#[derive(Debug)]
enum AttemptError {
    NoGateway,
    Failed(String),
}

/// Retries a state update until the database takes it: an outcome that is
/// not recorded would be sent again after a restart, never lost.
async fn retry_db<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(_) => return,
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
