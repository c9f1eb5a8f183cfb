//! `Guarded`: a `PaymentGateway` called through a circuit breaker, each call bounded by a
//! time-out (`PAYMENT_TIMEOUT_MS`; no answer in time is `NoAnswer`). After the processor
//! failed repeatedly, charges, refunds and listings are refused at once with
//! `GatewayError::Open` (nothing is sent, so nothing is charged; 503 + `Retry-After` at the
//! edge) until a probe after the cool-down finds it back. Only `Unavailable` and `NoAnswer`
//! count as failures: a declined card or a refused refund is an answer. A charge abandoned
//! at its time-out may still have been captured by the processor: reconciliation records or
//! refunds it (`app::reconcile`). Each call that reaches the processor is timed, time-outs
//! included (`gateway_call_duration_seconds`): whether a slow payment is the processor's.

use super::{Capture, ChargeFor, ChargeOutcome, GatewayError, PaymentGateway};
use crate::breaker::Breaker;
use crate::domain::{Money, PaymentId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::HistogramVec;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Guarded {
    inner: Arc<dyn PaymentGateway>,
    breaker: Arc<Breaker>,
    timeout: Duration,
    /// Seconds per call, by operation.
    duration: HistogramVec,
}

impl Guarded {
    pub fn new(
        inner: Arc<dyn PaymentGateway>,
        breaker: Arc<Breaker>,
        timeout: Duration,
        duration: HistogramVec,
    ) -> Self {
        Guarded {
            inner,
            breaker,
            timeout,
            duration,
        }
    }

    async fn bounded<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let timeout = self.timeout;
        let duration = self.duration.with_label_values(&[operation]);
        let call = async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(GatewayError::NoAnswer(format!(
                        "no answer within {} ms",
                        timeout.as_millis()
                    )))
                });
            duration.observe(started.elapsed().as_secs_f64());
            answer
        };
        self.breaker.call(call, failed).await?
    }
}

fn failed(e: &GatewayError) -> Option<String> {
    match e {
        GatewayError::Unavailable(reason) | GatewayError::NoAnswer(reason) => Some(reason.clone()),
        _ => None,
    }
}

#[async_trait]
impl PaymentGateway for Guarded {
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
        paid_for: ChargeFor,
    ) -> Result<ChargeOutcome, GatewayError> {
        self.bounded(
            "charge",
            self.inner.charge(payment_id, amount, token, paid_for),
        )
        .await
    }

    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError> {
        self.bounded("refund", self.inner.refund(payment_id)).await
    }

    async fn captures_since(&self, since: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError> {
        self.bounded("captures_since", self.inner.captures_since(since))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::clock::SystemClock;
    use crate::domain::{Currency, EventId, ReservationId};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A processor that never answers.
    #[derive(Default)]
    struct Hung {
        calls: AtomicU64,
    }

    #[async_trait]
    impl PaymentGateway for Hung {
        async fn charge(
            &self,
            _: PaymentId,
            _: Money,
            _: &str,
            _: ChargeFor,
        ) -> Result<ChargeOutcome, GatewayError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
        async fn refund(&self, _: PaymentId) -> Result<(), GatewayError> {
            std::future::pending().await
        }
        async fn captures_since(&self, _: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError> {
            std::future::pending().await
        }
    }

    /// A hung processor costs each call its time-out, then the breaker opens and calls are
    /// refused without reaching it: the time-outs are timed, the refusals not.
    #[tokio::test]
    async fn a_hung_gateway_times_out_and_opens_the_breaker() {
        let hung = Arc::new(Hung::default());
        let config = BreakerConfig {
            consecutive: 2,
            window: 0,
            ..BreakerConfig::default()
        };
        let breaker = Breaker::new("payment_gateway", config, Arc::new(SystemClock));
        let duration = HistogramVec::new(
            prometheus::HistogramOpts::new("gateway_call_duration_seconds", "test"),
            &["operation"],
        )
        .unwrap();
        let gateway = Guarded::new(
            Arc::clone(&hung) as Arc<dyn PaymentGateway>,
            Arc::clone(&breaker),
            Duration::from_millis(50),
            duration.clone(),
        );
        let charge = || {
            gateway.charge(
                PaymentId(uuid::Uuid::new_v4()),
                Money::new(100, Currency::parse("USD").unwrap()),
                "tok_visa",
                ChargeFor {
                    reservation_id: ReservationId(uuid::Uuid::new_v4()),
                    event_id: EventId(uuid::Uuid::new_v4()),
                },
            )
        };
        for _ in 0..2 {
            match charge().await {
                Err(GatewayError::NoAnswer(reason)) => {
                    assert_eq!(reason, "no answer within 50 ms")
                }
                other => panic!("expected a time-out, got {other:?}"),
            }
        }
        assert_eq!(breaker.snapshot().state, BreakerState::Open);
        assert!(matches!(charge().await, Err(GatewayError::Open(_))));
        assert_eq!(hung.calls.load(Ordering::SeqCst), 2);
        let charges = duration.with_label_values(&["charge"]);
        assert_eq!(
            charges.get_sample_count(),
            2,
            "the refused call is not timed"
        );
        assert!(
            charges.get_sample_sum() >= 0.1,
            "each time-out took its 50 ms"
        );
    }
}
