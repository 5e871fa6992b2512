//! The logging sink for failed events: one record per `event_id` across the
//! whole cluster, however often and wherever the event is retried.
//!
//! The first node to fail an event wins an atomic `create` on the NATS KV key
//! of that event and writes the record to the `OTAKO_ERRORS` stream; every
//! other attempt finds the key taken. A moka cache in front remembers what this
//! node already saw, so retries to the same node cost no round trip.

use crate::kv::{open_bucket, BucketLimits};
use async_nats::jetstream::{self, kv, stream};
use otako_common::bus::BusKey;
use otako_common::proto::{ErrorRecord, ERRORS_STREAM, ERRORS_SUBJECT};
use std::time::Duration;

pub const FAILED_BUCKET: &str = "otako_failed";
/// How long a failure is remembered; far longer than any sender's retries.
const FAILED_TTL: Duration = Duration::from_secs(24 * 3600);
/// A claim is a node id; the bucket drops its oldest keys past its size.
const FAILED_LIMITS: BucketLimits = BucketLimits {
    ttl: FAILED_TTL,
    max_bytes: 64 * 1024 * 1024,
    max_value_size: 1024,
};
/// Error records are kept 30 days, at most this many (and bytes) in all,
/// the oldest going first, each at most `MAX_RECORD_BYTES`.
const ERRORS_MAX_BYTES: i64 = 256 * 1024 * 1024;
const ERRORS_MAX_RECORDS: i64 = 1_000_000;
const MAX_RECORD_BYTES: i32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("could not set up the error sink: {0}")]
    Setup(String),
    #[error("could not claim the event's failure key: {0}")]
    Claim(String),
    #[error("could not write to {ERRORS_STREAM}: {0}")]
    Write(String),
}

#[derive(Clone)]
pub struct ErrorSink {
    js: jetstream::Context,
    claims: kv::Store,
    logged: moka::sync::Cache<String, ()>,
    key: BusKey,
}

impl ErrorSink {
    /// Creates the stream and the claim bucket if they do not exist yet.
    pub async fn connect(
        js: jetstream::Context,
        replicas: usize,
        key: BusKey,
    ) -> Result<ErrorSink, SinkError> {
        js.get_or_create_stream(stream::Config {
            name: ERRORS_STREAM.into(),
            subjects: vec![ERRORS_SUBJECT.into()],
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: ERRORS_MAX_BYTES,
            max_messages: ERRORS_MAX_RECORDS,
            max_message_size: MAX_RECORD_BYTES,
            duplicate_window: Duration::from_secs(600),
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| SinkError::Setup(e.to_string()))?;
        let claims = open_bucket(&js, FAILED_BUCKET, FAILED_LIMITS, replicas)
            .await
            .map_err(|e| SinkError::Setup(e.to_string()))?;
        Ok(ErrorSink {
            js,
            key,
            claims,
            logged: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILED_TTL)
                .build(),
        })
    }

    /// Writes `record` unless some node already did for `key`. Returns whether
    /// this call wrote it.
    pub async fn record_once(&self, key: &str, record: &ErrorRecord) -> Result<bool, SinkError> {
        if self.logged.contains_key(key) {
            return Ok(false);
        }
        let claim = self.claim_value(key, &record.node);
        match self.claims.create(key, claim.clone().into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                if !self.take_forged_claim(key, claim).await? {
                    self.logged.insert(key.to_owned(), ());
                    return Ok(false);
                }
            }
            Err(e) => return Err(SinkError::Claim(e.to_string())),
        }
        if let Err(e) = self.write(key, record).await {
            // Give the claim back so a later attempt can still log the event.
            let _ = self.claims.delete(key).await;
            return Err(e);
        }
        self.logged.insert(key.to_owned(), ());
        Ok(true)
    }

    /// A claim names the node that made it, with a keyed digest: a key that
    /// a NATS client outside the cluster created for an event id it guessed
    /// holds no valid claim, so the event's failure is still logged.
    fn claim_value(&self, key: &str, node: &str) -> String {
        let mac = self.key.keyed_id(&format!("claim {key} {node}"));
        format!("{node} {mac}")
    }

    fn is_genuine_claim(&self, key: &str, value: &[u8]) -> bool {
        let Some((node, mac)) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.rsplit_once(' '))
        else {
            return false;
        };
        self.key.keyed_id(&format!("claim {key} {node}")) == mac
    }

    /// Replaces a claim the cluster did not make with ours; true if this
    /// node now holds the claim.
    async fn take_forged_claim(&self, key: &str, claim: String) -> Result<bool, SinkError> {
        let entry = self
            .claims
            .entry(key)
            .await
            .map_err(|e| SinkError::Claim(e.to_string()))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(false);
        };
        if self.is_genuine_claim(key, &entry.value) {
            return Ok(false);
        }
        tracing::warn!(key, "replacing a failure claim the cluster did not make");
        Ok(self
            .claims
            .update(key, claim.into(), entry.revision)
            .await
            .is_ok())
    }

    async fn write(&self, key: &str, record: &ErrorRecord) -> Result<(), SinkError> {
        let body = serde_json::to_vec(record).expect("error records serialize");
        let mut headers = async_nats::HeaderMap::new();
        // Readers of the sink can tell the cluster's records from forgeries.
        let signature = self
            .key
            .sign(ERRORS_SUBJECT, otako_common::bus::now_ms(), &body);
        headers.insert(otako_common::bus::SIGNATURE_HEADER, signature.as_str());
        // Belt and braces: the stream also drops a duplicate within its window.
        headers.insert("Nats-Msg-Id", key);
        self.js
            .publish_with_headers(ERRORS_SUBJECT, headers, body.into())
            .await
            .map_err(|e| SinkError::Write(e.to_string()))?
            .await
            .map_err(|e| SinkError::Write(e.to_string()))?;
        Ok(())
    }
}

/// A KV-safe key for an event id: the id itself when it is plain, else a hash.
pub fn event_key(event_id: &str) -> String {
    let plain = !event_id.is_empty()
        && event_id.len() <= 128
        && event_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("e_{event_id}")
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(event_id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("h_{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::event_key;

    #[test]
    fn keys_are_kv_safe_and_distinct() {
        assert_eq!(event_key("42"), "e_42");
        let odd = event_key("a.b c*>");
        assert!(odd.starts_with("h_") && odd.len() == 66);
        assert_ne!(event_key("a.b"), event_key("a b"));
        assert!(event_key("").starts_with("h_"));
    }
}
