//! The payment gateway port, the built-in simulated card processor, and the process manager
//! that settles refunds at the gateway. Charges are idempotent per payment id, so a retried
//! request or a replayed refund never moves money twice.

pub mod refunds;
pub mod simulated;

use crate::domain::{Money, PaymentId};
use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { charge_id: String },
    Declined { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Transient: nothing was charged; the same request may be retried.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    #[error("refund refused: {0}")]
    RefundRefused(String),
}

#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `amount` to the card behind `token`; `payment_id` is the idempotency key.
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> Result<ChargeOutcome, GatewayError>;
    /// Refunds a captured charge in full; refunding twice is a no-op.
    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError>;
}
