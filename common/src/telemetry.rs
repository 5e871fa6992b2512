//! Logging and tracing set-up shared by both binaries.
//!
//! Logs go to stderr (JSON with `OTAKO_LOG_JSON=1`). Spans are exported over
//! OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable)
//! is set; otherwise no exporter runs at all. Trace context crosses NATS in a
//! W3C `traceparent` header.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("could not install the log subscriber: {0}")]
    Subscriber(String),
}

/// Flushes and stops the exporter when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Whether spans leave the process. Set once by [`init`]; without an
/// exporter, the trace-only spans are never built and trace context is
/// neither read nor written: about 16,000 instructions of an event's
/// 380,000 on the handling node (BENCHMARKS.md, instructions per event).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether an OTLP exporter runs in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

fn build_provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    // The standard variable picks the transport; the spec's default is HTTP.
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    let exporter = if protocol == "grpc" {
        SpanExporter::builder().with_tonic().build()
    } else {
        SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned()),
        )
        .build();
    // The exporters' HTTP and gRPC clients need a Tokio reactor, which the
    // SDK's default batch thread lacks: batch on the runtime instead.
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build())
}

/// The target of spans that exist for traces only: one or more per event on
/// the hot path. The log output skips them (formatting a span's fields costs
/// as much as the rest of routing an event); log lines inside them still
/// carry the enclosing spans that the log output keeps.
pub const TRACE_ONLY: &str = "otako::trace_only";

/// Installs the global subscriber. Call once, from `main`, inside the runtime.
pub fn init(service: &'static str, json_logs: bool) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = if otlp_configured() {
        Some(build_provider(service)?)
    } else {
        None
    };
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    if provider.is_none() {
        // Disabled at the callsite, a trace-only span costs one load.
        filter = filter.add_directive(
            format!("{TRACE_ONLY}=off")
                .parse()
                .expect("a valid directive"),
        );
    }
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    let fmt = fmt.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == TRACE_ONLY)
    }));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(Telemetry { provider })
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct HttpHeadersRef<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Writes the span's trace context into NATS headers.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    if !exporting() {
        return;
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut NatsHeaders(headers))
    });
}

/// The span's W3C `traceparent`, when it belongs to a real trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut out = Traceparent(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    out.0
}

/// Makes `span` a child of the trace carried in NATS headers, if any.
pub fn continue_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if !exporting() {
        return;
    }
    if let Some(h) = headers {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsHeadersRef(h)));
        set_parent(span, cx);
    }
}

/// Makes `span` a child of the trace carried in HTTP headers, if any.
pub fn continue_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeadersRef(headers)));
    set_parent(span, cx);
}

/// Makes `span` a child of a stored `traceparent` string.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let mut map = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(tp) {
            map.insert("traceparent", v);
            continue_from_http(span, &map);
        }
    }
}

fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 hex digits, falling back to the one in a
/// `traceparent` header when no exporter is running.
pub fn trace_id(span: &tracing::Span, traceparent: Option<&str>) -> Option<String> {
    if !exporting() {
        return traceparent_trace_id(traceparent?);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return Some(sc.trace_id().to_string());
    }
    traceparent_trace_id(traceparent?)
}

/// Fills the span's `trace_id` field, so log lines inside it carry the trace.
pub fn record_trace_id(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let tp = headers
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned());
    if let Some(id) = trace_id(span, tp.as_deref()) {
        span.record("trace_id", id.as_str());
    }
}

/// Reads the trace id out of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn traceparent_trace_id(tp: &str) -> Option<String> {
    let mut parts = tp.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_from_traceparent() {
        assert_eq!(
            traceparent_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(traceparent_trace_id("garbage"), None);
        assert_eq!(
            traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
    }
}
