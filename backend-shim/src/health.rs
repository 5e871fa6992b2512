//! `/healthz` and `/metrics` of the backend.

use crate::outbox::{self, DispatchStats};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Healthy when the database answers; reports NATS and the outbox backlog.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let gw = state.gateways.borrow().clone();
    let gateways = json!({
        "nodes": gw.nodes,
        "ping_ms": gw.rtt.map(|d| d.as_secs_f64() * 1000.0),
    });
    match outbox::backlog(&state.pool).await {
        Ok((pending, oldest)) => (
            StatusCode::OK,
            Json(json!({
                "status": "ok",
                "database": true,
                "nats": nats,
                "outbox": {"pending": pending, "oldest_pending_seconds": oldest},
                "gateways": gateways,
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "database": false, "nats": nats, "error": e.to_string()}),
            ),
        ),
    }
}

#[derive(Clone)]
pub struct MetricsState {
    pub app: AppState,
    pub handle: PrometheusHandle,
    /// The dispatcher's figures; `$SRV.STATS` reads the same atomics, so
    /// each figure has one home and the two views never disagree.
    pub stats: Arc<DispatchStats>,
}

pub async fn metrics(State(m): State<MetricsState>) -> String {
    if let Ok((pending, oldest)) = outbox::backlog(&m.app.pool).await {
        metrics::gauge!("otako_outbox_pending").set(pending as f64);
        metrics::gauge!("otako_outbox_oldest_pending_seconds").set(oldest.unwrap_or(0.0));
    }
    let s = &m.stats;
    for (name, figure) in [
        ("otako_outbox_delivered_total", &s.delivered),
        ("otako_outbox_dropped_total", &s.dropped),
        ("otako_outbox_failed_attempts_total", &s.failed_attempts),
    ] {
        metrics::counter!(name).absolute(figure.load(Ordering::Relaxed));
    }
    m.handle.render()
}
