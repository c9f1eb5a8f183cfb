//! Observability: the Prometheus metrics registry (the waiting room's in `queue_metrics`,
//! circuit breakers and bulkheads in `resilience`), the tracing subscriber set-up (logs and
//! OTLP export), and W3C trace context carried across tasks and the bus.

mod exposition;
pub mod metrics;
pub mod queue_metrics;
pub mod resilience;
pub mod telemetry;
pub mod tracecontext;

pub use metrics::Metrics;
