//! The `Reservation` aggregate (`reservation-<id>`): a hold that ends exactly once, as
//! confirmed (then possibly refunded), cancelled or expired. Invariant 5 (holds always end)
//! rests on `expires_at` being recorded here, in durable state. It never counts seats (that
//! is `inventory`).

use super::events::DomainEvent;
use super::ids::{EventId, PaymentId, ReservationId, UserId};
use super::money::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The most seats one reservation may hold.
pub const MAX_QUANTITY: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Pending,
    Confirmed,
    Expired,
    Cancelled,
    Refunded,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Pending => "pending",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Expired => "expired",
            ReservationStatus::Cancelled => "cancelled",
            ReservationStatus::Refunded => "refunded",
        }
    }

    /// The status `as_str` names.
    pub fn parse(text: &str) -> Option<Self> {
        use ReservationStatus::*;
        [Pending, Confirmed, Expired, Cancelled, Refunded]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReservationError {
    #[error("reservation not found")]
    NotFound,
    #[error("a reservation with this id already exists")]
    AlreadyExists,
    #[error("quantity must be between 1 and {MAX_QUANTITY}")]
    InvalidQuantity,
    #[error("the reservation is {}, not pending", status.as_str())]
    NotPending { status: ReservationStatus },
    #[error("the reservation is {}: only a pending or confirmed one can be cancelled", status.as_str())]
    NotCancellable { status: ReservationStatus },
    #[error("the hold expired at {expires_at}")]
    HoldExpired { expires_at: DateTime<Utc> },
    #[error("the hold lasts until {expires_at}")]
    NotYetExpired { expires_at: DateTime<Utc> },
    #[error("the amount {paid} does not match the reservation total {due}")]
    AmountMismatch { paid: i64, due: i64 },
    #[error("the total price overflows")]
    TotalOverflow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub section: String,
    pub quantity: u32,
    pub total: Money,
    pub status: ReservationStatus,
    pub placed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub payment_id: Option<PaymentId>,
}

impl Reservation {
    /// A pending hold that may still be paid at `now`.
    pub fn ensure_payable(&self, now: DateTime<Utc>) -> Result<(), ReservationError> {
        ensure_payable(self.status, self.expires_at, now)
    }

    /// Folds an event of this aggregate into `state` (which holds every reservation of one event).
    pub fn apply(
        state: &mut std::collections::BTreeMap<ReservationId, Reservation>,
        event: &DomainEvent,
    ) {
        let set = |state: &mut std::collections::BTreeMap<ReservationId, Reservation>,
                   id: &ReservationId,
                   status: ReservationStatus,
                   payment: Option<PaymentId>| {
            if let Some(r) = state.get_mut(id) {
                r.status = status;
                if payment.is_some() {
                    r.payment_id = payment;
                }
            }
        };
        match event {
            DomainEvent::ReservationPlaced(e) => {
                state.insert(
                    e.reservation_id,
                    Reservation {
                        id: e.reservation_id,
                        event_id: e.event_id,
                        user_id: e.user_id,
                        section: e.section.clone(),
                        quantity: e.quantity,
                        total: e.total,
                        status: ReservationStatus::Pending,
                        placed_at: e.placed_at,
                        expires_at: e.expires_at,
                        payment_id: None,
                    },
                );
            }
            DomainEvent::ReservationConfirmed(e) => set(
                state,
                &e.reservation_id,
                ReservationStatus::Confirmed,
                Some(e.payment_id),
            ),
            DomainEvent::ReservationCancelled(e) => {
                set(state, &e.reservation_id, ReservationStatus::Cancelled, None)
            }
            DomainEvent::ReservationExpired(e) => {
                set(state, &e.reservation_id, ReservationStatus::Expired, None)
            }
            DomainEvent::ReservationRefunded(e) => {
                set(state, &e.reservation_id, ReservationStatus::Refunded, None)
            }
            _ => {}
        }
    }
}

/// A hold can be paid while it is pending and has not expired.
pub fn ensure_payable(
    status: ReservationStatus,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), ReservationError> {
    if status != ReservationStatus::Pending {
        return Err(ReservationError::NotPending { status });
    }
    if now >= expires_at {
        return Err(ReservationError::HoldExpired { expires_at });
    }
    Ok(())
}
