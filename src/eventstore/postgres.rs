//! PostgreSQL `EventStore`. An append is one transaction: take a transaction-scoped advisory
//! lock, number the events after the current maximum position, insert them, notify listeners,
//! commit. Holding the lock until commit makes positions gap-free *and* visible in order, so a
//! reader paging by position can never skip an event that commits late (the classic bug of
//! sequence-numbered logs under concurrency). The price is that appends of different sales
//! take turns at the lock; group commit in the writers keeps that cheap. A stale expected
//! version is the `events_stream_version_key` unique violation, reported as `Conflict`.

use super::{check_contiguous, EventStore, Metadata, NewEvent, RecordedEvent, StoreError};
use crate::backoff::Backoff;
use crate::db;
use crate::domain::EventId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgPool};
use std::sync::Arc;
use std::time::Duration;
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
        let listener = tokio::spawn(follow_appends(pool.clone(), head.clone()));
        Ok(Self {
            pool,
            head,
            listener,
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
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let positions: Vec<i64> = (1..=count).map(|i| start + i).collect();
        let metadata = events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO events (position, sale_id, stream_id, version, event_type, event_version, payload, metadata)
             SELECT p, $2, s, v, t, tv, pl, m::jsonb
             FROM UNNEST($1::bigint[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::bytea[], $8::text[])
                  AS x(p, s, v, t, tv, pl, m)",
        )
        .bind(&positions)
        .bind(sale_id.0)
        .bind(events.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| i64::try_from(e.version).unwrap_or(i64::MAX)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind(events.iter().map(|e| i32::from(e.event_version)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
        .bind(&metadata)
        .execute(&mut *tx)
        .await?;
        let last = start + count;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(last.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(to_u64(last))
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
/// so subscriptions here wake for events written elsewhere.
async fn follow_appends(pool: PgPool, head: watch::Sender<u64>) {
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
                    if let Ok(position) = notification.payload().parse::<u64>() {
                        head.send_if_modified(|h| raise(h, position));
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
            Err(e) if db::violates(&e, "events_stream_version_key") => {
                // Report the first stream of the batch that is behind; the writer reloads anyway.
                for event in &events {
                    let actual = self.actual_version(&event.stream_id).await?;
                    if actual >= event.version {
                        return Err(StoreError::Conflict {
                            stream_id: event.stream_id.clone(),
                            attempted: event.version,
                            actual,
                        });
                    }
                }
                Err(StoreError::Conflict {
                    stream_id: events[0].stream_id.clone(),
                    attempted: events[0].version,
                    actual: self.actual_version(&events[0].stream_id).await?,
                })
            }
            Err(e) => Err(unavailable(e)),
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
mod tests {
    use super::*;
    use crate::db::testing::fresh_database;

    async fn store() -> PostgresEventStore {
        let url = fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::events_migrator().run(&pool).await.unwrap();
        PostgresEventStore::new(pool).await.unwrap()
    }

    /// The PostgreSQL store honours the same contract as the in-memory one.
    #[tokio::test]
    async fn postgres_store_passes_the_event_store_contract() {
        super::super::contract::run_all(&store().await).await;
    }

    /// Under concurrent appends to many sales, a reader tailing the log sees every position
    /// exactly once and in order: no event that commits late is ever skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_tailing_reader_never_skips_events_that_commit_late() {
        let store = Arc::new(store().await);
        let writers = 8u64;
        let per_writer = 25u64;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let sale = EventId::random();
                let stream = format!("inventory-{sale}");
                for version in 1..=per_writer {
                    let event = NewEvent {
                        stream_id: stream.clone(),
                        version,
                        event_type: "inventory.seats_held",
                        event_version: 1,
                        payload: vec![1],
                        metadata: Metadata::default(),
                    };
                    store.append(sale, vec![event]).await.unwrap();
                }
            }));
        }
        let total = writers * per_writer;
        let mut seen = Vec::new();
        let mut head = store.subscribe_head();
        while (seen.len() as u64) < total {
            let after = seen.last().copied().unwrap_or(0);
            let batch = store.read_all(after, 7).await.unwrap();
            if batch.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), head.changed()).await;
            }
            seen.extend(batch.iter().map(|e| e.position));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    }
}
