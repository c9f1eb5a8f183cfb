//! Seats and money inside the sale: reserve (hold + place in one decision), record a capture
//! (confirm + sell, or refund at once when it came too late or for the wrong amount), record a
//! decline, cancel, expire, refund. Invariants 1 and 2 are decided here, and so is the event's
//! per-customer limit (from `SaleState::tickets_by_customer`); the gateway is called outside and
//! only its outcome comes in. Pure: never reads a clock or performs I/O.

use super::{Deciding, Decision, Effect, Outcome, SaleError};
use crate::domain::concert::{EventError, EventStatus};
use crate::domain::events::{
    DomainEvent, HeldSeatsReleased, HeldSeatsSold, PaymentCaptured, PaymentDeclined,
    PaymentRefunded, ReservationCancelled, ReservationConfirmed, ReservationExpired,
    ReservationPlaced, ReservationRefunded, SeatsHeld, SoldSeatsReturned,
};
use crate::domain::ids::{PaymentId, ReservationId, UserId};
use crate::domain::money::Money;
use crate::domain::payment::{PaymentError, PaymentStatus, AUTOMATIC_REFUND};
use crate::domain::reservation::{Reservation, ReservationError, ReservationStatus, MAX_QUANTITY};
use chrono::{DateTime, Duration, Utc};
use smallvec::SmallVec;

impl Deciding<'_> {
    pub(super) fn reserve(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
        section: &str,
        quantity: u32,
        hold_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let event_id = self.event_id;
        let event = self.state.event()?;
        event.ensure_on_sale()?;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(ReservationError::InvalidQuantity.into());
        }
        if self.state.reservations.contains_key(&reservation_id) {
            return Err(ReservationError::AlreadyExists.into());
        }
        if let Some(limit) = event.details.max_tickets_per_customer {
            let held = self.state.tickets_of(user_id);
            if held.saturating_add(quantity) > limit {
                return Err(SaleError::CustomerLimit {
                    limit,
                    held,
                    requested: quantity,
                });
            }
        }
        let stock = self.state.inventory.check_hold(section, quantity)?;
        let total = Money::new(stock.price_cents, event.currency)
            .times(quantity)
            .ok_or(ReservationError::TotalOverflow)?;
        let expires_at = now + hold_for;
        Ok(Decision {
            events: [
                SeatsHeld {
                    event_id,
                    reservation_id,
                    section: section.to_owned(),
                    quantity,
                }
                .into(),
                ReservationPlaced {
                    reservation_id,
                    event_id,
                    user_id,
                    section: section.to_owned(),
                    quantity,
                    unit_price_cents: stock.price_cents,
                    total,
                    placed_at: now,
                    expires_at,
                }
                .into(),
            ]
            .into_iter()
            .collect(),
            effects: [Effect::ArmExpiry {
                reservation_id,
                at: expires_at,
            }]
            .into_iter()
            .collect(),
            outcome: Outcome::Done,
        })
    }

    pub(super) fn record_capture(
        &self,
        payment_id: PaymentId,
        reservation_id: ReservationId,
        amount: Money,
        charge_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let event_id = self.event_id;
        if self.state.payments.contains_key(&payment_id) {
            return Err(PaymentError::AlreadyExists.into());
        }
        let reservation = self.state.reservation(&reservation_id)?;
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
            self.state
                .event()
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
                        reason: format!("{AUTOMATIC_REFUND}{error}"),
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

    pub(super) fn record_decline(
        &self,
        payment_id: PaymentId,
        reservation_id: ReservationId,
        amount: Money,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        if self.state.payments.contains_key(&payment_id) {
            return Err(PaymentError::AlreadyExists.into());
        }
        let reservation = self.state.reservation(&reservation_id)?;
        Ok(Decision::done([PaymentDeclined {
            payment_id,
            reservation_id,
            event_id: self.event_id,
            user_id: reservation.user_id,
            amount,
            reason: reason.to_owned(),
            at: now,
        }
        .into()]))
    }

    pub(super) fn cancel_reservation(
        &self,
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let reservation = self.state.reservation(&reservation_id)?;
        match (reservation.status, reservation.payment_id) {
            (ReservationStatus::Pending, _) => Ok(Decision::done(
                self.release(
                    reservation,
                    ReservationCancelled {
                        reservation_id,
                        at: now,
                    }
                    .into(),
                ),
            )),
            (ReservationStatus::Confirmed, Some(payment_id)) => {
                self.refund(payment_id, "cancelled by customer", now)
            }
            (status, _) => Err(ReservationError::NotCancellable { status }.into()),
        }
    }

    /// The hold's timer fired: a stale timer (the hold already ended) changes nothing.
    pub(super) fn expire_reservation(
        &self,
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let reservation = self.state.reservation(&reservation_id)?;
        if reservation.status != ReservationStatus::Pending {
            return Ok(Decision::done([]));
        }
        if now < reservation.expires_at {
            return Err(ReservationError::NotYetExpired {
                expires_at: reservation.expires_at,
            }
            .into());
        }
        Ok(Decision::done(
            self.release(
                reservation,
                ReservationExpired {
                    reservation_id,
                    at: now,
                }
                .into(),
            ),
        ))
    }

    /// Refunds a captured payment; when it paid a confirmed reservation, its seats go back.
    pub(super) fn refund(
        &self,
        payment_id: PaymentId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let payment = self
            .state
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
        if let Some(r) = self.state.reservations.get(&payment.reservation_id) {
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
                        event_id: self.event_id,
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

    /// The end of a pending hold: the reservation's final event plus the seats going back.
    pub(super) fn release(&self, r: &Reservation, end: DomainEvent) -> [DomainEvent; 2] {
        [
            end,
            HeldSeatsReleased {
                event_id: self.event_id,
                reservation_id: r.id,
                section: r.section.clone(),
                quantity: r.quantity,
            }
            .into(),
        ]
    }
}
