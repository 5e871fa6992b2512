//! The loops that feed a node: client connections, dispatch requests, and
//! the graceful drain.

use crate::dispatch::Dispatcher;
use crate::fanout::Hub;
use crate::node::Node;
use crate::{heartbeat, session};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use otako_common::close::CloseCode;
use otako_common::proto::{DISPATCH_QUEUE, DISPATCH_SUBJECT};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Accepts client connections until `stop` is cancelled. The heartbeat
/// sweep for the sessions it starts runs from here on, past `stop` too:
/// sessions that are draining are still held to their heartbeats.
pub async fn accept_loop(listener: TcpListener, node: Arc<Node>, stop: CancellationToken) {
    tokio::spawn(heartbeat::sweep(node.hub.clone(), node.heartbeat_interval));
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

/// Answers dispatch requests until `stop` is cancelled, then finishes those
/// already taken before returning.
///
/// The requests in flight (at most `concurrency`) are futures polled by this
/// one task rather than a task each: a `tokio::spawn` per request was 8,600
/// of an event's 380,000 instructions (BENCHMARKS.md), and a handler is
/// mostly waiting on the database and the history, so one task keeps up.
pub async fn dispatch_loop(
    mut sub: async_nats::Subscriber,
    dispatcher: Arc<Dispatcher>,
    concurrency: usize,
    stop: CancellationToken,
) {
    let concurrency = concurrency.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut draining = false;
    let mut subscribed = true;
    loop {
        tokio::select! {
            _ = stop.cancelled(), if !draining && subscribed => {
                // Unsubscribe, but keep handling what the server already sent.
                draining = true;
                if let Err(e) = sub.drain().await {
                    warn!(error = %e, "could not drain the dispatch subscription");
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            msg = sub.next(), if subscribed && in_flight.len() < concurrency => match msg {
                Some(msg) => {
                    let dispatcher = dispatcher.clone();
                    in_flight.push(async move { dispatcher.handle(msg).await });
                }
                None => subscribed = false,
            },
            else => break,
        }
    }
}

pub async fn subscribe_dispatch(
    nats: &async_nats::Client,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    nats.queue_subscribe(DISPATCH_SUBJECT, DISPATCH_QUEUE.into())
        .await
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
        s.kick(CloseCode::Restart);
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.session_count() > 0 && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
