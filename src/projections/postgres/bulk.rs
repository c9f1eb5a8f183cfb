//! Applies the hot events of a batch, the ones a sale writes for every command (seats,
//! reservations, payments), set-based: `Batch` gathers them per table in log order and `flush`
//! writes each table with one statement over arrays, whatever the batch size. The folding
//! happens in SQL against the rows as they stand, so each event still meets its row's stream
//! version guard on its own and a partly applied batch (a lost checkpoint) moves only what is
//! new. Of the events that pass, the last by version sets a row's fields and counters add their
//! deltas in log order, saturating at zero at each step as `memory.rs` does (see `write`).

use crate::domain::events::DomainEvent as E;
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::eventstore::RecordedEvent;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

mod write;

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `reservation.placed`, one array per column.
#[derive(Default)]
struct Placed {
    ids: Vec<Uuid>,
    events: Vec<Uuid>,
    users: Vec<Uuid>,
    sections: Vec<String>,
    quantities: Vec<i64>,
    totals: Vec<i64>,
    currencies: Vec<String>,
    expires: Vec<DateTime<Utc>>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}

/// `payment.captured` and `payment.declined`.
#[derive(Default)]
struct Attempts {
    ids: Vec<Uuid>,
    reservations: Vec<Uuid>,
    events: Vec<Uuid>,
    users: Vec<Uuid>,
    statuses: Vec<&'static str>,
    amounts: Vec<i64>,
    currencies: Vec<String>,
    reasons: Vec<Option<String>>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}

/// Reservation status changes. `sign` is 1 for a confirmation (which carries the payment),
/// -1 for a refund, 0 otherwise.
#[derive(Default)]
struct Moves {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    positions: Vec<i64>,
    statuses: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
    payments: Vec<Option<Uuid>>,
    signs: Vec<i64>,
}

/// `payment.refunded`.
#[derive(Default)]
struct Refunds {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    reasons: Vec<String>,
    at: Vec<DateTime<Utc>>,
}

/// Seat movements: `(held, sold)` deltas of one section at a version of the inventory stream.
#[derive(Default)]
struct Seats {
    events: Vec<Uuid>,
    sections: Vec<String>,
    versions: Vec<i64>,
    held: Vec<i64>,
    sold: Vec<i64>,
}

/// The hot events of a batch not written yet, per table, in log order.
#[derive(Default)]
pub(super) struct Batch {
    placed: Placed,
    attempts: Attempts,
    moves: Moves,
    refunds: Refunds,
    seats: Seats,
}

impl Batch {
    /// Takes `event`, recorded as `recorded`, if it is applied set-based; false for the rare
    /// events (event lifecycle, restocks) that are applied one by one, after a `flush`.
    pub(super) fn add(&mut self, recorded: &RecordedEvent, event: &E) -> bool {
        let version = big(recorded.version);
        match event {
            E::SeatsHeld(e) => self.seats(e.event_id.0, &e.section, version, e.quantity, (1, 0)),
            E::HeldSeatsReleased(e) => {
                self.seats(e.event_id.0, &e.section, version, e.quantity, (-1, 0))
            }
            E::HeldSeatsSold(e) => {
                self.seats(e.event_id.0, &e.section, version, e.quantity, (-1, 1))
            }
            E::SoldSeatsReturned(e) => {
                self.seats(e.event_id.0, &e.section, version, e.quantity, (0, -1))
            }
            E::ReservationPlaced(e) => {
                let p = &mut self.placed;
                p.ids.push(e.reservation_id.0);
                p.events.push(e.event_id.0);
                p.users.push(e.user_id.0);
                p.sections.push(e.section.clone());
                p.quantities.push(i64::from(e.quantity));
                p.totals.push(e.total.amount_cents);
                p.currencies.push(e.total.currency.as_str().to_owned());
                p.expires.push(e.expires_at);
                p.versions.push(version);
                p.at.push(e.placed_at);
            }
            E::ReservationConfirmed(e) => {
                let status = ReservationStatus::Confirmed;
                self.moves.push(
                    recorded,
                    e.reservation_id.0,
                    status,
                    e.at,
                    Some(e.payment_id.0),
                );
            }
            E::ReservationCancelled(e) => {
                let status = ReservationStatus::Cancelled;
                self.moves
                    .push(recorded, e.reservation_id.0, status, e.at, None);
            }
            E::ReservationExpired(e) => {
                let status = ReservationStatus::Expired;
                self.moves
                    .push(recorded, e.reservation_id.0, status, e.at, None);
            }
            E::ReservationRefunded(e) => {
                let status = ReservationStatus::Refunded;
                self.moves
                    .push(recorded, e.reservation_id.0, status, e.at, None);
            }
            E::PaymentCaptured(e) => self.attempts.push(
                version,
                [
                    e.payment_id.0,
                    e.reservation_id.0,
                    e.event_id.0,
                    e.user_id.0,
                ],
                PaymentStatus::Captured,
                e.amount,
                None,
                e.at,
            ),
            E::PaymentDeclined(e) => self.attempts.push(
                version,
                [
                    e.payment_id.0,
                    e.reservation_id.0,
                    e.event_id.0,
                    e.user_id.0,
                ],
                PaymentStatus::Failed,
                e.amount,
                Some(e.reason.clone()),
                e.at,
            ),
            E::PaymentRefunded(e) => {
                let r = &mut self.refunds;
                r.ids.push(e.payment_id.0);
                r.versions.push(version);
                r.reasons.push(e.reason.clone());
                r.at.push(e.at);
            }
            E::EventCreated(_)
            | E::EventDetailsChanged(_)
            | E::EventPublished(_)
            | E::EventSalesOpened(_)
            | E::EventSalesClosed(_)
            | E::EventCancelled(_)
            | E::InventoryStocked(_) => return false,
        }
        true
    }

    fn seats(&mut self, event: Uuid, section: &str, version: i64, quantity: u32, unit: (i64, i64)) {
        let q = i64::from(quantity);
        let s = &mut self.seats;
        s.events.push(event);
        s.sections.push(section.to_owned());
        s.versions.push(version);
        s.held.push(unit.0 * q);
        s.sold.push(unit.1 * q);
    }

    /// Writes everything gathered, one statement per table with work, and empties the batch.
    /// Returns how many statements it ran. Creations go first: a row inserted here may be
    /// changed by a later event of the same batch.
    pub(super) async fn flush(&mut self, conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
        let batch = std::mem::take(self);
        let mut statements = 0;
        if !batch.placed.ids.is_empty() {
            write::insert_reservations(conn, &batch.placed).await?;
            statements += 1;
        }
        if !batch.attempts.ids.is_empty() {
            write::insert_payments(conn, &batch.attempts).await?;
            statements += 1;
        }
        if !batch.moves.ids.is_empty() {
            write::move_reservations(conn, &batch.moves).await?;
            statements += 1;
        }
        if !batch.refunds.ids.is_empty() {
            write::refund_payments(conn, &batch.refunds).await?;
            statements += 1;
        }
        if !batch.seats.events.is_empty() {
            write::move_seats(conn, &batch.seats).await?;
            statements += 1;
        }
        Ok(statements)
    }
}

impl Moves {
    fn push(
        &mut self,
        recorded: &RecordedEvent,
        id: Uuid,
        status: ReservationStatus,
        at: DateTime<Utc>,
        payment: Option<Uuid>,
    ) {
        self.ids.push(id);
        self.versions.push(big(recorded.version));
        self.positions.push(big(recorded.position));
        self.statuses.push(status.as_str());
        self.at.push(at);
        self.payments.push(payment);
        self.signs.push(match status {
            ReservationStatus::Confirmed => 1,
            ReservationStatus::Refunded => -1,
            _ => 0,
        });
    }
}

impl Attempts {
    fn push(
        &mut self,
        version: i64,
        [id, reservation, event, user]: [Uuid; 4],
        status: PaymentStatus,
        amount: crate::domain::Money,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) {
        self.ids.push(id);
        self.reservations.push(reservation);
        self.events.push(event);
        self.users.push(user);
        self.statuses.push(status.as_str());
        self.amounts.push(amount.amount_cents);
        self.currencies.push(amount.currency.as_str().to_owned());
        self.reasons.push(reason);
        self.versions.push(version);
        self.at.push(at);
    }
}
