//! The node: what every session of this process shares.

use crate::fanout::Hub;
use crate::history::History;
use crate::limit::Limiter;
use crate::resume::ResumeLimits;
use otako_common::token::TokenKey;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub struct Node {
    pub node_id: String,
    pub hub: Arc<Hub>,
    pub pool: PgPool,
    pub history: Arc<History>,
    pub token_key: TokenKey,
    pub heartbeat_interval: Duration,
    pub limiter: Arc<Limiter>,
    pub resume: ResumeLimits,
    /// Session starts (database, session limit, replay) in progress at
    /// once; a reconnect storm queues here instead of exhausting the
    /// database pool and the history's readers.
    pub starts: Semaphore,
    /// How long a start waits for one of `starts` before 1013.
    pub start_queue: Duration,
    /// False while starting and while draining; `/readyz` reads it.
    pub ready: AtomicBool,
    next_id: AtomicU64,
}

/// The settings of a node's sessions.
pub struct SessionSettings {
    pub heartbeat_interval: Duration,
    pub resume: ResumeLimits,
    pub max_concurrent_starts: usize,
    pub start_queue: Duration,
}

impl Node {
    pub fn new(
        node_id: String,
        hub: Arc<Hub>,
        pool: PgPool,
        history: Arc<History>,
        token_key: TokenKey,
        limiter: Arc<Limiter>,
        settings: SessionSettings,
    ) -> Node {
        Node {
            node_id,
            hub,
            pool,
            history,
            token_key,
            heartbeat_interval: settings.heartbeat_interval,
            limiter,
            resume: settings.resume,
            starts: Semaphore::new(settings.max_concurrent_starts.max(1)),
            start_queue: settings.start_queue,
            ready: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
