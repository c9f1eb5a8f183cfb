//! Hold expiry. Writers arm a timer for every placed reservation; the scheduler sends
//! `ExpireReservation` when it is due. The reducer decides: a hold that ended meanwhile is a
//! no-op, so a stale or duplicate timer is harmless. At start-up every pending hold found in
//! durable state is armed again, and every instance periodically sweeps the read models for
//! holds that are overdue, so a hold whose instance died is still ended by the others
//! (invariant 5).

use super::clock::Clock;
use super::sales::Sales;
use crate::domain::{
    reservation::ReservationError, EventId, ReservationId, SaleCommand, SaleError,
};
use crate::eventstore::Metadata;
use crate::observability::Metrics;
use crate::runtime::writer::CommandError;
use chrono::{DateTime, Duration, Utc};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use tokio::sync::mpsc;

type Entry = (DateTime<Utc>, EventId, ReservationId);

/// Arms expiry timers; cheap to clone.
#[derive(Clone)]
pub struct ExpiryHandle {
    tx: mpsc::UnboundedSender<Entry>,
}

impl ExpiryHandle {
    pub fn arm(&self, at: DateTime<Utc>, sale_id: EventId, reservation_id: ReservationId) {
        // Fails only once the scheduler stopped at shutdown; start-up re-arms from durable state.
        let _ = self.tx.send((at, sale_id, reservation_id));
    }
}

pub fn channel() -> (ExpiryHandle, mpsc::UnboundedReceiver<Entry>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ExpiryHandle { tx }, rx)
}

/// Runs until every `ExpiryHandle` is dropped or the task is aborted at shutdown.
/// `rearm` is a handle to this scheduler, for timers that must fire again later.
pub async fn run(
    mut inbox: mpsc::UnboundedReceiver<Entry>,
    rearm: ExpiryHandle,
    sales: Sales,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) {
    let mut due: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    loop {
        metrics.active_holds.set(due.len() as i64);
        let next = due.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            armed = inbox.recv() => match armed {
                Some(entry) => due.push(Reverse(entry)),
                None => return,
            },
            _ = sleep_until(clock.as_ref(), next) => {
                let now = clock.now();
                while let Some(Reverse((at, sale_id, reservation_id))) = due.peek().copied() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    tokio::spawn(expire(sales.clone(), Arc::clone(&clock), rearm.clone(), sale_id, reservation_id));
                }
            }
        }
    }
}

async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn expire(
    sales: Sales,
    clock: Arc<dyn Clock>,
    handle: ExpiryHandle,
    sale_id: EventId,
    reservation_id: ReservationId,
) {
    let command = SaleCommand::ExpireReservation {
        reservation_id,
        now: clock.now(),
    };
    match sales.execute(sale_id, command, Metadata::default()).await {
        Ok(_) => {}
        Err(CommandError::Rejected(SaleError::Reservation(ReservationError::NotYetExpired {
            expires_at,
        }))) => handle.arm(expires_at, sale_id, reservation_id),
        Err(CommandError::Rejected(e)) => {
            tracing::warn!(%reservation_id, error = %e, "expiry refused; not re-armed")
        }
        Err(e) => {
            // The store is down or busy: try again shortly rather than lose the expiry.
            tracing::warn!(%reservation_id, error = %e, "expiry failed; retrying in 5 s");
            handle.arm(clock.now() + Duration::seconds(5), sale_id, reservation_id);
        }
    }
}

/// Every `every`, arms the pending holds whose end has passed. Their own instance normally
/// expires them on time; this catches the holds of an instance that died (several instances
/// share one database). Arming an already armed hold is harmless.
pub async fn sweep(
    reads: Arc<dyn crate::projections::ReadModel>,
    handle: ExpiryHandle,
    clock: Arc<dyn Clock>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now();
        match reads.pending_holds().await {
            Ok(holds) => {
                for hold in holds.into_iter().filter(|h| h.expires_at <= now) {
                    handle.arm(hold.expires_at, hold.event_id, hold.reservation_id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sweep for overdue holds"),
        }
    }
}
