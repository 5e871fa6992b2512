//! The NATS KV buckets the gateway keeps its shared state in.

use async_nats::jetstream::{self, kv};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("could not open the KV bucket {bucket}: {reason}")]
pub struct BucketError {
    pub bucket: String,
    pub reason: String,
}

/// Limits of one bucket: how long a key lives and how much it may hold.
#[derive(Debug, Clone, Copy)]
pub struct BucketLimits {
    pub ttl: Duration,
    /// Bytes the whole bucket may hold; the oldest keys go first past it.
    pub max_bytes: i64,
    pub max_value_size: i32,
}

/// Opens a KV bucket, creating it on first use.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    limits: BucketLimits,
    replicas: usize,
) -> Result<kv::Store, BucketError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: bucket.into(),
        history: 1,
        max_age: limits.ttl,
        max_bytes: limits.max_bytes,
        max_value_size: limits.max_value_size,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| BucketError {
        bucket: bucket.to_owned(),
        reason: e.to_string(),
    })
}
