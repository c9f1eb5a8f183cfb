//! The payment gateway port, the built-in simulated card processor, and the process manager
//! that settles refunds at the gateway. Charges are idempotent per payment id, so a retried
//! request or a replayed refund never moves money twice. The processor keeps what each
//! charge was for and lists recent captures, so a capture nobody recorded can be found
//! (`app::reconcile`). `guarded` calls any gateway through a circuit breaker.

pub mod guarded;
pub mod refunds;
pub mod simulated;

use crate::domain::{EventId, Money, PaymentId, ReservationId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

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
    /// No answer within the time-out: the processor may have charged all the same (the
    /// charge then has no event until reconciliation records or refunds it).
    #[error("payment gateway gave no answer: {0}")]
    NoAnswer(String),
    #[error("refund refused: {0}")]
    RefundRefused(String),
    /// The gateway's circuit breaker is open (it failed repeatedly): nothing was tried, so
    /// nothing was charged.
    #[error(transparent)]
    Open(#[from] crate::breaker::Refused),
}

/// What a charge pays for, kept by the processor beside it (a real processor's metadata), so
/// that a capture can be traced back to its sale after the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeFor {
    pub reservation_id: ReservationId,
    pub event_id: EventId,
}

/// A capture as the processor lists it ("list charges since", with their metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub payment_id: PaymentId,
    pub paid_for: ChargeFor,
    pub amount: Money,
    pub charge_id: String,
    pub captured_at: DateTime<Utc>,
    /// Already refunded at the processor.
    pub refunded: bool,
}

#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `amount` to the card behind `token` for `paid_for`; `payment_id` is the
    /// idempotency key.
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
        paid_for: ChargeFor,
    ) -> Result<ChargeOutcome, GatewayError>;
    /// Refunds a captured charge in full; refunding twice is a no-op.
    async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError>;
    /// Captures made at or after `since`, oldest first, refunded ones included.
    async fn captures_since(&self, since: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError>;
}
