//! Applies the rare events one by one (an event's creation, details, lifecycle and restocks),
//! inside the batch transaction that holds the checkpoint lock, after `bulk` has written the
//! hot events before them. Creations are `INSERT .. ON CONFLICT DO NOTHING`; changes are
//! guarded by the version of the stream a row follows (`WHERE version < $n`), so an event
//! applied twice is a no-op even without the checkpoint.

use crate::domain::concert::EventStatus;
use crate::domain::events::{self as ev, DomainEvent as E};
use crate::domain::EventId;
use crate::eventstore::RecordedEvent;
use sqlx::PgConnection;

type Result = std::result::Result<(), sqlx::Error>;

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Applies `event`, recorded as `recorded`, to the views; returns how many statements it ran.
pub(super) async fn apply(
    conn: &mut PgConnection,
    recorded: &RecordedEvent,
    event: &E,
) -> std::result::Result<usize, sqlx::Error> {
    let version = big(recorded.version);
    let (id, status) = match event {
        E::EventCreated(e) => return create_event(conn, e, version).await.map(|()| 2),
        E::EventDetailsChanged(e) => return change_details(conn, e, recorded).await.map(|()| 1),
        E::EventPublished(e) => (e.event_id, EventStatus::Published),
        E::EventSalesOpened(e) => (e.event_id, EventStatus::OnSale),
        E::EventSalesClosed(e) => (e.event_id, EventStatus::SalesClosed),
        E::EventCancelled(e) => (e.event_id, EventStatus::Cancelled),
        E::InventoryStocked(e) => {
            if !claim_inventory(conn, e.event_id, version).await? {
                return Ok(1);
            }
            return restock(conn, e).await.map(|()| 3);
        }
        // Applied set-based by `bulk`, never sent here.
        E::SeatsHeld(_)
        | E::HeldSeatsReleased(_)
        | E::HeldSeatsSold(_)
        | E::SoldSeatsReturned(_)
        | E::ReservationPlaced(_)
        | E::ReservationConfirmed(_)
        | E::ReservationCancelled(_)
        | E::ReservationExpired(_)
        | E::ReservationRefunded(_)
        | E::PaymentCaptured(_)
        | E::PaymentDeclined(_)
        | E::PaymentRefunded(_) => return Ok(0),
    };
    set_status(conn, id, status, recorded).await.map(|()| 1)
}

async fn create_event(conn: &mut PgConnection, e: &ev::EventCreated, version: i64) -> Result {
    sqlx::query(
        "INSERT INTO event_views (event_id, owner_id, name, description, venue_name, venue_address,
                                  starts_at, ends_at, currency, status, version, created_at, updated_at,
                                  max_tickets_per_customer)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)
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
    .bind(e.details.max_tickets_per_customer.map(i64::from))
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
                starts_at = $6, ends_at = $7, version = $8, updated_at = $9,
                max_tickets_per_customer = $10
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
    .bind(e.details.max_tickets_per_customer.map(i64::from))
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
