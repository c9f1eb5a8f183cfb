//! Observability: the Prometheus metrics registry and the tracing subscriber set-up.

pub mod metrics;
pub mod telemetry;

pub use metrics::Metrics;
