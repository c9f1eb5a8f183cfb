//! The `Payment` aggregate (`payment-<id>`): one attempt to pay a reservation, captured or
//! declined, and a captured one possibly refunded. Gateway calls happen outside; this module
//! only records their outcome.

use super::events::DomainEvent;
use super::ids::{EventId, PaymentId, ReservationId, UserId};
use super::money::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the reason of a refund the sale decided itself begins (a capture that came too late for
/// its hold, given back in the commit that recorded it); the cause follows.
pub const AUTOMATIC_REFUND: &str = "automatic refund: ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Captured,
    Failed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Refunded => "refunded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment not found")]
    NotFound,
    #[error("a payment with this id already exists")]
    AlreadyExists,
    #[error("the payment is {}; only a captured payment can be refunded", status.as_str())]
    NotRefundable { status: PaymentStatus },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: PaymentId,
    pub reservation_id: ReservationId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub amount: Money,
    pub status: PaymentStatus,
    pub at: DateTime<Utc>,
}

impl Payment {
    pub fn apply(state: &mut BTreeMap<PaymentId, Payment>, event: &DomainEvent) {
        let record = |e_id, r_id, ev_id, u_id, amount, status, at| Payment {
            id: e_id,
            reservation_id: r_id,
            event_id: ev_id,
            user_id: u_id,
            amount,
            status,
            at,
        };
        match event {
            DomainEvent::PaymentCaptured(e) => {
                state.insert(
                    e.payment_id,
                    record(
                        e.payment_id,
                        e.reservation_id,
                        e.event_id,
                        e.user_id,
                        e.amount,
                        PaymentStatus::Captured,
                        e.at,
                    ),
                );
            }
            DomainEvent::PaymentDeclined(e) => {
                state.insert(
                    e.payment_id,
                    record(
                        e.payment_id,
                        e.reservation_id,
                        e.event_id,
                        e.user_id,
                        e.amount,
                        PaymentStatus::Failed,
                        e.at,
                    ),
                );
            }
            DomainEvent::PaymentRefunded(e) => {
                if let Some(p) = state.get_mut(&e.payment_id) {
                    p.status = PaymentStatus::Refunded;
                }
            }
            _ => {}
        }
    }
}
