//! Tracing set-up: human-readable logs in development, JSON in production, filtered by
//! `RUST_LOG`; and, when an OTLP endpoint is configured, spans exported over OTLP/HTTP
//! (protobuf) in batches, filtered by their own filter (`OTEL_TRACES_FILTER`), so the log level
//! does not decide what is traced. The service name is `ticketing` unless `OTEL_SERVICE_NAME`
//! says otherwise (read by the SDK, like `OTEL_RESOURCE_ATTRIBUTES`). `Telemetry::shutdown`
//! flushes what is still buffered when the process stops.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

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
    let traces_filter = EnvFilter::try_new(traces_filter)
        .with_context(|| format!("OTEL_TRACES_FILTER {traces_filter:?} is not a filter"))?;
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ticketing"))
            .with_filter(traces_filter)
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry { provider })
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
