//! `Guarded`: a `PaymentGateway` called through a circuit breaker. After the processor failed
//! repeatedly, charges, refunds and listings are refused at once with `GatewayError::Open`
//! (nothing is sent, so nothing is charged; 503 + `Retry-After` at the edge) until a probe
//! after the cool-down finds it back. Only `Unavailable` counts as a failure: a declined card
//! or a refused refund is an answer.

use super::{Capture, ChargeFor, ChargeOutcome, GatewayError, PaymentGateway};
use crate::breaker::Breaker;
use crate::domain::{Money, PaymentId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct Guarded {
    inner: Arc<dyn PaymentGateway>,
    breaker: Arc<Breaker>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn PaymentGateway>, breaker: Arc<Breaker>) -> Self {
        Guarded { inner, breaker }
    }
}

fn failed(e: &GatewayError) -> Option<String> {
    match e {
        GatewayError::Unavailable(reason) => Some(reason.clone()),
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
        let charge = self.inner.charge(payment_id, amount, token, paid_for);
        self.breaker.call(charge, failed).await?
    }

    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError> {
        self.breaker
            .call(self.inner.refund(payment_id), failed)
            .await?
    }

    async fn captures_since(&self, since: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError> {
        self.breaker
            .call(self.inner.captures_since(since), failed)
            .await?
    }
}
