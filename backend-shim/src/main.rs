//! otako-backend-shim: wires the modules together. See README.md.

mod api;
mod auth;
mod config;
mod error;
mod health;
mod outbox;

use anyhow::Context;
use axum::routing::get;
use clap::Parser;
use config::{Args, Command};
use otako_common::{service, telemetry, token};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = telemetry::init("otako-backend-shim", args.common.log_json)?;
    let migrate_only = matches!(args.command, Some(Command::Migrate));
    let pool = otako_common::db::open(
        &args.common.database_url,
        32,
        args.common.migrate || migrate_only,
    )
    .await?;
    if migrate_only {
        return Ok(());
    }
    let secret = token::resolve_secret(args.common.token_secret.as_deref(), args.common.dev)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let nats = otako_common::nats::connect(
        &args.common.nats_url,
        "otako-backend-shim".into(),
        Some(args.dispatch_timeout()),
    )
    .await?;

    let (gateways_tx, gateways) = tokio::sync::watch::channel(service::PeerStatus::default());
    tokio::spawn(service::watch_peers(
        nats.clone(),
        service::GATEWAY_SERVICE,
        Duration::from_millis(args.ping_interval_ms),
        gateways_tx,
    ));
    let wake = Arc::new(Notify::new());
    let state = api::AppState {
        pool: pool.clone(),
        key: token::TokenKey::new(&secret),
        token_ttl_secs: args.token_ttl_secs,
        nats: nats.clone(),
        outbox_wake: wake.clone(),
        gateways: gateways.clone(),
    };
    let dispatcher = outbox::Dispatcher::new(
        pool,
        nats.clone(),
        args.dispatch_max_attempts,
        args.dispatch_timeout(),
        args.dispatch_backoff(),
        gateways,
    );
    let stats = dispatcher.stats.clone();
    let node_id = format!("backend-{}", std::process::id());
    let _service = service::register(
        &nats,
        service::BACKEND_SERVICE,
        &node_id,
        "Otako HTTP backend: writes, outbox, dispatch",
        move || {
            serde_json::json!({
                "delivered": stats.delivered.load(Ordering::Relaxed),
                "dropped": stats.dropped.load(Ordering::Relaxed),
                "failed_attempts": stats.failed_attempts.load(Ordering::Relaxed),
            })
        },
    )
    .await?;
    tokio::spawn(dispatcher.run(wake));

    let app = api::router(state.clone())
        .route("/healthz", get(health::healthz).with_state(state.clone()))
        .route(
            "/metrics",
            get(health::metrics).with_state((state, metrics)),
        )
        .layer(axum::middleware::from_fn(trace_request));
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    info!(http = %args.http_listen, "backend ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Finish the requests in flight; events not yet acknowledged stay
            // pending and go out after a restart.
            otako_common::cli::shutdown_signal().await;
            info!("shutting down");
        })
        .await?;
    Ok(())
}

/// One span per request, continuing the caller's trace if it sent one.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{} {}", req.method(), req.uri().path()),
        http.method = %req.method(),
        http.path = %req.uri().path(),
        http.status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_from_http(&span, req.headers());
    if let Some(id) = telemetry::trace_id(&span, None) {
        span.record("trace_id", id.as_str());
    }
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.status", resp.status().as_u16());
    resp
}
