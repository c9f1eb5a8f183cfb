//! PostgreSQL `EventStore`. An append is one transaction: take a transaction-scoped advisory
//! lock, number the events after the current maximum position, insert them, notify listeners,
//! commit. Holding the lock until commit makes positions gap-free *and* visible in order, so a
//! reader paging by position can never skip an event that commits late (the classic bug of
//! sequence-numbered logs under concurrency). The price is that appends of different sales
//! take turns at the lock; group commit in the writers keeps that cheap. A writer's turn on a
//! sale (`take_turn`) is one transaction too: it first takes the sale's own advisory lock, then
//! reads what other instances appended, decides, and appends as above, so writers of one sale
//! on different instances queue instead of racing. A stale expected version is the
//! `events_stream_version_key` unique violation, reported as `Conflict`: with turns, only a
//! writer that skips them (an older binary during a rolling deploy) can cause one. What this
//! instance committed lately is also kept in memory (`tail.rs`): readers tailing the log here
//! get it without a query.

mod append;
mod tail;

use super::{check_contiguous, Decide, EventStore, Metadata, NewEvent, RecordedEvent, StoreError};
use crate::backoff::Backoff;
use crate::db;
use crate::domain::EventId;
use append::{insert, sale_lock_key, SALE_LOCK_CLASS};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tail::Tail;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Advisory lock key that serializes appends ("tkt-evts").
const APPEND_LOCK: i64 = 0x746b_742d_6576_7473;
/// Channel on which every append announces its last position.
const CHANNEL: &str = "ticketing_events";

pub struct PostgresEventStore {
    pool: PgPool,
    head: watch::Sender<u64>,
    listener: JoinHandle<()>,
    /// What this instance appended lately, for the readers tailing the log here.
    tail: Arc<Tail>,
}

impl Drop for PostgresEventStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PostgresEventStore {
    /// Connects the store to a migrated database and starts following other instances' appends.
    pub async fn new(pool: PgPool) -> Result<Self, StoreError> {
        let head = watch::Sender::new(max_position(&pool).await?);
        let tail = Arc::new(Tail::default());
        let listener = tokio::spawn(follow_appends(pool.clone(), head.clone(), tail.clone()));
        Ok(Self {
            pool,
            head,
            listener,
            tail,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn actual_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let version = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT MAX(version) FROM events WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(version.map_or(0, to_u64))
    }

    async fn try_append(&self, sale_id: EventId, events: &[NewEvent]) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (last, recorded_at) = insert(&mut tx, sale_id, events).await?;
        self.commit(tx, sale_id, events, last, recorded_at).await?;
        Ok(last)
    }

    /// The turn's transaction. `Ok(Err(..))` is a store error found before anything was
    /// sent (malformed events); `Err` is a database error.
    async fn try_turn(
        &self,
        sale_id: EventId,
        after: u64,
        decide: &mut Decide<'_>,
        events: &mut Vec<NewEvent>,
    ) -> Result<Result<Option<u64>, StoreError>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The sale's lock and the read in one round trip: two statements of one simple query
        // (values formatted: a UUID and integers, nothing to escape), so the lock is held for
        // no extra trip between them. The lock must be a statement of its own: a statement's
        // snapshot is taken when it starts, so the read must start after the lock was granted
        // to see the previous holder's commit. Only the read's rows have more than one column.
        let sql = format!(
            "SELECT pg_advisory_xact_lock({SALE_LOCK_CLASS}, {key});
             SELECT {COLUMNS} FROM events WHERE sale_id = '{sale}' AND position > {after}
             ORDER BY position",
            key = sale_lock_key(sale_id),
            sale = sale_id.0,
            after = i64::try_from(after).unwrap_or(i64::MAX),
        );
        // A `&str` without arguments goes as a simple query, several statements allowed.
        let conn: &mut sqlx::PgConnection = &mut tx;
        let rows = sqlx::Executor::fetch_all(conn, sql.as_str()).await?;
        let fresh = match rows
            .iter()
            .filter(|row| row.len() > 1)
            .map(|row| {
                let row = EventRow::from_row(row)
                    .map_err(|e| StoreError::Corrupt(format!("unreadable event row: {e}")))?;
                RecordedEvent::try_from(row).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(fresh) => fresh,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        *events = decide(&fresh);
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(Ok(None));
        }
        if let Err(e) = check_contiguous(events) {
            tx.rollback().await?;
            return Ok(Err(e));
        }
        let (last, recorded_at) = insert(&mut tx, sale_id, events).await?;
        self.commit(tx, sale_id, events, last, recorded_at).await?;
        Ok(Ok(Some(last)))
    }

    /// Commits an append ending at `last`, then records its events in the tail (the head is
    /// raised by the caller, after this).
    async fn commit(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        sale_id: EventId,
        events: &[NewEvent],
        last: u64,
        recorded_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.tail.in_flight(last);
        match tx.commit().await {
            Ok(()) => {
                self.tail.committed(sale_id, events, last, recorded_at);
                Ok(())
            }
            Err(e) => {
                self.tail.abandoned(last);
                Err(e)
            }
        }
    }

    /// Maps a failed append of `events`: the unique violation on (stream, version) is a
    /// `Conflict` naming the first stream of the batch that is behind.
    async fn append_error(&self, e: sqlx::Error, events: &[NewEvent]) -> StoreError {
        if !db::violates(&e, "events_stream_version_key") {
            return unavailable(e);
        }
        for event in events {
            let actual = match self.actual_version(&event.stream_id).await {
                Ok(actual) => actual,
                Err(e) => return e,
            };
            if actual >= event.version {
                return StoreError::Conflict {
                    stream_id: event.stream_id.clone(),
                    attempted: event.version,
                    actual,
                };
            }
        }
        let Some(first) = events.first() else {
            return unavailable(e);
        };
        match self.actual_version(&first.stream_id).await {
            Ok(actual) => StoreError::Conflict {
                stream_id: first.stream_id.clone(),
                attempted: first.version,
                actual,
            },
            Err(e) => e,
        }
    }

    async fn fetch(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let row = EventRow::from_row(row)
                    .map_err(|e| StoreError::Corrupt(format!("unreadable event row: {e}")))?;
                RecordedEvent::try_from(row).map(Arc::new)
            })
            .collect()
    }
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// An `events` row as stored; `TryFrom` checks every value it narrows.
#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    sale_id: uuid::Uuid,
    stream_id: String,
    version: i64,
    event_type: String,
    event_version: i32,
    payload: Vec<u8>,
    metadata: String,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("event at position {} has {what}", row.position))
        };
        Ok(RecordedEvent {
            position: u64::try_from(row.position).map_err(|_| corrupt("a negative position"))?,
            sale_id: EventId(row.sale_id),
            version: u64::try_from(row.version).map_err(|_| corrupt("a negative version"))?,
            event_version: u16::try_from(row.event_version)
                .map_err(|_| corrupt("an event version out of range"))?,
            metadata: serde_json::from_str::<Metadata>(&row.metadata)
                .map_err(|e| corrupt(&format!("unreadable metadata ({e})")))?,
            stream_id: row.stream_id,
            event_type: row.event_type,
            payload: row.payload,
            recorded_at: row.recorded_at,
        })
    }
}

const COLUMNS: &str =
    "position, sale_id, stream_id, version, event_type, event_version, payload, metadata::text AS metadata, recorded_at";

async fn max_position(pool: &PgPool) -> Result<u64, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .map(to_u64)
        .map_err(unavailable)
}

/// Follows the appends of every instance (LISTEN), and re-reads the head after a reconnect,
/// so subscriptions here wake for events written elsewhere. This instance's own appends in
/// flight are left to their appenders (see `tail.rs`).
async fn follow_appends(pool: PgPool, head: watch::Sender<u64>, tail: Arc<Tail>) {
    let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let listener = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => listener.listen(CHANNEL).await.map(|()| listener),
            Err(e) => Err(e),
        };
        match listener {
            Ok(mut listener) => {
                backoff.reset();
                if let Ok(max) = max_position(&pool).await {
                    head.send_if_modified(|h| raise(h, max));
                }
                while let Ok(notification) = listener.recv().await {
                    match notification.payload().parse::<u64>() {
                        // This instance's append: its appender raises the head, after the tail.
                        Ok(position) if tail.own(position) => {}
                        Ok(position) => {
                            head.send_if_modified(|h| raise(h, position));
                        }
                        Err(_) => {}
                    }
                }
                tracing::warn!("lost the event notification connection; reconnecting");
            }
            _ => tracing::warn!("cannot listen for event notifications; retrying"),
        }
        backoff.wait().await;
    }
}

fn raise(head: &mut u64, to: u64) -> bool {
    if to > *head {
        *head = to;
        true
    } else {
        false
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
        check_contiguous(&events)?;
        if events.is_empty() {
            return Err(StoreError::InvalidAppend("nothing to append".into()));
        }
        match self.try_append(sale_id, &events).await {
            Ok(last) => {
                self.head.send_if_modified(|h| raise(h, last));
                Ok(last)
            }
            Err(e) => Err(self.append_error(e, &events).await),
        }
    }

    async fn take_turn(
        &self,
        sale_id: EventId,
        after: u64,
        decide: &mut Decide<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let mut events = Vec::new();
        match self.try_turn(sale_id, after, decide, &mut events).await {
            Ok(Ok(Some(last))) => {
                self.head.send_if_modified(|h| raise(h, last));
                Ok(Some(last))
            }
            Ok(other) => other,
            Err(e) => Err(self.append_error(e, &events).await),
        }
    }

    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE sale_id = $1 AND position > $2 ORDER BY position"
        );
        self.fetch(
            sqlx::query(&sql)
                .bind(sale_id.0)
                .bind(i64::try_from(after).unwrap_or(i64::MAX)),
        )
        .await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        if let Some(run) = self.tail.read(after, limit, *self.head.borrow()) {
            return Ok(run);
        }
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
        self.fetch(
            sqlx::query(&sql)
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX)),
        )
        .await
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests;
