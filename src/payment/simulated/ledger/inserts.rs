//! The PostgreSQL ledger's new charges, inserted in batches (`Batcher`): every charge that
//! arrives while a statement is in flight goes into the next one (group commit, as the
//! idempotency answers and the sale writers do). A flash sale's payments then
//! cost the processor's table one INSERT per batch instead of one per charge, and a payment id
//! still keeps its first charge: a retry (in the same batch, or after it) gets that one back.

use super::{from_row, unavailable, Charge, Row, COLUMNS};
use crate::batcher::{Batch, Batcher, Lost};
use crate::domain::PaymentId;
use crate::payment::{ChargeOutcome, GatewayError};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

struct Insert {
    payment_id: PaymentId,
    charge: Charge,
}

/// The handle the ledger talks to; the batching task ends once it is dropped.
pub struct Inserts(Batcher<Batched>);

impl Inserts {
    /// Starts the batching task (so it must be called inside the runtime).
    pub(super) fn start(pool: PgPool, limit: std::time::Duration) -> Self {
        Self(Batcher::start(Batched(pool), limit))
    }

    /// Keeps `charge` unless the payment id has one already; returns the one kept.
    pub(super) async fn insert_first(
        &self,
        payment_id: PaymentId,
        charge: Charge,
    ) -> Result<Charge, GatewayError> {
        self.0
            .ask(Insert { payment_id, charge })
            .await
            .map_err(|lost| match lost {
                Lost::NotTaken => unavailable("the ledger's writer has stopped"),
                // Taken, then no answer: its INSERT may have run.
                Lost::Unanswered => undecided("the ledger's writer stopped before it answered"),
            })?
    }
}

/// Keeps a batch in one INSERT (and one SELECT for the payment ids that had a charge
/// already).
struct Batched(PgPool);

impl Batch for Batched {
    type Request = Insert;
    type Answer = Result<Charge, GatewayError>;

    async fn run(&mut self, batch: &[Insert]) -> Vec<Self::Answer> {
        let kept = kept_charges(&self.0, batch).await;
        batch
            .iter()
            .map(|insert| match &kept {
                Ok(kept) => kept
                    .get(&insert.payment_id)
                    .cloned()
                    .unwrap_or_else(|| Err(undecided("a charge vanished after its insert"))),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }
}

/// A failure once the INSERT ran: the charge may be kept, so this is not "nothing charged".
fn undecided(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::NoAnswer(format!("simulated processor ledger: {e}"))
}

/// The INSERT's own failure: nothing was kept only if it was never sent or the server refused
/// it (the statement rolled back); a lost or unreadable answer may hide a commit.
fn failed_insert(e: sqlx::Error) -> GatewayError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Database(_) => {
            unavailable(e)
        }
        e => undecided(e),
    }
}

/// The charge each payment id of `batch` keeps: the first of the batch where the id is new,
/// the stored one where it is not. `Err` when the INSERT failed (nothing was kept); an id
/// whose charge cannot be read back after it has its own error.
async fn kept_charges(
    pool: &PgPool,
    batch: &[Insert],
) -> Result<HashMap<PaymentId, Result<Charge, GatewayError>>, GatewayError> {
    let mut seen = HashSet::with_capacity(batch.len());
    let mut firsts: Vec<&Insert> = batch
        .iter()
        .filter(|insert| seen.insert(insert.payment_id))
        .collect();
    // Inserted in one order everywhere (the statement keeps the array's order): two instances'
    // batches sharing ids wait for each other's rows instead of deadlocking.
    firsts.sort_by_key(|insert| insert.payment_id.0);
    let column = |f: fn(&Insert) -> Uuid| firsts.iter().map(|i| f(i)).collect::<Vec<_>>();
    let outcomes: Vec<(&str, Option<&str>, Option<&str>)> = firsts
        .iter()
        .map(|i| match &i.charge.outcome {
            ChargeOutcome::Captured { charge_id } => ("captured", Some(charge_id.as_str()), None),
            ChargeOutcome::Declined { reason } => ("declined", None, Some(reason.as_str())),
        })
        .collect();
    let inserted: Vec<Row> = sqlx::query_as(&format!(
        "INSERT INTO simulated_processor_charges ({COLUMNS})
         SELECT p, r, e, a, c, o, ch, d, false, t
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::timestamptz[])
                WITH ORDINALITY AS u(p, r, e, a, c, o, ch, d, t, n)
          ORDER BY n
         ON CONFLICT (payment_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(column(|i| i.payment_id.0))
    .bind(column(|i| i.charge.paid_for.reservation_id.0))
    .bind(column(|i| i.charge.paid_for.event_id.0))
    .bind(
        firsts
            .iter()
            .map(|i| i.charge.amount.amount_cents)
            .collect::<Vec<_>>(),
    )
    .bind(
        firsts
            .iter()
            .map(|i| i.charge.amount.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.0).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.1).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.2).collect::<Vec<_>>())
    .bind(firsts.iter().map(|i| i.charge.at).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .map_err(failed_insert)?;
    let mut kept: HashMap<PaymentId, Result<Charge, GatewayError>> = inserted
        .into_iter()
        .map(|row| (PaymentId(row.0), decoded(row)))
        .collect();
    // Ids that had a charge already (a retry of a payment): the first one is the answer.
    let known: Vec<Uuid> = firsts
        .iter()
        .filter(|i| !kept.contains_key(&i.payment_id))
        .map(|i| i.payment_id.0)
        .collect();
    if known.is_empty() {
        return Ok(kept);
    }
    let stored: Result<Vec<Row>, _> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM simulated_processor_charges WHERE payment_id = ANY($1)"
    ))
    .bind(&known)
    .fetch_all(pool)
    .await;
    match stored {
        Ok(rows) => kept.extend(rows.into_iter().map(|row| (PaymentId(row.0), decoded(row)))),
        Err(e) => {
            let e = undecided(e);
            kept.extend(known.into_iter().map(|id| (PaymentId(id), Err(e.clone()))));
        }
    }
    Ok(kept)
}

/// A row as the charge it keeps (a row that does not decode is a charge that may exist).
fn decoded(row: Row) -> Result<Charge, GatewayError> {
    from_row(row).map(|(_, charge)| charge).map_err(undecided)
}
