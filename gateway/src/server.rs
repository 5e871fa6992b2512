//! The node: what every session shares, the loops that feed it, and the
//! graceful drain.

use crate::dispatch::Dispatcher;
use crate::fanout::{FanoutEvent, Frame, Hub, Kick};
use crate::limit::SessionLimit;
use crate::session;
use futures_util::StreamExt;
use otako_common::proto::{COMMITTED_AT_HEADER, DISPATCH_QUEUE, DISPATCH_SUBJECT};
use otako_common::telemetry;
use otako_common::token::TokenKey;
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

pub struct Node {
    pub node_id: String,
    pub hub: Arc<Hub>,
    pub pool: PgPool,
    pub token_key: TokenKey,
    pub heartbeat_interval: Duration,
    pub limiter: SessionLimit,
    /// False while starting and while draining; `/readyz` reads it.
    pub ready: AtomicBool,
    /// Resolved once: looking a metric up per frame costs more than recording.
    pub commit_to_socket: metrics::Histogram,
    next_id: AtomicU64,
}

impl Node {
    pub fn new(
        node_id: String,
        hub: Arc<Hub>,
        pool: PgPool,
        token_key: TokenKey,
        heartbeat_interval: Duration,
        limiter: SessionLimit,
    ) -> Node {
        Node {
            node_id,
            hub,
            pool,
            token_key,
            heartbeat_interval,
            limiter,
            ready: AtomicBool::new(false),
            commit_to_socket: metrics::histogram!("otako_commit_to_socket_seconds"),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts client connections until `stop` is cancelled. The heartbeat
/// sweep for the sessions it starts runs from here on, past `stop` too:
/// sessions that are draining are still held to their heartbeats.
pub async fn accept_loop(listener: TcpListener, node: Arc<Node>, stop: CancellationToken) {
    tokio::spawn(heartbeat_sweep(node.hub.clone(), node.heartbeat_interval));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(session::serve(stream, node.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Closes sessions whose client has not sent a heartbeat for 1.5 intervals
/// (4009). One sweep of the hub every tenth of an interval, at most every
/// second, in place of a timer in every session: an idle session then holds
/// no timer at all, and a busy one re-arms none per write. A session is
/// closed between 1.5 intervals and 1.5 intervals plus one sweep period
/// after its last heartbeat; clients beat every interval.
pub async fn heartbeat_sweep(hub: Arc<Hub>, interval: Duration) {
    let period = (interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let kicked = hub.kick_missed_heartbeats();
        if kicked > 0 {
            debug!(sessions = kicked, "heartbeats missed");
        }
    }
}

/// Routes every firehose event to this node's sessions, in arrival order.
pub async fn firehose_loop(mut sub: async_nats::Subscriber, hub: Arc<Hub>) {
    while let Some(msg) = sub.next().await {
        let ev: FanoutEvent<'_> = match serde_json::from_slice(&msg.payload) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "dropping a malformed fan-out event");
                continue;
            }
        };
        let mut frame = Frame::new(ev.t.as_str(), ev.d);
        frame.committed_at_us = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(COMMITTED_AT_HEADER))
            .and_then(|v| v.as_str().parse().ok());
        let span = info_span!(
            target: telemetry::TRACE_ONLY,
            "fanout.deliver",
            otel.name = "deliver to sessions",
            event_id = ev.event_id,
            channel_id = ev.channel_id,
            recipients = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_from_nats(&span, msg.headers.as_ref());
        telemetry::record_trace_id(&span, msg.headers.as_ref());
        let n = span.in_scope(|| hub.deliver(&ev, frame));
        // As i64: the OpenTelemetry bridge exports u64 fields as strings.
        span.record("recipients", n as i64);
    }
}

/// Answers dispatch requests until `stop` is cancelled, then finishes those
/// already taken before returning.
pub async fn dispatch_loop(
    mut sub: async_nats::Subscriber,
    dispatcher: Arc<Dispatcher>,
    concurrency: usize,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut draining = false;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled(), if !draining => {
                // Unsubscribe, but keep handling what the server already sent.
                draining = true;
                if let Err(e) = sub.drain().await {
                    warn!(error = %e, "could not drain the dispatch subscription");
                }
                continue;
            }
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { break };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            dispatcher.handle(msg).await;
            drop(permit);
        });
    }
    // Wait for the requests still in flight.
    let _ = permits.acquire_many(concurrency.max(1) as u32).await;
}

pub async fn subscribe_dispatch(
    nats: &async_nats::Client,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    nats.queue_subscribe(DISPATCH_SUBJECT, DISPATCH_QUEUE.into())
        .await
}

#[derive(Deserialize)]
struct Revocation {
    user_id: String,
    generation: i32,
}

/// Closes sessions whose tokens the backend revoked.
pub async fn revoke_loop(mut sub: async_nats::Subscriber, hub: Arc<Hub>) {
    while let Some(msg) = sub.next().await {
        let Ok(r) = serde_json::from_slice::<Revocation>(&msg.payload) else {
            warn!("dropping a malformed revocation");
            continue;
        };
        let Ok(user_id) = r.user_id.parse::<i64>() else {
            continue;
        };
        for s in hub.sessions_of_user(user_id) {
            if s.token_generation < r.generation {
                s.kick(Kick::Revoked);
            }
        }
    }
}

/// Asks every session to reconnect, spread evenly over `window`, and waits
/// (a bounded time) for them to go.
pub async fn drain_sessions(hub: &Hub, window: Duration) {
    let sessions = hub.all_sessions();
    let n = sessions.len();
    info!(
        sessions = n,
        window_ms = window.as_millis() as u64,
        "draining sessions"
    );
    let start = tokio::time::Instant::now();
    for (i, s) in sessions.iter().enumerate() {
        let at = start + window.mul_f64(i as f64 / n.max(1) as f64);
        tokio::time::sleep_until(at).await;
        s.kick(Kick::Reconnect);
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.session_count() > 0 && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
