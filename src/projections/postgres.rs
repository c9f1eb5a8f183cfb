//! PostgreSQL read models: owns the view tables of `migrations_projections/` and the
//! `read-models` row of `projection_checkpoints`. Delivery is at-least-once: a batch is applied
//! in one transaction that locks the checkpoint row, skips events at or below it and moves it
//! past the batch, so a duplicate or a batch raced by another instance changes nothing; each
//! view row also keeps its stream's version and ignores events it already includes. The hot
//! events of a sale are written set-based (`bulk`), the rare ones one by one (`apply`). It
//! mirrors `memory.rs` value for value and never decides anything: the event log is the truth.
//! Its queries pass a bulkhead sized to the pool (`bulkhead`).

mod apply;
mod bulk;
mod bulkhead;
mod queries;

use super::*;
use crate::eventstore::codec;
use crate::paging::{Page, PageRequest};
use anyhow::Context;
use sqlx::PgPool;

/// The checkpoint row of this projection (the name its subscription runs under).
const CHECKPOINT: &str = "read-models";

pub struct PostgresReadModel {
    pool: PgPool,
    bulkhead: bulkhead::Bulkhead,
}

impl PostgresReadModel {
    /// A read model over a database migrated with `db::projections_migrator()`.
    pub fn new(pool: PgPool) -> Self {
        let bulkhead = bulkhead::Bulkhead::sized_to(&pool);
        Self { pool, bulkhead }
    }

    /// Locks this projection's checkpoint row (creating it at 0 first, race-free) and returns
    /// its position. Every writer takes this lock first, so writers never deadlock each other.
    async fn lock_checkpoint(conn: &mut sqlx::PgConnection) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(CHECKPOINT)
        .execute(&mut *conn)
        .await?;
        let position: i64 = sqlx::query_scalar(
            "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        )
        .bind(CHECKPOINT)
        .fetch_one(&mut *conn)
        .await?;
        Ok(u64::try_from(position).unwrap_or(0))
    }

    /// Applies a batch in one transaction with a constant number of statements for the hot
    /// events: they are gathered in a `bulk::Batch` and written table by table when the batch
    /// ends or a rare event comes (which is then applied alone, so effects keep log order).
    #[tracing::instrument(
        name = "read_model.apply",
        skip_all,
        fields(
            otel.name = "BATCH read_models",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "BATCH",
            db.collection.name = "read_models",
            events = events.len(),
            statements = tracing::field::Empty,
        ),
        err
    )]
    async fn apply_batch(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin the read-model transaction")?;
        let start = Self::lock_checkpoint(&mut tx)
            .await
            .context("cannot lock the read-model checkpoint")?;
        let mut statements = 2; // the checkpoint row: created if missing, then locked
        let mut checkpoint = start;
        let mut batch = bulk::Batch::default();
        for recorded in events {
            if recorded.position <= checkpoint {
                continue;
            }
            checkpoint = recorded.position;
            let event = match codec::decode(recorded) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(position = recorded.position, error = %e, "read model skipped an undecodable event");
                    continue;
                }
            };
            if batch.add(recorded, &event) {
                continue;
            }
            statements += batch
                .flush(&mut tx)
                .await
                .context("cannot apply a batch of events to the read models")?;
            statements += apply::apply(&mut tx, recorded, &event)
                .await
                .with_context(|| {
                    format!(
                        "cannot apply {} at position {} to the read models",
                        recorded.event_type, recorded.position
                    )
                })?;
        }
        statements += batch
            .flush(&mut tx)
            .await
            .context("cannot apply a batch of events to the read models")?;
        if checkpoint != start {
            sqlx::query("UPDATE projection_checkpoints SET position = $2 WHERE name = $1")
                .bind(CHECKPOINT)
                .bind(i64::try_from(checkpoint).context("checkpoint beyond BIGINT")?)
                .execute(&mut *tx)
                .await
                .context("cannot move the read-model checkpoint")?;
            statements += 1;
        }
        tracing::Span::current().record("statements", statements);
        tx.commit()
            .await
            .context("cannot commit the read-model transaction")
    }

    #[tracing::instrument(name = "read_model.reset", skip_all, err)]
    async fn reset_all(&self) -> anyhow::Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin the read-model reset")?;
        // Waits for a batch in flight, so the reset never interleaves with one.
        Self::lock_checkpoint(&mut tx)
            .await
            .context("cannot lock the read-model checkpoint")?;
        sqlx::query("TRUNCATE event_sections, event_views, reservation_views, payment_views")
            .execute(&mut *tx)
            .await
            .context("cannot empty the read-model tables")?;
        // Only this projection's row: other subscribers may keep their checkpoints here too.
        sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE name = $1")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await
            .context("cannot rewind the read-model checkpoint")?;
        tx.commit()
            .await
            .context("cannot commit the read-model reset")
    }
}

#[async_trait]
impl ProjectionWriter for PostgresReadModel {
    async fn apply(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        self.apply_batch(events).await
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(CHECKPOINT)
                .fetch_optional(&self.pool)
                .await
                .context("cannot read the read-model checkpoint")?;
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    async fn reset(&self) -> anyhow::Result<()> {
        self.reset_all().await
    }
}

#[async_trait]
impl EventLookup for PostgresReadModel {
    async fn event(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::event(&self.pool, id).await
    }
}

#[async_trait]
impl ReadModel for PostgresReadModel {
    async fn events(
        &self,
        query: &EventQuery,
        page: PageRequest,
    ) -> Result<Page<EventView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::events(&self.pool, query, page).await
    }

    async fn reservation(&self, id: ReservationId) -> Result<Option<ReservationView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::reservation(&self.pool, id).await
    }

    async fn reservations(
        &self,
        user: Option<UserId>,
        page: PageRequest,
    ) -> Result<Page<ReservationView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::reservations(&self.pool, user, page).await
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::payment(&self.pool, id).await
    }

    async fn payments_of(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<PaymentView>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::payments_of(&self.pool, user, page).await
    }

    async fn pending_holds(&self) -> Result<Vec<PendingHold>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::pending_holds(&self.pool).await
    }

    async fn ping(&self) -> Result<(), ReadError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(queries::unavailable)
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests;
