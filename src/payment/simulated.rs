//! A simulated card processor with Stripe-style test tokens: `tok_visa`, `tok_mastercard` and
//! `tok_amex` succeed; `tok_chargeDeclined` and `tok_chargeDeclinedInsufficientFunds` are
//! declined; any other token is declined as unknown. Latency and a transient failure rate are
//! configurable; results are remembered per payment id (idempotency).

use super::{ChargeOutcome, GatewayError, PaymentGateway};
use crate::domain::{Money, PaymentId};
use async_trait::async_trait;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub amount: Money,
    pub outcome: ChargeOutcome,
    pub refunded: bool,
}

pub struct SimulatedGateway {
    latency: Duration,
    /// The share of calls that time out, as `f64` bits (changed at run time by fault drills).
    failure_rate: AtomicU64,
    ledger: Mutex<HashMap<PaymentId, Charge>>,
}

impl SimulatedGateway {
    pub fn new(latency: Duration, failure_rate: f64) -> Self {
        Self {
            latency,
            failure_rate: AtomicU64::new(failure_rate.clamp(0.0, 1.0).to_bits()),
            ledger: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the share of calls that fail as unavailable (0 to 1), e.g. to take the
    /// processor down and bring it back in a fault drill or a test.
    pub fn set_failure_rate(&self, rate: f64) {
        self.failure_rate
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::SeqCst);
    }

    fn ledger(&self) -> MutexGuard<'_, HashMap<PaymentId, Charge>> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the processor knows of one payment (for tests and reconciliation).
    pub fn charge_of(&self, payment_id: PaymentId) -> Option<Charge> {
        self.ledger().get(&payment_id).cloned()
    }

    /// Net money kept: captured minus refunded, in minor units.
    pub fn net_captured_cents(&self) -> i64 {
        self.ledger()
            .values()
            .filter(|c| matches!(c.outcome, ChargeOutcome::Captured { .. }) && !c.refunded)
            .map(|c| c.amount.amount_cents)
            .sum()
    }

    async fn network(&self) -> Result<(), GatewayError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let failure_rate = f64::from_bits(self.failure_rate.load(Ordering::SeqCst));
        if failure_rate > 0.0 && rand::thread_rng().gen_bool(failure_rate) {
            return Err(GatewayError::Unavailable(
                "simulated processor timeout".into(),
            ));
        }
        Ok(())
    }
}

fn outcome_for(token: &str, payment_id: PaymentId) -> ChargeOutcome {
    match token {
        "tok_visa" | "tok_mastercard" | "tok_amex" => ChargeOutcome::Captured {
            charge_id: format!("ch_{}", payment_id.0.simple()),
        },
        "tok_chargeDeclined" => ChargeOutcome::Declined {
            reason: "card_declined".into(),
        },
        "tok_chargeDeclinedInsufficientFunds" => ChargeOutcome::Declined {
            reason: "insufficient_funds".into(),
        },
        _ => ChargeOutcome::Declined {
            reason: "unknown_test_token".into(),
        },
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> Result<ChargeOutcome, GatewayError> {
        if let Some(known) = self.charge_of(payment_id) {
            return Ok(known.outcome);
        }
        self.network().await?;
        let charge = Charge {
            amount,
            outcome: outcome_for(token, payment_id),
            refunded: false,
        };
        // A concurrent retry of the same payment id may have won: keep the first result.
        Ok(self
            .ledger()
            .entry(payment_id)
            .or_insert(charge)
            .outcome
            .clone())
    }

    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError> {
        self.network().await?;
        match self.ledger().get_mut(&payment_id) {
            Some(c) if matches!(c.outcome, ChargeOutcome::Captured { .. }) => {
                c.refunded = true;
                Ok(())
            }
            Some(_) => Err(GatewayError::RefundRefused(
                "the charge was declined".into(),
            )),
            None => Err(GatewayError::RefundRefused("no such charge".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;

    fn cents(n: i64) -> Money {
        Money::new(n, Currency::USD)
    }

    /// The test tokens behave as documented, and a retried charge is answered from the ledger.
    #[tokio::test]
    async fn test_tokens_and_retries_behave_like_a_card_processor() {
        let gateway = SimulatedGateway::new(Duration::ZERO, 0.0);
        let (ok, declined) = (PaymentId::random(), PaymentId::random());
        assert!(matches!(
            gateway.charge(ok, cents(500), "tok_visa").await,
            Ok(ChargeOutcome::Captured { .. })
        ));
        assert!(matches!(
            gateway.charge(ok, cents(500), "tok_chargeDeclined").await,
            Ok(ChargeOutcome::Captured { .. })
        ));
        assert!(matches!(
            gateway
                .charge(declined, cents(500), "tok_chargeDeclined")
                .await,
            Ok(ChargeOutcome::Declined { .. })
        ));
        assert_eq!(gateway.net_captured_cents(), 500);
        gateway.refund(ok).await.unwrap();
        gateway.refund(ok).await.unwrap();
        assert_eq!(gateway.net_captured_cents(), 0);
        assert!(gateway.refund(declined).await.is_err());
    }
}
