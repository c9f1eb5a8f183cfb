//! `RecentHolds`: the reservations this instance's sale writers placed that the read models do
//! not show yet. The writer answered them from its committed events, so their views are
//! exact as placed; the payment that follows (and the client's own read) is answered from here
//! instead of a read model lagging behind under load, which would say 404 for a reservation
//! the client was just given. An entry lives until the read models have applied its position
//! (they are the source from then on: a later change shows there) or, past `CAPACITY`, until
//! it is the oldest. The writer still decides the payment itself when it is recorded.

use crate::domain::ReservationId;
use crate::projections::ReservationView;
use std::collections::{HashMap, VecDeque};
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
    /// Remembers `view`, committed at log `position`, while the read models are at `applied`.
    pub fn remember(&self, view: ReservationView, position: u64, applied: u64) {
        let mut inner = self.lock();
        inner.forget_applied(applied);
        while inner.order.len() >= CAPACITY {
            inner.pop_oldest();
        }
        let id = ReservationId(view.reservation_id);
        inner.order.push_back((id, position));
        inner.views.insert(id, (view, position));
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

    /// Forgets `id` (it changed here, e.g. cancelled: the remembered view is stale).
    pub fn forget(&self, id: ReservationId) {
        self.lock().views.remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held for map operations only, never across an await.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reservation::ReservationStatus;
    use uuid::Uuid;

    fn view() -> ReservationView {
        let now = chrono::Utc::now();
        ReservationView {
            reservation_id: Uuid::new_v4(),
            event_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            section: "A".into(),
            quantity: 1,
            status: ReservationStatus::Pending,
            total_cents: 100,
            currency: "EUR".into(),
            expires_at: now,
            payment_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// A hold is answered from memory while the read models lag behind its position, and no
    /// longer once they applied it (or it was forgotten).
    #[test]
    fn a_hold_is_remembered_until_the_read_models_show_it() {
        let holds = RecentHolds::default();
        let (a, b) = (view(), view());
        let (id_a, id_b) = (
            ReservationId(a.reservation_id),
            ReservationId(b.reservation_id),
        );
        holds.remember(a.clone(), 10, 5);
        holds.remember(b, 12, 5);
        assert_eq!(holds.unseen(id_a, 9), Some(a));
        assert_eq!(
            holds.unseen(id_a, 10),
            None,
            "applied: the read models answer"
        );
        assert!(holds.unseen(id_b, 10).is_some());
        holds.forget(id_b);
        assert_eq!(holds.unseen(id_b, 10), None);
        assert!(holds.lock().order.len() <= 1);
    }
}
