//! PostgreSQL `AuditStore` over the `audit_log` table of `migrations_auth/` (the accounts'
//! database). A batch is one multi-row `INSERT`; rows are never updated or deleted here.
//! Newest first means by `at`, then by insertion order (`seq`).

use super::{AuditError, AuditFilter, AuditRecord, AuditStore};
use crate::auth::postgres::is_unavailable;
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};

pub struct PostgresAuditStore {
    pool: PgPool,
}

impl PostgresAuditStore {
    /// A store over a database migrated with `db::auth_migrator()`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn failed(error: sqlx::Error) -> AuditError {
    if is_unavailable(&error) {
        AuditError::Unavailable(error.to_string())
    } else {
        AuditError::Internal(error.to_string())
    }
}

/// Appends ` WHERE ...` for every set filter field.
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, filter: &AuditFilter) {
    let mut word = " WHERE ";
    if let Some(actor) = filter.actor_id {
        q.push(word).push("actor_id = ").push_bind(actor);
        word = " AND ";
    }
    if let Some(action) = &filter.action {
        q.push(word).push("action = ").push_bind(action.clone());
        word = " AND ";
    }
    if let Some(kind) = &filter.resource_type {
        q.push(word)
            .push("resource_type = ")
            .push_bind(kind.clone());
        word = " AND ";
    }
    if let Some(id) = &filter.resource_id {
        q.push(word).push("resource_id = ").push_bind(id.clone());
    }
}

fn decode(row: &PgRow) -> Result<AuditRecord, AuditError> {
    AuditRecord::from_row(row).map_err(failed)
}

#[async_trait]
impl AuditStore for PostgresAuditStore {
    #[tracing::instrument(skip_all, fields(records = records.len()), err)]
    async fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO audit_log (id, at, actor_id, actor_label, action, resource_type, \
             resource_id, result, correlation_id, client_ip, user_agent, details) ",
        );
        q.push_values(records, |mut row, r| {
            row.push_bind(r.id)
                .push_bind(r.at)
                .push_bind(r.actor_id)
                .push_bind(r.actor_label.clone())
                .push_bind(r.action.clone())
                .push_bind(r.resource_type.clone())
                .push_bind(r.resource_id.clone())
                .push_bind(r.result.as_str())
                .push_bind(r.correlation_id.clone())
                .push_bind(r.client_ip.clone())
                .push_bind(r.user_agent.clone())
                .push_bind(r.details.clone());
        });
        q.build().execute(&self.pool).await.map_err(failed)?;
        Ok(())
    }

    async fn list(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, AuditError> {
        let mut count = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM audit_log");
        push_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(failed)?;
        let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM audit_log");
        push_filter(&mut q, filter);
        let offset = (i64::from(page.page.max(1)) - 1) * i64::from(page.page_size);
        q.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(i64::from(page.page_size))
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = q.build().fetch_all(&self.pool).await.map_err(failed)?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let total_count = u64::try_from(total).unwrap_or(0);
        Ok(Page {
            items,
            page: page.page,
            page_size: page.page_size,
            total_count,
            total_pages: total_count.div_ceil(u64::from(page.page_size.max(1))),
        })
    }

    async fn ping(&self) -> Result<(), AuditError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(failed)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditResult};
    use crate::db::{self, testing::fresh_database};
    use crate::observability::Metrics;
    use std::sync::Arc;
    use std::time::Instant;

    async fn pool() -> PgPool {
        let url = fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::auth_migrator().run(&pool).await.unwrap();
        pool
    }

    /// The PostgreSQL store honours the same contract as the in-memory one.
    #[tokio::test]
    async fn postgres_store_passes_the_audit_store_contract() {
        super::super::contract::run_all(&PostgresAuditStore::new(pool().await)).await;
    }

    /// A write to an unreachable database is `Unavailable`, so the writer retries it.
    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let settings = db::PoolSettings {
            acquire_timeout: std::time::Duration::from_millis(300),
            min_connections: 0,
            ..db::PoolSettings::default()
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy("postgres://postgres:postgres@127.0.0.1:1/none?sslmode=disable")
            .unwrap();
        let store = PostgresAuditStore::new(pool);
        let record = AuditRecord::new(chrono::Utc::now(), "a", "b", AuditResult::Success);
        assert!(matches!(
            store.insert(&[record]).await,
            Err(AuditError::Unavailable(_))
        ));
    }

    /// Micro-measure behind ARCHITECTURE.md's "audit log" figures: the request-path cost of
    /// `AuditLog::record` (a channel send) against an inline single-row INSERT.
    /// Run: `cargo test --release --lib audit::postgres::tests::measure -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn measure_record_cost_queued_vs_inline() {
        const N: u32 = 2000;
        let pool = pool().await;
        let store = Arc::new(PostgresAuditStore::new(pool.clone()));
        let sample = || {
            AuditRecord::new(
                chrono::Utc::now(),
                "auth.login",
                "user",
                AuditResult::Success,
            )
            .actor(Some(uuid::Uuid::new_v4()), "customer")
            .resource_id(uuid::Uuid::new_v4())
        };
        let started = Instant::now();
        for _ in 0..N {
            store.insert(&[sample()]).await.unwrap();
        }
        let inline = started.elapsed() / N;

        let metrics = Arc::new(Metrics::new());
        let (log, task) = AuditLog::spawn(
            store,
            Arc::clone(&metrics),
            10_000,
            crate::db::PoolSettings::default().answer_limit(),
        );
        let started = Instant::now();
        for _ in 0..N {
            log.record(sample());
        }
        let queued = started.elapsed() / N;
        drop(log);
        task.await.unwrap();
        let drained = started.elapsed();
        println!(
            "per record on the request path: inline INSERT {inline:?}, queued {queued:?}; \
             {N} queued records written in {drained:?} ({} dropped)",
            metrics.audit_records.with_label_values(&["dropped"]).get()
        );
    }
}
