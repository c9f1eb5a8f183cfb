//! Reservations read by id in batches: one task owns the look-ups, and every one that arrives
//! while a statement is in flight goes into the next (one `= ANY` over the primary key). A
//! flash sale's payments each read the hold they pay for; this way they cost the read models
//! one statement per batch instead of one each. A look-up is sent only after the caller's own
//! wait for the read models, so a batch sees at least what a statement of its own would. A
//! batch takes one turn in the read models' bulkhead, as one query does.

use super::{bulkhead::Bulkhead, queries};
use crate::domain::ReservationId;
use crate::projections::{ReadError, ReservationView};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// The most ids one statement carries.
const MAX_BATCH: usize = 256;

struct Lookup {
    id: ReservationId,
    reply: oneshot::Sender<Result<Option<ReservationView>, ReadError>>,
}

/// The handle the read model asks; its task starts with the first look-up (a read model that
/// never reads, as the projector's, has none) and ends once the handle is dropped.
pub(super) struct ReservationLookups {
    pool: PgPool,
    bulkhead: Arc<Bulkhead>,
    requests: OnceLock<mpsc::UnboundedSender<Lookup>>,
}

impl ReservationLookups {
    pub(super) fn new(pool: PgPool, bulkhead: Arc<Bulkhead>) -> Self {
        Self {
            pool,
            bulkhead,
            requests: OnceLock::new(),
        }
    }

    /// The reservation `id`, if the read models hold it.
    pub(super) async fn reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationView>, ReadError> {
        let stopped = || ReadError::Unavailable("the reservation look-ups have stopped".into());
        let requests = self.requests.get_or_init(|| {
            let (requests, incoming) = mpsc::unbounded_channel();
            let (pool, bulkhead) = (self.pool.clone(), Arc::clone(&self.bulkhead));
            tokio::spawn(batches(pool, bulkhead, incoming));
            requests
        });
        let (reply, answer) = oneshot::channel();
        requests.send(Lookup { id, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes whatever has queued up (at least one look-up, at most `MAX_BATCH`), reads it in one
/// statement, answers each, and goes again.
async fn batches(
    pool: PgPool,
    bulkhead: Arc<Bulkhead>,
    mut incoming: mpsc::UnboundedReceiver<Lookup>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while incoming.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<ReservationId> = batch.iter().map(|lookup| lookup.id).collect();
        let found = async {
            let _turn = bulkhead.turn().await?;
            let views = queries::reservations_by_id(&pool, &ids).await?;
            Ok::<HashMap<_, _>, ReadError>(
                views.into_iter().map(|v| (v.reservation_id, v)).collect(),
            )
        }
        .await;
        for lookup in batch.drain(..) {
            let answer = match &found {
                Ok(views) => Ok(views.get(&lookup.id.0).cloned()),
                Err(e) => Err(e.clone()),
            };
            // A requester that gave up (its client went away) is no reason to stop.
            let _ = lookup.reply.send(answer);
        }
    }
}
