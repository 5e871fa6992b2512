//! The DISPATCH connection's liveness, both ways, over NATS micro-services.
//!
//! Each binary registers as a NATS service (`$SRV.PING`, `$SRV.INFO`,
//! `$SRV.STATS` answer for it), and each pings the other side's service
//! name at an interval to know how many nodes answer and how fast. The
//! result is published on a `watch` channel for whoever must act on it (the
//! backend's dispatcher pauses while no gateway answers).

use async_nats::service::{Service, ServiceExt};
use futures_util::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

pub const GATEWAY_SERVICE: &str = "otako-gateway";
pub const BACKEND_SERVICE: &str = "otako-backend-shim";

/// While nobody answers, ask this often, so a returning peer is seen at once.
const FAST_PING: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
#[error("NATS service error: {0}")]
pub struct ServiceError(String);

/// Registers this process as an instance of `name`. Live figures come from
/// `stats`, called for every `$SRV.STATS` request; the `status` endpoint
/// answers them too, per instance.
pub async fn register<F>(
    client: &async_nats::Client,
    name: &str,
    node_id: &str,
    description: &str,
    stats: F,
) -> Result<Service, ServiceError>
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let stats = std::sync::Arc::new(stats);
    let for_handler = stats.clone();
    let service = client
        .service_builder()
        .description(description)
        .metadata(HashMap::from([("node_id".to_owned(), node_id.to_owned())]))
        .stats_handler(move |_endpoint, _| for_handler())
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServiceError(e.to_string()))?;
    // A per-node endpoint, so `$SRV.STATS` carries live figures and a person
    // can ask one node directly: `nats req otako.status.<node> ''`.
    let mut endpoint = service
        .endpoint_builder()
        .name("status")
        .queue_group(format!("{name}-{node_id}"))
        .add(format!("otako.status.{node_id}"))
        .await
        .map_err(|e| ServiceError(e.to_string()))?;
    tokio::spawn(async move {
        while let Some(req) = endpoint.next().await {
            let body = serde_json::to_vec(&stats()).unwrap_or_default();
            let _ = req.respond(Ok(body.into())).await;
        }
    });
    Ok(service)
}

/// One instance that answered a ping.
#[derive(Debug, Clone, Deserialize)]
pub struct Responder {
    pub id: String,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(skip)]
    pub rtt: Duration,
}

/// Sends `$SRV.PING.<name>` and collects the answers that arrive within `window`.
pub async fn ping(
    client: &async_nats::Client,
    name: &str,
    window: Duration,
) -> Result<Vec<Responder>, ServiceError> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServiceError(e.to_string()))?;
    let started = Instant::now();
    client
        .publish_with_reply(format!("$SRV.PING.{name}"), inbox, "".into())
        .await
        .map_err(|e| ServiceError(e.to_string()))?;
    let mut out = Vec::new();
    let deadline = started + window;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(mut r) = serde_json::from_slice::<Responder>(&msg.payload) {
            r.rtt = started.elapsed();
            out.push(r);
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// What one side currently knows of the other.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStatus {
    /// Instances that answered the last ping.
    pub nodes: usize,
    /// Round trip of the slowest answer of the last ping.
    pub rtt: Option<Duration>,
    /// Whether at least one ping has completed.
    pub known: bool,
}

/// Pings `service` forever, publishing what it sees on `tx`, with metrics
/// (`otako_peer_nodes`, `otako_peer_ping_seconds`) and a log line whenever the
/// other side goes away or comes back.
pub async fn watch_peers(
    client: async_nats::Client,
    service: &'static str,
    interval: Duration,
    tx: watch::Sender<PeerStatus>,
) {
    // Answers on loopback or in one cluster come back in well under this.
    let window = (interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        let status = match ping(&client, service, window).await {
            Ok(nodes) => PeerStatus {
                nodes: nodes.len(),
                rtt: nodes.iter().map(|r| r.rtt).max(),
                known: true,
            },
            Err(e) => {
                warn!(error = %e, service, "ping failed");
                PeerStatus {
                    known: true,
                    ..Default::default()
                }
            }
        };
        let before = tx.borrow().clone();
        if before.known && before.nodes > 0 && status.nodes == 0 {
            warn!(service, "no instance answers pings any more");
        } else if (!before.known || before.nodes == 0) && status.nodes > 0 {
            info!(service, nodes = status.nodes, "instances answer pings");
        } else if !before.known && status.nodes == 0 {
            warn!(service, "no instance answers pings");
        }
        metrics::gauge!("otako_peer_nodes", "service" => service).set(status.nodes as f64);
        if let Some(rtt) = status.rtt {
            metrics::gauge!("otako_peer_ping_seconds", "service" => service).set(rtt.as_secs_f64());
        }
        let wait = if status.nodes == 0 {
            FAST_PING.min(interval)
        } else {
            interval
        };
        tx.send_replace(status);
        tokio::time::sleep(wait).await;
    }
}
