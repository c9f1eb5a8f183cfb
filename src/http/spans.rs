//! A request's two spans. `request` is the log's: the method, route and ids that every line
//! written while the request runs carries. Its child `http_request` is the trace's: an HTTP
//! server span by the OpenTelemetry semantic conventions. `observability::telemetry` keeps each
//! out of the other's layer: the log layer formats every field of every span it sees when the
//! span starts, and the trace span's fields cost a hold about a tenth of its instructions at
//! `info` with production's JSON logs (BENCHMARKS.md, session 42).

use crate::observability::tracecontext::continue_trace;
use axum::extract::Request;
use tracing::Span;

pub(super) struct RequestSpans {
    pub log: Span,
    pub trace: Span,
}

/// The spans of `request`. Entered both, the trace's innermost, a span the request starts is
/// the trace span's child for the exporter and the log span's for the log (each layer skips
/// the span it does not see), and the current span is the trace's: the command's `traceparent`
/// is taken from it. The trace span's name is "METHOD route" (the method alone for a path of no
/// route), fixed when it starts, so `route` comes from the authorization table, before routing;
/// a caller's W3C `traceparent` makes it part of the caller's trace.
pub(super) fn request_spans(
    request: &Request,
    route: Option<&'static str>,
    request_id: &str,
    correlation_id: &str,
) -> RequestSpans {
    let log = tracing::info_span!(
        target: "ticketing::http",
        "request",
        http.request.method = %request.method(),
        http.route = route,
        request_id = %request_id,
        correlation_id = %correlation_id,
    );
    // Its fields, the name among them, are built only when a layer takes the span.
    let trace = tracing::info_span!(
        target: "ticketing::http",
        parent: &log,
        "http_request",
        otel.name = match route {
            Some(route) => format!("{} {route}", request.method()),
            None => request.method().to_string(),
        },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        correlation_id = %correlation_id,
        request_id = %request_id,
    );
    continue_trace(
        &trace,
        request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    RequestSpans { log, trace }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::telemetry::recorded::{both_sides, Seen};

    fn pair(name: &str, parent: Option<&str>) -> Seen {
        (name.to_owned(), parent.map(str::to_owned))
    }

    /// The log sees the log span and, under it, what the request starts; the exporter sees the
    /// trace span as a root (or the caller's child) and, under it, the same spans.
    #[test]
    fn what_a_request_starts_hangs_under_the_log_span_in_the_log_and_the_trace_span_in_traces() {
        let (logs, traces, subscriber) = both_sides("info");
        tracing::subscriber::with_default(subscriber, || {
            let request = Request::builder()
                .method("POST")
                .uri("/api/payments")
                .body(axum::body::Body::empty())
                .unwrap();
            let spans = request_spans(&request, Some("/api/payments"), "r-1", "c-1");
            let _log = spans.log.enter();
            let _trace = spans.trace.enter();
            let _started = tracing::info_span!("authenticate").entered();
        });
        assert_eq!(
            logs.seen(),
            [pair("request", None), pair("authenticate", Some("request"))]
        );
        assert_eq!(
            traces.seen(),
            [
                pair("http_request", None),
                pair("authenticate", Some("http_request"))
            ]
        );
    }
}
