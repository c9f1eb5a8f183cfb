//! The dead letter queue on PostgreSQL (`dead_letter_queue` in `migrations_events/`).
//! Status changes are single conditional UPDATEs, so two admins (or two instances) acting on
//! one entry cannot both win.

use super::{
    Closing, DeadLetter, DeadLetters, DlqError, DlqStats, DlqStatus, NewDeadLetter, Parked,
};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool};

pub struct PostgresDeadLetters(PgPool);

impl PostgresDeadLetters {
    pub fn new(pool: PgPool) -> Self {
        PostgresDeadLetters(pool)
    }
}

fn unavailable(e: impl std::fmt::Display) -> DlqError {
    DlqError::Unavailable(e.to_string())
}

/// Binds what every parked entry records, as `$1` (consumer) to `$15` (failed at), in the
/// column order both parking statements use.
fn bind_letter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    e: NewDeadLetter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(e.consumer)
        .bind(e.topic)
        .bind(e.partition)
        .bind(e.offset)
        .bind(e.message_key)
        .bind(e.stream_id)
        .bind(e.stream_version.and_then(|v| i64::try_from(v).ok()))
        .bind(e.event_type)
        .bind(e.event_version.map(i32::from))
        .bind(e.payload)
        .bind(headers_json(e.headers))
        .bind(e.error)
        .bind(serde_json::json!(e.causes))
        .bind(i32::try_from(e.retry_count).unwrap_or(i32::MAX))
        .bind(e.failed_at)
}

const COLUMNS: &str = "id, consumer, topic, partition, \"offset\", message_key, stream_id, \
     stream_version, event_type, event_version, payload, metadata, error, causes, parked_behind, \
     retry_count, first_failed_at, last_failed_at, status, resolved_by, resolved_at, notes";

/// A `dead_letter_queue` row as stored; `TryFrom` checks every value it narrows.
#[derive(sqlx::FromRow)]
struct EntryRow {
    id: i64,
    consumer: String,
    topic: String,
    partition: i32,
    offset: i64,
    message_key: String,
    stream_id: Option<String>,
    stream_version: Option<i64>,
    event_type: Option<String>,
    event_version: Option<i32>,
    payload: Vec<u8>,
    metadata: serde_json::Value,
    error: String,
    causes: serde_json::Value,
    parked_behind: Option<i64>,
    retry_count: i32,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
    status: String,
    resolved_by: Option<uuid::Uuid>,
    resolved_at: Option<DateTime<Utc>>,
    notes: Option<String>,
}

impl TryFrom<EntryRow> for DeadLetter {
    type Error = DlqError;

    fn try_from(row: EntryRow) -> Result<Self, DlqError> {
        let id = row.id;
        let corrupt = |what: String| DlqError::Unavailable(format!("dead letter {id}: {what}"));
        let serde_json::Value::Object(metadata) = row.metadata else {
            return Err(corrupt("metadata is not an object".into()));
        };
        Ok(DeadLetter {
            id,
            consumer: row.consumer,
            topic: row.topic,
            partition: row.partition,
            offset: row.offset,
            message_key: row.message_key,
            stream_id: row.stream_id,
            stream_version: row
                .stream_version
                .map(u64::try_from)
                .transpose()
                .map_err(|e| corrupt(format!("stream version: {e}")))?,
            event_type: row.event_type,
            event_version: row
                .event_version
                .map(u16::try_from)
                .transpose()
                .map_err(|e| corrupt(format!("event version: {e}")))?,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(row.payload),
            metadata,
            error: row.error,
            causes: serde_json::from_value(row.causes)
                .map_err(|e| corrupt(format!("causes: {e}")))?,
            parked_behind: row.parked_behind,
            retry_count: u32::try_from(row.retry_count)
                .map_err(|e| corrupt(format!("retry count: {e}")))?,
            first_failed_at: row.first_failed_at,
            last_failed_at: row.last_failed_at,
            status: DlqStatus::parse(&row.status)
                .ok_or_else(|| corrupt(format!("unknown status {}", row.status)))?,
            resolved_by: row.resolved_by,
            resolved_at: row.resolved_at,
            notes: row.notes,
        })
    }
}

/// A message's headers as the `metadata` JSON object.
fn headers_json(headers: Vec<(String, String)>) -> serde_json::Value {
    serde_json::Value::Object(
        headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    )
}

fn entry(row: &PgRow) -> Result<DeadLetter, DlqError> {
    DeadLetter::try_from(EntryRow::from_row(row).map_err(unavailable)?)
}

impl PostgresDeadLetters {
    /// The entry a conditional `UPDATE ... RETURNING` changed, or why it matched nothing.
    async fn transitioned(
        &self,
        id: i64,
        row: Result<Option<PgRow>, sqlx::Error>,
    ) -> Result<DeadLetter, DlqError> {
        match row.map_err(unavailable)? {
            Some(row) => entry(&row),
            None => Err(self.refusal(id).await),
        }
    }

    /// Explains why a conditional UPDATE matched nothing.
    async fn refusal(&self, id: i64) -> DlqError {
        match self.get(id).await {
            Ok(e) => DlqError::WrongStatus {
                id,
                status: e.status,
            },
            Err(e) => e,
        }
    }
}

#[async_trait]
impl DeadLetters for PostgresDeadLetters {
    async fn park(&self, e: NewDeadLetter) -> Result<i64, DlqError> {
        let behind = e.parked_behind;
        let (id,): (i64,) = bind_letter(
            sqlx::query_as(
                "INSERT INTO dead_letter_queue (consumer, topic, partition, \"offset\", message_key,
                     stream_id, stream_version, event_type, event_version, payload, metadata, error,
                     causes, retry_count, first_failed_at, last_failed_at, parked_behind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16)
                 RETURNING id",
            ),
            e,
        )
        .bind(behind)
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(id)
    }

    async fn park_behind_open(&self, e: NewDeadLetter) -> Result<Option<Parked>, DlqError> {
        if e.stream_id.is_none() {
            return Ok(None);
        }
        // The head's row lock orders this insert with a close of the head: a close that
        // committed first makes the head fail the re-check (the next open entry, if any, is
        // taken instead); one that comes later waits until this entry is committed.
        let parked: Option<(i64, i64)> = bind_letter(
            sqlx::query_as(
                "WITH head AS (
                 SELECT id FROM dead_letter_queue
                  WHERE consumer = $1 AND stream_id = $6 AND status IN ('pending', 'processing')
                  ORDER BY id LIMIT 1 FOR UPDATE)
             INSERT INTO dead_letter_queue (consumer, topic, partition, \"offset\", message_key,
                 stream_id, stream_version, event_type, event_version, payload, metadata, error,
                 causes, retry_count, first_failed_at, last_failed_at, parked_behind)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, head.id
               FROM head
             RETURNING id, parked_behind",
            ),
            e,
        )
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(parked.map(|(id, behind)| Parked { id, behind }))
    }

    async fn open_entry_of(
        &self,
        consumer: &str,
        stream_id: &str,
    ) -> Result<Option<i64>, DlqError> {
        sqlx::query_scalar(
            "SELECT id FROM dead_letter_queue
              WHERE consumer = $1 AND stream_id = $2 AND status IN ('pending', 'processing')
              ORDER BY id LIMIT 1",
        )
        .bind(consumer)
        .bind(stream_id)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)
    }

    async fn open_entries_of(
        &self,
        consumer: &str,
        stream_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, i64>, DlqError> {
        if stream_ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        sqlx::query_as::<_, (String, i64)>(
            "SELECT stream_id, MIN(id) FROM dead_letter_queue
              WHERE consumer = $1 AND stream_id = ANY($2) AND status IN ('pending', 'processing')
              GROUP BY stream_id",
        )
        .bind(consumer)
        .bind(stream_ids)
        .fetch_all(&self.0)
        .await
        .map(|rows| rows.into_iter().collect())
        .map_err(unavailable)
    }

    async fn stranded_heads(
        &self,
        closed_before: DateTime<Utc>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dead_letter_queue WHERE id IN (
                 SELECT f.parked_behind FROM dead_letter_queue f
                   JOIN dead_letter_queue h ON h.id = f.parked_behind
                  WHERE f.status = 'pending' AND f.retry_count = 0
                    AND h.status IN ('resolved', 'discarded') AND h.resolved_at < $1
                    AND f.id = (SELECT MIN(o.id) FROM dead_letter_queue o
                                 WHERE o.consumer = f.consumer AND o.stream_id = f.stream_id
                                   AND o.status IN ('pending', 'processing')))
             ORDER BY id LIMIT 100"
        ))
        .bind(closed_before)
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        rows.iter().map(entry).collect()
    }

    async fn get(&self, id: i64) -> Result<DeadLetter, DlqError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dead_letter_queue WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?;
        entry(&row.ok_or(DlqError::NotFound(id))?)
    }

    async fn list(
        &self,
        status: Option<DlqStatus>,
        page: PageRequest,
    ) -> Result<Page<DeadLetter>, DlqError> {
        let status = status.map(DlqStatus::as_str);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dead_letter_queue
              WHERE ($1::text IS NULL OR status = $1)
              ORDER BY id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(status)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dead_letter_queue WHERE ($1::text IS NULL OR status = $1)",
        )
        .bind(status)
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)?;
        let items = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        Ok(page.page_of(items, u64::try_from(total).unwrap_or(0)))
    }

    async fn stats(&self) -> Result<DlqStats, DlqError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM dead_letter_queue GROUP BY status")
                .fetch_all(&self.0)
                .await
                .map_err(unavailable)?;
        let mut stats = DlqStats::default();
        for (status, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match DlqStatus::parse(&status) {
                Some(DlqStatus::Pending) => stats.pending = n,
                Some(DlqStatus::Processing) => stats.processing = n,
                Some(DlqStatus::Resolved) => stats.resolved = n,
                Some(DlqStatus::Discarded) => stats.discarded = n,
                None => {}
            }
        }
        Ok(stats)
    }

    async fn claim(&self, id: i64, at: DateTime<Utc>) -> Result<DeadLetter, DlqError> {
        let current = self.get(id).await?;
        if let Some(stream) = &current.stream_id {
            let earlier: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM dead_letter_queue
                  WHERE consumer = $1 AND stream_id = $2 AND id < $3
                    AND status IN ('pending', 'processing')
                  ORDER BY id LIMIT 1",
            )
            .bind(&current.consumer)
            .bind(stream)
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?;
            if let Some(behind) = earlier {
                return Err(DlqError::Blocked { id, behind });
            }
        }
        let row = sqlx::query(&format!(
            "UPDATE dead_letter_queue SET status = 'processing', claimed_at = $2
              WHERE id = $1 AND status = 'pending' RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(at)
        .fetch_optional(&self.0)
        .await;
        self.transitioned(id, row).await
    }

    async fn release_stale_claims(
        &self,
        claimed_before: DateTime<Utc>,
    ) -> Result<Vec<i64>, DlqError> {
        sqlx::query_scalar(
            "UPDATE dead_letter_queue SET status = 'pending', claimed_at = NULL
              WHERE status = 'processing' AND (claimed_at IS NULL OR claimed_at < $1)
              RETURNING id",
        )
        .bind(claimed_before)
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)
    }

    async fn retry_failed(
        &self,
        id: i64,
        error: String,
        causes: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<DeadLetter, DlqError> {
        let row = sqlx::query(&format!(
            "UPDATE dead_letter_queue
                SET status = 'pending', error = $2, causes = $3, retry_count = retry_count + 1,
                    last_failed_at = $4
              WHERE id = $1 AND status = 'processing' RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(error)
        .bind(serde_json::json!(causes))
        .bind(at)
        .fetch_optional(&self.0)
        .await;
        self.transitioned(id, row).await
    }

    async fn close(
        &self,
        id: i64,
        from: DlqStatus,
        closing: Closing,
    ) -> Result<DeadLetter, DlqError> {
        let row = sqlx::query(&format!(
            "UPDATE dead_letter_queue
                SET status = $3, resolved_by = $4, resolved_at = $5, notes = $6
              WHERE id = $1 AND status = $2 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(from.as_str())
        .bind(closing.status.as_str())
        .bind(closing.by.map(|u| u.0))
        .bind(closing.at)
        .bind(closing.notes)
        .fetch_optional(&self.0)
        .await;
        self.transitioned(id, row).await
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
