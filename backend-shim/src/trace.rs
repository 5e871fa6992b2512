//! One span per HTTP request, continuing the caller's trace if it sent one,
//! so a write's dispatch (which carries the span's traceparent through the
//! outbox) belongs to the same trace as the request.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use otako_common::telemetry;
use tracing::Instrument;

pub async fn trace_request(req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{} {}", req.method(), req.uri().path()),
        http.method = %req.method(),
        http.path = %req.uri().path(),
        http.status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_from_http(&span, req.headers());
    if let Some(id) = telemetry::trace_id(&span, None) {
        span.record("trace_id", id.as_str());
    }
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.status", resp.status().as_u16());
    resp
}
