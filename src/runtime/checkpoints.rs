//! Where process managers (refund settlement, ...) keep their position in the event log, so a
//! restart resumes instead of replaying history. Read models keep theirs inside their own
//! transactions instead. PostgreSQL rows live in `projection_checkpoints`
//! (`migrations_projections/`); a position only ever moves forward.

use async_trait::async_trait;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    async fn load(&self, name: &str) -> anyhow::Result<u64>;
    async fn save(&self, name: &str, position: u64) -> anyhow::Result<()>;
}

#[derive(Default)]
pub struct MemoryCheckpoints(Mutex<HashMap<String, u64>>);

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn load(&self, name: &str) -> anyhow::Result<u64> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map.get(name).copied().unwrap_or(0))
    }

    async fn save(&self, name: &str, position: u64) -> anyhow::Result<()> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(name.to_owned()).or_insert(0);
        *entry = (*entry).max(position);
        Ok(())
    }
}

/// Checkpoints in `projection_checkpoints`; a call without an answer within `limit` (a
/// connection gone silent) fails, and the subscription retries it.
pub struct PostgresCheckpoints {
    pool: PgPool,
    limit: std::time::Duration,
}

impl PostgresCheckpoints {
    pub fn new(pool: PgPool, limit: std::time::Duration) -> Self {
        Self { pool, limit }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> anyhow::Result<T> {
        let call = async { Ok(call.await?) };
        let silent = || anyhow::anyhow!("no answer from the checkpoints' database in time");
        crate::db::within(self.limit, call, silent).await
    }
}

#[async_trait]
impl Checkpoints for PostgresCheckpoints {
    async fn load(&self, name: &str) -> anyhow::Result<u64> {
        let position: Option<i64> = self
            .bounded(
                sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    async fn save(&self, name: &str, position: u64) -> anyhow::Result<()> {
        let position = i64::try_from(position)?;
        self.bounded(
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, position) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET position = GREATEST(projection_checkpoints.position, EXCLUDED.position)",
            )
            .bind(name)
            .bind(position)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract both checkpoint stores keep: unknown names start at 0, positions are kept
    /// per name and never move backwards.
    async fn contract(store: &dyn Checkpoints) {
        assert_eq!(store.load("refunds").await.unwrap(), 0);
        store.save("refunds", 7).await.unwrap();
        store.save("other", 3).await.unwrap();
        store.save("refunds", 5).await.unwrap();
        assert_eq!(
            store.load("refunds").await.unwrap(),
            7,
            "a checkpoint moved backwards"
        );
        assert_eq!(store.load("other").await.unwrap(), 3);
    }

    /// The in-memory checkpoints keep the contract.
    #[tokio::test]
    async fn memory_checkpoints_keep_the_contract() {
        contract(&MemoryCheckpoints::default()).await;
    }

    /// The PostgreSQL checkpoints keep the same contract.
    #[tokio::test]
    async fn postgres_checkpoints_keep_the_contract() {
        let url = crate::db::testing::fresh_database().await;
        let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
            .await
            .unwrap();
        crate::db::projections_migrator().run(&pool).await.unwrap();
        contract(&PostgresCheckpoints::new(
            pool,
            crate::db::PoolSettings::default().answer_limit(),
        ))
        .await;
    }
}
