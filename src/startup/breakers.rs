//! The circuit breakers of start-up: one per dependency (`crate::breaker`), each telling the
//! metrics and the log of its state changes; the event store and the payment gateway are
//! wrapped in their guarded decorators here.

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Breakers};
use crate::clock::SystemClock;
use crate::eventstore::{guarded::Guarded as GuardedStore, EventStore};
use crate::observability::Metrics;
use crate::payment::{guarded::Guarded as GuardedGateway, PaymentGateway};
use std::sync::Arc;

/// The outbox relay retries by itself; its breaker only reports that publishing fails, after
/// this many failed turns in a row.
const BUS: BreakerConfig = BreakerConfig {
    consecutive: 3,
    ratio_percent: 100,
    window: 0,
    cool_down: std::time::Duration::from_secs(5),
};

/// Makes `breaker` report to `metrics` and the log.
pub(super) fn observed(breaker: &Arc<Breaker>, metrics: &Arc<Metrics>) {
    let metrics = Arc::clone(metrics);
    breaker.observe(Box::new(move |name, state, reason| {
        metrics.breaker_changed(name, state.as_str(), state.gauge());
        match state {
            BreakerState::Open => {
                tracing::warn!(dependency = name, reason, "circuit breaker open")
            }
            BreakerState::HalfOpen => tracing::info!(dependency = name, "circuit breaker probing"),
            BreakerState::Closed => tracing::info!(dependency = name, "circuit breaker closed"),
        }
    }));
}

/// The guarded event store and gateway, and the bus breaker the relay reports to.
pub(super) struct Guards {
    pub store: Arc<dyn EventStore>,
    pub gateway: Arc<dyn PaymentGateway>,
    pub bus: Arc<Breaker>,
    pub all: Vec<Arc<Breaker>>,
}

pub(super) fn guard(
    store: Arc<dyn EventStore>,
    gateway: Arc<dyn PaymentGateway>,
    (config, gateway_timeout): (BreakerConfig, std::time::Duration),
    store_limit: std::time::Duration,
    metrics: &Arc<Metrics>,
) -> Guards {
    metrics.initialise_resilience();
    // Wall time, not the service's clock: tests move that one to expire holds, and a
    // cool-down is about the dependency, not about the business.
    let make = |name, config| {
        let breaker = Breaker::new(name, config, Arc::new(SystemClock));
        observed(&breaker, metrics);
        breaker
    };
    let (on_store, on_gateway, bus) = (
        make("event_store", config),
        make("payment_gateway", config),
        make("bus", BUS),
    );
    Guards {
        store: Arc::new(GuardedStore::new(store, Arc::clone(&on_store), store_limit)),
        gateway: Arc::new(GuardedGateway::new(
            gateway,
            Arc::clone(&on_gateway),
            gateway_timeout,
            metrics.gateway_duration.clone(),
        )),
        bus: Arc::clone(&bus),
        all: vec![on_store, on_gateway, bus],
    }
}

/// Every breaker, the cache's included.
pub(super) fn board(mut all: Vec<Arc<Breaker>>, cache: &Arc<Breaker>) -> Breakers {
    all.push(Arc::clone(cache));
    Breakers::new(all)
}
