//! Connecting to NATS the same way from both binaries.

use async_nats::{Client, ServerAddr};
use std::future::Future;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("bad NATS URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("connecting to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// Parses the contract's comma-separated list of server URLs.
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, NatsError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>().map_err(|e| NatsError::BadUrl {
                url: u.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Connects to any of the servers in `urls`, logging connection changes.
pub async fn connect(
    urls: &str,
    name: String,
    request_timeout: Option<Duration>,
) -> Result<Client, NatsError> {
    let addrs = server_addrs(urls)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(request_timeout)
        .event_callback(|event| async move { info!(%event, "nats connection") })
        .connect(addrs)
        .await
        .map_err(|e| NatsError::Connect {
            url: urls.to_owned(),
            reason: e.to_string(),
        })
}

/// Retries a start-up step that needs JetStream: while a cluster elects its
/// meta leader or several nodes create the same bucket at once, requests can
/// fail or hang for a few seconds. Each try but the last is bounded in time.
pub async fn with_retries<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    const TRIES: u32 = 8;
    const TRY_TIMEOUT: Duration = Duration::from_secs(8);
    let mut wait = Duration::from_millis(200);
    for attempt in 1..TRIES {
        match tokio::time::timeout(TRY_TIMEOUT, step()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => warn!(error = %e, attempt, "{what} failed; retrying"),
            Err(_) => warn!(attempt, "{what} timed out; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    step().await
}

#[cfg(test)]
mod tests {
    use super::server_addrs;

    #[test]
    fn comma_separated_urls() {
        assert_eq!(
            server_addrs("nats://a:4222, nats://b:4223").unwrap().len(),
            2
        );
        assert_eq!(server_addrs("nats://a:4222").unwrap().len(), 1);
        assert!(server_addrs("nats://a:notaport").is_err());
    }
}
