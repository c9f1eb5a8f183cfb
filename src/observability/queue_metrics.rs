//! The waiting room's metrics (`app::queue`), registered in the one catalogue (`Metrics::queue`).
//! No label: every queue of the instance together (event ids are unbounded).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

pub struct QueueMetrics {
    /// Users waiting in every enabled queue (as the store counts them: the same on every
    /// instance; read it with `max`).
    pub waiting: IntGauge,
    /// Users admitted by this instance (sum over instances: every admission once).
    pub admitted: IntCounter,
    /// The configured admission rate of every enabled queue together, per minute.
    pub admit_per_minute: IntGauge,
    /// From joining to admission, observed by the instance that admitted.
    pub wait_seconds: Histogram,
}

impl QueueMetrics {
    /// Panics only on a programming error in the definitions, as `Metrics::new`.
    pub fn new(r: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let admitted = IntCounter::new(
            "queue_admitted_total",
            "Users admitted from a waiting room by this instance.",
        )
        .expect("metric definition");
        r.register(Box::new(admitted.clone()))
            .expect("metric registered once");
        let wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "queue_wait_seconds",
                "Time from joining a waiting room to admission.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            ]),
        )
        .expect("metric definition");
        r.register(Box::new(wait_seconds.clone()))
            .expect("metric registered once");
        QueueMetrics {
            waiting: gauge(
                "queue_waiting",
                "Users waiting in every enabled waiting room (the shared count: read it with max over instances).",
            ),
            admitted,
            admit_per_minute: gauge(
                "queue_admit_per_minute",
                "The configured admission rate of every enabled waiting room together, per minute.",
            ),
            wait_seconds,
        }
    }
}
