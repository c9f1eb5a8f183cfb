//! Insights on PostgreSQL (`insight_*` and `consumer_stream_versions` in
//! `migrations_projections/`). A batch of events is one transaction: the streams' version guard
//! for the whole batch first (`versions.rs`, two statements; duplicates change nothing), the
//! batch's new purchase rows in one statement, each run of consecutive confirmations in one
//! statement (`confirmations.rs`), then the other changes event by event; each statement that
//! changes a purchase writes its stream's version on its row.

use super::confirmations::Confirmations;
use super::versions;
use super::{Insights, InsightsError, RecentSales, Revenue, CONSUMER};
use crate::bus::consumer::Applied;
use crate::bus::envelope::BusEvent;
use crate::domain::events::ReservationPlaced;
use crate::domain::{DomainEvent, EventId, UserId};
use crate::paging::{Page, PageRequest};
use crate::projections::{HistoryEntry, ReadError, SalesView, SectionSales};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};

/// The purchases confirmed since `$1`, per currency (the operators' dashboard): read through
/// `insight_purchases_confirmed_at_idx`, not a scan of every purchase.
const SALES_SINCE: &str =
    "SELECT currency, SUM(quantity)::BIGINT AS tickets, SUM(total_cents)::BIGINT AS revenue
       FROM insight_purchases
      WHERE status = 'confirmed' AND purchased_at >= $1
      GROUP BY currency ORDER BY currency";

pub struct PostgresInsights(PgPool);

impl PostgresInsights {
    pub fn new(pool: PgPool) -> Self {
        PostgresInsights(pool)
    }
}

fn unavailable(e: impl std::fmt::Display) -> InsightsError {
    InsightsError::Unavailable(e.to_string())
}

fn read_error(e: impl std::fmt::Display) -> ReadError {
    ReadError::Unavailable(e.to_string())
}

/// Takes a refunded reservation back out of its totals; counts saturate at 0 as in memory.
async fn uncount_sale(
    tx: &mut Transaction<'_, Postgres>,
    reservation: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE insight_events e
            SET tickets_sold = GREATEST(e.tickets_sold - p.quantity, 0),
                revenue_cents = e.revenue_cents - p.total_cents
           FROM insight_purchases p
          WHERE p.reservation_id = $1 AND e.event_id = p.event_id",
    )
    .bind(reservation)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE insight_sections s
            SET tickets_sold = GREATEST(s.tickets_sold - p.quantity, 0),
                revenue_cents = s.revenue_cents - p.total_cents
           FROM insight_purchases p
          WHERE p.reservation_id = $1 AND s.event_id = p.event_id AND s.section = p.section",
    )
    .bind(reservation)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets a reservation's status as its stream's event `e` says; false when the reservation was
/// never placed.
async fn set_status(
    tx: &mut Transaction<'_, Postgres>,
    reservation: uuid::Uuid,
    status: &str,
    e: &BusEvent,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE insight_purchases SET status = $2, version = GREATEST(version, $3)
          WHERE reservation_id = $1",
    )
    .bind(reservation)
    .bind(status)
    .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The events `change` is called for: those it writes something for. It is never called for
/// others (placements are written by `place`, confirmations by `confirmations.rs`), so an arm
/// added to `change` without its event here never runs, and its tests say so.
fn writes(event: &DomainEvent) -> bool {
    use DomainEvent as E;
    matches!(
        event,
        E::EventCreated(_)
            | E::EventDetailsChanged(_)
            | E::ReservationRefunded(_)
            | E::ReservationCancelled(_)
            | E::ReservationExpired(_)
    )
}

async fn change(tx: &mut Transaction<'_, Postgres>, e: &BusEvent) -> Result<bool, sqlx::Error> {
    use DomainEvent as E;
    Ok(match &e.event {
        E::EventCreated(c) => {
            sqlx::query(
                "INSERT INTO insight_events (event_id, name, currency) VALUES ($1, $2, $3)
                 ON CONFLICT (event_id) DO UPDATE SET name = EXCLUDED.name,
                     currency = EXCLUDED.currency",
            )
            .bind(c.event_id.0)
            .bind(&c.details.name)
            .bind(c.currency.to_string())
            .execute(&mut **tx)
            .await?;
            true
        }
        E::EventDetailsChanged(c) => {
            sqlx::query(
                "INSERT INTO insight_events (event_id, name) VALUES ($1, $2)
                 ON CONFLICT (event_id) DO UPDATE SET name = EXCLUDED.name",
            )
            .bind(c.event_id.0)
            .bind(&c.details.name)
            .execute(&mut **tx)
            .await?;
            true
        }
        E::ReservationRefunded(r) => {
            let was: Option<String> = sqlx::query_scalar(
                "SELECT status FROM insight_purchases WHERE reservation_id = $1 FOR UPDATE",
            )
            .bind(r.reservation_id.0)
            .fetch_optional(&mut **tx)
            .await?;
            if was.as_deref() == Some("confirmed") {
                uncount_sale(tx, r.reservation_id.0).await?;
            }
            set_status(tx, r.reservation_id.0, "refunded", e).await?
        }
        E::ReservationCancelled(c) => set_status(tx, c.reservation_id.0, "cancelled", e).await?,
        E::ReservationExpired(x) => set_status(tx, x.reservation_id.0, "expired", e).await?,
        // Not called for other events (`writes`).
        _ => true,
    })
}

/// The purchase rows of the batch's new `ReservationPlaced` events, in one statement, each at
/// its event's version (the stream's, `versions.rs`). False when a row was there already:
/// another member of the group placed it since `versions::lock` (roll back, decide again).
/// In reservation order, as `lock` locks: two members inserting the same new purchases wait
/// for each other in one order, never in a circle.
async fn place(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&BusEvent],
) -> Result<bool, sqlx::Error> {
    let (placed, versions): (Vec<_>, Vec<i64>) = events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::ReservationPlaced(p) => {
                Some((p, i64::try_from(e.version).unwrap_or(i64::MAX)))
            }
            _ => None,
        })
        .unzip();
    if placed.is_empty() {
        return Ok(true);
    }
    let column = |f: fn(&ReservationPlaced) -> uuid::Uuid| -> Vec<uuid::Uuid> {
        placed.iter().map(|p| f(p)).collect()
    };
    let sections: Vec<&str> = placed.iter().map(|p| p.section.as_str()).collect();
    let quantities: Vec<i64> = placed.iter().map(|p| i64::from(p.quantity)).collect();
    let totals: Vec<i64> = placed.iter().map(|p| p.total.amount_cents).collect();
    let currencies: Vec<String> = placed
        .iter()
        .map(|p| p.total.currency.to_string())
        .collect();
    let inserted = sqlx::query(
        "INSERT INTO insight_purchases (reservation_id, event_id, user_id, section,
             quantity, total_cents, currency, status, version)
         SELECT r, e, u, s, q, t, c, 'pending', v
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[],
                       $6::bigint[], $7::text[], $8::bigint[]) AS p(r, e, u, s, q, t, c, v)
          ORDER BY r
         ON CONFLICT (reservation_id) DO NOTHING",
    )
    .bind(column(|p| p.reservation_id.0))
    .bind(column(|p| p.event_id.0))
    .bind(column(|p| p.user_id.0))
    .bind(sections)
    .bind(quantities)
    .bind(totals)
    .bind(currencies)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;
    Ok(usize::try_from(inserted.rows_affected()).ok() == Some(placed.len()))
}

fn never_placed(event: &BusEvent) -> InsightsError {
    InsightsError::Inconsistent {
        stream_id: event.stream_id.clone(),
        version: event.version,
        reason: "the reservation was never placed".into(),
    }
}

/// Applies the gathered confirmations and empties the run.
async fn confirm(
    tx: &mut Transaction<'_, Postgres>,
    run: &mut Confirmations<'_>,
) -> Result<(), InsightsError> {
    match run.flush(tx).await.map_err(unavailable)? {
        Some(event) => Err(never_placed(event)),
        None => Ok(()),
    }
}

/// How a batch's transaction begins. Its statements are planned for the arrays they get each
/// time: the guarded tables grow by a row per reservation during an on-sale, and a plan
/// cached while `consumer_stream_versions` was small read it whole at every batch, matching
/// each row against the batch's streams (97 such reads in one benchmark run, 52 ms a batch on
/// average: BENCHMARKS.md, session 22); planning anew costs about a millisecond.
const BATCH: &str = "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan";

/// Times a batch is decided again after losing a race for a new stream's version to another
/// member of the group, before it fails (transiently: the consumer retries it).
const RACES: usize = 3;

#[async_trait]
impl Insights for PostgresInsights {
    async fn apply(&self, event: &BusEvent) -> Result<Applied, InsightsError> {
        self.apply_batch(std::slice::from_ref(event))
            .await
            .map(|applied| applied.first().copied().unwrap_or(Applied::Duplicate))
    }

    async fn apply_batch(&self, events: &[BusEvent]) -> Result<Vec<Applied>, InsightsError> {
        for _ in 0..RACES {
            let mut tx = self.0.begin_with(BATCH).await.map_err(unavailable)?;
            let guard = versions::lock(&mut tx, events).await.map_err(unavailable)?;
            if let Some(gap) = guard.gap {
                return Err(gap);
            }
            if !guard.any_applied() {
                return Ok(guard.applied);
            }
            if !guard.record(&mut tx).await.map_err(unavailable)? {
                continue;
            }
            let fresh: Vec<&BusEvent> = events
                .iter()
                .zip(&guard.applied)
                .filter(|(_, a)| **a == Applied::Applied)
                .map(|(e, _)| e)
                .collect();
            // Placements first, in one statement: a reservation's placement is its stream's
            // first event, so nothing of the batch needs it later.
            if !place(&mut tx, &fresh).await.map_err(unavailable)? {
                continue;
            }
            let mut run = Confirmations::default();
            for event in fresh {
                if let DomainEvent::ReservationConfirmed(confirmed) = &event.event {
                    if !run.accepts(confirmed) {
                        confirm(&mut tx, &mut run).await?;
                    }
                    run.push(event, confirmed);
                    continue;
                }
                // Placements are in (`place`) and other events change nothing here: only an
                // event that writes ends the run, so a sale's placements between its
                // payments do not split it.
                if !writes(&event.event) {
                    continue;
                }
                confirm(&mut tx, &mut run).await?;
                if !change(&mut tx, event).await.map_err(unavailable)? {
                    return Err(never_placed(event));
                }
            }
            confirm(&mut tx, &mut run).await?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(guard.applied);
        }
        Err(unavailable(format!(
            "another consumer applied the batch's streams meanwhile, {RACES} times in a row"
        )))
    }

    async fn skip(&self, stream_id: &str, version: u64) -> Result<(), InsightsError> {
        sqlx::query(
            "INSERT INTO consumer_stream_versions (consumer, stream_id, version)
             VALUES ($1, $2, $3)
             ON CONFLICT (consumer, stream_id) DO UPDATE
                SET version = GREATEST(consumer_stream_versions.version, EXCLUDED.version)",
        )
        .bind(CONSUMER)
        .bind(stream_id)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .execute(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), InsightsError> {
        let mut tx = self.0.begin().await.map_err(unavailable)?;
        sqlx::query("TRUNCATE insight_events, insight_sections, insight_purchases")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM consumer_stream_versions WHERE consumer = $1")
            .bind(CONSUMER)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn sales(&self, event: EventId) -> Result<Option<SalesView>, ReadError> {
        let Some(row) = sqlx::query(
            "SELECT currency, tickets_sold, revenue_cents FROM insight_events
              WHERE event_id = $1 AND currency IS NOT NULL",
        )
        .bind(event.0)
        .fetch_optional(&self.0)
        .await
        .map_err(read_error)?
        else {
            return Ok(None);
        };
        let sections = sqlx::query(
            "SELECT section, tickets_sold, revenue_cents FROM insight_sections
              WHERE event_id = $1 ORDER BY first_position, section",
        )
        .bind(event.0)
        .fetch_all(&self.0)
        .await
        .map_err(read_error)?;
        let count = |row: &PgRow| -> Result<u64, ReadError> {
            let n: i64 = row.try_get("tickets_sold").map_err(read_error)?;
            u64::try_from(n).map_err(read_error)
        };
        Ok(Some(SalesView {
            event_id: event.0,
            tickets_sold: count(&row)?,
            revenue_cents: row.try_get("revenue_cents").map_err(read_error)?,
            currency: row.try_get("currency").map_err(read_error)?,
            by_section: sections
                .iter()
                .map(|s| {
                    Ok(SectionSales {
                        section: s.try_get("section").map_err(read_error)?,
                        tickets_sold: count(s)?,
                        revenue_cents: s.try_get("revenue_cents").map_err(read_error)?,
                    })
                })
                .collect::<Result<_, ReadError>>()?,
        }))
    }

    async fn sales_since(&self, since: DateTime<Utc>) -> Result<RecentSales, ReadError> {
        let rows = sqlx::query(SALES_SINCE)
            .bind(since)
            .fetch_all(&self.0)
            .await
            .map_err(read_error)?;
        let mut recent = RecentSales::default();
        for row in &rows {
            let tickets: i64 = row.try_get("tickets").map_err(read_error)?;
            recent.tickets_sold += u64::try_from(tickets).map_err(read_error)?;
            recent.revenue.push(Revenue {
                currency: row.try_get("currency").map_err(read_error)?,
                amount_cents: row.try_get("revenue").map_err(read_error)?,
            });
        }
        Ok(recent)
    }

    async fn history(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<HistoryEntry>, ReadError> {
        // The total from the same statement (one snapshot: the page and its total always
        // agree, even while purchases are being confirmed); asked apart only for a page past
        // the end. An empty first page is a total of 0 in that snapshot: counting again could
        // see purchases confirmed since and answer a total with no items.
        let rows = sqlx::query(
            "SELECT p.reservation_id, p.event_id, COALESCE(e.name, '') AS event_name, p.section,
                    p.quantity, p.total_cents, p.currency, p.status, p.payment_id, p.purchased_at,
                    COUNT(*) OVER () AS total
               FROM insight_purchases p LEFT JOIN insight_events e USING (event_id)
              WHERE p.user_id = $1 AND p.purchased_at IS NOT NULL
              ORDER BY p.purchased_at DESC, p.reservation_id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user.0)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.0)
        .await
        .map_err(read_error)?;
        let total: i64 = match rows.first() {
            Some(row) => row.try_get("total").map_err(read_error)?,
            None if page.offset() == 0 => 0,
            None => sqlx::query_scalar(
                "SELECT COUNT(*) FROM insight_purchases WHERE user_id = $1 AND purchased_at IS NOT NULL",
            )
            .bind(user.0)
            .fetch_one(&self.0)
            .await
            .map_err(read_error)?,
        };
        let items = rows
            .iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(read_error)?;
                let quantity: i64 = r.try_get("quantity").map_err(read_error)?;
                Ok(HistoryEntry {
                    reservation_id: r.try_get("reservation_id").map_err(read_error)?,
                    event_id: r.try_get("event_id").map_err(read_error)?,
                    event_name: r.try_get("event_name").map_err(read_error)?,
                    section: r.try_get("section").map_err(read_error)?,
                    quantity: u32::try_from(quantity).map_err(read_error)?,
                    total_cents: r.try_get("total_cents").map_err(read_error)?,
                    currency: r.try_get("currency").map_err(read_error)?,
                    status: crate::domain::reservation::ReservationStatus::parse(&status)
                        .ok_or_else(|| read_error(format!("unknown status {status}")))?,
                    payment_id: r.try_get("payment_id").map_err(read_error)?,
                    purchased_at: r.try_get("purchased_at").map_err(read_error)?,
                })
            })
            .collect::<Result<Vec<_>, ReadError>>()?;
        Ok(page.page_of(items, u64::try_from(total).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests;
