//! The port's queries: rows mapped to the view types, in the orders `memory.rs` returns.
//! An event and its sections (and sales with their sections) are read in one statement, so
//! they come from one snapshot. Pages are `LIMIT/OFFSET` with `COUNT(*) OVER ()`; only a page
//! past the end needs a second statement for its total. Read-only: nothing here writes.

use super::super::*;
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::paging::{Page, PageRequest};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

pub(super) fn unavailable(e: sqlx::Error) -> ReadError {
    ReadError::Unavailable(e.to_string())
}

/// Columns hold u32 values behind CHECK constraints; out of range would be a corrupt row.
fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Parses a status column through the enum's own names, so the two cannot drift apart.
fn status<S: Copy>(all: &[S], name: fn(S) -> &'static str, text: &str) -> Result<S, ReadError> {
    all.iter()
        .copied()
        .find(|s| name(*s) == text)
        .ok_or_else(|| ReadError::Unavailable(format!("unknown status {text:?} in a view row")))
}

fn event_status(text: &str) -> Result<EventStatus, ReadError> {
    status(&EventStatus::ALL, EventStatus::as_str, text)
}

fn reservation_status(text: &str) -> Result<ReservationStatus, ReadError> {
    ReservationStatus::parse(text)
        .ok_or_else(|| ReadError::Unavailable(format!("unknown status {text:?}")))
}

fn payment_status(text: &str) -> Result<PaymentStatus, ReadError> {
    use PaymentStatus::*;
    status(&[Captured, Failed, Refunded], PaymentStatus::as_str, text)
}

/// `(LIMIT, OFFSET)` of a page, as `PageRequest::slice` cuts it.
fn window(page: PageRequest) -> (i64, i64) {
    let offset = (u64::from(page.page.max(1)) - 1) * u64::from(page.page_size);
    (
        i64::from(page.page_size),
        i64::try_from(offset).unwrap_or(i64::MAX),
    )
}

/// Runs a page query (which selects `total_count`) and, only when the page came back empty for
/// a reason other than an empty result, `count` for the total.
async fn paged<T>(
    pool: &PgPool,
    page: PageRequest,
    rows: Query<'_, Postgres, PgArguments>,
    count: Query<'_, Postgres, PgArguments>,
    map: impl Fn(&PgRow) -> Result<T, ReadError>,
) -> Result<Page<T>, ReadError> {
    let rows = rows.fetch_all(pool).await.map_err(unavailable)?;
    let (limit, offset) = window(page);
    let total: i64 = match rows.first() {
        Some(row) => row.try_get("total_count").map_err(unavailable)?,
        None if offset == 0 && limit > 0 => 0,
        None => count
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(unavailable)?,
    };
    let items = rows.iter().map(map).collect::<Result<_, _>>()?;
    Ok(page.page_of(items, to_u64(total)))
}

// ---- events ----

/// An event row with its sections aggregated in `ordinal` order (NULL without sections).
const EVENT_WITH_SECTIONS: &str = "
    LEFT JOIN LATERAL (
        SELECT array_agg(x.name ORDER BY x.ordinal, x.name) AS section_names,
               array_agg(x.capacity ORDER BY x.ordinal, x.name) AS section_capacities,
               array_agg(x.price_cents ORDER BY x.ordinal, x.name) AS section_prices,
               array_agg(x.held ORDER BY x.ordinal, x.name) AS section_held,
               array_agg(x.sold ORDER BY x.ordinal, x.name) AS section_sold
          FROM event_sections x
         WHERE x.event_id = e.event_id) s ON true";

#[derive(FromRow)]
struct EventRow {
    event_id: Uuid,
    owner_id: Uuid,
    name: String,
    description: Option<String>,
    venue_name: String,
    venue_address: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    currency: String,
    status: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    max_tickets_per_customer: Option<i64>,
    section_names: Option<Vec<String>>,
    section_capacities: Option<Vec<i64>>,
    section_prices: Option<Vec<i64>>,
    section_held: Option<Vec<i64>>,
    section_sold: Option<Vec<i64>>,
}

impl EventRow {
    fn into_view(self) -> Result<EventView, ReadError> {
        let names = self.section_names.unwrap_or_default();
        let columns = [
            self.section_capacities.unwrap_or_default(),
            self.section_prices.unwrap_or_default(),
            self.section_held.unwrap_or_default(),
            self.section_sold.unwrap_or_default(),
        ];
        if columns.iter().any(|c| c.len() != names.len()) {
            return Err(ReadError::Unavailable("inconsistent section arrays".into()));
        }
        let [capacities, prices, held, sold] = columns;
        let sections = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let capacity = to_u32(capacities[i]);
                let (held, sold) = (to_u32(held[i]), to_u32(sold[i]));
                SectionView {
                    name,
                    capacity,
                    price_cents: prices[i],
                    available: capacity.saturating_sub(held.saturating_add(sold)),
                    held,
                    sold,
                }
            })
            .collect();
        Ok(EventView {
            id: self.event_id,
            owner_id: self.owner_id,
            name: self.name,
            description: self.description,
            venue: VenueView {
                name: self.venue_name,
                address: self.venue_address,
            },
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            currency: self.currency,
            status: event_status(&self.status)?,
            sections,
            max_tickets_per_customer: self.max_tickets_per_customer.map(to_u32),
            version: to_u64(self.version),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn event_view(row: &PgRow) -> Result<EventView, ReadError> {
    EventRow::from_row(row).map_err(unavailable)?.into_view()
}

pub(super) async fn event(pool: &PgPool, id: EventId) -> Result<Option<EventView>, ReadError> {
    let sql =
        format!("SELECT e.*, s.* FROM event_views e {EVENT_WITH_SECTIONS} WHERE e.event_id = $1");
    let row = sqlx::query(&sql)
        .bind(id.0)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(event_view).transpose()
}

/// The `WHERE` clause of an event listing over `event_views v`: drafts only for their owner
/// and admins, then the optional filters. Built per call so each shape gets its own plan.
fn event_filter<'a>(sql: &mut QueryBuilder<'a, Postgres>, query: &'a EventQuery) {
    sql.push(" WHERE true");
    if !query.viewer_is_admin {
        sql.push(" AND (v.status <> ")
            .push_bind(EventStatus::Draft.as_str());
        if let Some(viewer) = query.viewer {
            sql.push(" OR v.owner_id = ").push_bind(viewer.0);
        }
        sql.push(")");
    }
    if let Some(status) = query.status {
        sql.push(" AND v.status = ").push_bind(status.as_str());
    }
    if let Some(owner) = query.owner_id {
        sql.push(" AND v.owner_id = ").push_bind(owner.0);
    }
}

pub(super) async fn events(
    pool: &PgPool,
    query: &EventQuery,
    page: PageRequest,
) -> Result<Page<EventView>, ReadError> {
    let (limit, offset) = window(page);
    let mut rows = QueryBuilder::new(
        "SELECT e.*, s.* FROM (SELECT v.*, COUNT(*) OVER () AS total_count FROM event_views v",
    );
    event_filter(&mut rows, query);
    rows.push(" ORDER BY v.starts_at, v.event_id LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset)
        .push(") e")
        .push(EVENT_WITH_SECTIONS)
        .push(" ORDER BY e.starts_at, e.event_id");
    let mut count = QueryBuilder::new("SELECT COUNT(*) FROM event_views v");
    event_filter(&mut count, query);
    paged(pool, page, rows.build(), count.build(), event_view).await
}

// ---- reservations ----

#[derive(FromRow)]
struct ReservationRow {
    reservation_id: Uuid,
    event_id: Uuid,
    user_id: Uuid,
    section: String,
    quantity: i64,
    status: String,
    total_cents: i64,
    currency: String,
    expires_at: DateTime<Utc>,
    payment_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn reservation_view(row: &PgRow) -> Result<ReservationView, ReadError> {
    let r = ReservationRow::from_row(row).map_err(unavailable)?;
    Ok(ReservationView {
        reservation_id: r.reservation_id,
        event_id: r.event_id,
        user_id: r.user_id,
        section: r.section,
        quantity: to_u32(r.quantity),
        status: reservation_status(&r.status)?,
        total_cents: r.total_cents,
        currency: r.currency,
        expires_at: r.expires_at,
        payment_id: r.payment_id,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// The reservations of `ids` the read models hold, in no particular order.
pub(super) async fn reservations_by_id(
    pool: &PgPool,
    ids: &[ReservationId],
) -> Result<Vec<ReservationView>, ReadError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let rows = sqlx::query("SELECT * FROM reservation_views WHERE reservation_id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(reservation_view).collect()
}

pub(super) async fn reservations(
    pool: &PgPool,
    user: Option<UserId>,
    page: PageRequest,
) -> Result<Page<ReservationView>, ReadError> {
    let (limit, offset) = window(page);
    // Two statements rather than `$1 IS NULL OR ..`, so each uses its own index.
    match user {
        Some(user) => {
            let rows = sqlx::query(
                "SELECT *, COUNT(*) OVER () AS total_count FROM reservation_views
                  WHERE user_id = $1
                  ORDER BY created_at DESC, reservation_id DESC LIMIT $2 OFFSET $3",
            )
            .bind(user.0)
            .bind(limit)
            .bind(offset);
            let count = sqlx::query("SELECT COUNT(*) FROM reservation_views WHERE user_id = $1")
                .bind(user.0);
            paged(pool, page, rows, count, reservation_view).await
        }
        None => {
            let rows = sqlx::query(
                "SELECT *, COUNT(*) OVER () AS total_count FROM reservation_views
                  ORDER BY created_at DESC, reservation_id DESC LIMIT $1 OFFSET $2",
            )
            .bind(limit)
            .bind(offset);
            let count = sqlx::query("SELECT COUNT(*) FROM reservation_views");
            paged(pool, page, rows, count, reservation_view).await
        }
    }
}

pub(super) async fn pending_holds(pool: &PgPool) -> Result<Vec<PendingHold>, ReadError> {
    let rows: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT event_id, reservation_id, expires_at FROM reservation_views
          WHERE status = $1 ORDER BY expires_at, reservation_id",
    )
    .bind(ReservationStatus::Pending.as_str())
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows
        .into_iter()
        .map(|(event_id, reservation_id, expires_at)| PendingHold {
            event_id: EventId(event_id),
            reservation_id: ReservationId(reservation_id),
            expires_at,
        })
        .collect())
}

// ---- payments ----

#[derive(FromRow)]
struct PaymentRow {
    payment_id: Uuid,
    reservation_id: Uuid,
    event_id: Uuid,
    user_id: Uuid,
    status: String,
    amount_cents: i64,
    currency: String,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn payment_view(row: &PgRow) -> Result<PaymentView, ReadError> {
    let p = PaymentRow::from_row(row).map_err(unavailable)?;
    Ok(PaymentView {
        payment_id: p.payment_id,
        reservation_id: p.reservation_id,
        event_id: p.event_id,
        user_id: p.user_id,
        status: payment_status(&p.status)?,
        amount_cents: p.amount_cents,
        currency: p.currency,
        reason: p.reason,
        created_at: p.created_at,
        updated_at: p.updated_at,
    })
}

pub(super) async fn payment(
    pool: &PgPool,
    id: PaymentId,
) -> Result<Option<PaymentView>, ReadError> {
    let row = sqlx::query("SELECT * FROM payment_views WHERE payment_id = $1")
        .bind(id.0)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(payment_view).transpose()
}

pub(super) async fn recorded_payments(
    pool: &PgPool,
    ids: &[PaymentId],
) -> Result<HashSet<PaymentId>, ReadError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let shown: Vec<Uuid> =
        sqlx::query_scalar("SELECT payment_id FROM payment_views WHERE payment_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    Ok(shown.into_iter().map(PaymentId).collect())
}

pub(super) async fn payments_of(
    pool: &PgPool,
    user: UserId,
    page: PageRequest,
) -> Result<Page<PaymentView>, ReadError> {
    let (limit, offset) = window(page);
    let rows = sqlx::query(
        "SELECT *, COUNT(*) OVER () AS total_count FROM payment_views
          WHERE user_id = $1
          ORDER BY created_at DESC, payment_id DESC LIMIT $2 OFFSET $3",
    )
    .bind(user.0)
    .bind(limit)
    .bind(offset);
    let count = sqlx::query("SELECT COUNT(*) FROM payment_views WHERE user_id = $1").bind(user.0);
    paged(pool, page, rows, count, payment_view).await
}
