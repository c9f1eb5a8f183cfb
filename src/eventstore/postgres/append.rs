//! The write half of the PostgreSQL event store's append path: the one statement that moves
//! the sale's head and the log's head, numbers and inserts a batch and notifies listeners.
//! Used by the store's `append` and by both kinds of turn (inside a transaction, or as an
//! autocommit statement of its own); never commits by itself.

use super::{to_u64, CHANNEL};
use crate::domain::EventId;
use crate::eventstore::NewEvent;
use chrono::{DateTime, Utc};

/// A batch as the statement appended it.
pub(super) struct Appended {
    /// Position of the last event (the batch ends there, consecutive).
    pub last: u64,
    /// The events' `recorded_at` (the transaction's time, the same for all).
    pub recorded_at: DateTime<Utc>,
    /// The sale's head after the batch: how many events the sale has.
    pub head: u64,
}

/// Appends `events` to `sale_id` in one statement, only if the sale's head is `expected`
/// (`None`: whatever it is); `Ok(None)` when it was not (nothing is written). The sale's head
/// row is locked first, the log's head row second (every append takes them in that order, so
/// they cannot deadlock); the log's row stays locked until commit, so the next append's
/// UPDATE waits and then (READ COMMITTED) numbers after this one: gap-free, in commit order.
pub(super) async fn insert<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    sale_id: EventId,
    events: &[NewEvent],
    expected: Option<u64>,
    tag: &str,
) -> Result<Option<Appended>, sqlx::Error> {
    let metadata = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // The sale's head: created by the sale's first append (a missing row counts as 0 events),
    // else moved only if it is what the caller expects. The log's head moves only if the sale's did (and after it);
    // rows go in only if the log's head moved; the notification carries this store's tag so
    // its own listener leaves the head to the appender (see `tail.rs`).
    // No row when nothing was inserted (the LATERAL below filters it out); else all are set.
    let row: Option<(i64, DateTime<Utc>, i64)> = sqlx::query_as(
        "WITH sale AS (
             INSERT INTO sale_heads AS h (sale_id, events)
             VALUES ($1::uuid, $9::bigint)
             ON CONFLICT (sale_id) DO UPDATE SET events = h.events + EXCLUDED.events
             WHERE $10::bigint IS NULL OR h.events = $10::bigint
             RETURNING h.events),
         log AS (
             UPDATE event_log_head SET position = position + $9::bigint
             WHERE id = 1 AND EXISTS (SELECT FROM sale)
             RETURNING position - $9::bigint AS start),
         inserted AS (
             INSERT INTO events (position, sale_id, stream_id, version, event_type, event_version, payload, metadata)
             SELECT log.start + x.n, $1::uuid, x.s, x.v, x.t, x.tv, x.pl, x.m::jsonb
             FROM log,
                  UNNEST($2::text[], $3::bigint[], $4::text[], $5::int[], $6::bytea[], $7::text[])
                      WITH ORDINALITY AS x(s, v, t, tv, pl, m, n)
             RETURNING position, recorded_at)
         SELECT l.last, l.at, (SELECT events FROM sale)
         FROM (SELECT MAX(position) AS last, MIN(recorded_at) AS at FROM inserted) l,
              LATERAL (SELECT pg_notify($8, l.last::text || ':' || $11::text)
                       WHERE l.last IS NOT NULL) n",
    )
    .bind(sale_id.0)
    .bind(events.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| i64::try_from(e.version).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(events.iter().map(|e| i32::from(e.event_version)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
    .bind(&metadata)
    .bind(CHANNEL)
    .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
    .bind(expected.map(|e| i64::try_from(e).unwrap_or(i64::MAX)))
    .bind(tag)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(last, recorded_at, head)| Appended {
        last: to_u64(last),
        recorded_at,
        head: to_u64(head),
    }))
}
