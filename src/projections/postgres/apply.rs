//! Applies one decoded event to the view tables, inside the batch transaction that holds the
//! checkpoint lock. Creations are `INSERT .. ON CONFLICT DO NOTHING`; changes are guarded by the
//! version of the stream a row follows (`WHERE version < $n`), and counters (seats, sales) move
//! only when that guard let the change through, so an event applied twice is a no-op even
//! without the checkpoint. Counts saturate as `memory.rs` does instead of failing the batch.

use crate::domain::event::EventStatus;
use crate::domain::events::{self as ev, DomainEvent as E};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::domain::{EventId, PaymentId, ReservationId};
use crate::eventstore::RecordedEvent;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

type Result = std::result::Result<(), sqlx::Error>;

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Applies `event`, recorded as `recorded`, to the views.
pub(super) async fn apply(conn: &mut PgConnection, recorded: &RecordedEvent, event: &E) -> Result {
    let version = big(recorded.version);
    match event {
        E::EventCreated(e) => create_event(conn, e, version).await,
        E::EventDetailsChanged(e) => change_details(conn, e, recorded).await,
        E::EventPublished(e) => {
            set_status(conn, e.event_id, EventStatus::Published, recorded).await
        }
        E::EventSalesOpened(e) => set_status(conn, e.event_id, EventStatus::OnSale, recorded).await,
        E::EventSalesClosed(e) => {
            set_status(conn, e.event_id, EventStatus::SalesClosed, recorded).await
        }
        E::EventCancelled(e) => {
            set_status(conn, e.event_id, EventStatus::Cancelled, recorded).await
        }
        E::InventoryStocked(e) => {
            if claim_inventory(conn, e.event_id, version).await? {
                restock(conn, e).await?;
            }
            Ok(())
        }
        E::SeatsHeld(e) => {
            let q = i64::from(e.quantity);
            seats(conn, e.event_id, version, &e.section, (q, 0)).await
        }
        E::HeldSeatsReleased(e) => {
            let q = i64::from(e.quantity);
            seats(conn, e.event_id, version, &e.section, (-q, 0)).await
        }
        E::HeldSeatsSold(e) => {
            let q = i64::from(e.quantity);
            seats(conn, e.event_id, version, &e.section, (-q, q)).await
        }
        E::SoldSeatsReturned(e) => {
            let q = i64::from(e.quantity);
            seats(conn, e.event_id, version, &e.section, (0, -q)).await
        }
        E::ReservationPlaced(e) => place_reservation(conn, e, version).await,
        E::ReservationConfirmed(e) => {
            let change = Transition {
                status: ReservationStatus::Confirmed,
                at: e.at,
                payment_id: Some(e.payment_id),
                purchased: true,
            };
            if let Some(r) = transition(conn, e.reservation_id, version, change).await? {
                count_sale(conn, &r, 1, recorded.position).await?;
            }
            Ok(())
        }
        E::ReservationCancelled(e) => {
            let change = Transition::to(ReservationStatus::Cancelled, e.at);
            transition(conn, e.reservation_id, version, change)
                .await
                .map(drop)
        }
        E::ReservationExpired(e) => {
            let change = Transition::to(ReservationStatus::Expired, e.at);
            transition(conn, e.reservation_id, version, change)
                .await
                .map(drop)
        }
        E::ReservationRefunded(e) => {
            let change = Transition::to(ReservationStatus::Refunded, e.at);
            if let Some(r) = transition(conn, e.reservation_id, version, change).await? {
                count_sale(conn, &r, -1, recorded.position).await?;
            }
            Ok(())
        }
        E::PaymentCaptured(e) => {
            let p = NewPayment {
                payment_id: e.payment_id,
                reservation_id: e.reservation_id.0,
                event_id: e.event_id.0,
                user_id: e.user_id.0,
                status: PaymentStatus::Captured,
                amount: e.amount,
                reason: None,
                at: e.at,
            };
            record_payment(conn, p, version).await
        }
        E::PaymentDeclined(e) => {
            let p = NewPayment {
                payment_id: e.payment_id,
                reservation_id: e.reservation_id.0,
                event_id: e.event_id.0,
                user_id: e.user_id.0,
                status: PaymentStatus::Failed,
                amount: e.amount,
                reason: Some(&e.reason),
                at: e.at,
            };
            record_payment(conn, p, version).await
        }
        E::PaymentRefunded(e) => refund_payment(conn, e, version).await,
    }
}

async fn create_event(conn: &mut PgConnection, e: &ev::EventCreated, version: i64) -> Result {
    sqlx::query(
        "INSERT INTO event_views (event_id, owner_id, name, description, venue_name, venue_address,
                                  starts_at, ends_at, currency, status, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(e.event_id.0)
    .bind(e.owner_id.0)
    .bind(&e.details.name)
    .bind(&e.details.description)
    .bind(&e.details.venue.name)
    .bind(&e.details.venue.address)
    .bind(e.details.starts_at)
    .bind(e.details.ends_at)
    .bind(e.currency.as_str())
    .bind(EventStatus::Draft.as_str())
    .bind(version)
    .bind(e.at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO sales_by_event (event_id, currency) VALUES ($1, $2)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(e.event_id.0)
    .bind(e.currency.as_str())
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// A change of the event stream itself moves the view's version and `updated_at` (the commit
/// time, as in `memory.rs`).
async fn change_details(
    conn: &mut PgConnection,
    e: &ev::EventDetailsChanged,
    recorded: &RecordedEvent,
) -> Result {
    sqlx::query(
        "UPDATE event_views
            SET name = $2, description = $3, venue_name = $4, venue_address = $5,
                starts_at = $6, ends_at = $7, version = $8, updated_at = $9
          WHERE event_id = $1 AND version < $8",
    )
    .bind(e.event_id.0)
    .bind(&e.details.name)
    .bind(&e.details.description)
    .bind(&e.details.venue.name)
    .bind(&e.details.venue.address)
    .bind(e.details.starts_at)
    .bind(e.details.ends_at)
    .bind(big(recorded.version))
    .bind(recorded.recorded_at)
    .execute(&mut *conn)
    .await
    .map(drop)
}

async fn set_status(
    conn: &mut PgConnection,
    id: EventId,
    status: EventStatus,
    recorded: &RecordedEvent,
) -> Result {
    sqlx::query(
        "UPDATE event_views SET status = $2, version = $3, updated_at = $4
          WHERE event_id = $1 AND version < $3",
    )
    .bind(id.0)
    .bind(status.as_str())
    .bind(big(recorded.version))
    .bind(recorded.recorded_at)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Takes `version` of the event's inventory stream for this transaction; false when the event
/// is unknown or the version was applied already, and then the seat tables must not move.
async fn claim_inventory(
    conn: &mut PgConnection,
    id: EventId,
    version: i64,
) -> std::result::Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE event_views SET inventory_version = $2
          WHERE event_id = $1 AND inventory_version < $2",
    )
    .bind(id.0)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(claimed.rows_affected() > 0)
}

/// Redefines the sections in the listed order, keeping held and sold seats by section name.
async fn restock(conn: &mut PgConnection, e: &ev::InventoryStocked) -> Result {
    let mut names: Vec<&str> = Vec::new();
    let (mut ordinals, mut capacities, mut prices) = (Vec::new(), Vec::new(), Vec::new());
    for (i, spec) in e.sections.iter().enumerate() {
        if names.contains(&spec.name.as_str()) {
            // The domain refuses duplicate names; a view has one row per name.
            tracing::warn!(event_id = %e.event_id, section = %spec.name, "duplicate section ignored");
            continue;
        }
        names.push(&spec.name);
        ordinals.push(i32::try_from(i).unwrap_or(i32::MAX));
        capacities.push(i64::from(spec.capacity));
        prices.push(spec.price_cents);
    }
    sqlx::query("DELETE FROM event_sections WHERE event_id = $1 AND NOT (name = ANY($2))")
        .bind(e.event_id.0)
        .bind(&names)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO event_sections (event_id, name, ordinal, capacity, price_cents)
         SELECT $1, x.name, x.ordinal, x.capacity, x.price_cents
           FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[])
                AS x(name, ordinal, capacity, price_cents)
         ON CONFLICT (event_id, name) DO UPDATE
            SET ordinal = EXCLUDED.ordinal, capacity = EXCLUDED.capacity,
                price_cents = EXCLUDED.price_cents",
    )
    .bind(e.event_id.0)
    .bind(&names)
    .bind(&ordinals)
    .bind(&capacities)
    .bind(&prices)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Moves seat counts by `(held, sold)` deltas, saturating within u32 like `Inventory::apply`.
async fn seats(
    conn: &mut PgConnection,
    event_id: EventId,
    version: i64,
    section: &str,
    (held, sold): (i64, i64),
) -> Result {
    if !claim_inventory(conn, event_id, version).await? {
        return Ok(());
    }
    sqlx::query(
        "UPDATE event_sections
            SET held = LEAST(GREATEST(held + $3, 0), 4294967295),
                sold = LEAST(GREATEST(sold + $4, 0), 4294967295)
          WHERE event_id = $1 AND name = $2",
    )
    .bind(event_id.0)
    .bind(section)
    .bind(held)
    .bind(sold)
    .execute(&mut *conn)
    .await
    .map(drop)
}

async fn place_reservation(
    conn: &mut PgConnection,
    e: &ev::ReservationPlaced,
    version: i64,
) -> Result {
    sqlx::query(
        "INSERT INTO reservation_views (reservation_id, event_id, user_id, section, quantity, status,
                                        total_cents, currency, expires_at, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         ON CONFLICT (reservation_id) DO NOTHING",
    )
    .bind(e.reservation_id.0)
    .bind(e.event_id.0)
    .bind(e.user_id.0)
    .bind(&e.section)
    .bind(i64::from(e.quantity))
    .bind(ReservationStatus::Pending.as_str())
    .bind(e.total.amount_cents)
    .bind(e.total.currency.as_str())
    .bind(e.expires_at)
    .bind(version)
    .bind(e.placed_at)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// A reservation's move to a final (or refunded) status.
struct Transition {
    status: ReservationStatus,
    at: DateTime<Utc>,
    payment_id: Option<PaymentId>,
    /// A confirmation: the reservation becomes a purchase at `at`.
    purchased: bool,
}

impl Transition {
    fn to(status: ReservationStatus, at: DateTime<Utc>) -> Self {
        Transition {
            status,
            at,
            payment_id: None,
            purchased: false,
        }
    }
}

/// What a sale counts of a reservation.
#[derive(sqlx::FromRow)]
struct Sold {
    event_id: Uuid,
    section: String,
    quantity: i64,
    total_cents: i64,
}

/// Applies `change` unless the row already includes `version`; returns the row when it moved.
async fn transition(
    conn: &mut PgConnection,
    id: ReservationId,
    version: i64,
    change: Transition,
) -> std::result::Result<Option<Sold>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE reservation_views
            SET status = $2, updated_at = $3, version = $4,
                payment_id = COALESCE($5, payment_id),
                purchased_at = CASE WHEN $6 THEN $3 ELSE purchased_at END
          WHERE reservation_id = $1 AND version < $4
         RETURNING event_id, section, quantity, total_cents",
    )
    .bind(id.0)
    .bind(change.status.as_str())
    .bind(change.at)
    .bind(version)
    .bind(change.payment_id.map(|p| p.0))
    .bind(change.purchased)
    .fetch_optional(&mut *conn)
    .await
}

/// Adds (`sign` = 1) or takes back (-1) a reservation's tickets and money in its event's sales
/// and its section's; the section row appears with the first sale counted in it. Nothing moves
/// for an event without sales (unknown event), as in `memory.rs`.
async fn count_sale(conn: &mut PgConnection, r: &Sold, sign: i64, position: u64) -> Result {
    let tickets = sign.saturating_mul(r.quantity);
    let revenue = sign.saturating_mul(r.total_cents);
    sqlx::query(
        "WITH totals AS (
             UPDATE sales_by_event
                SET tickets_sold = LEAST(GREATEST(tickets_sold::numeric + $3::bigint, 0), 9223372036854775807)::bigint,
                    revenue_cents = LEAST(GREATEST(revenue_cents::numeric + $4::bigint, -9223372036854775808),
                                          9223372036854775807)::bigint
              WHERE event_id = $1
             RETURNING event_id)
         INSERT INTO sales_by_section (event_id, section, first_position, tickets_sold, revenue_cents)
         SELECT event_id, $2, $5, GREATEST($3::bigint, 0), $4::bigint FROM totals
         ON CONFLICT (event_id, section) DO UPDATE
            SET tickets_sold = LEAST(GREATEST(sales_by_section.tickets_sold::numeric + $3::bigint, 0),
                                     9223372036854775807)::bigint,
                revenue_cents = LEAST(GREATEST(sales_by_section.revenue_cents::numeric + $4::bigint,
                                               -9223372036854775808), 9223372036854775807)::bigint",
    )
    .bind(r.event_id)
    .bind(&r.section)
    .bind(tickets)
    .bind(revenue)
    .bind(big(position))
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// A payment attempt as first recorded.
struct NewPayment<'a> {
    payment_id: PaymentId,
    reservation_id: Uuid,
    event_id: Uuid,
    user_id: Uuid,
    status: PaymentStatus,
    amount: crate::domain::Money,
    reason: Option<&'a str>,
    at: DateTime<Utc>,
}

async fn record_payment(conn: &mut PgConnection, p: NewPayment<'_>, version: i64) -> Result {
    sqlx::query(
        "INSERT INTO payment_views (payment_id, reservation_id, event_id, user_id, status,
                                    amount_cents, currency, reason, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(p.payment_id.0)
    .bind(p.reservation_id)
    .bind(p.event_id)
    .bind(p.user_id)
    .bind(p.status.as_str())
    .bind(p.amount.amount_cents)
    .bind(p.amount.currency.as_str())
    .bind(p.reason)
    .bind(version)
    .bind(p.at)
    .execute(&mut *conn)
    .await
    .map(drop)
}

async fn refund_payment(conn: &mut PgConnection, e: &ev::PaymentRefunded, version: i64) -> Result {
    sqlx::query(
        "UPDATE payment_views SET status = $2, reason = $3, updated_at = $4, version = $5
          WHERE payment_id = $1 AND version < $5",
    )
    .bind(e.payment_id.0)
    .bind(PaymentStatus::Refunded.as_str())
    .bind(&e.reason)
    .bind(e.at)
    .bind(version)
    .execute(&mut *conn)
    .await
    .map(drop)
}
