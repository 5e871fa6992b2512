//! What every request handler shares: the database, the token key, NATS and
//! the dispatcher's wake-up. Its own module, so the API and the extractors
//! in `auth` both depend on it rather than on each other.

use otako_common::bus::BusKey;
use otako_common::service::PeerStatus;
use otako_common::token::TokenKey;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::watch;

use crate::limits::Limits;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub key: TokenKey,
    /// Signs what the backend publishes for the gateways (`otako.revoke`).
    pub bus_key: BusKey,
    pub token_ttl_secs: i64,
    pub nats: async_nats::Client,
    /// Wakes the dispatcher right after a commit, so events go out at once.
    pub outbox_wake: crate::outbox::Wake,
    /// What the pings of the gateway cluster show.
    pub gateways: watch::Receiver<PeerStatus>,
    /// Per-user and per-address rate limits of the writes.
    pub limits: Arc<Limits>,
}
