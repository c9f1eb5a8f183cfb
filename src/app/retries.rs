//! The retry budgets of request-path code, one per dependency it retries (`backoff::RetryBudget`):
//! the event store (recording a capture through writer contention) and the read models
//! (waiting for them to show a write made elsewhere). Counts each refused retry in
//! `ticketing_retry_budget_exhausted_total{dependency}`.

use crate::backoff::RetryBudget;
use crate::observability::Metrics;

/// A dependency request-path code retries; its name is the metric's `dependency` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    EventStore,
    ReadModels,
}

impl Dependency {
    pub fn label(self) -> &'static str {
        match self {
            Dependency::EventStore => "event_store",
            Dependency::ReadModels => "read_models",
        }
    }
}

/// One budget per dependency, shared by every request of the instance.
#[derive(Debug, Default)]
pub struct Retries {
    event_store: RetryBudget,
    read_models: RetryBudget,
}

impl Retries {
    fn budget(&self, dependency: Dependency) -> &RetryBudget {
        match dependency {
            Dependency::EventStore => &self.event_store,
            Dependency::ReadModels => &self.read_models,
        }
    }

    /// A first attempt at `dependency`: it earns a share of a retry.
    pub fn first_attempt(&self, dependency: Dependency) {
        self.budget(dependency).deposit();
    }

    /// Whether a retry of `dependency` may go ahead; a refusal is counted, and the caller
    /// answers with the error of its last attempt.
    pub fn may_retry(&self, dependency: Dependency, metrics: &Metrics) -> bool {
        let allowed = self.budget(dependency).try_withdraw();
        if !allowed {
            tracing::warn!(
                dependency = dependency.label(),
                "retry budget exhausted; failing fast"
            );
            metrics.retry_budget_exhausted(dependency.label());
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries past a dependency's budget are refused and counted under its label only; the
    /// other dependency's budget is untouched.
    #[test]
    fn retries_past_the_budget_are_refused_and_counted_per_dependency() {
        let metrics = Metrics::new();
        metrics.initialise_resilience();
        let retries = Retries::default();
        let allowed = (0..150)
            .filter(|_| retries.may_retry(Dependency::EventStore, &metrics))
            .count();
        assert!(allowed < 150, "the budget ran out");
        assert!(retries.may_retry(Dependency::ReadModels, &metrics));
        let exhausted = |label: &str| {
            metrics
                .resilience
                .retry_budget_exhausted
                .with_label_values(&[label])
                .get()
        };
        assert_eq!(exhausted("event_store"), (150 - allowed) as u64);
        assert_eq!(exhausted("read_models"), 0);
    }
}
