//! What a sale can be asked to do: `SaleCommand` and the values it carries. Plain data, built
//! by the edges; it never decides anything (the handlers in `lifecycle` and `checkout` do) and
//! never carries a clock: `now` is a field of every command.

use crate::domain::events::{EventDetails, SectionSpec, Venue};
use crate::domain::ids::{PaymentId, ReservationId, UserId};
use crate::domain::money::{Currency, Money};
use chrono::{DateTime, Duration, Utc};

/// A partial update of an event's details; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub venue: Option<Venue>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub sections: Option<Vec<SectionSpec>>,
    /// `Some(None)` removes the limit; lowering it keeps the tickets customers already hold.
    pub max_tickets_per_customer: Option<Option<u32>>,
}

/// Lifecycle actions on the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Publish,
    OpenSales,
    CloseSales,
}

/// Every command the sale understands. `now` always comes from the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleCommand {
    CreateEvent {
        owner_id: UserId,
        currency: Currency,
        details: EventDetails,
        now: DateTime<Utc>,
    },
    UpdateEvent {
        expected_version: Option<u64>,
        patch: EventPatch,
        now: DateTime<Utc>,
    },
    ChangeLifecycle {
        action: Lifecycle,
        now: DateTime<Utc>,
    },
    /// Cancels the event: releases every hold and refunds every paid ticket.
    CancelEvent { now: DateTime<Utc> },
    Reserve {
        reservation_id: ReservationId,
        user_id: UserId,
        section: String,
        quantity: u32,
        hold_for: Duration,
        now: DateTime<Utc>,
    },
    /// The gateway captured the charge: confirm the reservation, or refund if it is too late.
    RecordCapture {
        payment_id: PaymentId,
        reservation_id: ReservationId,
        amount: Money,
        charge_id: String,
        now: DateTime<Utc>,
    },
    /// The gateway declined the card: record the failed attempt; the hold stays.
    RecordDecline {
        payment_id: PaymentId,
        reservation_id: ReservationId,
        amount: Money,
        reason: String,
        now: DateTime<Utc>,
    },
    /// Customer cancels: a pending hold is released, a confirmed purchase refunded.
    CancelReservation {
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    },
    /// The hold's timer fired.
    ExpireReservation {
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    },
    RefundPayment {
        payment_id: PaymentId,
        reason: String,
        now: DateTime<Utc>,
    },
}
