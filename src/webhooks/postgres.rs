//! The `WebhookStore` on PostgreSQL (`webhook_endpoints` and `webhook_deliveries` in
//! `migrations_events/`). A delivery's uniqueness per (endpoint, message id) is the table's
//! constraint, so a redelivered bus message inserts nothing, on any instance.

use super::{
    Attempt, Delivery, DeliveryStatus, Endpoint, EndpointStatus, WebhookError, WebhookStore,
};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub struct PostgresWebhooks(PgPool);

impl PostgresWebhooks {
    pub fn new(pool: PgPool) -> Self {
        PostgresWebhooks(pool)
    }
}

fn unavailable(e: sqlx::Error) -> WebhookError {
    WebhookError::Unavailable(e.to_string())
}

const ENDPOINT_COLUMNS: &str = "id, owner_id, url, event_types, event_id, description, status, \
     secret, previous_secret, previous_secret_until, created_at, from_position";

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: Uuid,
    owner_id: Uuid,
    url: String,
    event_types: Vec<String>,
    event_id: Option<Uuid>,
    description: Option<String>,
    status: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    from_position: i64,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = WebhookError;

    fn try_from(r: EndpointRow) -> Result<Self, WebhookError> {
        let status = EndpointStatus::parse(&r.status)
            .ok_or_else(|| WebhookError::Corrupt(format!("endpoint status {:?}", r.status)))?;
        Ok(Endpoint {
            id: r.id,
            owner_id: r.owner_id,
            url: r.url,
            event_types: r.event_types,
            event_id: r.event_id,
            description: r.description,
            status,
            secret: r.secret,
            previous_secret: r.previous_secret.zip(r.previous_secret_until),
            created_at: r.created_at,
            from_position: u64::try_from(r.from_position)
                .map_err(|_| WebhookError::Corrupt(format!("endpoint {} position", r.id)))?,
        })
    }
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, message_id, event_type, body, status, attempts, \
     last_status_code, next_attempt_at, created_at";

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    endpoint_id: Uuid,
    message_id: String,
    event_type: String,
    body: String,
    status: String,
    attempts: i32,
    last_status_code: Option<i32>,
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = WebhookError;

    fn try_from(r: DeliveryRow) -> Result<Self, WebhookError> {
        let corrupt = |what: &str| WebhookError::Corrupt(format!("delivery {}: {what}", r.id));
        Ok(Delivery {
            id: r.id,
            endpoint_id: r.endpoint_id,
            message_id: r.message_id.clone(),
            event_type: r.event_type.clone(),
            body: r.body.clone(),
            status: DeliveryStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt("attempts"))?,
            last_status_code: r
                .last_status_code
                .map(u16::try_from)
                .transpose()
                .map_err(|_| corrupt("status code"))?,
            next_attempt_at: r.next_attempt_at,
            created_at: r.created_at,
        })
    }
}

fn endpoints(rows: Vec<EndpointRow>) -> Result<Vec<Endpoint>, WebhookError> {
    rows.into_iter().map(Endpoint::try_from).collect()
}

fn deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>, WebhookError> {
    rows.into_iter().map(Delivery::try_from).collect()
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl WebhookStore for PostgresWebhooks {
    async fn create(&self, e: &Endpoint) -> Result<(), WebhookError> {
        let (previous, until) = e.previous_secret.clone().unzip();
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(e.id)
        .bind(e.owner_id)
        .bind(&e.url)
        .bind(&e.event_types)
        .bind(e.event_id)
        .bind(&e.description)
        .bind(e.status.as_str())
        .bind(&e.secret)
        .bind(previous)
        .bind(until)
        .bind(e.created_at)
        .bind(i64::try_from(e.from_position).map_err(|_| WebhookError::Corrupt("position".into()))?)
        .execute(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Endpoint>, WebhookError> {
        sqlx::query_as::<_, EndpointRow>(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?
        .map(Endpoint::try_from)
        .transpose()
    }

    async fn list(
        &self,
        owner: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Endpoint>, WebhookError> {
        let rows = sqlx::query_as::<_, EndpointRow>(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE $1::uuid IS NULL OR owner_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
        ))
        .bind(owner)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE $1::uuid IS NULL OR owner_id = $1",
        )
        .bind(owner)
        .fetch_one(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(page.page_of(endpoints(rows)?, count(total)))
    }

    async fn delete(&self, id: Uuid) -> Result<bool, WebhookError> {
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, WebhookError> {
        sqlx::query_as::<_, EndpointRow>(&format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, \
             previous_secret_until = $3, secret = $2 WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(secret)
        .bind(previous_until)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?
        .map(Endpoint::try_from)
        .transpose()
    }

    async fn set_status(&self, id: Uuid, status: EndpointStatus) -> Result<(), WebhookError> {
        sqlx::query("UPDATE webhook_endpoints SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(status.as_str())
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribers(&self, owners: &[Uuid]) -> Result<Vec<Endpoint>, WebhookError> {
        let rows = sqlx::query_as::<_, EndpointRow>(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE owner_id = ANY($1) AND status <> 'disabled' ORDER BY id"
        ))
        .bind(owners)
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        endpoints(rows)
    }

    async fn enqueue(&self, batch: &[Delivery]) -> Result<Vec<Delivery>, WebhookError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the batch; rows are numbered (`seq`) in the batch's order.
        let column = |f: fn(&Delivery) -> Uuid| batch.iter().map(f).collect::<Vec<_>>();
        let stored: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (id, endpoint_id, message_id, event_type, body, \
             status, attempts, next_attempt_at, created_at) \
             SELECT d.id, d.e, d.m, d.t, d.b, 'pending', 0, d.n, d.c \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
                           $6::timestamptz[], $7::timestamptz[]) \
                    WITH ORDINALITY AS d(id, e, m, t, b, n, c, i) \
              WHERE EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = d.e) \
              ORDER BY d.i \
             ON CONFLICT (endpoint_id, message_id) DO NOTHING RETURNING id",
        )
        .bind(column(|d| d.id))
        .bind(column(|d| d.endpoint_id))
        .bind(
            batch
                .iter()
                .map(|d| d.message_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|d| d.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|d| d.body.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|d| d.next_attempt_at).collect::<Vec<_>>())
        .bind(batch.iter().map(|d| d.created_at).collect::<Vec<_>>())
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let stored: std::collections::HashSet<Uuid> = stored.into_iter().collect();
        Ok(batch
            .iter()
            .filter(|d| stored.contains(&d.id))
            .cloned()
            .collect())
    }

    async fn pending(
        &self,
        endpoint: Uuid,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>, WebhookError> {
        let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE endpoint_id = $1 AND status = 'pending' \
               AND (claimed_until IS NULL OR claimed_until <= $3) ORDER BY seq LIMIT $2"
        ))
        .bind(endpoint)
        .bind(i64::from(limit))
        .bind(now)
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        deliveries(rows)
    }

    async fn claim(
        &self,
        delivery: Uuid,
        holder: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, WebhookError> {
        let claimed = sqlx::query(
            "UPDATE webhook_deliveries SET claimed_by = $2, claimed_until = $4 \
             WHERE id = $1 AND status = 'pending' \
               AND (claimed_until IS NULL OR claimed_until <= $3 OR claimed_by = $2)",
        )
        .bind(delivery)
        .bind(holder)
        .bind(now)
        .bind(until)
        .execute(&self.0)
        .await
        .map_err(unavailable)?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn endpoints_with_pending(&self) -> Result<Vec<Uuid>, WebhookError> {
        sqlx::query_scalar(
            "SELECT DISTINCT endpoint_id FROM webhook_deliveries WHERE status = 'pending' \
             ORDER BY endpoint_id",
        )
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)
    }

    async fn pending_count(&self) -> Result<u64, WebhookError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
                .fetch_one(&self.0)
                .await
                .map_err(unavailable)?;
        Ok(count(n))
    }

    /// Without waiting for the WAL flush: attempts are many (one per request sent), and
    /// flushing each would compete with the event store's appends for the disk. A crash may
    /// forget the last attempts of a moment ago; the delivery is then sent again with the
    /// same `webhook-id`, which receivers de-duplicate.
    async fn record_attempt(
        &self,
        delivery: Uuid,
        holder: Uuid,
        a: Attempt,
    ) -> Result<bool, WebhookError> {
        let mut tx = self.0.begin().await.map_err(unavailable)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let recorded = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2, \
             last_status_code = $3, next_attempt_at = $4, claimed_until = $5, \
             claimed_by = CASE WHEN $5::timestamptz IS NULL THEN NULL ELSE claimed_by END \
             WHERE id = $1 AND claimed_by = $6 AND status = 'pending'",
        )
        .bind(delivery)
        .bind(a.status.as_str())
        .bind(a.status_code.map(i32::from))
        .bind(a.next_attempt_at)
        .bind(a.held_until)
        .bind(holder)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(recorded.rows_affected() == 1)
    }

    async fn deliveries(
        &self,
        endpoint: Uuid,
        page: PageRequest,
    ) -> Result<Page<Delivery>, WebhookError> {
        let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 \
             ORDER BY seq DESC LIMIT $2 OFFSET $3"
        ))
        .bind(endpoint)
        .bind(i64::from(page.page_size))
        .bind(page.offset())
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(endpoint)
                .fetch_one(&self.0)
                .await
                .map_err(unavailable)?;
        Ok(page.page_of(deliveries(rows)?, count(total)))
    }

    async fn redeliver(
        &self,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Option<Delivery>, WebhookError> {
        sqlx::query_as::<_, DeliveryRow>(&format!(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = NULL, \
             claimed_until = NULL, claimed_by = NULL WHERE id = $1 AND endpoint_id = $2 RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(delivery)
        .bind(endpoint)
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?
        .map(Delivery::try_from)
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::db;

    /// The PostgreSQL store keeps the same contract as the in-memory one.
    #[tokio::test]
    async fn postgres_store_passes_the_webhook_store_contract() {
        let url = db::testing::fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::events_migrator().run(&pool).await.unwrap();
        super::super::contract::run(&super::PostgresWebhooks::new(pool)).await;
    }
}
