//! The per-user session limit, held across the whole cluster.
//!
//! Each user has one NATS KV entry listing its sessions and the node holding
//! each (`{"<session id>": "<node id>"}`), changed only with compare-and-set,
//! so two nodes admitting at once cannot both take the last place. Each node
//! also keeps a liveness key with a short TTL; sessions of a node whose key
//! has expired (a killed node) stop counting. A node's sessions thus stop
//! counting at most [`NODE_TTL`] after it dies, and at once when it exits
//! cleanly.
//!
//! Both kinds of value carry a keyed digest made with the cluster's bus key,
//! so a NATS client outside the cluster cannot lock a user out: a session
//! list it wrote counts as empty (and is overwritten by the next admit), and
//! a liveness key it wrote (or one copied from a dead node) does not keep
//! that node's sessions counting.

use crate::kv::{open_bucket, BucketError, BucketLimits};
use async_nats::jetstream::{self, kv};
use otako_common::bus::BusKey;
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
/// Session lists outlive any one node; a day bounds leftovers of a cluster
/// that vanished entirely. A list of ten sessions is under 1 KiB.
const SESSIONS_LIMITS: BucketLimits = BucketLimits {
    ttl: Duration::from_secs(24 * 3600),
    max_bytes: 256 * 1024 * 1024,
    max_value_size: 64 * 1024,
};
const NODES_LIMITS: BucketLimits = BucketLimits {
    ttl: NODE_TTL,
    max_bytes: 16 * 1024 * 1024,
    max_value_size: 1024,
};

/// The user already holds as many sessions as allowed (close 4010).
#[derive(Debug, thiserror::Error)]
#[error("session limit of {0} reached")]
pub struct LimitReached(pub usize);

pub struct Limiter {
    max: usize,
    key: BusKey,
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

/// A session list with its digest, as stored under the user's key.
#[derive(serde::Serialize)]
struct Stored<'a> {
    s: &'a Entries,
    mac: &'a str,
}

fn user_key(user_id: i64) -> String {
    format!("u{user_id}")
}

impl Limiter {
    pub async fn connect(
        js: &jetstream::Context,
        max: u32,
        node_id: String,
        replicas: usize,
        key: BusKey,
    ) -> Result<Arc<Limiter>, BucketError> {
        let sessions = open_bucket(js, SESSIONS_BUCKET, SESSIONS_LIMITS, replicas).await?;
        let nodes = open_bucket(js, NODES_BUCKET, NODES_LIMITS, replicas).await?;
        Ok(Arc::new(Limiter {
            max: max.max(1) as usize,
            key,
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
            let value = self.liveness_value(otako_common::bus::now_ms());
            if let Err(e) = self.nodes.put(&self.node_id, value.into()).await {
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
        // limit that does not hold. A value the cluster did not write, or
        // one older than the TTL (copied from a node since dead), is no sign
        // of life.
        let alive = match self.nodes.get(node).await {
            Ok(None) => false,
            Ok(Some(value)) => self.liveness_is_genuine(node, &value),
            Err(_) => true,
        };
        if !alive {
            self.dead.insert(node.to_owned(), ());
        }
        alive
    }

    fn liveness_value(&self, at_ms: i64) -> String {
        let mac = self.key.keyed_id(&format!("node {} {at_ms}", self.node_id));
        format!("{at_ms} {mac}")
    }

    fn liveness_is_genuine(&self, node: &str, value: &[u8]) -> bool {
        let Some((at, mac)) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        let Ok(at_ms) = at.parse::<i64>() else {
            return false;
        };
        let fresh = otako_common::bus::now_ms() - at_ms <= NODE_TTL.as_millis() as i64;
        fresh && self.key.keyed_id(&format!("node {node} {at_ms}")) == mac
    }

    /// A user's session list as stored: the entries and their digest.
    fn encode(&self, key: &str, entries: &Entries) -> Vec<u8> {
        let list = serde_json::to_string(entries).expect("entries serialize");
        let mac = self.key.keyed_id(&format!("{key} {list}"));
        serde_json::to_vec(&Stored {
            s: entries,
            mac: &mac,
        })
        .expect("entries serialize")
    }

    /// The entries of a stored list; none when the cluster did not write it.
    fn decode(&self, key: &str, value: &[u8]) -> Entries {
        #[derive(serde::Deserialize)]
        struct Owned {
            s: Entries,
            mac: String,
        }
        let Ok(stored) = serde_json::from_slice::<Owned>(value) else {
            return Entries::new();
        };
        let list = serde_json::to_string(&stored.s).expect("entries serialize");
        if self.key.keyed_id(&format!("{key} {list}")) == stored.mac {
            stored.s
        } else {
            warn!(key, "ignoring a session list the cluster did not write");
            Entries::new()
        }
    }

    /// Takes a place for the session, or refuses it when the user is at the
    /// limit. A KV fault lets the session in: the limit is a guard, not a
    /// reason to lock users out while NATS recovers.
    pub async fn admit(&self, user_id: i64, session_id: &str) -> Result<(), LimitReached> {
        let key = user_key(user_id);
        for _ in 0..MAX_CAS_TRIES {
            let entry = match self.sessions.entry(&key).await {
                Ok(e) => e.filter(|e| e.operation == kv::Operation::Put),
                Err(e) => {
                    warn!(error = %e, "session limit unavailable; admitting");
                    return Ok(());
                }
            };
            let mut entries = entry
                .as_ref()
                .map(|e| self.decode(&key, &e.value))
                .unwrap_or_default();
            let mut live = Entries::new();
            for (sid, node) in entries {
                if self.node_alive(&node).await {
                    live.insert(sid, node);
                }
            }
            entries = live;
            if entries.len() >= self.max {
                return Err(LimitReached(self.max));
            }
            entries.insert(session_id.to_owned(), self.node_id.clone());
            let value = self.encode(&key, &entries).into();
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

    /// The session's place, given back when the lease is dropped.
    pub fn lease(self: &Arc<Limiter>, user_id: i64, session_id: &str) -> Lease {
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
            let mut entries = self.decode(&key, &entry.value);
            if entries.remove(session_id).is_none() {
                return;
            }
            let value = self.encode(&key, &entries).into();
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
