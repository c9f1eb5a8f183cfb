//! PostgreSQL read models: owns the view tables of `migrations_projections/` and the
//! `read-models` row of `projection_checkpoints`. Delivery is at-least-once: a batch claims
//! the checkpoint row (moves it from where this instance last saw it past the batch, only if
//! it is still there) and writes only with that claim, skipping events at or below it, so a
//! duplicate or a batch raced by another instance changes nothing; each view row also keeps
//! its stream's version and ignores events it already includes. The hot events of a sale are
//! written set-based (`bulk`, one statement with the claim), the rare ones one by one
//! (`apply`, in a transaction that claims first). It mirrors `memory.rs` value for value and
//! never decides anything: the event log is the truth. Its queries pass a bulkhead sized to
//! the pool (`bulkhead`).

mod apply;
mod bulk;
mod bulkhead;
mod lookups;
mod queries;

use super::*;
use crate::eventstore::codec;
use crate::paging::{Page, PageRequest};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};

/// The checkpoint row of this projection (the name its subscription runs under).
const CHECKPOINT: &str = "read-models";

pub struct PostgresReadModel {
    pool: PgPool,
    bulkhead: Arc<bulkhead::Bulkhead>,
    /// Reservations read by id, in batches (each batch takes its own turn in the bulkhead).
    lookups: lookups::ReservationLookups,
    /// Where this instance last saw the checkpoint (`UNKNOWN` until read): what the next batch
    /// claims from. Never ahead of the row, which only moves forward (a reset forgets it), so a
    /// stale value costs a lost claim and a re-read, never a skipped event.
    known: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

/// How many claims one `apply` may lose without seeing the checkpoint move (a loss normally
/// means another instance applied something) before it reports an error and the subscription
/// retries with backoff.
const CLAIM_STALLS: usize = 8;

impl PostgresReadModel {
    /// A read model over a database migrated with `db::projections_migrator()`.
    pub fn new(pool: PgPool) -> Self {
        let bulkhead = Arc::new(bulkhead::Bulkhead::sized_to(&pool));
        Self {
            lookups: lookups::ReservationLookups::new(pool.clone(), Arc::clone(&bulkhead)),
            pool,
            bulkhead,
            known: AtomicU64::new(UNKNOWN),
        }
    }

    /// Abandons a batch of look-ups that got no answer within `limit` (the default is
    /// `PoolSettings::default().answer_limit()`).
    pub fn answering_within(mut self, limit: std::time::Duration) -> Self {
        self.lookups.limit = limit;
        self
    }

    /// Locks this projection's checkpoint row (creating it at 0 first, race-free) and returns
    /// its position. Appliers claim the row before writing anything, so nothing deadlocks.
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

    /// The checkpoint as stored, remembered as `known`; a missing row is created at 0 (once
    /// per database), so that the first claim finds it.
    async fn read_checkpoint(&self) -> anyhow::Result<u64> {
        let read = || {
            sqlx::query_scalar::<_, i64>(
                "SELECT position FROM projection_checkpoints WHERE name = $1",
            )
            .bind(CHECKPOINT)
            .fetch_optional(&self.pool)
        };
        let mut position = read()
            .await
            .context("cannot read the read-model checkpoint")?;
        if position.is_none() {
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(CHECKPOINT)
            .execute(&self.pool)
            .await
            .context("cannot create the read-model checkpoint")?;
            position = read()
                .await
                .context("cannot read the read-model checkpoint")?;
        }
        let position = position.map_or(0, |p| u64::try_from(p).unwrap_or(0));
        self.known.store(position, Ordering::Release);
        Ok(position)
    }

    /// After a lost claim: where the checkpoint is. Returns how many statements it took.
    async fn resync(&self, seen: Option<i64>, expected: u64) -> anyhow::Result<usize> {
        match seen.map(|p| u64::try_from(p).unwrap_or(0)) {
            // A committed position other than ours: another applier got there.
            Some(seen) if seen != expected => {
                self.known.store(seen, Ordering::Release);
                Ok(0)
            }
            // Missing, or the winner committed after our snapshot: look again.
            _ => self.read_checkpoint().await.map(|_| 1),
        }
    }

    /// Applies what `events` holds beyond the checkpoint, exactly once across instances: each
    /// attempt claims the checkpoint from where this instance last saw it to the batch's end,
    /// and writes only if that claim succeeds (`apply_from`). A lost claim means another
    /// applier moved it: look where it is and apply what is left, if anything.
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
    async fn apply_batch(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<Applied> {
        let (mut statements, mut stalls) = (0, 0);
        let mut applied = Applied::default();
        loop {
            let known = match self.known.load(Ordering::Acquire) {
                UNKNOWN => {
                    statements += 1;
                    self.read_checkpoint().await?
                }
                known => known,
            };
            let first = events.iter().position(|e| e.position > known);
            let Some(fresh) = first.map(|i| &events[i..]) else {
                break;
            };
            let outcome = self.apply_from(known, fresh).await;
            let (claim, ran, undecodable) = outcome.inspect_err(|_| {
                // The statement or the commit may have landed or not: read it again.
                self.known.store(UNKNOWN, Ordering::Release);
            })?;
            statements += ran;
            if claim == bulk::Claim::Claimed {
                applied.undecodable += undecodable;
            }
            let bulk::Claim::Lost { seen } = claim else {
                break;
            };
            statements += self.resync(seen, known).await?;
            // A loss that shows the checkpoint further is another applier's progress, and
            // leaves less of `events` to apply; one that does not is a stall.
            if self.known.load(Ordering::Acquire) <= known {
                stalls += 1;
                if stalls == CLAIM_STALLS {
                    anyhow::bail!(
                        "the read-model checkpoint did not move although claims from {known} failed {CLAIM_STALLS} times"
                    );
                }
            }
        }
        tracing::Span::current().record("statements", statements);
        Ok(applied)
    }

    /// Claims the checkpoint from `known` to the end of `fresh` and applies `fresh` with it.
    /// A batch of hot events that `bulk` can write in one statement is exactly that: one
    /// autocommit statement. Anything else (a rare event, a change of a row the same batch
    /// creates) takes a transaction: claim first (the row lock serializes appliers), then the
    /// hot events set-based and the rare ones one by one, in log order. Returns the claim's
    /// outcome, how many statements ran and how many events it could not decode (skipped).
    async fn apply_from(
        &self,
        known: u64,
        fresh: &[Arc<RecordedEvent>],
    ) -> anyhow::Result<(bulk::Claim, usize, usize)> {
        let mut decoded = Vec::with_capacity(fresh.len());
        let mut undecodable = 0;
        let mut last = known;
        for recorded in fresh {
            if recorded.position <= last {
                continue;
            }
            last = recorded.position;
            match codec::decode(recorded) {
                Ok(event) => decoded.push((recorded, event)),
                Err(e) => {
                    undecodable += 1;
                    tracing::error!(position = recorded.position, error = %e, "read model skipped an undecodable event");
                }
            }
        }
        let expected = i64::try_from(known).context("checkpoint beyond BIGINT")?;
        let to = i64::try_from(last).context("checkpoint beyond BIGINT")?;
        let mut batch = bulk::Batch::default();
        let all_hot = decoded
            .iter()
            .all(|(recorded, event)| batch.add(recorded, event));
        if all_hot && batch.fits_one_statement() {
            let claim = batch
                .write_claiming(&self.pool, CHECKPOINT, expected, to)
                .await
                .context("cannot apply a batch of events to the read models")?;
            if claim == bulk::Claim::Claimed {
                self.known.store(last, Ordering::Release);
            }
            return Ok((claim, 1, undecodable));
        }

        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin the read-model transaction")?;
        let claim = bulk::Batch::default()
            .write_claiming(&mut *tx, CHECKPOINT, expected, to)
            .await
            .context("cannot claim the read-model checkpoint")?;
        if claim != bulk::Claim::Claimed {
            tx.rollback()
                .await
                .context("cannot roll back the read-model transaction")?;
            return Ok((claim, 3, undecodable));
        }
        let mut statements = 3; // BEGIN, the claim, COMMIT
        let mut batch = bulk::Batch::default();
        for (recorded, event) in &decoded {
            if batch.add(recorded, event) {
                continue;
            }
            statements += batch
                .flush(&mut tx)
                .await
                .context("cannot apply a batch of events to the read models")?;
            statements += apply::apply(&mut tx, recorded, event)
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
        tx.commit()
            .await
            .context("cannot commit the read-model transaction")?;
        self.known.store(last, Ordering::Release);
        Ok((claim, statements, undecodable))
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
        let done = tx
            .commit()
            .await
            .context("cannot commit the read-model reset");
        self.known.store(UNKNOWN, Ordering::Release);
        done
    }
}

#[async_trait]
impl ProjectionWriter for PostgresReadModel {
    async fn apply(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<Applied> {
        self.apply_batch(events).await
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        self.read_checkpoint().await
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
        self.lookups.reservation(id).await
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

    async fn recorded_payments(&self, ids: &[PaymentId]) -> Result<HashSet<PaymentId>, ReadError> {
        let _turn = self.bulkhead.turn().await?;
        queries::recorded_payments(&self.pool, ids).await
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
