//! `RecentHolds`: the reservations this instance's sale writers placed that the read models do
//! not show yet. The writer answered them from its committed events, so their views are
//! exact as placed; the payment that follows (and the client's own read) is answered from here
//! instead of a read model lagging behind under load, which would say 404 for a reservation
//! the client was just given. Filled from every batch a writer here commits (`committed`,
//! through `Reads`): an entry lives until the read models have applied its position (they are
//! the source from then on: a later change shows there), until a writer here changes the
//! reservation (its timer, a cancel, a payment), or, past `CAPACITY`, until it is the oldest.
//! The writer still decides the payment itself when it is recorded.

use crate::domain::events::StreamId;
use crate::domain::{DomainEvent, ReservationId};
use crate::projections::ReservationView;
use foldhash::HashMap;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The most holds remembered (a few MB); past it the oldest is forgotten first.
const CAPACITY: usize = 16_384;

#[derive(Debug, Default)]
pub struct RecentHolds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    views: HashMap<ReservationId, (ReservationView, u64)>,
    /// Ids with their log positions, in the order they were remembered.
    order: VecDeque<(ReservationId, u64)>,
}

impl RecentHolds {
    /// Takes in a batch a writer here committed up to log `position`, while the read models
    /// are at `applied`: remembers the holds it placed, forgets the reservations it changed
    /// (ended, confirmed: the remembered view is stale), in the batch's order.
    pub fn committed(
        &self,
        position: u64,
        applied: u64,
        events: &mut dyn Iterator<Item = &DomainEvent>,
    ) {
        let mut inner = self.lock();
        inner.forget_applied(applied);
        for event in events {
            match (event, event.stream()) {
                (DomainEvent::ReservationPlaced(placed), _) if applied < position => {
                    inner.remember(ReservationView::from(placed), position);
                }
                (DomainEvent::ReservationPlaced(_), _) => {}
                (_, StreamId::Reservation(id)) => {
                    inner.views.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// The view of `id` if the read models (at `applied`) do not include it yet.
    pub fn unseen(&self, id: ReservationId, applied: u64) -> Option<ReservationView> {
        let mut inner = self.lock();
        inner.forget_applied(applied);
        match inner.views.get(&id) {
            Some((view, position)) if *position > applied => Some(view.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held for map operations only, never across an await.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn remember(&mut self, view: ReservationView, position: u64) {
        while self.order.len() >= CAPACITY {
            self.pop_oldest();
        }
        let id = ReservationId(view.reservation_id);
        self.order.push_back((id, position));
        self.views.insert(id, (view, position));
    }

    /// Drops the oldest entries the read models have applied (positions grow nearly in order).
    fn forget_applied(&mut self, applied: u64) {
        while self.order.front().is_some_and(|(_, p)| *p <= applied) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, position)) = self.order.pop_front() {
            // Only if it is still that entry (not forgotten and remembered again since).
            if self.views.get(&id).is_some_and(|(_, p)| *p == position) {
                self.views.remove(&id);
            }
        }
    }
}
