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

/// Counts one of something running in a gauge while it lives: the gauge goes up when it is
/// made and down when it is dropped, however its owner ends (answered, cancelled, panicked).
pub struct Running(prometheus::IntGauge);

impl Running {
    pub fn enter(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}
