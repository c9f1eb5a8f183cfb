//! The `QueueStore` on PostgreSQL (`waiting_rooms`, `queue_tickets` in `migrations_events/`).
//! A ticket per (event, user) is the table's constraint, so a second join on any instance
//! finds the first; joins are written in batches (`joins.rs`). Admission takes the queue's row `FOR UPDATE SKIP LOCKED`: one instance
//! at a time advances it (another finds it locked and leaves the work to the holder), marks
//! the first waiting tickets in rank order and moves `advanced_at` in the same transaction,
//! so a restart or a second instance neither admits anyone twice nor skips anyone.

use super::{
    admission, QueueCounts, QueueError, QueueSettings, QueueStore, Since, Ticket, WaitingLine,
};
use crate::batcher::Batcher;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

mod joins;

pub struct PostgresQueues(PgPool, Batcher<joins::Joins>);

impl PostgresQueues {
    /// Starts the task that writes joins in batches (`joins`); it ends with the store. A batch
    /// without an answer within `limit` is abandoned.
    pub fn new(pool: PgPool, limit: std::time::Duration) -> Self {
        let joins = Batcher::start(joins::Joins(pool.clone()), limit);
        PostgresQueues(pool, joins)
    }
}

fn unavailable(e: sqlx::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

#[derive(sqlx::FromRow)]
struct SettingsRow {
    event_id: Uuid,
    enabled: bool,
    admit_per_minute: i32,
    pass_ttl_seconds: i32,
    shuffle_until: Option<DateTime<Utc>>,
}

impl TryFrom<SettingsRow> for QueueSettings {
    type Error = QueueError;

    fn try_from(r: SettingsRow) -> Result<Self, QueueError> {
        let corrupt = |_| QueueError::Corrupt(format!("queue {} settings", r.event_id));
        Ok(QueueSettings {
            event_id: r.event_id,
            enabled: r.enabled,
            admit_per_minute: u32::try_from(r.admit_per_minute).map_err(corrupt)?,
            pass_ttl_seconds: u32::try_from(r.pass_ttl_seconds).map_err(corrupt)?,
            shuffle_until: r.shuffle_until,
        })
    }
}

const SETTINGS: &str =
    "SELECT event_id, enabled, admit_per_minute, pass_ttl_seconds, shuffle_until FROM waiting_rooms";
const TICKET: &str = "id, event_id, user_id, rank, joined_at, admitted_at";

#[derive(sqlx::FromRow)]
struct TicketRow {
    id: Uuid,
    event_id: Uuid,
    user_id: Uuid,
    rank: i64,
    joined_at: DateTime<Utc>,
    admitted_at: Option<DateTime<Utc>>,
}

impl From<TicketRow> for Ticket {
    fn from(r: TicketRow) -> Self {
        Ticket {
            id: r.id,
            event_id: r.event_id,
            user_id: r.user_id,
            rank: r.rank,
            joined_at: r.joined_at,
            admitted_at: r.admitted_at,
        }
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl QueueStore for PostgresQueues {
    async fn put_settings(
        &self,
        settings: &QueueSettings,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        let number = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        sqlx::query(
            "INSERT INTO waiting_rooms (event_id, enabled, admit_per_minute, pass_ttl_seconds, \
             shuffle_until, advanced_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (event_id) DO UPDATE SET enabled = $2, admit_per_minute = $3, \
             pass_ttl_seconds = $4, shuffle_until = $5, updated_at = $6",
        )
        .bind(settings.event_id)
        .bind(settings.enabled)
        .bind(number(settings.admit_per_minute))
        .bind(number(settings.pass_ttl_seconds))
        .bind(settings.shuffle_until)
        .bind(now)
        .execute(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn settings(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError> {
        sqlx::query_as::<_, SettingsRow>(&format!("{SETTINGS} WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?
            .map(QueueSettings::try_from)
            .transpose()
    }

    async fn enabled(&self) -> Result<Vec<QueueSettings>, QueueError> {
        sqlx::query_as::<_, SettingsRow>(&format!("{SETTINGS} WHERE enabled ORDER BY event_id"))
            .fetch_all(&self.0)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(QueueSettings::try_from)
            .collect()
    }

    async fn join(
        &self,
        event_id: Uuid,
        user_id: Uuid,
        draw: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, bool), QueueError> {
        // Written with the other joins queued meanwhile (`joins`): a new ticket only for an
        // enabled queue; a repeated join gets the existing ticket.
        let join = joins::Join {
            event_id,
            user_id,
            draw,
            now,
        };
        self.1
            .ask(join)
            .await
            .map_err(|lost| QueueError::Unavailable(format!("the join writer: {lost}")))?
    }

    async fn ticket(&self, event_id: Uuid, user_id: Uuid) -> Result<Option<Ticket>, QueueError> {
        Ok(sqlx::query_as::<_, TicketRow>(&format!(
            "SELECT {TICKET} FROM queue_tickets WHERE event_id = $1 AND user_id = $2"
        ))
        .bind(event_id)
        .bind(user_id)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?
        .map(Ticket::from))
    }

    async fn position(&self, ticket: &Ticket) -> Result<u64, QueueError> {
        // Waiting tickets ahead, plus this one if it is still waiting (0 once admitted).
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM queue_tickets WHERE event_id = $1 AND admitted_at IS NULL \
             AND (rank, id) <= ($2, $3) \
             AND EXISTS (SELECT 1 FROM queue_tickets WHERE id = $3 AND admitted_at IS NULL)",
        )
        .bind(ticket.event_id)
        .bind(ticket.rank)
        .bind(ticket.id)
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(count(n))
    }

    async fn counts(&self, event_id: Uuid) -> Result<QueueCounts, QueueError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM queue_tickets \
                     WHERE event_id = $1 AND admitted_at IS NULL), admitted \
             FROM waiting_rooms WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(row
            .map(|(waiting, admitted)| QueueCounts {
                waiting: count(waiting),
                admitted: count(admitted),
            })
            .unwrap_or_default())
    }

    async fn waiting_line(&self, event_id: Uuid) -> Result<WaitingLine, QueueError> {
        // One statement, so the line and the admitted total are of the same moment.
        let rows: Vec<(i64, Option<i64>, Option<Uuid>)> = sqlx::query_as(
            "SELECT r.admitted, t.rank, t.id FROM waiting_rooms r LEFT JOIN LATERAL ( \
                 SELECT rank, id FROM queue_tickets \
                 WHERE event_id = r.event_id AND admitted_at IS NULL ORDER BY rank, id) t ON true \
             WHERE r.event_id = $1",
        )
        .bind(event_id)
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let mut line = WaitingLine {
            admitted: rows.first().map_or(0, |r| count(r.0)),
            order: Vec::with_capacity(rows.len()),
        };
        line.order
            .extend(rows.into_iter().filter_map(|(_, rank, id)| rank.zip(id)));
        Ok(line)
    }

    async fn position_since(
        &self,
        ticket: &Ticket,
        after: Option<(i64, Uuid)>,
    ) -> Result<Since, QueueError> {
        let (admitted, between): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT admitted FROM waiting_rooms WHERE event_id = $1), \
                    (SELECT count(*) FROM queue_tickets WHERE event_id = $1 \
                     AND admitted_at IS NULL AND (rank, id) > ($4, $5) AND (rank, id) <= ($2, $3))",
        )
        .bind(ticket.event_id)
        .bind(ticket.rank)
        .bind(ticket.id)
        // Always a lower bound (below every rank without one), so that the count is a range
        // scan of the index from there, not from the head of the line.
        .bind(after.map_or(i64::MIN, |a| a.0))
        .bind(after.map_or(Uuid::nil(), |a| a.1))
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(Since {
            admitted: count(admitted.unwrap_or(0)),
            between: count(between),
        })
    }

    async fn advance(&self, event_id: Uuid, now: DateTime<Utc>) -> Result<Vec<Ticket>, QueueError> {
        let mut tx = self.0.begin().await.map_err(unavailable)?;
        let room: Option<(i32, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT admit_per_minute, shuffle_until, advanced_at FROM waiting_rooms \
             WHERE event_id = $1 AND enabled FOR UPDATE SKIP LOCKED",
        )
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        // End the transaction before every return: a dropped one is rolled back only when
        // its connection is next used, and would hold the row lock until then.
        let Some((rate, shuffle_until, advanced_at)) = room else {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(Vec::new());
        };
        let rate = u32::try_from(rate).unwrap_or(1);
        let (owed, advanced_to) = admission::allowance(rate, shuffle_until, advanced_at, now);
        if owed == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(Vec::new());
        }
        let mut admitted: Vec<Ticket> = sqlx::query_as::<_, TicketRow>(&format!(
            "UPDATE queue_tickets SET admitted_at = $2 WHERE id IN ( \
                 SELECT id FROM queue_tickets WHERE event_id = $1 AND admitted_at IS NULL \
                 ORDER BY rank, id LIMIT $3) \
             RETURNING {TICKET}"
        ))
        .bind(event_id)
        .bind(now)
        .bind(i64::try_from(owed).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(Ticket::from)
        .collect();
        // RETURNING keeps no order: give them back in the order they were admitted.
        admitted.sort_by_key(|t| (t.rank, t.id));
        sqlx::query(
            "UPDATE waiting_rooms SET advanced_at = $2, admitted = admitted + $3 \
             WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(advanced_to)
        .bind(i64::try_from(admitted.len()).unwrap_or(0))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(admitted)
    }
}

#[cfg(test)]
mod tests {
    use crate::db;

    /// The PostgreSQL store keeps the same contract as the in-memory one.
    #[tokio::test]
    async fn postgres_store_passes_the_queue_store_contract() {
        let url = db::testing::fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::events_migrator().run(&pool).await.unwrap();
        super::super::contract::run(&super::PostgresQueues::new(
            pool,
            crate::db::PoolSettings::default().answer_limit(),
        ))
        .await;
    }
}
