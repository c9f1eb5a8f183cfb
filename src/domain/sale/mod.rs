//! The sale: one event's consistency boundary, composed of its `Event`, its `Inventory`, and
//! every `Reservation` and `Payment` made for it. `decide` turns a command into the events of
//! all streams it touches, so a step that spans streams (hold seats + place reservation) is one
//! atomic append; it only routes, each command's rules live once in `lifecycle` or `checkout`.
//! Pure: never reads a clock, mints an id or performs I/O.

mod checkout;
mod commands;
mod lifecycle;
#[cfg(test)]
mod limit_tests;
mod undo;

pub use commands::{EventPatch, Lifecycle, SaleCommand};
pub use undo::Undo;

use super::concert::{Event, EventError};
use super::events::{DomainEvent, StreamId};
use super::ids::{EventId, PaymentId, ReservationId, UserId};
use super::inventory::{Inventory, InventoryError};
use super::payment::{Payment, PaymentError};
use super::reservation::{Reservation, ReservationError, ReservationStatus};
use chrono::{DateTime, Utc};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Anything a sale command can be refused for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaleError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Reservation(#[from] ReservationError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The customer's pending + confirmed tickets for the event plus this request would pass
    /// the event's `max_tickets_per_customer`.
    #[error(
        "at most {limit} tickets per customer for this event: you hold {held}, asked for {requested}"
    )]
    CustomerLimit {
        limit: u32,
        held: u32,
        requested: u32,
    },
}

/// Work to do after the decision's events are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Wake the sale at `at` to expire the hold if it is still pending.
    ArmExpiry {
        reservation_id: ReservationId,
        at: DateTime<Utc>,
    },
}

/// What the caller is told once the events are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The events were recorded, but the caller's intent failed and was compensated
    /// (a capture that came after the hold ended is refunded at once).
    Compensated(SaleError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: SmallVec<[DomainEvent; 4]>,
    pub effects: SmallVec<[Effect; 1]>,
    pub outcome: Outcome,
}

impl Decision {
    fn done(events: impl IntoIterator<Item = DomainEvent>) -> Self {
        Decision {
            events: events.into_iter().collect(),
            effects: SmallVec::new(),
            outcome: Outcome::Done,
        }
    }
}

/// The folded state of one sale. Its per-reservation maps are B-trees: a hash map grows by
/// rehashing every entry at once, which stalled the sale's writer for tens of milliseconds in a
/// large sale (BENCHMARKS.md, session 25).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleState {
    pub event: Option<Event>,
    pub inventory: Inventory,
    pub reservations: BTreeMap<ReservationId, Reservation>,
    pub payments: BTreeMap<PaymentId, Payment>,
    /// Current version of every stream of this sale (0 = empty stream).
    pub versions: BTreeMap<StreamId, u64>,
    /// Each customer's pending + confirmed tickets, what `max_tickets_per_customer` bounds;
    /// kept by `apply` as reservations change status, so a reserve reads it in O(1).
    pub tickets_by_customer: BTreeMap<UserId, u32>,
}

impl SaleState {
    pub fn version(&self, stream: &StreamId) -> u64 {
        self.versions.get(stream).copied().unwrap_or(0)
    }

    /// Folds one committed event. Handles every event and cannot panic.
    pub fn apply(&mut self, event: &DomainEvent) {
        let stream = event.stream();
        *self.versions.entry(stream).or_insert(0) += 1;
        Event::apply(&mut self.event, event);
        self.inventory.apply(event);
        let reservation = match stream {
            StreamId::Reservation(id) => Some(id),
            _ => None,
        };
        let before = reservation.and_then(|id| self.held(&id));
        Reservation::apply(&mut self.reservations, event);
        let after = reservation.and_then(|id| self.held(&id));
        self.count_tickets(before, after);
        Payment::apply(&mut self.payments, event);
    }

    /// The customer of a reservation and the tickets it counts against their limit.
    fn held(&self, id: &ReservationId) -> Option<(UserId, u32)> {
        let r = self.reservations.get(id)?;
        let counted = matches!(
            r.status,
            ReservationStatus::Pending | ReservationStatus::Confirmed
        );
        Some((r.user_id, if counted { r.quantity } else { 0 }))
    }

    fn count_tickets(&mut self, before: Option<(UserId, u32)>, after: Option<(UserId, u32)>) {
        if let Some((user, quantity)) = before {
            if let Some(n) = self.tickets_by_customer.get_mut(&user) {
                *n = n.saturating_sub(quantity);
                if *n == 0 {
                    self.tickets_by_customer.remove(&user);
                }
            }
        }
        if let Some((user, quantity)) = after.filter(|(_, q)| *q > 0) {
            let n = self.tickets_by_customer.entry(user).or_insert(0);
            *n = n.saturating_add(quantity);
        }
    }

    /// The customer's pending + confirmed tickets for this event.
    pub fn tickets_of(&self, user: UserId) -> u32 {
        self.tickets_by_customer.get(&user).copied().unwrap_or(0)
    }

    fn event(&self) -> Result<&Event, SaleError> {
        Ok(self.event.as_ref().ok_or(EventError::NotFound)?)
    }

    fn reservation(&self, id: &ReservationId) -> Result<&Reservation, SaleError> {
        Ok(self
            .reservations
            .get(id)
            .ok_or(ReservationError::NotFound)?)
    }

    /// Decides `command` against the current state of the sale of `event_id`.
    pub fn decide(&self, event_id: EventId, command: &SaleCommand) -> Result<Decision, SaleError> {
        let sale = Deciding {
            state: self,
            event_id,
        };
        use SaleCommand as C;
        match command {
            C::CreateEvent {
                owner_id,
                currency,
                details,
                now,
            } => sale.create_event(*owner_id, *currency, details, *now),
            C::UpdateEvent {
                expected_version,
                patch,
                now,
            } => sale.update_event(*expected_version, patch, *now),
            C::ChangeLifecycle { action, now } => sale.change_lifecycle(*action, *now),
            C::CancelEvent { now } => sale.cancel_event(*now),
            C::Reserve {
                reservation_id,
                user_id,
                section,
                quantity,
                hold_for,
                now,
            } => sale.reserve(
                *reservation_id,
                *user_id,
                section,
                *quantity,
                *hold_for,
                *now,
            ),
            C::RecordCapture {
                payment_id,
                reservation_id,
                amount,
                charge_id,
                now,
            } => sale.record_capture(*payment_id, *reservation_id, *amount, charge_id, *now),
            C::RecordDecline {
                payment_id,
                reservation_id,
                amount,
                reason,
                now,
            } => sale.record_decline(*payment_id, *reservation_id, *amount, reason, *now),
            C::CancelReservation {
                reservation_id,
                now,
            } => sale.cancel_reservation(*reservation_id, *now),
            C::ExpireReservation {
                reservation_id,
                now,
            } => sale.expire_reservation(*reservation_id, *now),
            C::RefundPayment {
                payment_id,
                reason,
                now,
            } => sale.refund(*payment_id, reason, *now),
        }
    }
}

/// One decision in progress: the state it reads and the event whose sale it is. The command
/// handlers are its methods, so none of them needs the event id passed again.
struct Deciding<'a> {
    state: &'a SaleState,
    event_id: EventId,
}

#[cfg(test)]
mod tests;
