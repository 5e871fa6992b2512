//! otako-backend-shim: wires the modules together. See README.md.

mod api;
mod auth;
mod config;
mod error;
mod health;
mod lease;
mod limits;
mod outbox;
mod state;
mod trace;
mod web;

use anyhow::Context;
use axum::routing::get;
use clap::Parser;
use config::{Args, Command};
use otako_common::bus::BusKey;
use otako_common::{service, telemetry, token};
use state::AppState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
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
    let bus_key = BusKey::from_secret(&secret);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let nats = otako_common::nats::connect(
        &args.common.nats_url,
        &args
            .common
            .nats_options(otako_common::nats::BACKEND_INBOX_PREFIX),
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
    let wake = outbox::Wake::default();
    let dispatcher = outbox::Dispatcher::new(
        pool.clone(),
        nats.clone(),
        bus_key.clone(),
        outbox::Policy {
            max_attempts: args.dispatch_max_attempts,
            timeout: args.dispatch_timeout(),
            backoff: args.dispatch_backoff(),
        },
        gateways.clone(),
        lease::Leases::new(
            pool.clone(),
            format!(
                "backend-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            args.outbox_lease(),
        ),
    );
    let stats = dispatcher.stats.clone();
    let state = AppState {
        pool,
        key: token::TokenKey::new(&secret),
        bus_key,
        token_ttl_secs: args.token_ttl_secs,
        nats: nats.clone(),
        outbox_wake: wake.clone(),
        gateways,
        limits: Arc::new(args.limits()),
    };
    let node_id = format!("backend-{}", std::process::id());
    let srv_stats = stats.clone();
    let _service = service::register(
        &nats,
        service::BACKEND_SERVICE,
        &node_id,
        "Otako HTTP backend: writes, outbox, dispatch",
        move || {
            serde_json::json!({
                "delivered": srv_stats.delivered.load(Ordering::Relaxed),
                "dropped": srv_stats.dropped.load(Ordering::Relaxed),
                "failed_attempts": srv_stats.failed_attempts.load(Ordering::Relaxed),
            })
        },
    )
    .await?;
    tokio::spawn(dispatcher.run(wake));

    let app = api::router(state.clone())
        .route("/healthz", get(health::healthz).with_state(state.clone()))
        .route(
            "/metrics",
            get(health::metrics).with_state(health::MetricsState {
                app: state,
                handle: metrics,
                stats,
            }),
        )
        .merge(web::router(&args.public_gateway_urls))
        .layer(axum::middleware::from_fn(trace::trace_request));
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    info!(http = %args.http_listen, "backend ready");
    otako_common::http::serve(listener, app, args.http.limits(), async {
        // Finish the requests in flight; events not yet acknowledged stay
        // pending and go out after a restart.
        otako_common::cli::shutdown_signal().await;
        info!("shutting down");
    })
    .await?;
    Ok(())
}
