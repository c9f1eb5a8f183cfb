//! Reservations read by id in batches (`Batcher`): every look-up that arrives while a
//! statement is in flight goes into the next (one `= ANY` over the primary key). A flash
//! sale's payments each read the hold they pay for; this way they cost the read models one
//! statement per batch instead of one each. A look-up is sent only after the caller's own
//! wait for the read models, so a batch sees at least what a statement of its own would. A
//! batch takes one turn in the read models' bulkhead, as one query does.

use super::{bulkhead::Bulkhead, queries};
use crate::batcher::{Batch, Batcher};
use crate::domain::ReservationId;
use crate::projections::{ReadError, ReservationView};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The handle the read model asks; its task starts with the first look-up (a read model that
/// never reads, as the projector's, has none) and ends once the handle is dropped.
pub(super) struct ReservationLookups {
    pool: PgPool,
    bulkhead: Arc<Bulkhead>,
    /// How long a batch may go without an answer (`Batcher::start`).
    pub(super) limit: Duration,
    batcher: OnceLock<Batcher<ById>>,
}

impl ReservationLookups {
    pub(super) fn new(pool: PgPool, bulkhead: Arc<Bulkhead>) -> Self {
        Self {
            pool,
            bulkhead,
            limit: crate::db::PoolSettings::default().answer_limit(),
            batcher: OnceLock::new(),
        }
    }

    /// The reservation `id`, if the read models hold it.
    pub(super) async fn reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationView>, ReadError> {
        let batcher = self.batcher.get_or_init(|| {
            Batcher::start(
                ById {
                    pool: self.pool.clone(),
                    bulkhead: Arc::clone(&self.bulkhead),
                },
                self.limit,
            )
        });
        batcher.ask(id).await.map_err(|lost| {
            ReadError::Unavailable(format!("the reservation look-ups have stopped: {lost}"))
        })?
    }
}

struct ById {
    pool: PgPool,
    bulkhead: Arc<Bulkhead>,
}

impl Batch for ById {
    type Request = ReservationId;
    type Answer = Result<Option<ReservationView>, ReadError>;

    async fn run(&mut self, ids: &[ReservationId]) -> Vec<Self::Answer> {
        let found = async {
            let _turn = self.bulkhead.turn().await?;
            let views = queries::reservations_by_id(&self.pool, ids).await?;
            Ok::<HashMap<_, _>, ReadError>(
                views.into_iter().map(|v| (v.reservation_id, v)).collect(),
            )
        }
        .await;
        ids.iter()
            .map(|id| match &found {
                Ok(views) => Ok(views.get(&id.0).cloned()),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }
}
