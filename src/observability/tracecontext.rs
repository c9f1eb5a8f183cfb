//! W3C trace context across the places a purchase crosses tasks and processes: the HTTP
//! request (a `traceparent` header), the writer task (the command's event metadata), the
//! outbox relay and the bus (a `traceparent` message header), and the consumers. A span
//! created on the far side of such a hop is made a child of the context carried over, so one
//! purchase is one trace. Without an OpenTelemetry layer installed (no
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) spans carry no trace context, and these are no-ops.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const HEADER: &str = "traceparent";

/// The `traceparent` of `span`, when it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(HEADER)
}

/// The `traceparent` of the span the caller runs in.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

fn extract(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(HEADER.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Links `span` to the remote span `traceparent` names: for work done for several traces at
/// once (a group commit), beside its one parent.
pub fn link_trace(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = extract(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Makes `span` a child of the remote span `traceparent` names (ignored when absent or
/// malformed: the span then starts or continues its own trace).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(extract) {
        // Fails only when the span is already closed or has no OpenTelemetry data.
        let _ = span.set_parent(cx);
    }
}
