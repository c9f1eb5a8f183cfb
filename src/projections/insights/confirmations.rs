//! The insights' confirmed purchases on PostgreSQL, set-based: a run of consecutive
//! `ReservationConfirmed` events of one batch is one statement (the purchase rows marked
//! confirmed at their streams' versions, the event and section totals raised by their sums),
//! where it was three per purchase. A run ends before any other event and before a
//! reservation it already holds, so effects keep the log's order. Used by `postgres.rs`
//! inside the batch's transaction.

use crate::bus::envelope::BusEvent;
use crate::domain::events::ReservationConfirmed;
use sqlx::{Postgres, Transaction};
use std::collections::HashSet;

/// Consecutive confirmations of a batch, gathered until `flush`.
#[derive(Default)]
pub(super) struct Confirmations<'a> {
    events: Vec<(&'a BusEvent, &'a ReservationConfirmed)>,
    held: HashSet<uuid::Uuid>,
}

impl<'a> Confirmations<'a> {
    /// Whether `confirmed` can join the run (false: flush first).
    pub fn accepts(&self, confirmed: &ReservationConfirmed) -> bool {
        !self.held.contains(&confirmed.reservation_id.0)
    }

    pub fn push(&mut self, event: &'a BusEvent, confirmed: &'a ReservationConfirmed) {
        self.held.insert(confirmed.reservation_id.0);
        self.events.push((event, confirmed));
    }

    /// Applies the run and empties it. Returns the first confirmation whose reservation was
    /// never placed, if any: the caller refuses the batch.
    pub async fn flush(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Option<&'a BusEvent>, sqlx::Error> {
        let run = std::mem::take(self);
        if run.events.is_empty() {
            return Ok(None);
        }
        let reservations: Vec<uuid::Uuid> =
            run.events.iter().map(|(_, c)| c.reservation_id.0).collect();
        let payments: Vec<uuid::Uuid> = run.events.iter().map(|(_, c)| c.payment_id.0).collect();
        let at: Vec<chrono::DateTime<chrono::Utc>> = run.events.iter().map(|(_, c)| c.at).collect();
        let positions: Vec<i64> = run
            .events
            .iter()
            .map(|(e, _)| i64::try_from(e.position).unwrap_or(i64::MAX))
            .collect();
        let versions: Vec<i64> = run
            .events
            .iter()
            .map(|(e, _)| i64::try_from(e.version).unwrap_or(i64::MAX))
            .collect();
        // The totals are raised by the rows the UPDATE found, grouped, so each total row is
        // touched once per statement (ON CONFLICT cannot update a row twice in one statement).
        let confirmed: Vec<uuid::Uuid> = sqlx::query_scalar(
            "WITH run AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[],
                                      $5::bigint[])
                     AS run(reservation_id, payment_id, at, position, version)),
             purchases AS (
                 UPDATE insight_purchases p
                    SET status = 'confirmed', payment_id = run.payment_id, purchased_at = run.at,
                        version = GREATEST(p.version, run.version)
                   FROM run
                  WHERE p.reservation_id = run.reservation_id
              RETURNING p.reservation_id, p.event_id, p.section, p.quantity, p.total_cents,
                        p.currency, run.position),
             events AS (
                 INSERT INTO insight_events (event_id, currency, tickets_sold, revenue_cents)
                 SELECT event_id, MIN(currency), SUM(quantity), SUM(total_cents)
                   FROM purchases GROUP BY event_id
                 ON CONFLICT (event_id) DO UPDATE
                    SET currency = COALESCE(insight_events.currency, EXCLUDED.currency),
                        tickets_sold = insight_events.tickets_sold + EXCLUDED.tickets_sold,
                        revenue_cents = insight_events.revenue_cents + EXCLUDED.revenue_cents),
             sections AS (
                 INSERT INTO insight_sections (event_id, section, first_position, tickets_sold, revenue_cents)
                 SELECT event_id, section, MIN(position), SUM(quantity), SUM(total_cents)
                   FROM purchases GROUP BY event_id, section
                 ON CONFLICT (event_id, section) DO UPDATE
                    SET tickets_sold = insight_sections.tickets_sold + EXCLUDED.tickets_sold,
                        revenue_cents = insight_sections.revenue_cents + EXCLUDED.revenue_cents,
                        first_position = LEAST(insight_sections.first_position, EXCLUDED.first_position))
             SELECT reservation_id FROM purchases",
        )
        .bind(&reservations)
        .bind(&payments)
        .bind(&at)
        .bind(&positions)
        .bind(&versions)
        .fetch_all(&mut **tx)
        .await?;
        let found: HashSet<uuid::Uuid> = confirmed.into_iter().collect();
        Ok(run
            .events
            .iter()
            .find(|(_, c)| !found.contains(&c.reservation_id.0))
            .map(|(e, _)| *e))
    }
}
