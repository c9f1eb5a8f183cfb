//! The dead letter queue on PostgreSQL (`dead_letter_queue` in `migrations_events/`).
//! Status changes are single conditional UPDATEs, so two admins (or two instances) acting on
//! one entry cannot both win.

use super::{Closing, DeadLetter, DeadLetters, DlqError, DlqStats, DlqStatus, NewDeadLetter};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

pub struct PostgresDeadLetters(PgPool);

impl PostgresDeadLetters {
    pub fn new(pool: PgPool) -> Self {
        PostgresDeadLetters(pool)
    }
}

fn unavailable(e: impl std::fmt::Display) -> DlqError {
    DlqError::Unavailable(e.to_string())
}

const COLUMNS: &str = "id, consumer, topic, partition, \"offset\", message_key, stream_id, \
     stream_version, event_type, event_version, payload, metadata, error, causes, parked_behind, \
     retry_count, first_failed_at, last_failed_at, status, resolved_by, resolved_at, notes";

fn entry(row: &PgRow) -> Result<DeadLetter, DlqError> {
    let status: String = row.try_get("status").map_err(unavailable)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(unavailable)?;
    let metadata: serde_json::Value = row.try_get("metadata").map_err(unavailable)?;
    let causes: serde_json::Value = row.try_get("causes").map_err(unavailable)?;
    let version: Option<i64> = row.try_get("stream_version").map_err(unavailable)?;
    let event_version: Option<i32> = row.try_get("event_version").map_err(unavailable)?;
    let retry_count: i32 = row.try_get("retry_count").map_err(unavailable)?;
    Ok(DeadLetter {
        id: row.try_get("id").map_err(unavailable)?,
        consumer: row.try_get("consumer").map_err(unavailable)?,
        topic: row.try_get("topic").map_err(unavailable)?,
        partition: row.try_get("partition").map_err(unavailable)?,
        offset: row.try_get("offset").map_err(unavailable)?,
        message_key: row.try_get("message_key").map_err(unavailable)?,
        stream_id: row.try_get("stream_id").map_err(unavailable)?,
        stream_version: version.and_then(|v| u64::try_from(v).ok()),
        event_type: row.try_get("event_type").map_err(unavailable)?,
        event_version: event_version.and_then(|v| u16::try_from(v).ok()),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
        metadata: match metadata {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
        error: row.try_get("error").map_err(unavailable)?,
        causes: serde_json::from_value(causes).unwrap_or_default(),
        parked_behind: row.try_get("parked_behind").map_err(unavailable)?,
        retry_count: u32::try_from(retry_count).unwrap_or(0),
        first_failed_at: row.try_get("first_failed_at").map_err(unavailable)?,
        last_failed_at: row.try_get("last_failed_at").map_err(unavailable)?,
        status: DlqStatus::parse(&status)
            .ok_or_else(|| unavailable(format!("unknown status {status}")))?,
        resolved_by: row.try_get("resolved_by").map_err(unavailable)?,
        resolved_at: row.try_get("resolved_at").map_err(unavailable)?,
        notes: row.try_get("notes").map_err(unavailable)?,
    })
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
        let metadata: serde_json::Map<String, serde_json::Value> = e
            .headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        sqlx::query_scalar(
            "INSERT INTO dead_letter_queue (consumer, topic, partition, \"offset\", message_key,
                 stream_id, stream_version, event_type, event_version, payload, metadata, error,
                 causes, parked_behind, retry_count, first_failed_at, last_failed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)
             RETURNING id",
        )
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
        .bind(serde_json::Value::Object(metadata))
        .bind(e.error)
        .bind(serde_json::json!(e.causes))
        .bind(e.parked_behind)
        .bind(i32::try_from(e.retry_count).unwrap_or(i32::MAX))
        .bind(e.failed_at)
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)
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

    async fn claim(&self, id: i64) -> Result<DeadLetter, DlqError> {
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
            "UPDATE dead_letter_queue SET status = 'processing'
              WHERE id = $1 AND status = 'pending' RETURNING {COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&self.0)
        .await;
        self.transitioned(id, row).await
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
