//! The write half of the PostgreSQL event store's append path: numbering and inserting a
//! batch under the global append lock, and the key of a sale's own turn lock. Used by the
//! store's `append` and `take_turn` transactions; never commits by itself.

use super::{to_u64, APPEND_LOCK, CHANNEL};
use crate::domain::EventId;
use crate::eventstore::NewEvent;
use chrono::{DateTime, Utc};

/// First key of the per-sale advisory locks ("tkts"); the second is folded from the sale id.
/// The two-key form lives in another key space than `APPEND_LOCK`'s, so they never collide.
pub(super) const SALE_LOCK_CLASS: i32 = 0x746b_7473;

/// Inside `tx`: takes the append lock, numbers `events` after the current maximum position,
/// inserts them and notifies listeners. Returns the last position and the events' `recorded_at`
/// (the transaction's time, the same for all); the lock ends with `tx`.
pub(super) async fn insert(
    tx: &mut sqlx::PgConnection,
    sale_id: EventId,
    events: &[NewEvent],
) -> Result<(u64, DateTime<Utc>), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *tx)
        .await?;
    let metadata = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // One round trip for numbering, the rows and the notification (sent at commit). The
    // statement's snapshot is taken after the lock was granted, so MAX sees every commit.
    let (last, recorded_at): (i64, DateTime<Utc>) = sqlx::query_as(
        "WITH head AS (SELECT COALESCE(MAX(position), 0) AS start FROM events),
         inserted AS (
             INSERT INTO events (position, sale_id, stream_id, version, event_type, event_version, payload, metadata)
             SELECT head.start + x.n, $1, x.s, x.v, x.t, x.tv, x.pl, x.m::jsonb
             FROM head,
                  UNNEST($2::text[], $3::bigint[], $4::text[], $5::int[], $6::bytea[], $7::text[])
                      WITH ORDINALITY AS x(s, v, t, tv, pl, m, n)
             RETURNING position, recorded_at)
         SELECT l.last, l.at FROM (SELECT MAX(position) AS last, MIN(recorded_at) AS at FROM inserted) l,
                LATERAL (SELECT pg_notify($8, l.last::text)) n",
    )
    .bind(sale_id.0)
    .bind(events.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| i64::try_from(e.version).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(events.iter().map(|e| i32::from(e.event_version)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
    .bind(&metadata)
    .bind(CHANNEL)
    .fetch_one(&mut *tx)
    .await?;
    Ok((to_u64(last), recorded_at))
}

/// The second key of a sale's advisory lock: the sale id's four 32-bit words folded with XOR.
/// Two sales sharing a key only take turns needlessly; the fold is the same in every process.
pub(super) fn sale_lock_key(sale_id: EventId) -> i32 {
    let bits = sale_id.0.as_u128();
    let folded = (0..4).fold(0u32, |acc, i| {
        acc ^ u32::try_from((bits >> (32 * i)) & u128::from(u32::MAX)).unwrap_or(0)
    });
    i32::from_be_bytes(folded.to_be_bytes())
}
