//! Applies the hot events of a batch, the ones a sale writes for every command (seats,
//! reservations, payments), set-based: `Batch` gathers them per table in log order and writes
//! each table with one statement over arrays, whatever the batch size: `flush` inside a
//! transaction, or `write_claiming` as one statement together with the checkpoint's claim. The
//! folding happens in SQL against the rows as they stand, so each event still meets its row's
//! stream version guard on its own and a partly applied batch (a lost checkpoint) moves only
//! what is new. Of the events that pass, the last by version sets a row's fields and counters
//! add their deltas in log order, saturating at zero at each step as `memory.rs` does (see
//! `write`).

use crate::domain::events::DomainEvent as E;
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::eventstore::RecordedEvent;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use std::collections::HashSet;
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
        for part in batch.parts() {
            let query = batch.bind(part, sqlx::query(&part.piece().alone));
            query.execute(&mut *conn).await?;
            statements += 1;
        }
        Ok(statements)
    }

    /// The tables with work, creations first.
    fn parts(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        if !self.placed.ids.is_empty() {
            parts.push(Part::Placed);
        }
        if !self.attempts.ids.is_empty() {
            parts.push(Part::Attempts);
        }
        if !self.moves.ids.is_empty() {
            parts.push(Part::Moves);
        }
        if !self.refunds.ids.is_empty() {
            parts.push(Part::Refunds);
        }
        if !self.seats.events.is_empty() {
            parts.push(Part::Seats);
        }
        parts
    }

    /// `q` with the arrays of `part` bound, in the order its piece numbers them.
    fn bind<'q>(&'q self, part: Part, q: write::PgQuery<'q>) -> write::PgQuery<'q> {
        match part {
            Part::Placed => write::bind_placed(q, &self.placed),
            Part::Attempts => write::bind_attempts(q, &self.attempts),
            Part::Moves => write::bind_moves(q, &self.moves),
            Part::Refunds => write::bind_refunds(q, &self.refunds),
            Part::Seats => write::bind_seats(q, &self.seats),
        }
    }

    /// Whether one statement can write everything gathered. Its parts all read the snapshot
    /// the statement started with, so none may change a row another part creates: no status
    /// change of a reservation, nor refund of a payment, placed or attempted in this batch.
    /// (Seats and reservations of one sale are different tables, so holds and placements
    /// always qualify, as do payments of reservations placed by an earlier batch.)
    pub(super) fn fits_one_statement(&self) -> bool {
        let placed: HashSet<&Uuid> = self.placed.ids.iter().collect();
        let attempted: HashSet<&Uuid> = self.attempts.ids.iter().collect();
        !self.moves.ids.iter().any(|id| placed.contains(id))
            && !self.refunds.ids.iter().any(|id| attempted.contains(id))
    }

    /// Claims the checkpoint row `name` (moves it from `expected` to `to`, only if it is still
    /// at `expected`) and, only if that claim succeeds, writes everything gathered: ONE
    /// statement (data-modifying CTEs, each table's rows gated on the claim). With nothing
    /// gathered it is the claim alone. Run in autocommit, the batch lands with its checkpoint
    /// or not at all; two appliers that read the same checkpoint cannot both claim it, since
    /// the second waits on the row lock and re-checks the row the first committed. Callers
    /// must use it only when `fits_one_statement`.
    pub(super) async fn write_claiming<'c, X>(
        &self,
        conn: X,
        name: &str,
        expected: i64,
        to: i64,
    ) -> Result<Claim, sqlx::Error>
    where
        X: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        const GATE: &str = "EXISTS (SELECT 1 FROM claim)";
        let parts = self.parts();
        let mut sql = String::from(
            "WITH claim AS (UPDATE projection_checkpoints SET position = $2
                             WHERE name = $1 AND position = $3 RETURNING position),\n",
        );
        let mut offset = 3;
        for (i, part) in parts.iter().enumerate() {
            sql.push_str(&part.piece().spliced(&format!("w{i}"), offset, GATE));
            offset += part.piece().params();
        }
        let cut = sql.trim_end().trim_end_matches(',').len();
        sql.truncate(cut);
        sql.push('\n');
        sql.push_str(
            "SELECT EXISTS (SELECT 1 FROM claim) AS claimed,
                    (SELECT position FROM projection_checkpoints WHERE name = $1) AS seen",
        );
        let mut query = sqlx::query(&sql).bind(name).bind(to).bind(expected);
        for part in parts {
            query = self.bind(part, query);
        }
        let row = query.fetch_one(conn).await?;
        let (claimed, seen): (bool, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
        Ok(if claimed {
            Claim::Claimed
        } else {
            Claim::Lost { seen }
        })
    }
}

/// A table `Batch` writes, and the statement that does.
#[derive(Debug, Clone, Copy)]
enum Part {
    Placed,
    Attempts,
    Moves,
    Refunds,
    Seats,
}

impl Part {
    fn piece(self) -> &'static write::Piece {
        match self {
            Part::Placed => &write::INSERT_RESERVATIONS,
            Part::Attempts => &write::INSERT_PAYMENTS,
            Part::Moves => &write::MOVE_RESERVATIONS,
            Part::Refunds => &write::REFUND_PAYMENTS,
            Part::Seats => &write::MOVE_SEATS,
        }
    }
}

/// What `Batch::write_claiming` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// The checkpoint moved and the batch is written.
    Claimed,
    /// The checkpoint was not where the caller read it (another applier moved it, or the row
    /// is missing): nothing was written. `seen` is the position in the statement's snapshot,
    /// a committed value, which may predate the applier that won.
    Lost { seen: Option<i64> },
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
