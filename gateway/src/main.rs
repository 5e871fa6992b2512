//! otako-gateway: wires the modules together. See README.md for the design.

mod admin;
mod auth;
mod config;
mod db;
mod dispatch;
mod fanout;
mod limit;
mod server;
mod session;
mod sink;

use anyhow::Context;
use clap::Parser;
use config::{Args, Command};
use otako_common::nats::with_retries;
use otako_common::proto::{FANOUT_SUBJECT, REVOKE_SUBJECT};
use otako_common::{service, telemetry, token};
use std::future::IntoFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = telemetry::init("otako-gateway", args.common.log_json)?;
    let migrate_only = matches!(args.command, Some(Command::Migrate));
    let pool = otako_common::db::open(
        &args.common.database_url,
        16,
        args.common.migrate || migrate_only,
    )
    .await?;
    if migrate_only {
        return Ok(());
    }
    let secret = token::resolve_secret(args.common.token_secret.as_deref(), args.common.dev)?;
    let node_id = args.node_id();
    let metrics = admin::install_metrics()?;

    let nats = otako_common::nats::connect(
        &args.common.nats_url,
        format!("otako-gateway {node_id}"),
        None,
    )
    .await?;
    let js = async_nats::jetstream::new(nats.clone());
    let replicas = args.jetstream_replicas;
    let sink = with_retries("setting up the error sink", || {
        sink::ErrorSink::connect(js.clone(), replicas)
    })
    .await?;
    let dispatcher = dispatch::Dispatcher::new(nats.clone(), pool.clone(), sink, node_id.clone());
    let limiter = with_retries("opening the session-limit buckets", || {
        limit::Limiter::connect(&js, args.max_sessions_per_user, node_id.clone(), replicas)
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let hub = fanout::Hub::new(args.session_queue);
    let node = Arc::new(server::Node::new(
        node_id.clone(),
        hub.clone(),
        pool,
        token::TokenKey::new(&secret),
        args.heartbeat_interval(),
        limit::SessionLimit(Some(limiter.clone())),
    ));

    tokio::spawn(server::firehose_loop(
        nats.subscribe(FANOUT_SUBJECT).await?,
        hub.clone(),
    ));
    tokio::spawn(server::revoke_loop(
        nats.subscribe(REVOKE_SUBJECT).await?,
        hub.clone(),
    ));
    let liveness = tokio::spawn(limiter.clone().heartbeat());

    let listener = TcpListener::bind(args.gateway_listen)
        .await
        .with_context(|| format!("binding {}", args.gateway_listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    tokio::spawn(
        axum::serve(
            admin_listener,
            admin::router(node.clone(), nats.clone(), metrics),
        )
        .into_future(),
    );

    let dispatcher = Arc::new(dispatcher);
    let (backend_tx, _backend) = tokio::sync::watch::channel(service::PeerStatus::default());
    tokio::spawn(service::watch_peers(
        nats.clone(),
        service::BACKEND_SERVICE,
        Duration::from_millis(args.ping_interval_ms),
        backend_tx,
    ));
    let stats = (hub.clone(), dispatcher.clone());
    let nats_service = service::register(
        &nats,
        service::GATEWAY_SERVICE,
        &node_id,
        "Otako WebSocket gateway node",
        move || {
            serde_json::json!({
                "sessions": stats.0.session_count(),
                "events_handled": stats.1.handled.load(Ordering::Relaxed),
                "events_failed": stats.1.failed.load(Ordering::Relaxed),
            })
        },
    )
    .await?;

    let stop_accepting = CancellationToken::new();
    let stop_dispatch = CancellationToken::new();
    tokio::spawn(server::accept_loop(
        listener,
        node.clone(),
        stop_accepting.clone(),
    ));
    let dispatch = tokio::spawn(server::dispatch_loop(
        server::subscribe_dispatch(&nats).await?,
        dispatcher,
        args.dispatch_concurrency,
        stop_dispatch.clone(),
    ));
    // Subscriptions are live at the server before we call ourselves ready.
    nats.flush().await?;
    node.ready.store(true, Ordering::Release);
    info!(node = %node_id, gateway = %args.gateway_listen, admin = %args.admin_listen, "gateway ready");

    otako_common::cli::shutdown_signal().await;
    info!("shutting down: draining");
    node.ready.store(false, Ordering::Release);
    stop_accepting.cancel();
    stop_dispatch.cancel();
    let _ = dispatch.await;
    // Stop answering pings: the backend holds events rather than send them here.
    let _ = nats_service.stop().await;
    info!("dispatch drained");
    server::drain_sessions(&hub, args.drain_window()).await;
    liveness.abort();
    limiter.retire().await;
    let _ = nats.flush().await;
    info!("gateway stopped");
    Ok(())
}
