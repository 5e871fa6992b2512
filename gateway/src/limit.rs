//! The per-user session limit, held across the whole cluster.
//!
//! Each user has one NATS KV entry listing its sessions and the node holding
//! each (`{"<session id>": "<node id>"}`), changed only with compare-and-set,
//! so two nodes admitting at once cannot both take the last place. Each node
//! also keeps a liveness key with a short TTL; sessions of a node whose key
//! has expired (a killed node) stop counting. A node's sessions thus stop
//! counting at most [`NODE_TTL`] after it dies, and at once when it exits
//! cleanly.

use crate::session::close;
use crate::sink::open_bucket;
use async_nats::jetstream::{self, kv};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

const SESSIONS_BUCKET: &str = "otako_sessions";
const NODES_BUCKET: &str = "otako_nodes";
/// A node that stops refreshing its key is taken for dead after this. With
/// JetStream's expiry lag, a killed node's sessions stop counting within
/// 15 s (docs/protocol.md).
pub const NODE_TTL: Duration = Duration::from_secs(12);
const NODE_REFRESH: Duration = Duration::from_secs(4);
/// How long a node found dead is taken for dead without asking again.
const DEAD_CACHE: Duration = Duration::from_secs(1);
const MAX_CAS_TRIES: usize = 16;

pub struct Limiter {
    max: usize,
    node_id: String,
    sessions: kv::Store,
    nodes: kv::Store,
    /// Nodes recently found dead, so a burst of connects asks once per node.
    dead: moka::sync::Cache<String, ()>,
}

/// Releases the session's place when the session ends.
pub struct Lease {
    limiter: Arc<Limiter>,
    user_id: i64,
    session_id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let limiter = self.limiter.clone();
        let (user_id, session_id) = (self.user_id, std::mem::take(&mut self.session_id));
        tokio::spawn(async move { limiter.release(user_id, &session_id).await });
    }
}

type Entries = BTreeMap<String, String>;

fn user_key(user_id: i64) -> String {
    format!("u{user_id}")
}

impl Limiter {
    pub async fn connect(
        js: &jetstream::Context,
        max: u32,
        node_id: String,
        replicas: usize,
    ) -> Result<Arc<Limiter>, String> {
        // Session lists outlive any one node; a day bounds leftovers of a
        // cluster that vanished entirely.
        let sessions = open_bucket(
            js,
            SESSIONS_BUCKET,
            Duration::from_secs(24 * 3600),
            replicas,
        )
        .await?;
        let nodes = open_bucket(js, NODES_BUCKET, NODE_TTL, replicas).await?;
        Ok(Arc::new(Limiter {
            max: max.max(1) as usize,
            node_id,
            sessions,
            nodes,
            dead: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(DEAD_CACHE)
                .build(),
        }))
    }

    /// Keeps this node's liveness key fresh until the task is dropped.
    pub async fn heartbeat(self: Arc<Limiter>) {
        let mut tick = tokio::time::interval(NODE_REFRESH);
        loop {
            tick.tick().await;
            if let Err(e) = self.nodes.put(&self.node_id, "alive".into()).await {
                warn!(error = %e, "could not refresh this node's liveness key");
            }
        }
    }

    /// Called on a clean exit: this node's sessions stop counting at once.
    pub async fn retire(&self) {
        let _ = self.nodes.purge(&self.node_id).await;
    }

    async fn node_alive(&self, node: &str) -> bool {
        if node == self.node_id {
            return true;
        }
        // Only deaths are remembered: a remembered "alive" would keep a node
        // that just exited counting for a while.
        if self.dead.contains_key(node) {
            return false;
        }
        // On a fault, count the session: better one session too few than a
        // limit that does not hold.
        let alive = !matches!(self.nodes.get(node).await, Ok(None));
        if !alive {
            self.dead.insert(node.to_owned(), ());
        }
        alive
    }

    /// Takes a place for the session, or answers with close code 4010.
    /// A KV fault lets the session in: the limit is a guard, not a reason to
    /// lock users out while NATS recovers.
    pub async fn admit(&self, user_id: i64, session_id: &str) -> Result<(), u16> {
        let key = user_key(user_id);
        for _ in 0..MAX_CAS_TRIES {
            let entry = match self.sessions.entry(&key).await {
                Ok(e) => e.filter(|e| e.operation == kv::Operation::Put),
                Err(e) => {
                    warn!(error = %e, "session limit unavailable; admitting");
                    return Ok(());
                }
            };
            let mut entries: Entries = entry
                .as_ref()
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            let mut live = Entries::new();
            for (sid, node) in entries {
                if self.node_alive(&node).await {
                    live.insert(sid, node);
                }
            }
            entries = live;
            if entries.len() >= self.max {
                return Err(close::SESSION_LIMIT);
            }
            entries.insert(session_id.to_owned(), self.node_id.clone());
            let value = serde_json::to_vec(&entries)
                .expect("entries serialize")
                .into();
            let written = match &entry {
                Some(e) => self.sessions.update(&key, value, e.revision).await.is_ok(),
                None => self.sessions.create(&key, value).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        warn!(user_id, "session limit contended; admitting");
        Ok(())
    }

    fn lease_for(self: &Arc<Limiter>, user_id: i64, session_id: &str) -> Lease {
        Lease {
            limiter: self.clone(),
            user_id,
            session_id: session_id.to_owned(),
        }
    }

    async fn release(&self, user_id: i64, session_id: &str) {
        let key = user_key(user_id);
        for _ in 0..MAX_CAS_TRIES {
            let Ok(Some(entry)) = self.sessions.entry(&key).await else {
                return;
            };
            let mut entries: Entries = serde_json::from_slice(&entry.value).unwrap_or_default();
            if entries.remove(session_id).is_none() {
                return;
            }
            let value = serde_json::to_vec(&entries)
                .expect("entries serialize")
                .into();
            if self
                .sessions
                .update(&key, value, entry.revision)
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

/// The node's view of the limiter; absent limiter (no JetStream) means no limit.
#[derive(Clone, Default)]
pub struct SessionLimit(pub Option<Arc<Limiter>>);

impl SessionLimit {
    pub async fn admit(&self, user_id: i64, session_id: &str) -> Result<(), u16> {
        match &self.0 {
            Some(l) => l.admit(user_id, session_id).await,
            None => Ok(()),
        }
    }

    pub fn lease(&self, user_id: i64, session_id: &str) -> Option<Lease> {
        self.0.as_ref().map(|l| l.lease_for(user_id, session_id))
    }
}
