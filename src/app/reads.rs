//! The read side as the use cases reach it: the read models and the event cache behind one
//! door that first waits for this instance's writes (read-your-writes without a wait on the
//! write path). Every batch a sale writer here commits raises the mark before its commands
//! are answered (`CommitWatch`): a request's, a hold's timer's, a sweep's or reconciliation's
//! alike. A read gets the read models only from `Reads::fresh`, which waits until they
//! applied that mark, so no read can forget the wait. The holds placed here that the read
//! models do not show yet are answered from memory (`Reads::unseen`, `RecentHolds`) until a
//! writer here changes them. `Reads::applied` skips it, for work
//! that reads what they show on purpose (reconciliation, a second look after a wait, the
//! waiting room's visibility check). When a wait runs out, reads stop waiting until the read
//! models reach the position it waited for: a lagging or stalled projector makes one read in
//! `READ_YOUR_WRITES_TIMEOUT` slow, not every read.

use super::recent::RecentHolds;
use super::READ_YOUR_WRITES_TIMEOUT;
use crate::cache::EventCache;
use crate::domain::{DomainEvent, ReservationId};
use crate::projections::{ReadModel, ReservationView};
use crate::runtime::subscription::Progress;
use crate::runtime::CommitWatch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The read models and the event cache, reached after the wait for this instance's writes.
pub struct Reads {
    model: Arc<dyn ReadModel>,
    cache: Arc<EventCache>,
    progress: Progress,
    written: Written,
    recent: RecentHolds,
}

impl Reads {
    /// `progress` is how far the projector that feeds `model` (and invalidates `cache`) is.
    pub fn new(model: Arc<dyn ReadModel>, cache: Arc<EventCache>, progress: Progress) -> Self {
        Self {
            model,
            cache,
            progress,
            written: Written::default(),
            recent: RecentHolds::default(),
        }
    }

    /// The read models, once they applied every command committed here before this call (or
    /// the wait ran out, see the module's note).
    pub async fn fresh(&self) -> &dyn ReadModel {
        self.wait_for_writes().await;
        self.model.as_ref()
    }

    /// The cached event views, after the same wait as `fresh`.
    pub async fn fresh_cache(&self) -> &EventCache {
        self.wait_for_writes().await;
        &self.cache
    }

    /// The cached event views as they are now, without waiting for this instance's writes.
    pub fn applied_cache(&self) -> &EventCache {
        &self.cache
    }

    /// The read models as they are now, without waiting for this instance's writes.
    pub fn applied(&self) -> &dyn ReadModel {
        self.model.as_ref()
    }

    /// The reservation `id` as its writer here placed it, if the read models do not show
    /// it yet and no writer here changed it since.
    pub fn unseen(&self, id: ReservationId) -> Option<ReservationView> {
        self.recent.unseen(id, self.progress.position())
    }

    /// How far the read models are (the global log position they applied).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    async fn wait_for_writes(&self) {
        self.written
            .wait(&self.progress, READ_YOUR_WRITES_TIMEOUT)
            .await;
    }
}

impl CommitWatch for Reads {
    /// Remembers the holds the batch placed, forgets those it changed, then raises the mark:
    /// a read that finds the mark raised finds no stale hold.
    fn committed(&self, position: u64, events: &mut dyn Iterator<Item = &DomainEvent>) {
        self.recent
            .committed(position, self.progress.position(), events);
        self.written.raise(position);
    }
}

/// What this instance committed last, and the position of the last wait that ran out.
#[derive(Debug, Default)]
struct Written {
    /// The log position of the last command committed here.
    last: AtomicU64,
    /// The position the last wait that ran out waited for (0: none did).
    gave_up_on: AtomicU64,
}

impl Written {
    /// Reads that begin from now on wait for `position`.
    fn raise(&self, position: u64) {
        self.last.fetch_max(position, Ordering::AcqRel);
    }

    /// Waits until `applied` reached every position committed here before this call, at most
    /// `timeout`; true if it did (or there was nothing to wait for), false if the wait ran
    /// out or was skipped because an earlier one ran out and the read models have not
    /// caught up with it yet.
    async fn wait(&self, applied: &Progress, timeout: Duration) -> bool {
        let written = self.last.load(Ordering::Acquire);
        let now = applied.position();
        if now >= written {
            return true;
        }
        if now < self.gave_up_on.load(Ordering::Acquire) {
            return false;
        }
        if applied.wait_for(written, timeout).await {
            return true;
        }
        self.gave_up_on.fetch_max(written, Ordering::AcqRel);
        tracing::warn!(
            written,
            applied = applied.position(),
            "the read models lag behind this instance's writes; reads answer what they show"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The read side over empty memory read models whose projector is at `applied`.
    fn reads_at(applied: Progress) -> Reads {
        use crate::cache::{memory::MemoryCache, Invalidator};
        use crate::observability::Metrics;
        use crate::projections::memory::MemoryReadModel;
        let model = Arc::new(MemoryReadModel::new());
        let ttl = Duration::from_secs(60);
        let shared = Invalidator::new(
            Arc::new(MemoryCache::default()),
            ttl,
            Arc::new(Metrics::new()),
        );
        let cache = EventCache::new(shared, model.clone(), || 0, ttl, false);
        Reads::new(model, Arc::new(cache), applied)
    }

    fn placed() -> DomainEvent {
        use crate::domain::events::ReservationPlaced;
        use crate::domain::{Currency, EventId, Money, UserId};
        let now = chrono::Utc::now();
        DomainEvent::from(ReservationPlaced {
            reservation_id: ReservationId::random(),
            event_id: EventId::random(),
            user_id: UserId(uuid::Uuid::new_v4()),
            section: "Floor".into(),
            quantity: 2,
            unit_price_cents: 500,
            total: Money::new(1000, Currency::USD),
            placed_at: now,
            expires_at: now + chrono::Duration::minutes(15),
        })
    }

    /// A hold placed here is answered from memory while the read models lag behind its
    /// position, and no longer once they applied it: they answer from then on.
    #[tokio::test]
    async fn a_hold_is_answered_from_memory_until_the_read_models_show_it() {
        let (applier, applied) = Progress::manual(5);
        let reads = reads_at(applied);
        let (a, b) = (placed(), placed());
        let id = |e: &DomainEvent| match e {
            DomainEvent::ReservationPlaced(p) => (p.reservation_id, ReservationView::from(p)),
            _ => unreachable!(),
        };
        let ((id_a, view_a), (id_b, _)) = (id(&a), id(&b));
        reads.committed(10, &mut [&a].into_iter());
        reads.committed(12, &mut [&b].into_iter());
        applier.send_replace(9);
        assert_eq!(reads.unseen(id_a), Some(view_a));
        applier.send_replace(10);
        assert_eq!(reads.unseen(id_a), None, "applied: the read models answer");
        assert!(reads.unseen(id_b).is_some());
        applier.send_replace(12);
        assert_eq!(reads.unseen(id_b), None);
    }

    /// A hold placed here is answered from memory until a writer here ends it (its timer,
    /// which no request awaits); from then on a read waits for the read models to apply the
    /// end, so nobody reads the hold back as pending after it expired. A batch that places
    /// and ends a hold leaves nothing remembered.
    #[tokio::test(start_paused = true)]
    async fn a_hold_ended_here_is_read_only_once_the_read_models_show_its_end() {
        use crate::domain::events::ReservationExpired;
        let (applier, applied) = Progress::manual(1);
        let reads = reads_at(applied);
        let first = placed();
        let DomainEvent::ReservationPlaced(hold) = &first else {
            unreachable!()
        };
        let id = hold.reservation_id;
        reads.committed(5, &mut [&first].into_iter());
        assert_eq!(reads.unseen(id), Some(ReservationView::from(hold)));

        let expired = |reservation_id| {
            DomainEvent::from(ReservationExpired {
                reservation_id,
                at: chrono::Utc::now(),
            })
        };
        // The placement applied, the expiry not yet: a read must wait for the expiry.
        applier.send_replace(5);
        reads.committed(6, &mut [&expired(id)].into_iter());
        assert_eq!(reads.unseen(id), None, "ended here: not answered as placed");
        let read = tokio::spawn(async move {
            let began = Instant::now();
            reads.fresh().await;
            (began.elapsed(), reads)
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        applier.send_replace(6);
        let (waited, reads) = read.await.unwrap();
        assert_eq!(waited, Duration::from_millis(30));

        let other = placed();
        let DomainEvent::ReservationPlaced(other_hold) = &other else {
            unreachable!()
        };
        let ended = expired(other_hold.reservation_id);
        reads.committed(8, &mut [&other, &ended].into_iter());
        assert_eq!(reads.unseen(other_hold.reservation_id), None);
    }

    /// A read with nothing new committed here does not wait.
    #[tokio::test(start_paused = true)]
    async fn nothing_written_is_no_wait() {
        let (_applier, applied) = Progress::manual(7);
        let written = Written::default();
        written.raise(7);
        let began = Instant::now();
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    /// A read waits for this instance's last write, and only until the read models apply it.
    #[tokio::test(start_paused = true)]
    async fn a_read_waits_until_the_write_is_applied() {
        let (applier, applied) = Progress::manual(3);
        let written = Written::default();
        written.raise(5);
        let began = Instant::now();
        let apply_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            applier.send_replace(4);
            tokio::time::sleep(Duration::from_millis(40)).await;
            applier.send_replace(5);
            applier
        });
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::from_millis(80));
        drop(apply_later.await.unwrap());
    }

    /// A stalled projector: the first read waits the whole timeout, the reads after it answer
    /// at once until the read models reach what that wait was for; then a new write makes
    /// reads wait again.
    #[tokio::test(start_paused = true)]
    async fn after_a_wait_runs_out_reads_do_not_wait_until_the_read_models_catch_up() {
        let (applier, applied) = Progress::manual(10);
        let written = Written::default();
        written.raise(12);

        let began = Instant::now();
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert_eq!(
            began.elapsed(),
            TIMEOUT,
            "the first read waits the whole timeout"
        );

        // Still stalled, and more written here meanwhile: no read waits.
        written.raise(15);
        applier.send_replace(11);
        let began = Instant::now();
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert!(!written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::ZERO, "later reads do not wait");

        // The read models reached what the wait was for (12), not yet the last write (15):
        // a read waits again, and here they get there.
        applier.send_replace(12);
        let began = Instant::now();
        let catch_up = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            applier.send_replace(15);
            applier
        });
        assert!(written.wait(&applied, TIMEOUT).await);
        assert_eq!(began.elapsed(), Duration::from_millis(30));
        drop(catch_up.await.unwrap());
    }
}
