//! A simulated card processor with Stripe-style test tokens: `tok_visa`, `tok_mastercard` and
//! `tok_amex` succeed; `tok_chargeDeclined` and `tok_chargeDeclinedInsufficientFunds` are
//! declined; any other token is declined as unknown. Latency and a transient failure rate are
//! configurable, also at run time (`drill`); results are remembered per payment id
//! (idempotency) in its `ledger`, with what each charge was for and when it was made (by the
//! injected clock). On PostgreSQL the charges that arrive together share one insert that keeps
//! the first charge of each payment id (`ledger/inserts.rs`); a retry reads the first one back.

pub mod drill;
pub mod ledger;

use super::{Capture, ChargeFor, ChargeOutcome, GatewayError, PaymentGateway};
use crate::clock::Clock;
use crate::domain::{Money, PaymentId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use ledger::{Charge, Ledger};
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct SimulatedGateway {
    /// Added to every call, in milliseconds (changed at run time by fault drills).
    latency_ms: AtomicU64,
    /// The share of calls that time out, as `f64` bits (changed at run time by fault drills).
    failure_rate: AtomicU64,
    /// Requests that reached the processor (charges, refunds, listings).
    calls: AtomicU64,
    clock: Arc<dyn Clock>,
    ledger: Ledger,
}

impl SimulatedGateway {
    pub fn new(
        latency: Duration,
        failure_rate: f64,
        clock: Arc<dyn Clock>,
        ledger: Ledger,
    ) -> Self {
        Self {
            latency_ms: AtomicU64::new(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
            failure_rate: AtomicU64::new(failure_rate.clamp(0.0, 1.0).to_bits()),
            calls: AtomicU64::new(0),
            clock,
            ledger,
        }
    }

    /// Changes the share of calls that fail as unavailable (0 to 1), e.g. to take the
    /// processor down and bring it back in a fault drill or a test.
    pub fn set_failure_rate(&self, rate: f64) {
        self.failure_rate
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::SeqCst);
    }

    /// How many requests reached the processor so far (a breaker that refuses sends none).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Changes the latency of every call from now on (a slow processor in a fault drill).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// What the processor knows of one payment (for tests and diagnostics).
    pub async fn charge_of(&self, payment_id: PaymentId) -> Result<Option<Charge>, GatewayError> {
        self.ledger.get(payment_id).await
    }

    /// Net money kept: captured minus refunded, in minor units.
    pub async fn net_captured_cents(&self) -> Result<i64, GatewayError> {
        self.ledger.net_captured_cents().await
    }

    async fn network(&self) -> Result<(), GatewayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
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
        paid_for: ChargeFor,
    ) -> Result<ChargeOutcome, GatewayError> {
        // A retry travels like any request (latency, failures), as with a real processor; the
        // ledger then answers it with the first charge of its payment id. One statement when
        // the id is new, which is every payment but a retry.
        self.network().await?;
        let charge = Charge {
            amount,
            outcome: outcome_for(token, payment_id),
            refunded: false,
            paid_for,
            at: self.clock.now(),
        };
        Ok(self.ledger.insert_first(payment_id, charge).await?.outcome)
    }

    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError> {
        self.network().await?;
        self.ledger.refund(payment_id).await
    }

    async fn captures_since(&self, since: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError> {
        self.network().await?;
        self.ledger.captures_since(since).await
    }
}

#[cfg(test)]
mod contract;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::db::{self, testing::fresh_database};

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(
            DateTime::parse_from_rfc3339("2030-01-01T09:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        ))
    }

    /// The in-memory ledger keeps the processor's contract.
    #[tokio::test]
    async fn the_in_memory_processor_passes_the_contract() {
        let clock = clock();
        let gateway = SimulatedGateway::new(Duration::ZERO, 0.0, clock.clone(), Ledger::memory());
        contract::run(&gateway, &clock).await;
    }

    /// The PostgreSQL ledger keeps the same contract, and a second gateway on the same table
    /// (another process) knows the first one's charges.
    #[tokio::test]
    async fn the_postgres_processor_passes_the_contract_and_outlives_its_process() {
        let url = fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::events_migrator().run(&pool).await.unwrap();
        let clock = clock();
        let first = SimulatedGateway::new(
            Duration::ZERO,
            0.0,
            clock.clone(),
            Ledger::postgres(
                pool.clone(),
                crate::db::PoolSettings::default().answer_limit(),
            ),
        );
        contract::run(&first, &clock).await;
        let second = SimulatedGateway::new(
            Duration::ZERO,
            0.0,
            clock.clone(),
            Ledger::postgres(pool, crate::db::PoolSettings::default().answer_limit()),
        );
        assert_eq!(
            second.net_captured_cents().await.unwrap(),
            first.net_captured_cents().await.unwrap()
        );
        let since = clock.now() - chrono::Duration::days(1);
        assert_eq!(
            second.captures_since(since).await.unwrap(),
            first.captures_since(since).await.unwrap()
        );
        db::testing::drop_database(&url).await;
    }
}
