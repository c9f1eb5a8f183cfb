//! Tracing set-up: human-readable logs in development, JSON in production, filtered by
//! `RUST_LOG`; and, when an OTLP endpoint is configured, spans exported over OTLP/HTTP
//! (protobuf) in batches, filtered by their own filter (`OTEL_TRACES_FILTER`), so the log level
//! does not decide what is traced (and the spans kept for traces alone never reach the log:
//! `is_trace_only`; the log's own span is never exported: `is_log_only`). The service name is
//! `ticketing` unless `OTEL_SERVICE_NAME` says otherwise (read by the SDK, like
//! `OTEL_RESOURCE_ATTRIBUTES`). `Telemetry::shutdown` flushes what is still buffered when the
//! process stops.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// The installed exporter, to flush at exit.
#[must_use = "call shutdown() at exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter. Call it outside the async
    /// runtime: the exporter's HTTP client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("cannot flush the trace exporter: {e}");
            }
        }
    }
}

/// Installs the global subscriber; a second call (tests) keeps the first one. Call it before
/// the async runtime starts (the OTLP client must not be created inside it).
pub fn init(
    json: bool,
    otlp_endpoint: Option<&str>,
    traces_filter: &str,
) -> anyhow::Result<Telemetry> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let traces_filter = EnvFilter::try_new(traces_filter)
        .with_context(|| format!("OTEL_TRACES_FILTER {traces_filter:?} is not a filter"))?;
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let _ = tracing_subscriber::registry()
        .with(layers(json, log_filter, provider.as_ref(), traces_filter))
        .try_init();
    Ok(Telemetry { provider })
}

/// The log layer and, with an exporter, the trace layer, each behind its own filter. A list
/// rather than an optional layer: an absent `Option` layer above a log filter that gave no
/// level hint (`without_trace_only` before it had one) made the registry build, enter and
/// close every span no layer records, 19 000 instructions a hold at `warn` (BENCHMARKS.md,
/// session 41). What `init` installs; public so that a test can install it with its own
/// exporter (`tests/trace.rs`).
pub fn layers(
    json: bool,
    log_filter: EnvFilter,
    provider: Option<&SdkTracerProvider>,
    traces_filter: EnvFilter,
) -> Vec<Box<dyn Layer<Registry> + Send + Sync>> {
    let log_filter = without_trace_only(log_filter);
    let logs = if json {
        fmt::layer().json().with_filter(log_filter).boxed()
    } else {
        // Colour codes only for a person at a terminal: a log piped to a file, journald or a
        // collector stays plain text that `grep key=value` finds.
        fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(log_filter)
            .boxed()
    };
    let spans = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ticketing"))
            .with_filter(without_log_only(traces_filter))
            .boxed()
    });
    std::iter::once(logs).chain(spans).collect()
}

/// The spans that exist for traces alone: one per request, per delivery to each consumer
/// group, per published message, per group commit and per decided command, each with the
/// semantic conventions' attributes. The log layer formats every field of every span it sees
/// when the span starts, so at the default `info` these cost a hold an eighth of its
/// instructions (BENCHMARKS.md, session 40), and the request's a tenth more with production's
/// JSON logs (session 42), to give log lines context they have from the request's `request`
/// span and the writer's `process` span (`sale_id`). They are left out of the log only.
pub(crate) fn without_trace_only<S>(filter: EnvFilter) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    without(filter, is_trace_only)
}

fn is_trace_only(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span()
        && meta.target().starts_with("ticketing::")
        && matches!(
            meta.name(),
            "consume" | "publish" | "append" | "decide" | "http_request"
        )
}

/// The span that exists for the log alone: a request's ids, method and route, for the lines
/// written while it runs (the request's trace span, `http_request`, carries them too).
pub(crate) fn without_log_only<S>(filter: EnvFilter) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    without(filter, is_log_only)
}

fn is_log_only(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == "ticketing::http" && meta.name() == "request"
}

/// `filter`, except the spans `excluded` names. The name filter restricts no level: its hint
/// says so, or the joined filter would have none (`And` keeps the lower hint, and no hint is
/// lower than any), and tracing would then ask every disabled callsite instead of comparing
/// its level with the filter's.
fn without<S>(
    filter: EnvFilter,
    excluded: fn(&tracing::Metadata<'_>) -> bool,
) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    filter.and(filter_fn(move |meta| !excluded(meta)).with_max_level_hint(LevelFilter::TRACE))
}

/// A batch exporter to `endpoint`, the full OTLP/HTTP traces URL (a collector or Jaeger
/// listens on `http://host:4318/v1/traces`).
fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .context("configuring the OTLP trace exporter")?;
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name("ticketing").build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// A layer for tests that records each span it is told of, with its parent as that layer sees
/// it (a layer behind a filter skips the spans its filter keeps out).
#[cfg(test)]
pub(crate) mod recorded {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    /// A span's name and the name of its parent.
    pub(crate) type Seen = (String, Option<String>);

    #[derive(Clone, Default)]
    pub(crate) struct Spans(Arc<Mutex<Vec<Seen>>>);

    impl Spans {
        pub(crate) fn seen(&self) -> Vec<Seen> {
            self.0.lock().unwrap().clone()
        }

        pub(crate) fn names(&self) -> Vec<String> {
            self.seen().into_iter().map(|(name, _)| name).collect()
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::Id,
            cx: Context<'_, S>,
        ) {
            let parent = cx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.name().to_owned());
            let name = attrs.metadata().name().to_owned();
            self.0.lock().unwrap().push((name, parent));
        }
    }

    /// The log's side and the exporter's side of the service's filters, both at `level`, each
    /// recording what it sees: the log's spans, the exporter's, and the subscriber to install.
    pub(crate) fn both_sides(
        level: &str,
    ) -> (Spans, Spans, impl tracing::Subscriber + Send + Sync) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::EnvFilter;
        let (logs, traces) = (Spans::default(), Spans::default());
        let log_filter = super::without_trace_only(EnvFilter::new(level));
        let trace_filter = super::without_log_only(EnvFilter::new(level));
        let subscriber = tracing_subscriber::registry()
            .with(logs.clone().with_filter(log_filter))
            .with(traces.clone().with_filter(trace_filter));
        (logs, traces, subscriber)
    }
}

#[cfg(test)]
mod tests {
    use super::recorded::both_sides;
    use super::*;

    /// The log never sees the spans kept for traces, nor traces the log's own span, even at
    /// `trace`; each sees the others, and a name outside the service is not ours to hide.
    #[test]
    fn neither_side_sees_the_spans_kept_for_the_other() {
        let (logs, traces, subscriber) = both_sides("trace");
        tracing::subscriber::with_default(subscriber, || {
            let _spans = [
                tracing::info_span!(target: "ticketing::bus::consumer", "consume"),
                tracing::info_span!(target: "ticketing::bus::relay", "publish"),
                tracing::info_span!(target: "ticketing::runtime::writer::telemetry", "append"),
                tracing::info_span!(target: "ticketing::runtime::writer", "decide"),
                tracing::info_span!(target: "ticketing::runtime::writer", "process"),
                tracing::info_span!(target: "ticketing::http", "http_request"),
                tracing::info_span!(target: "ticketing::http", "request"),
                tracing::info_span!(target: "sqlx::query", "append"),
                tracing::info_span!(target: "reqwest", "request"),
            ];
        });
        assert_eq!(logs.names(), ["process", "request", "append", "request"]);
        assert_eq!(
            traces.names(),
            [
                "consume",
                "publish",
                "append",
                "decide",
                "process",
                "http_request",
                "append",
                "request"
            ]
        );
    }

    /// Without an exporter, a callsite below the log level is of no interest: tracing never
    /// builds its spans. Asked of the subscriber itself, since the interest tracing caches
    /// for a callsite joins every subscriber alive in the process (other tests' too).
    #[test]
    fn no_span_is_built_that_no_layer_records() {
        let quiet = tracing_subscriber::registry().with(layers(
            false,
            EnvFilter::new("warn"),
            None,
            EnvFilter::new("trace"),
        ));
        // Each callsite's static metadata, from a subscriber that takes every span.
        let (info, warn) =
            tracing::subscriber::with_default(tracing_subscriber::registry(), || {
                (
                    tracing::info_span!(target: "ticketing::http", "request").metadata(),
                    tracing::warn_span!(target: "ticketing::http", "slow").metadata(),
                )
            });
        let interest = |meta: Option<&'static tracing::Metadata<'static>>| {
            tracing::Subscriber::register_callsite(&quiet, meta.expect("a span's metadata"))
        };
        assert!(interest(info).is_never());
        assert!(!interest(warn).is_never());
        // And the level is known up front: a disabled `debug!` is skipped by its level alone.
        assert_eq!(
            tracing::Subscriber::max_level_hint(&quiet),
            Some(LevelFilter::WARN)
        );
    }
}
