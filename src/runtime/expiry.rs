//! Hold expiry. Writers arm a timer for every placed reservation; the scheduler sends
//! `ExpireReservation` when it is due. The reducer decides: a hold that ended meanwhile is a
//! no-op, so a stale or duplicate timer is harmless. At start-up every pending hold found in
//! durable state is armed again, and every instance periodically sweeps the read models for
//! holds that are overdue (`app::holds`), so a hold whose instance died is still ended by the
//! others (invariant 5). The scheduler ends a hold through `EndHold`, which `Sales`
//! implements, so it never needs to know the writers.

use crate::clock::Clock;
use crate::domain::{EventId, ReservationId};
use crate::observability::Metrics;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use foldhash::{HashMap, HashMapExt};
use std::cmp::Reverse;
use std::collections::hash_map::Entry as Slot;
use std::collections::BinaryHeap;
use std::sync::Arc;
use tokio::sync::mpsc;

type Entry = (DateTime<Utc>, EventId, ReservationId);

/// How an attempt to end a due hold went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    /// Ended now, or it had ended already (a stale timer).
    Ended,
    /// Not due yet (the hold was extended, or clocks differ): try again at that time.
    NotYet(DateTime<Utc>),
    /// The reducer refused for another reason; there is nothing to retry.
    Refused(String),
    /// The store is down or busy; worth another try shortly.
    Failed(String),
}

/// Ends a due hold by sending `ExpireReservation` through the sale's writer.
#[async_trait]
pub trait EndHold: Send + Sync + 'static {
    async fn end_hold(
        &self,
        sale_id: EventId,
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    ) -> HoldEnd;
}

/// What the scheduler is told: a hold to end at a time, or a hold that ended otherwise.
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    Arm(Entry),
    Disarm(Hold),
}

/// Arms and disarms expiry timers; cheap to clone.
#[derive(Clone)]
pub struct ExpiryHandle {
    tx: mpsc::UnboundedSender<Order>,
}

impl ExpiryHandle {
    pub fn arm(&self, at: DateTime<Utc>, sale_id: EventId, reservation_id: ReservationId) {
        // Fails only once the scheduler stopped at shutdown; start-up re-arms from durable state.
        let _ = self.tx.send(Order::Arm((at, sale_id, reservation_id)));
    }

    /// The hold ended (paid, cancelled, its event cancelled, or expired by its own attempt):
    /// its timer goes, at once or when its running attempt finishes, and
    /// `ticketing_active_holds` counts it no more.
    pub fn disarm(&self, sale_id: EventId, reservation_id: ReservationId) {
        let _ = self.tx.send(Order::Disarm((sale_id, reservation_id)));
    }
}

pub fn channel() -> (ExpiryHandle, mpsc::UnboundedReceiver<Order>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ExpiryHandle { tx }, rx)
}

type Hold = (EventId, ReservationId);

/// A hold's timer: its number (a queued time or a finished attempt of another timer of the
/// hold is ignored), whether its attempt runs, and whether it was disarmed meanwhile.
struct Timer {
    number: u64,
    running: bool,
    disarmed: bool,
}

/// Runs until every `ExpiryHandle` is dropped or the task is aborted at shutdown. Each hold has
/// one timer: an arm for a hold that has one (armed, or its attempt running) is ignored (the
/// sweep re-arms every overdue hold on each tick; a hold that cannot end yet would otherwise
/// gather one retry loop per tick, and holds are never shortened). An attempt that must be
/// tried again (not due yet, or the store failed) re-arms its own timer when it finishes. A
/// disarmed hold's timer is forgotten at once (its place in the queue is skipped when due), or
/// once its running attempt finishes, so that a hold is never tried twice at a time.
pub async fn run(
    mut inbox: mpsc::UnboundedReceiver<Order>,
    ender: Arc<dyn EndHold>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) {
    // Due times, with the number of the timer they belong to.
    let mut due: BinaryHeap<Reverse<(DateTime<Utc>, u64, Hold)>> = BinaryHeap::new();
    let mut timers: HashMap<Hold, Timer> = HashMap::new();
    let mut numbers = 0_u64;
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(Hold, u64, Again)>();
    loop {
        metrics.active_holds.set(timers.len() as i64);
        let next = due.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            order = inbox.recv() => match order {
                Some(Order::Arm((at, sale_id, reservation_id))) => {
                    let hold = (sale_id, reservation_id);
                    if let Slot::Vacant(slot) = timers.entry(hold) {
                        numbers += 1;
                        slot.insert(Timer { number: numbers, running: false, disarmed: false });
                        due.push(Reverse((at, numbers, hold)));
                    }
                }
                Some(Order::Disarm(hold)) => match timers.get_mut(&hold) {
                    Some(timer) if timer.running => timer.disarmed = true,
                    Some(_) => {
                        timers.remove(&hold);
                    }
                    None => {}
                },
                None => return,
            },
            Some((hold, number, again)) = finished.recv() => {
                let Some(timer) = timers.get_mut(&hold).filter(|t| t.number == number) else {
                    continue;
                };
                timer.running = false;
                match again {
                    Some(at) if !timer.disarmed => due.push(Reverse((at, number, hold))),
                    _ => {
                        timers.remove(&hold);
                    }
                }
            },
            _ = sleep_until(clock.as_ref(), next) => {
                let now = clock.now();
                while let Some(Reverse((at, number, hold))) = due.peek().copied() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    match timers.get_mut(&hold) {
                        Some(timer) if timer.number == number => timer.running = true,
                        _ => continue,
                    }
                    let (ender, clock) = (Arc::clone(&ender), Arc::clone(&clock));
                    let report = Report {
                        hold,
                        number,
                        to: finished_tx.clone(),
                        clock: Arc::clone(&clock),
                        answered: false,
                    };
                    tokio::spawn(async move {
                        let again = expire(ender.as_ref(), clock.as_ref(), hold).await;
                        report.answer(again);
                    });
                }
            }
        }
    }
}

/// When an attempt wants to be tried again, if at all.
type Again = Option<DateTime<Utc>>;

/// Tells the scheduler how an attempt ended: with its answer, or, should the attempt panic or
/// be cancelled before it answered, as a failure to retry in 5 s. A hold whose attempt never
/// reported would keep its place in the set, and every later arm of it would be ignored.
struct Report {
    hold: Hold,
    number: u64,
    to: mpsc::UnboundedSender<(Hold, u64, Again)>,
    clock: Arc<dyn Clock>,
    answered: bool,
}

impl Report {
    /// The attempt's answer: `None` ended, `Some(at)` again at `at`.
    fn answer(mut self, again: Again) {
        let _ = self.to.send((self.hold, self.number, again));
        self.answered = true;
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.answered {
            let retry = self.clock.now() + Duration::seconds(5);
            let _ = self.to.send((self.hold, self.number, Some(retry)));
        }
    }
}

async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tries to end `hold`; when to try again, if at all.
async fn expire(ender: &dyn EndHold, clock: &dyn Clock, hold: Hold) -> Option<DateTime<Utc>> {
    let (sale_id, reservation_id) = hold;
    match ender.end_hold(sale_id, reservation_id, clock.now()).await {
        HoldEnd::Ended => None,
        HoldEnd::NotYet(expires_at) => Some(expires_at),
        HoldEnd::Refused(e) => {
            tracing::warn!(%reservation_id, error = %e, "expiry refused; not re-armed");
            None
        }
        HoldEnd::Failed(e) => {
            // The store is down or busy: try again shortly rather than lose the expiry.
            tracing::warn!(%reservation_id, error = %e, "expiry failed; retrying in 5 s");
            Some(clock.now() + Duration::seconds(5))
        }
    }
}

#[cfg(test)]
mod tests;
