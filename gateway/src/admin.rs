//! The admin listener: `/healthz` (the process is alive), `/readyz` (send
//! traffic here: not draining and NATS connected), `/metrics` (Prometheus).

use crate::dispatch::DispatchStats;
use crate::node::Node;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    node: Arc<Node>,
    nats: async_nats::Client,
    metrics: PrometheusHandle,
    dispatch: Arc<DispatchStats>,
}

pub fn router(
    node: Arc<Node>,
    nats: async_nats::Client,
    metrics: PrometheusHandle,
    dispatch: Arc<DispatchStats>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState {
            node,
            nats,
            metrics,
            dispatch,
        })
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if !s.node.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or draining\n",
        );
    }
    if s.nats.connection_state() != async_nats::connection::State::Connected {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: NATS disconnected\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

async fn render_metrics(State(s): State<AdminState>) -> String {
    metrics::gauge!("otako_sessions_open").set(s.node.hub.session_count() as f64);
    s.dispatch.export();
    s.metrics.render()
}

/// Installs the Prometheus recorder with buckets fit for a real-time path.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)?
        .install_recorder()
}
