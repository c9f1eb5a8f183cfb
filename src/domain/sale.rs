//! The sale: one event's consistency boundary, composed of its `Event`, its `Inventory`, and
//! every `Reservation` and `Payment` made for it. `decide` turns a command into the events of
//! all streams it touches, so a step that spans streams (hold seats + place reservation) is one
//! atomic append. Pure: no clock, no ids minted, no I/O.

use super::concert::{validate_details, Event, EventError, EventStatus, LifecycleAction};
use super::events::*;
use super::ids::{EventId, PaymentId, ReservationId, UserId};
use super::inventory::{Inventory, InventoryError};
use super::money::{Currency, Money};
use super::payment::{Payment, PaymentError, PaymentStatus};
use super::reservation::{Reservation, ReservationError, ReservationStatus, MAX_QUANTITY};
use chrono::{DateTime, Duration, Utc};
use smallvec::SmallVec;
use std::collections::HashMap;

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
}

/// A partial update of an event's details; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub venue: Option<Venue>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub sections: Option<Vec<SectionSpec>>,
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

/// The folded state of one sale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleState {
    pub event: Option<Event>,
    pub inventory: Inventory,
    pub reservations: HashMap<ReservationId, Reservation>,
    pub payments: HashMap<PaymentId, Payment>,
    /// Current version of every stream of this sale (0 = empty stream).
    pub versions: HashMap<StreamId, u64>,
}

impl SaleState {
    pub fn version(&self, stream: &StreamId) -> u64 {
        self.versions.get(stream).copied().unwrap_or(0)
    }

    /// Folds one committed event. Handles every event and cannot panic.
    pub fn apply(&mut self, event: &DomainEvent) {
        *self.versions.entry(event.stream()).or_insert(0) += 1;
        Event::apply(&mut self.event, event);
        self.inventory.apply(event);
        Reservation::apply(&mut self.reservations, event);
        Payment::apply(&mut self.payments, event);
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

    /// Decides `command` against the current state.
    pub fn decide(&self, event_id: EventId, command: &SaleCommand) -> Result<Decision, SaleError> {
        match command {
            SaleCommand::CreateEvent {
                owner_id,
                currency,
                details,
                now,
            } => {
                if self.event.is_some() {
                    return Err(EventError::AlreadyExists.into());
                }
                validate_details(details)?;
                Ok(Decision::done([
                    EventCreated {
                        event_id,
                        owner_id: *owner_id,
                        currency: *currency,
                        details: details.clone(),
                        at: *now,
                    }
                    .into(),
                    InventoryStocked {
                        event_id,
                        sections: details.sections.clone(),
                    }
                    .into(),
                ]))
            }
            SaleCommand::UpdateEvent {
                expected_version,
                patch,
                now,
            } => self.update_event(event_id, *expected_version, patch, *now),
            SaleCommand::ChangeLifecycle { action, now } => {
                let event = self.event()?;
                let at = *now;
                let fact: DomainEvent = match action {
                    Lifecycle::Publish => {
                        event.transition(LifecycleAction::Publish)?;
                        EventPublished { event_id, at }.into()
                    }
                    Lifecycle::OpenSales => {
                        event.transition(LifecycleAction::OpenSales)?;
                        EventSalesOpened { event_id, at }.into()
                    }
                    Lifecycle::CloseSales => {
                        event.transition(LifecycleAction::CloseSales)?;
                        EventSalesClosed { event_id, at }.into()
                    }
                };
                Ok(Decision::done([fact]))
            }
            SaleCommand::CancelEvent { now } => self.cancel_event(event_id, *now),
            SaleCommand::Reserve {
                reservation_id,
                user_id,
                section,
                quantity,
                hold_for,
                now,
            } => {
                let event = self.event()?;
                event.ensure_on_sale()?;
                if !(1..=MAX_QUANTITY).contains(quantity) {
                    return Err(ReservationError::InvalidQuantity.into());
                }
                if self.reservations.contains_key(reservation_id) {
                    return Err(ReservationError::AlreadyExists.into());
                }
                let stock = self.inventory.check_hold(section, *quantity)?;
                let total = Money::new(stock.price_cents, event.currency)
                    .times(*quantity)
                    .ok_or(ReservationError::TotalOverflow)?;
                let expires_at = *now + *hold_for;
                Ok(Decision {
                    events: [
                        SeatsHeld {
                            event_id,
                            reservation_id: *reservation_id,
                            section: section.clone(),
                            quantity: *quantity,
                        }
                        .into(),
                        ReservationPlaced {
                            reservation_id: *reservation_id,
                            event_id,
                            user_id: *user_id,
                            section: section.clone(),
                            quantity: *quantity,
                            unit_price_cents: stock.price_cents,
                            total,
                            placed_at: *now,
                            expires_at,
                        }
                        .into(),
                    ]
                    .into_iter()
                    .collect(),
                    effects: [Effect::ArmExpiry {
                        reservation_id: *reservation_id,
                        at: expires_at,
                    }]
                    .into_iter()
                    .collect(),
                    outcome: Outcome::Done,
                })
            }
            SaleCommand::RecordCapture {
                payment_id,
                reservation_id,
                amount,
                charge_id,
                now,
            } => self.record_capture(
                event_id,
                *payment_id,
                *reservation_id,
                *amount,
                charge_id,
                *now,
            ),
            SaleCommand::RecordDecline {
                payment_id,
                reservation_id,
                amount,
                reason,
                now,
            } => {
                if self.payments.contains_key(payment_id) {
                    return Err(PaymentError::AlreadyExists.into());
                }
                let reservation = self.reservation(reservation_id)?;
                Ok(Decision::done([PaymentDeclined {
                    payment_id: *payment_id,
                    reservation_id: *reservation_id,
                    event_id,
                    user_id: reservation.user_id,
                    amount: *amount,
                    reason: reason.clone(),
                    at: *now,
                }
                .into()]))
            }
            SaleCommand::CancelReservation {
                reservation_id,
                now,
            } => {
                let reservation = self.reservation(reservation_id)?;
                match (reservation.status, reservation.payment_id) {
                    (ReservationStatus::Pending, _) => Ok(Decision::done(release(
                        event_id,
                        reservation,
                        ReservationCancelled {
                            reservation_id: *reservation_id,
                            at: *now,
                        }
                        .into(),
                    ))),
                    (ReservationStatus::Confirmed, Some(payment_id)) => {
                        self.refund(event_id, payment_id, "cancelled by customer", *now)
                    }
                    (status, _) => Err(ReservationError::NotCancellable { status }.into()),
                }
            }
            SaleCommand::ExpireReservation {
                reservation_id,
                now,
            } => {
                let reservation = self.reservation(reservation_id)?;
                if reservation.status != ReservationStatus::Pending {
                    return Ok(Decision::done([]));
                }
                if *now < reservation.expires_at {
                    return Err(ReservationError::NotYetExpired {
                        expires_at: reservation.expires_at,
                    }
                    .into());
                }
                Ok(Decision::done(release(
                    event_id,
                    reservation,
                    ReservationExpired {
                        reservation_id: *reservation_id,
                        at: *now,
                    }
                    .into(),
                )))
            }
            SaleCommand::RefundPayment {
                payment_id,
                reason,
                now,
            } => self.refund(event_id, *payment_id, reason, *now),
        }
    }

    fn update_event(
        &self,
        event_id: EventId,
        expected_version: Option<u64>,
        patch: &EventPatch,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let event = self.event()?;
        let actual = self.version(&StreamId::Event(event_id));
        if let Some(expected) = expected_version {
            if expected != actual {
                return Err(EventError::VersionConflict { expected, actual }.into());
            }
        }
        event.transition(LifecycleAction::Update)?;
        let current = &event.details;
        let details = EventDetails {
            name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
            description: patch
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            venue: patch.venue.clone().unwrap_or_else(|| current.venue.clone()),
            starts_at: patch.starts_at.unwrap_or(current.starts_at),
            ends_at: patch.ends_at.unwrap_or(current.ends_at),
            sections: patch
                .sections
                .clone()
                .unwrap_or_else(|| current.sections.clone()),
        };
        validate_details(&details)?;
        let mut events: SmallVec<[DomainEvent; 4]> = SmallVec::new();
        if details.sections != current.sections {
            self.inventory.check_restock(&details.sections)?;
            events.push(
                InventoryStocked {
                    event_id,
                    sections: details.sections.clone(),
                }
                .into(),
            );
        }
        events.insert(
            0,
            EventDetailsChanged {
                event_id,
                details,
                at: now,
            }
            .into(),
        );
        Ok(Decision::done(events))
    }

    fn record_capture(
        &self,
        event_id: EventId,
        payment_id: PaymentId,
        reservation_id: ReservationId,
        amount: Money,
        charge_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        if self.payments.contains_key(&payment_id) {
            return Err(PaymentError::AlreadyExists.into());
        }
        let reservation = self.reservation(&reservation_id)?;
        let captured: DomainEvent = PaymentCaptured {
            payment_id,
            reservation_id,
            event_id,
            user_id: reservation.user_id,
            amount,
            charge_id: charge_id.to_owned(),
            at: now,
        }
        .into();
        let refusal: Option<SaleError> = if let Err(e) = reservation.ensure_payable(now) {
            Some(e.into())
        } else if amount != reservation.total {
            Some(
                ReservationError::AmountMismatch {
                    paid: amount.amount_cents,
                    due: reservation.total.amount_cents,
                }
                .into(),
            )
        } else {
            self.event()
                .and_then(|ev| match ev.status {
                    EventStatus::Cancelled => {
                        Err(EventError::SalesNotOpen { status: ev.status }.into())
                    }
                    _ => Ok(()),
                })
                .err()
        };
        if let Some(error) = refusal {
            // The money moved but the seats cannot be had: give it back in the same commit.
            return Ok(Decision {
                events: [
                    captured,
                    PaymentRefunded {
                        payment_id,
                        reservation_id,
                        amount,
                        reason: format!("automatic refund: {error}"),
                        at: now,
                    }
                    .into(),
                ]
                .into_iter()
                .collect(),
                effects: SmallVec::new(),
                outcome: Outcome::Compensated(error),
            });
        }
        Ok(Decision::done([
            captured,
            ReservationConfirmed {
                reservation_id,
                payment_id,
                at: now,
            }
            .into(),
            HeldSeatsSold {
                event_id,
                reservation_id,
                section: reservation.section.clone(),
                quantity: reservation.quantity,
            }
            .into(),
        ]))
    }

    /// Refunds a captured payment; when it paid a confirmed reservation, its seats go back.
    fn refund(
        &self,
        event_id: EventId,
        payment_id: PaymentId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let payment = self
            .payments
            .get(&payment_id)
            .ok_or(PaymentError::NotFound)?;
        if payment.status != PaymentStatus::Captured {
            return Err(PaymentError::NotRefundable {
                status: payment.status,
            }
            .into());
        }
        let mut events: SmallVec<[DomainEvent; 4]> = SmallVec::new();
        events.push(
            PaymentRefunded {
                payment_id,
                reservation_id: payment.reservation_id,
                amount: payment.amount,
                reason: reason.to_owned(),
                at: now,
            }
            .into(),
        );
        if let Some(r) = self.reservations.get(&payment.reservation_id) {
            if r.status == ReservationStatus::Confirmed && r.payment_id == Some(payment_id) {
                events.push(
                    ReservationRefunded {
                        reservation_id: r.id,
                        payment_id,
                        at: now,
                    }
                    .into(),
                );
                events.push(
                    SoldSeatsReturned {
                        event_id,
                        reservation_id: r.id,
                        section: r.section.clone(),
                        quantity: r.quantity,
                    }
                    .into(),
                );
            }
        }
        Ok(Decision::done(events))
    }

    fn cancel_event(&self, event_id: EventId, now: DateTime<Utc>) -> Result<Decision, SaleError> {
        self.event()?.transition(LifecycleAction::Cancel)?;
        let mut events: SmallVec<[DomainEvent; 4]> = SmallVec::new();
        events.push(EventCancelled { event_id, at: now }.into());
        // Deterministic order keeps replays and tests stable.
        let mut reservations: Vec<&Reservation> = self.reservations.values().collect();
        reservations.sort_by_key(|r| (r.placed_at, r.id));
        for r in reservations {
            match (r.status, r.payment_id) {
                (ReservationStatus::Pending, _) => events.extend(release(
                    event_id,
                    r,
                    ReservationCancelled {
                        reservation_id: r.id,
                        at: now,
                    }
                    .into(),
                )),
                (ReservationStatus::Confirmed, Some(payment_id)) => events.extend(
                    self.refund(event_id, payment_id, "event cancelled", now)?
                        .events,
                ),
                _ => {}
            }
        }
        Ok(Decision::done(events))
    }
}

/// The end of a pending hold: the reservation's final event plus the seats going back.
fn release(event_id: EventId, r: &Reservation, end: DomainEvent) -> [DomainEvent; 2] {
    [
        end,
        HeldSeatsReleased {
            event_id,
            reservation_id: r.id,
            section: r.section.clone(),
            quantity: r.quantity,
        }
        .into(),
    ]
}

#[cfg(test)]
mod tests;
