//! The statements `Batch` runs, one per table, each over the arrays `Batch` gathered. Each is a
//! `Piece`: run alone (inside the projector's transaction), or spliced as CTEs into the one
//! statement that also claims the checkpoint (`Batch::write_claiming`), where `{gate}` holds
//! every row back unless the claim succeeded. A statement reads the rows it guards against in
//! its own snapshot, so every event of the batch meets its guard as the row stood before the
//! statement. Where a statement probes a view by the batch's keys it also filters on
//! `key = ANY($1)`: joined only to `UNNEST(..)`, whose size the planner guesses, a growing view
//! was read whole at every batch (2 to 4.5 ms per batch over 10 000 reservations, and growing);
//! with the filter it stays an index scan.

use super::{Attempts, Moves, Placed, Refunds, Seats};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use sqlx::postgres::PgArguments;
use sqlx::Postgres;
use std::fmt::Write as _;
use std::sync::LazyLock;

pub(super) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// One table's statement: the read-only CTEs it goes through, then the statement that writes.
/// Its parameters are `$1..=$params`, in the order its binder binds them.
pub(super) struct Piece {
    ctes: Vec<(&'static str, String)>,
    write: String,
    params: usize,
    /// The statement run alone, ungated.
    pub(super) alone: String,
}

impl Piece {
    fn new(ctes: Vec<(&'static str, String)>, write: String, params: usize) -> Self {
        let mut alone = String::new();
        for (i, (name, body)) in ctes.iter().enumerate() {
            let lead = if i == 0 { "WITH" } else { "," };
            let _ = writeln!(alone, "{lead} {name} AS ({body})");
        }
        alone.push_str(&write);
        let alone = alone.replace("{gate}", "TRUE");
        Self {
            ctes,
            write,
            params,
            alone,
        }
    }

    pub(super) fn params(&self) -> usize {
        self.params
    }

    /// The piece as CTEs of a larger statement (each followed by a comma), its write named
    /// `name`, its parameters numbered from `$offset + 1`, its rows let through by `gate`.
    pub(super) fn spliced(&self, name: &str, offset: usize, gate: &str) -> String {
        let mut sql = String::new();
        for (cte, body) in &self.ctes {
            let _ = writeln!(sql, "{cte} AS ({}),", shift(body, offset));
        }
        let _ = writeln!(sql, "{name} AS ({}),", shift(&self.write, offset));
        sql.replace("{gate}", gate)
    }
}

/// `sql` with every `$n` renumbered `$n + offset`.
fn shift(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => {
                let _ = write!(out, "{}", n + offset);
            }
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

pub(super) static INSERT_RESERVATIONS: LazyLock<Piece> = LazyLock::new(|| {
    let write = "INSERT INTO reservation_views (reservation_id, event_id, user_id, section, quantity, status,
                                        total_cents, currency, expires_at, version, created_at, updated_at)
         SELECT r.id, r.event_id, r.user_id, r.section, r.quantity, $11, r.total_cents, r.currency,
                r.expires_at, r.version, r.at, r.at
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::bigint[],
                       $7::text[], $8::timestamptz[], $9::bigint[], $10::timestamptz[])
                AS r(id, event_id, user_id, section, quantity, total_cents, currency, expires_at,
                     version, at)
          WHERE {gate}
         ON CONFLICT (reservation_id) DO NOTHING";
    Piece::new(Vec::new(), write.to_owned(), 11)
});

pub(super) fn bind_placed<'q>(q: PgQuery<'q>, p: &'q Placed) -> PgQuery<'q> {
    q.bind(&p.ids)
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
}

pub(super) static INSERT_PAYMENTS: LazyLock<Piece> = LazyLock::new(|| {
    let write = "INSERT INTO payment_views (payment_id, reservation_id, event_id, user_id, status,
                                    amount_cents, currency, reason, version, created_at, updated_at)
         SELECT p.id, p.reservation_id, p.event_id, p.user_id, p.status, p.amount_cents,
                p.currency, p.reason, p.version, p.at, p.at
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[],
                       $7::text[], $8::text[], $9::bigint[], $10::timestamptz[])
                AS p(id, reservation_id, event_id, user_id, status, amount_cents, currency,
                     reason, version, at)
          WHERE {gate}
         ON CONFLICT (payment_id) DO NOTHING";
    Piece::new(Vec::new(), write.to_owned(), 10)
});

pub(super) fn bind_attempts<'q>(q: PgQuery<'q>, p: &'q Attempts) -> PgQuery<'q> {
    q.bind(&p.ids)
        .bind(&p.reservations)
        .bind(&p.events)
        .bind(&p.users)
        .bind(&p.statuses)
        .bind(&p.amounts)
        .bind(&p.currencies)
        .bind(&p.reasons)
        .bind(&p.versions)
        .bind(&p.at)
}

/// A refund overwrites fields, so of the refunds newer than a row only the last one matters.
pub(super) static REFUND_PAYMENTS: LazyLock<Piece> = LazyLock::new(|| {
    let write = "UPDATE payment_views p
            SET status = $5, reason = u.reason, updated_at = u.at, version = u.version
           FROM (SELECT DISTINCT ON (id) *
                   FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[])
                        AS u(id, version, reason, at)
                  ORDER BY id, version DESC) u
          WHERE p.payment_id = u.id AND p.version < u.version AND p.payment_id = ANY($1)
            AND {gate}";
    Piece::new(Vec::new(), write.to_owned(), 5)
});

pub(super) fn bind_refunds<'q>(q: PgQuery<'q>, r: &'q Refunds) -> PgQuery<'q> {
    q.bind(&r.ids)
        .bind(&r.versions)
        .bind(&r.reasons)
        .bind(&r.at)
        .bind(PaymentStatus::Refunded.as_str())
}

/// Counters moved by `(delta, lowest running sum)` of a sequence of deltas: adding them one at a
/// time with `x = max(0, x + d)` ends at `max(x + net, net - lowest)` (Lindley's recursion),
/// which is what `memory.rs` gets by saturating at every step. `{x}`, `{net}` and `{low}` are
/// SQL expressions; the upper bound is applied at the end only, where u32 or i64 counts
/// cannot be reached within one batch by events the domain decides.
fn saturated(x: &str, net: &str, low: &str, max: &str) -> String {
    format!("LEAST(GREATEST({x} + {net}, {net} - {low}), {max})::bigint")
}

/// Reservation status changes in one statement. `mr_applied` is every change newer than its
/// row (as the row stood before this statement); the row takes the last one's status and time,
/// and the last confirmation's payment. (Sales and purchase history are the asynchronous
/// `insights` projection's.)
pub(super) static MOVE_RESERVATIONS: LazyLock<Piece> = LazyLock::new(|| {
    let ctes = vec![
        (
            "mr_applied",
            "SELECT m.*
               FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[],
                           $5::timestamptz[], $6::uuid[], $7::bigint[])
                    AS m(id, version, position, status, at, payment_id, sign)
               JOIN reservation_views r ON r.reservation_id = m.id AND r.version < m.version
              WHERE r.reservation_id = ANY($1) AND {gate}"
                .to_owned(),
        ),
        (
            "mr_last",
            "SELECT DISTINCT ON (id) id, version, status, at FROM mr_applied
              ORDER BY id, version DESC"
                .to_owned(),
        ),
        (
            "mr_bought",
            "SELECT DISTINCT ON (id) id, payment_id FROM mr_applied WHERE sign > 0
              ORDER BY id, version DESC"
                .to_owned(),
        ),
    ];
    let write = "UPDATE reservation_views r
        SET status = l.status, updated_at = l.at, version = l.version,
            payment_id = COALESCE(b.payment_id, r.payment_id)
       FROM mr_last l LEFT JOIN mr_bought b ON b.id = l.id
      WHERE r.reservation_id = l.id";
    Piece::new(ctes, write.to_owned(), 7)
});

pub(super) fn bind_moves<'q>(q: PgQuery<'q>, m: &'q Moves) -> PgQuery<'q> {
    q.bind(&m.ids)
        .bind(&m.versions)
        .bind(&m.positions)
        .bind(&m.statuses)
        .bind(&m.at)
        .bind(&m.payments)
        .bind(&m.signs)
}

/// Seat movements of every section in one statement. Each movement newer than its event's
/// inventory version counts; the version moves to the newest of them (also when the section
/// is unknown, as one by one); held and sold saturate within 0..=u32::MAX. `ms_claimed` writes
/// too, so it is one more CTE: a write can only be one at the top level of a statement.
pub(super) static MOVE_SEATS: LazyLock<Piece> = LazyLock::new(|| {
    const U32_MAX: &str = "4294967295";
    let ctes = vec![
        (
            "ms_applied",
            "SELECT m.*
               FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                    AS m(event_id, section, version, held, sold)
               JOIN event_views e ON e.event_id = m.event_id AND e.inventory_version < m.version
              WHERE e.event_id = ANY($1) AND {gate}"
                .to_owned(),
        ),
        (
            "ms_claimed",
            "UPDATE event_views e SET inventory_version = c.version
               FROM (SELECT event_id, MAX(version) AS version FROM ms_applied GROUP BY event_id) c
              WHERE e.event_id = c.event_id AND e.event_id = ANY($1)"
                .to_owned(),
        ),
        (
            "ms_runs",
            "SELECT event_id, section, held, sold,
                    SUM(held) OVER w AS held_run, SUM(sold) OVER w AS sold_run
               FROM ms_applied
             WINDOW w AS (PARTITION BY event_id, section ORDER BY version ROWS UNBOUNDED PRECEDING)"
                .to_owned(),
        ),
        (
            "ms_net",
            "SELECT event_id, section, SUM(held) AS held, MIN(held_run) AS held_low,
                    SUM(sold) AS sold, MIN(sold_run) AS sold_low
               FROM ms_runs GROUP BY event_id, section"
                .to_owned(),
        ),
    ];
    let write = format!(
        "UPDATE event_sections x
            SET held = {held}, sold = {sold}
           FROM ms_net n
          WHERE x.event_id = n.event_id AND x.name = n.section AND x.event_id = ANY($1)",
        held = saturated("x.held", "n.held", "n.held_low", U32_MAX),
        sold = saturated("x.sold", "n.sold", "n.sold_low", U32_MAX),
    );
    Piece::new(ctes, write, 5)
});

pub(super) fn bind_seats<'q>(q: PgQuery<'q>, s: &'q Seats) -> PgQuery<'q> {
    q.bind(&s.events)
        .bind(&s.sections)
        .bind(&s.versions)
        .bind(&s.held)
        .bind(&s.sold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renumbering shifts every parameter, two-digit ones included, and leaves the rest alone.
    #[test]
    fn shift_renumbers_every_parameter() {
        assert_eq!(
            shift("a = $1 AND b = ANY($10) AND c = '$'", 3),
            "a = $4 AND b = ANY($13) AND c = '$'"
        );
    }
}
