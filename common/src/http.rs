//! The HTTP edge every listener of the project shares: a client that sends
//! its headers or its body slowly, or opens connections by the thousand,
//! cannot hold the server.
//!
//! - Headers: a request's headers must arrive within `header_timeout` of the
//!   first byte being awaited (hyper's `header_read_timeout`, which also
//!   bounds how long an idle keep-alive connection stays open); `axum::serve`
//!   sets no such timer, so this module drives hyper itself.
//! - Bodies: each request body must be read in full within `body_timeout`
//!   of its headers, however slowly it trickles; past that, reading it fails
//!   with [`BodyTimeout`] and the connection is closed after the answer.
//! - Connections: at most `max_connections` are served at once; the next is
//!   accepted only when one closes, so the excess waits in the kernel's
//!   accept backlog and costs the process no file descriptor.

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// At most one log line per this long about failing accepts.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What one listener allows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// How long connections still open at shutdown may finish their
    /// requests before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The flags of [`Limits`], for a binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// A request's headers must arrive within this time (also how long an
    /// idle keep-alive connection stays open).
    #[arg(long, env = "OTAKO_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// A request's body must arrive in full within this time of its headers.
    #[arg(long, env = "OTAKO_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,
    /// Connections served at once; more wait in the accept backlog.
    #[arg(long, env = "OTAKO_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(self.http_body_timeout_ms.max(1)),
            max_connections: self.http_max_connections.max(1),
            ..Limits::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the listener has no local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A request body that was not read in full in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// connections finish their requests (up to `limits.shutdown_grace`).
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    let mut last_accept_warning = None;
    loop {
        // A permit first: over the cap, connections are left in the backlog.
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // it was accepted: both pass; do not spin on them, nor
                    // log each one.
                    if last_accept_warning.is_none_or(|at: Instant| at.elapsed() >= ACCEPT_WARNING_EVERY) {
                        tracing::warn!(error = %e, %local, "accept failed");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|body| axum::body::Body::new(TimeoutBody::new(body, body_timeout)));
            router.clone().call(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%local, "connections still open after the shutdown grace; dropping them");
    }
    Ok(())
}

/// A body that fails once its deadline passes before its end.
pub struct TimeoutBody<B> {
    inner: B,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<B> TimeoutBody<B> {
    pub fn new(inner: B, limit: Duration) -> TimeoutBody<B> {
        TimeoutBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + limit)),
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or one of its sources) is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if err.is::<BodyTimeout>() {
            return true;
        }
        e = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Never;

    impl Body for Never {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_that_never_ends_fails_at_its_deadline() {
        let body = TimeoutBody::new(Never, Duration::from_millis(50));
        let started = Instant::now();
        let Err(err) = body.collect().await else {
            panic!("the body must time out");
        };
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(is_body_timeout(&*err), "{err}");
    }

    #[tokio::test]
    async fn a_body_that_ends_in_time_is_read() {
        let body = TimeoutBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hi")),
            Duration::from_secs(5),
        );
        let bytes = body.collect().await.expect("read in time").to_bytes();
        assert_eq!(&bytes[..], b"hi");
    }
}
