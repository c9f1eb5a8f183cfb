//! The statements `Batch::flush` runs, one per table, each over the arrays `Batch` gathered.
//! A statement reads the rows it guards against in its own snapshot, so every event of the
//! batch meets its guard as the row stood before the statement. Where a statement probes a
//! view by the batch's keys it also filters on `key = ANY($1)`: joined only to `UNNEST(..)`,
//! whose size the planner guesses, a growing view was read whole at every batch (2 to 4.5 ms
//! per batch over 10 000 reservations, and growing); with the filter it stays an index scan.

use super::{Attempts, Moves, Placed, Refunds, Seats};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use sqlx::PgConnection;
use std::sync::LazyLock;

pub(super) async fn insert_reservations(
    conn: &mut PgConnection,
    p: &Placed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reservation_views (reservation_id, event_id, user_id, section, quantity, status,
                                        total_cents, currency, expires_at, version, created_at, updated_at)
         SELECT r.id, r.event_id, r.user_id, r.section, r.quantity, $11, r.total_cents, r.currency,
                r.expires_at, r.version, r.at, r.at
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::bigint[],
                       $7::text[], $8::timestamptz[], $9::bigint[], $10::timestamptz[])
                AS r(id, event_id, user_id, section, quantity, total_cents, currency, expires_at,
                     version, at)
         ON CONFLICT (reservation_id) DO NOTHING",
    )
    .bind(&p.ids)
    .bind(&p.events)
    .bind(&p.users)
    .bind(&p.sections)
    .bind(&p.quantities)
    .bind(&p.totals)
    .bind(&p.currencies)
    .bind(&p.expires)
    .bind(&p.versions)
    .bind(&p.at)
    .bind(ReservationStatus::Pending.as_str())
    .execute(conn)
    .await
    .map(drop)
}

pub(super) async fn insert_payments(
    conn: &mut PgConnection,
    p: &Attempts,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment_views (payment_id, reservation_id, event_id, user_id, status,
                                    amount_cents, currency, reason, version, created_at, updated_at)
         SELECT p.id, p.reservation_id, p.event_id, p.user_id, p.status, p.amount_cents,
                p.currency, p.reason, p.version, p.at, p.at
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[],
                       $7::text[], $8::text[], $9::bigint[], $10::timestamptz[])
                AS p(id, reservation_id, event_id, user_id, status, amount_cents, currency,
                     reason, version, at)
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(&p.ids)
    .bind(&p.reservations)
    .bind(&p.events)
    .bind(&p.users)
    .bind(&p.statuses)
    .bind(&p.amounts)
    .bind(&p.currencies)
    .bind(&p.reasons)
    .bind(&p.versions)
    .bind(&p.at)
    .execute(conn)
    .await
    .map(drop)
}

/// A refund overwrites fields, so of the refunds newer than a row only the last one matters.
pub(super) async fn refund_payments(
    conn: &mut PgConnection,
    r: &Refunds,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_views p
            SET status = $5, reason = u.reason, updated_at = u.at, version = u.version
           FROM (SELECT DISTINCT ON (id) *
                   FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[])
                        AS u(id, version, reason, at)
                  ORDER BY id, version DESC) u
          WHERE p.payment_id = u.id AND p.version < u.version AND p.payment_id = ANY($1)",
    )
    .bind(&r.ids)
    .bind(&r.versions)
    .bind(&r.reasons)
    .bind(&r.at)
    .bind(PaymentStatus::Refunded.as_str())
    .execute(conn)
    .await
    .map(drop)
}

/// Counters moved by `(delta, lowest running sum)` of a sequence of deltas: adding them one at a
/// time with `x = max(0, x + d)` ends at `max(x + net, net - lowest)` (Lindley's recursion),
/// which is what `memory.rs` gets by saturating at every step. `{x}`, `{net}` and `{low}` are
/// SQL expressions; the upper bound is applied at the end only, where u32 or i64 counts
/// cannot be reached within one batch by events the domain decides.
fn saturated(x: &str, net: &str, low: &str, max: &str) -> String {
    format!("LEAST(GREATEST({x} + {net}, {net} - {low}), {max})::bigint")
}

/// Reservation status changes in one statement. `applied` is every change newer than its row
/// (as the row stood before this statement); the row takes the last one's status and time,
/// and the last confirmation's payment. (Sales and purchase history are the asynchronous
/// `insights` projection's.)
const MOVE_RESERVATIONS: &str = "WITH applied AS (
         SELECT m.*
           FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[],
                       $5::timestamptz[], $6::uuid[], $7::bigint[])
                AS m(id, version, position, status, at, payment_id, sign)
           JOIN reservation_views r ON r.reservation_id = m.id AND r.version < m.version
          WHERE r.reservation_id = ANY($1)),
     last AS (
         SELECT DISTINCT ON (id) id, version, status, at FROM applied
          ORDER BY id, version DESC),
     bought AS (
         SELECT DISTINCT ON (id) id, payment_id FROM applied WHERE sign > 0
          ORDER BY id, version DESC)
     UPDATE reservation_views r
        SET status = l.status, updated_at = l.at, version = l.version,
            payment_id = COALESCE(b.payment_id, r.payment_id)
       FROM last l LEFT JOIN bought b ON b.id = l.id
      WHERE r.reservation_id = l.id";

pub(super) async fn move_reservations(
    conn: &mut PgConnection,
    m: &Moves,
) -> Result<(), sqlx::Error> {
    sqlx::query(MOVE_RESERVATIONS)
        .bind(&m.ids)
        .bind(&m.versions)
        .bind(&m.positions)
        .bind(&m.statuses)
        .bind(&m.at)
        .bind(&m.payments)
        .bind(&m.signs)
        .execute(conn)
        .await
        .map(drop)
}

/// Seat movements of every section in one statement. Each movement newer than its event's
/// inventory version counts; the version moves to the newest of them (also when the section
/// is unknown, as one by one); held and sold saturate within 0..=u32::MAX.
static MOVE_SEATS: LazyLock<String> = LazyLock::new(|| {
    const U32_MAX: &str = "4294967295";
    format!(
        "WITH applied AS (
             SELECT m.*
               FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                    AS m(event_id, section, version, held, sold)
               JOIN event_views e ON e.event_id = m.event_id AND e.inventory_version < m.version
              WHERE e.event_id = ANY($1)),
         claimed AS (
             UPDATE event_views e SET inventory_version = c.version
               FROM (SELECT event_id, MAX(version) AS version FROM applied GROUP BY event_id) c
              WHERE e.event_id = c.event_id AND e.event_id = ANY($1)),
         runs AS (
             SELECT event_id, section, held, sold,
                    SUM(held) OVER w AS held_run, SUM(sold) OVER w AS sold_run
               FROM applied
             WINDOW w AS (PARTITION BY event_id, section ORDER BY version ROWS UNBOUNDED PRECEDING)),
         net AS (
             SELECT event_id, section, SUM(held) AS held, MIN(held_run) AS held_low,
                    SUM(sold) AS sold, MIN(sold_run) AS sold_low
               FROM runs GROUP BY event_id, section)
         UPDATE event_sections x
            SET held = {held}, sold = {sold}
           FROM net n
          WHERE x.event_id = n.event_id AND x.name = n.section AND x.event_id = ANY($1)",
        held = saturated("x.held", "n.held", "n.held_low", U32_MAX),
        sold = saturated("x.sold", "n.sold", "n.sold_low", U32_MAX),
    )
});

pub(super) async fn move_seats(conn: &mut PgConnection, s: &Seats) -> Result<(), sqlx::Error> {
    sqlx::query(&MOVE_SEATS)
        .bind(&s.events)
        .bind(&s.sections)
        .bind(&s.versions)
        .bind(&s.held)
        .bind(&s.sold)
        .execute(conn)
        .await
        .map(drop)
}
