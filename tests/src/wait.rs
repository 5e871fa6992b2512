//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `check` until it yields `Some`, and returns that value. Panics
/// naming `what` (and the last `Err` seen) if `timeout` passes first.
pub async fn until<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    panic!("timed out after {timeout:?} waiting for {what}; last error: {e}")
                }
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`until`] for a plain yes/no condition.
pub async fn until_true<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, timeout, || {
        let f = check();
        async move { Ok::<_, std::convert::Infallible>(f.await.then_some(())) }
    })
    .await
}
