//! PostgreSQL `EventStore`. An append is one statement (`append.rs`): it moves the sale's head
//! row (`sale_heads`, the sale's event count) and then the log's head row (`event_log_head`,
//! the last position) by the batch's size, numbers the events after the log's old head,
//! inserts them and notifies listeners. The log's head row stays locked until commit, and
//! under READ COMMITTED the next append's UPDATE waits for it and then sees the latest
//! committed value: positions are gap-free *and* become visible in order, so a reader paging
//! by position can never skip an event that commits late (the classic bug of
//! sequence-numbered logs). Appends of different sales take turns at that row only for one
//! statement and its commit; group commit in the writers keeps that cheap. A writer's turn on
//! a sale (`take_turn`, `turn.rs`) is locked (the sale's head row `FOR UPDATE`, a catch-up read
//! only when the head moved, the append, in one transaction) or optimistic (the append alone,
//! only if the sale's head did not move). A stale expected version is the
//! `events_stream_version_key` unique violation, reported as `Conflict`: with turns, only a
//! writer that skips them can cause one. Binaries older than the heads must all be stopped
//! before this one starts (RUNBOOK.md). What this instance committed lately, and what it read
//! lately of other instances' appends, is also kept in memory (`tail.rs`): readers tailing
//! the log here get it without a query, and query the log one at a time, so that readers woken
//! by the same commit query it once.

mod append;
mod tail;
mod turn;

use super::{
    check_contiguous, raise_head, Decide, EventStore, Known, Metadata, NewEvent, RecordedEvent,
    StoreError, TurnMode, Turned,
};
use crate::backoff::Backoff;
use crate::db;
use crate::domain::EventId;
use append::insert;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tail::Tail;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Channel on which every append announces its last position (`<position>:<store tag>`).
const CHANNEL: &str = "ticketing_events";
/// How long the notification listener may hear nothing before it checks its connection with
/// a probe (`probe`).
const QUIET: Duration = Duration::from_secs(5);

pub struct PostgresEventStore {
    pool: PgPool,
    head: watch::Sender<u64>,
    listener: JoinHandle<()>,
    /// What this instance appended or read lately, for the readers tailing the log here.
    tail: Arc<Tail>,
    /// Taken by a reader querying the log, so that readers woken by the same commit query it
    /// once: the next one finds the events in the tail.
    fetching: tokio::sync::Mutex<()>,
    /// This store's mark on its appends' notifications: its listener leaves those to it.
    tag: String,
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
        resync_log_head(&pool).await.map_err(unavailable)?;
        let head = watch::Sender::new(max_position(&pool).await?);
        let tail = Arc::new(Tail::default());
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let listener = tokio::spawn(follow_appends(pool.clone(), head.clone(), tag.clone()));
        Ok(Self {
            pool,
            head,
            listener,
            tail,
            fetching: tokio::sync::Mutex::new(()),
            tag,
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

    /// A plain append: the one statement, autocommit, whatever the sale's head.
    async fn try_append(&self, sale_id: EventId, events: &[NewEvent]) -> Result<u64, sqlx::Error> {
        let appended = insert(&self.pool, sale_id, events, None, &self.tag)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        self.tail
            .committed(sale_id, events, appended.last, appended.recorded_at);
        Ok(appended.last)
    }

    /// Maps a failed append of `events`: the unique violation on (stream, version) is a
    /// `Conflict` naming the first stream of the batch that is behind.
    async fn append_error(&self, e: sqlx::Error, events: &[NewEvent]) -> StoreError {
        if db::violates(&e, "events_pkey") {
            // Only an older binary numbering by MAX(position) beside this one gets here.
            tracing::error!("an event position was taken outside the log head; stop binaries older than the log head (RUNBOOK.md, Deploys)");
            if let Err(e) = resync_log_head(&self.pool).await {
                tracing::warn!(error = %e, "cannot move the log head past the last event");
            }
            return unavailable(e);
        }
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

/// Moves the log's head past the last event if something numbered events without it (an older
/// binary still running): appends would otherwise fail on `events_pkey` until it caught up.
async fn resync_log_head(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE event_log_head
         SET position = GREATEST(position, (SELECT COALESCE(MAX(position), 0) FROM events))
         WHERE id = 1",
    )
    .execute(pool)
    .await
    .map(|_| ())
}

async fn max_position(pool: &PgPool) -> Result<u64, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .map(to_u64)
        .map_err(unavailable)
}

/// Follows the appends of every instance (LISTEN), and re-reads the head after a reconnect,
/// so subscriptions here wake for events written elsewhere. A connection that goes silent is
/// found by a probe after `QUIET` without a notification, and replaced. This store's own
/// appends (marked with its `tag`) are left to their appenders, which raise the head once the
/// tail has them.
async fn follow_appends(pool: PgPool, head: watch::Sender<u64>, tag: String) {
    let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let listener = match crate::db::listener(&pool).await {
            Ok(mut listener) => {
                // A lost connection ends this listener, so the head is read again below: a
                // reconnect behind our back would miss what was notified in between.
                listener.eager_reconnect(false);
                listener.listen(CHANNEL).await.map(|()| listener)
            }
            Err(e) => Err(e),
        };
        match listener {
            Ok(mut listener) => {
                // What was appended while nobody listened here: a listener that cannot read
                // it would wait for a notification that may never come, so it starts again.
                let gave_up =
                    || StoreError::Unavailable("no answer within the probe's bound".into());
                match crate::db::within(QUIET, max_position(&pool), gave_up).await {
                    Ok(max) => {
                        head.send_if_modified(|h| raise_head(h, max));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the log's head; listening anew");
                        backoff.wait().await;
                        continue;
                    }
                }
                backoff.reset();
                let mut probed = false;
                loop {
                    let notification = match tokio::time::timeout(QUIET, listener.try_recv()).await
                    {
                        Ok(Ok(Some(notification))) => notification,
                        Ok(_) => break,
                        // Not even the probe came back: the connection went silent.
                        Err(_) if probed => break,
                        Err(_) => {
                            probe(&pool, &tag).await;
                            probed = true;
                            continue;
                        }
                    };
                    probed = false;
                    let (position, from) = notification
                        .payload()
                        .split_once(':')
                        .unwrap_or((notification.payload(), ""));
                    if from == tag {
                        continue;
                    }
                    if let Ok(position) = position.parse::<u64>() {
                        head.send_if_modified(|h| raise_head(h, position));
                    }
                }
                tracing::warn!("lost the event notification connection; reconnecting");
            }
            _ => tracing::warn!("cannot listen for event notifications; retrying"),
        }
        backoff.wait().await;
    }
}

/// A notification of position 0 from this store on `CHANNEL` (it moves no head), sent when
/// the listener heard nothing for `QUIET`: if it does not come back within another `QUIET`,
/// the listening connection went silent (a host gone without a reset), or the database is
/// unreachable, and the listener is replaced.
async fn probe(pool: &PgPool, tag: &str) {
    let send = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("0:{tag}"))
        .execute(pool);
    if let Err(e) = crate::db::within(QUIET, send, || sqlx::Error::PoolTimedOut).await {
        tracing::debug!(error = %e, "cannot probe the event notification connection");
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
                self.head.send_if_modified(|h| raise_head(h, last));
                Ok(last)
            }
            Err(e) => Err(self.append_error(e, &events).await),
        }
    }

    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError> {
        let mut events = Vec::new();
        let turn = match mode {
            TurnMode::Locked => self.locked_turn(sale_id, known, decide, &mut events).await,
            TurnMode::Optimistic => {
                self.optimistic_turn(sale_id, known, decide, &mut events)
                    .await
            }
        };
        match turn {
            Ok(Ok(turned)) => {
                if let Turned::Done {
                    last: Some(last), ..
                } = turned
                {
                    self.head.send_if_modified(|h| raise_head(h, last));
                }
                Ok(turned)
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(self.append_error(e, &events).await),
        }
    }

    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE sale_id = $1 AND position > $2 ORDER BY position LIMIT $3"
        );
        self.fetch(
            sqlx::query(&sql)
                .bind(sale_id.0)
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX)),
        )
        .await
    }

    async fn first_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Arc<RecordedEvent>>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version = 1");
        let found = self.fetch(sqlx::query(&sql).bind(stream_id)).await?;
        Ok(found.into_iter().next())
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        if let Some(run) = self.tail.read(after, limit, *self.head.borrow()) {
            return Ok(run);
        }
        let _fetching = self.fetching.lock().await;
        // Another reader may have brought these events in meanwhile.
        if let Some(run) = self.tail.read(after, limit, *self.head.borrow()) {
            return Ok(run);
        }
        // What the tail holds right after `after` is exact (positions are gap-free and
        // visible in order): query only what follows it.
        let mut run = self.tail.run_after(after, limit);
        let from = run.last().map_or(after, |e| e.position);
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
        let fetched = self
            .fetch(
                sqlx::query(&sql)
                    .bind(i64::try_from(from).unwrap_or(i64::MAX))
                    .bind(i64::try_from(limit.saturating_sub(run.len())).unwrap_or(i64::MAX)),
            )
            .await?;
        self.tail.learned(&fetched);
        run.extend(fetched);
        Ok(run)
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        max_position(&self.pool).await
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
