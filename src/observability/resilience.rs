//! The resilience side of the metric catalogue: circuit breakers per dependency
//! (`crate::breaker`), the bounded sale mailboxes (`runtime::sales`) and the retry budgets
//! of request-path code (`app::retries`).

use super::Metrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every dependency with a breaker: the `dependency` label's values.
pub const DEPENDENCIES: [&str; 4] = ["event_store", "payment_gateway", "cache", "bus"];
/// Every dependency with a retry budget (`app::retries::Dependency`'s labels).
pub const RETRY_BUDGETS: [&str; 2] = ["event_store", "read_models"];
/// The `to` label of `circuit_breaker_transitions_total`.
const STATES: [&str; 3] = ["closed", "half_open", "open"];

pub struct Resilience {
    /// 0 closed, 1 half-open, 2 open, per dependency.
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    /// Commands refused because their sale's mailbox was full.
    pub mailbox_refusals: IntCounter,
    /// The most commands seen waiting in one sale's mailbox since start-up.
    pub mailbox_peak: IntGauge,
    /// Retries refused (the caller failed fast) because their dependency's budget was empty.
    pub retry_budget_exhausted: IntCounterVec,
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
        let mailbox_refusals = IntCounter::new(
            "sale_mailbox_refusals_total",
            "Commands refused with 503 because their sale's writer had SALE_MAILBOX_CAPACITY commands waiting.",
        )
        .expect("metric definition");
        let mailbox_peak = IntGauge::new(
            "sale_mailbox_peak_depth",
            "The most commands seen waiting in one sale's mailbox since start-up (compare with SALE_MAILBOX_CAPACITY).",
        )
        .expect("metric definition");
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "retry_budget_exhausted_total",
                "Retries refused because the dependency's retry budget was empty (the request failed fast instead).",
            ),
            &["dependency"],
        )
        .expect("metric definition");
        let collectors: [Box<dyn prometheus::core::Collector>; 5] = [
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(mailbox_refusals.clone()),
            Box::new(mailbox_peak.clone()),
            Box::new(retry_budget_exhausted.clone()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Resilience {
            breaker_state,
            breaker_transitions,
            mailbox_refusals,
            mailbox_peak,
            retry_budget_exhausted,
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

    /// A command was refused: its sale's mailbox was full.
    pub fn mailbox_refused(&self) {
        self.resilience.mailbox_refusals.inc();
    }

    /// A command joined a mailbox with `waiting` commands in it (itself included).
    pub fn mailbox_depth_seen(&self, waiting: usize) {
        let waiting = i64::try_from(waiting).unwrap_or(i64::MAX);
        // Racy by design: a peak read by operators, not a count.
        if waiting > self.resilience.mailbox_peak.get() {
            self.resilience.mailbox_peak.set(waiting);
        }
    }

    /// A retry of `dependency` was refused: its budget was empty.
    pub fn retry_budget_exhausted(&self, dependency: &str) {
        self.resilience
            .retry_budget_exhausted
            .with_label_values(&[dependency])
            .inc();
    }

    /// Every breaker's and retry budget's series at 0 (closed, no transition, no refusal).
    pub fn initialise_resilience(&self) {
        for dependency in RETRY_BUDGETS {
            self.resilience
                .retry_budget_exhausted
                .with_label_values(&[dependency]);
        }
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
