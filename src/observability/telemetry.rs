//! Tracing set-up: human-readable logs in development, JSON in production, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span exported over OTLP/HTTP (protobuf) in
//! batches. `Telemetry::shutdown` flushes what is still buffered when the process stops.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
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
pub fn init(json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if json {
        fmt::layer().json().boxed()
    } else {
        fmt::layer().with_target(false).boxed()
    };
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ticketing")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry { provider })
}

/// A batch exporter to `<endpoint>/v1/traces` (the OTLP/HTTP path; a collector or Jaeger
/// listens on port 4318).
fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .context("configuring the OTLP trace exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("ticketing").build())
        .build())
}
