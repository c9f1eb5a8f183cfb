//! The resilience side of the metric catalogue: circuit breakers per dependency
//! (`crate::breaker`) and refusals of the bounded sale mailboxes.

use super::Metrics;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every dependency with a breaker: the `dependency` label's values.
pub const DEPENDENCIES: [&str; 4] = ["event_store", "payment_gateway", "cache", "bus"];
/// The `to` label of `circuit_breaker_transitions_total`.
const STATES: [&str; 3] = ["closed", "half_open", "open"];

pub struct Resilience {
    /// 0 closed, 1 half-open, 2 open, per dependency.
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
}

impl Resilience {
    pub(super) fn register(registry: &Registry) -> Self {
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "circuit_breaker_state",
                "Circuit breaker per dependency: 0 closed, 1 half-open (one probe), 2 open (calls refused with 503).",
            ),
            &["dependency"],
        )
        .expect("metric definition");
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "circuit_breaker_transitions_total",
                "Circuit breaker state changes per dependency and state entered.",
            ),
            &["dependency", "to"],
        )
        .expect("metric definition");
        registry
            .register(Box::new(breaker_state.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(breaker_transitions.clone()))
            .expect("metric registered once");
        Resilience {
            breaker_state,
            breaker_transitions,
        }
    }
}

impl Metrics {
    /// A breaker entered `to` (`closed`, `half_open`, `open`; gauge value `value`).
    pub fn breaker_changed(&self, dependency: &str, to: &str, value: i64) {
        let r = &self.resilience;
        r.breaker_state.with_label_values(&[dependency]).set(value);
        r.breaker_transitions
            .with_label_values(&[dependency, to])
            .inc();
    }

    /// Every breaker's series at 0 (closed, no transition yet).
    pub fn initialise_resilience(&self) {
        for dependency in DEPENDENCIES {
            self.resilience
                .breaker_state
                .with_label_values(&[dependency])
                .set(0);
            for to in STATES {
                self.resilience
                    .breaker_transitions
                    .with_label_values(&[dependency, to]);
            }
        }
    }
}
