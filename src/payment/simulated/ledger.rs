//! The simulated processor's ledger: one charge per payment id, the first answer kept. In
//! memory, or in its own PostgreSQL table (`simulated_processor_charges`) so that, like a real
//! processor's, it outlives the service's processes. The processor is an outside party: no
//! other code reads its table. New charges reach the table in batches (`inserts`).

mod inserts;

use super::super::{Capture, ChargeFor, ChargeOutcome, GatewayError};
use crate::domain::{Currency, EventId, Money, PaymentId, ReservationId};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use uuid::Uuid;

/// One charge as the processor keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub amount: Money,
    pub outcome: ChargeOutcome,
    pub refunded: bool,
    pub paid_for: ChargeFor,
    pub at: DateTime<Utc>,
}

/// Where the processor keeps its charges.
pub enum Ledger {
    Memory(Mutex<HashMap<PaymentId, Charge>>),
    Postgres(PgPool, inserts::Inserts),
}

fn unavailable(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Unavailable(format!("simulated processor ledger: {e}"))
}

type Row = (
    Uuid,
    Uuid,
    Uuid,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    DateTime<Utc>,
);

const COLUMNS: &str = "payment_id, reservation_id, event_id, amount_cents, currency, outcome, \
                       charge_id, decline_reason, refunded, created_at";

fn from_row(row: Row) -> Result<(PaymentId, Charge), GatewayError> {
    let (
        payment_id,
        reservation_id,
        event_id,
        cents,
        currency,
        outcome,
        charge_id,
        reason,
        refunded,
        at,
    ) = row;
    let currency = Currency::parse(&currency).map_err(unavailable)?;
    let outcome = match outcome.as_str() {
        "captured" => ChargeOutcome::Captured {
            charge_id: charge_id.unwrap_or_default(),
        },
        _ => ChargeOutcome::Declined {
            reason: reason.unwrap_or_default(),
        },
    };
    Ok((
        PaymentId(payment_id),
        Charge {
            amount: Money::new(cents, currency),
            outcome,
            refunded,
            paid_for: ChargeFor {
                reservation_id: ReservationId(reservation_id),
                event_id: EventId(event_id),
            },
            at,
        },
    ))
}

fn capture_of(payment_id: PaymentId, charge: Charge) -> Option<Capture> {
    match charge.outcome {
        ChargeOutcome::Captured { charge_id } => Some(Capture {
            payment_id,
            paid_for: charge.paid_for,
            amount: charge.amount,
            charge_id,
            captured_at: charge.at,
            refunded: charge.refunded,
        }),
        ChargeOutcome::Declined { .. } => None,
    }
}

impl Ledger {
    pub fn memory() -> Self {
        Ledger::Memory(Mutex::new(HashMap::new()))
    }

    /// The ledger in `simulated_processor_charges`; starts the task that batches new charges
    /// (so it must be made inside the runtime).
    pub fn postgres(pool: PgPool, limit: std::time::Duration) -> Self {
        let inserts = inserts::Inserts::start(pool.clone(), limit);
        Ledger::Postgres(pool, inserts)
    }

    fn map(map: &Mutex<HashMap<PaymentId, Charge>>) -> MutexGuard<'_, HashMap<PaymentId, Charge>> {
        map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn get(&self, payment_id: PaymentId) -> Result<Option<Charge>, GatewayError> {
        match self {
            Ledger::Memory(map) => Ok(Self::map(map).get(&payment_id).cloned()),
            Ledger::Postgres(pool, _) => {
                let row: Option<Row> = sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM simulated_processor_charges WHERE payment_id = $1"
                ))
                .bind(payment_id.0)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
                row.map(from_row)
                    .transpose()
                    .map(|found| found.map(|(_, c)| c))
            }
        }
    }

    /// Keeps `charge` unless the payment id has one already; returns the one kept.
    pub async fn insert_first(
        &self,
        payment_id: PaymentId,
        charge: Charge,
    ) -> Result<Charge, GatewayError> {
        match self {
            Ledger::Memory(map) => Ok(Self::map(map).entry(payment_id).or_insert(charge).clone()),
            Ledger::Postgres(_, inserts) => inserts.insert_first(payment_id, charge).await,
        }
    }

    /// Marks a captured charge refunded (again: a no-op).
    pub async fn refund(&self, payment_id: PaymentId) -> Result<(), GatewayError> {
        let refused = |what: &str| Err(GatewayError::RefundRefused(what.into()));
        match self {
            Ledger::Memory(map) => match Self::map(map).get_mut(&payment_id) {
                Some(c) if matches!(c.outcome, ChargeOutcome::Captured { .. }) => {
                    c.refunded = true;
                    Ok(())
                }
                Some(_) => refused("the charge was declined"),
                None => refused("no such charge"),
            },
            Ledger::Postgres(pool, _) => {
                let outcome: Option<String> = sqlx::query_scalar(
                    "UPDATE simulated_processor_charges SET refunded = (outcome = 'captured') \
                     WHERE payment_id = $1 RETURNING outcome",
                )
                .bind(payment_id.0)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
                match outcome.as_deref() {
                    Some("captured") => Ok(()),
                    Some(_) => refused("the charge was declined"),
                    None => refused("no such charge"),
                }
            }
        }
    }

    /// Captures made at or after `since`, oldest first.
    pub async fn captures_since(&self, since: DateTime<Utc>) -> Result<Vec<Capture>, GatewayError> {
        let mut captures: Vec<Capture> = match self {
            Ledger::Memory(map) => Self::map(map)
                .iter()
                .filter(|(_, c)| c.at >= since)
                .filter_map(|(id, c)| capture_of(*id, c.clone()))
                .collect(),
            Ledger::Postgres(pool, _) => {
                let rows: Vec<Row> = sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM simulated_processor_charges \
                     WHERE outcome = 'captured' AND created_at >= $1 ORDER BY created_at"
                ))
                .bind(since)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
                let mut captures = Vec::with_capacity(rows.len());
                for row in rows {
                    let (id, charge) = from_row(row)?;
                    captures.extend(capture_of(id, charge));
                }
                captures
            }
        };
        captures.sort_by_key(|c| (c.captured_at, c.payment_id));
        Ok(captures)
    }

    /// Net money kept: captured minus refunded, in minor units.
    pub async fn net_captured_cents(&self) -> Result<i64, GatewayError> {
        match self {
            Ledger::Memory(map) => Ok(Self::map(map)
                .values()
                .filter(|c| matches!(c.outcome, ChargeOutcome::Captured { .. }) && !c.refunded)
                .map(|c| c.amount.amount_cents)
                .sum()),
            Ledger::Postgres(pool, _) => sqlx::query_scalar(
                "SELECT COALESCE(sum(amount_cents), 0)::BIGINT FROM simulated_processor_charges \
                 WHERE outcome = 'captured' AND NOT refunded",
            )
            .fetch_one(pool)
            .await
            .map_err(unavailable),
        }
    }
}
