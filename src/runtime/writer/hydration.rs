//! How a sale's writer loads its sale: before its first turn (or ahead of any command, a warm
//! start), and again after a turn left its state behind; and how a writer that took no turn for
//! a while catches up. The sale's events are read a page at a time (`PAGE`), each page a
//! statement of its own, outside any turn: writers of the sale on other instances go on
//! meanwhile (a hydration inside a locked turn held the sale for as long as it took), and no
//! statement grows with the sale (read at once, a long sale would meet the server's statement
//! time-out and could never be hydrated). The turn that follows is locked and hands the writer
//! only what was appended after the last page: positions become visible in order, so nothing
//! can commit behind a page already read.

use super::{disarm_if_ended, CommandError, Failed, SaleWriter, LOCKED_TURNS};
use crate::domain::{EventId, SaleState};
use crate::eventstore::{codec, EventStore, Known, TurnMode};
use crate::runtime::expiry::ExpiryHandle;
use std::time::{Duration, Instant};

/// Events per read: a few MB, a statement of some tens of milliseconds.
pub(super) const PAGE: usize = 10_000;

/// A writer that took no turn on its sale for this long reads what other instances appended
/// meanwhile in pages before its turn, rather than in the turn (locked, it would hold the
/// sale from every other writer while reading: a minute of another instance's sale is
/// hundreds of thousands of events). One extra statement for a turn that comes after a pause;
/// none while the sale is busy here.
const CATCH_UP_AFTER: Duration = Duration::from_secs(1);

impl SaleWriter {
    /// Loads the sale before any command arrives (a warm start): the first turn is then a
    /// locked one that reads only what was appended after the load (after what a catch-up in
    /// pages read first, when that turn comes `CATCH_UP_AFTER` or more after the load).
    pub async fn load(mut self) -> Result<Self, CommandError> {
        let (state, known) = self.hydrate().await.map_err(|failed| match failed {
            Failed::Store(e) => CommandError::Store(e),
            Failed::Command(e) => e,
            // A load takes no turn, so it never finds another writer ahead of it.
            Failed::Stale => CommandError::Contended,
        })?;
        self.state = Some(state);
        self.known = known;
        self.locked_turns = 1;
        self.last_look = tokio::time::Instant::now();
        Ok(self)
    }

    /// The state a turn decides on, and how the turn runs: a writer without state loads the
    /// sale (then the turn is locked); one that took no turn for `CATCH_UP_AFTER` first reads
    /// what was appended since, in pages (and takes locked turns if another writer did).
    pub(super) async fn state_for_turn(&mut self) -> Result<(SaleState, TurnMode), Failed> {
        let state = match self.state.take() {
            None => {
                let (state, known) = self.hydrate().await?;
                self.known = known;
                return Ok((state, TurnMode::Locked));
            }
            Some(state) if self.last_look.elapsed() >= CATCH_UP_AFTER => {
                let from = (state, self.known);
                let (state, known) =
                    read_after(self.store.as_ref(), self.sale_id, &self.expiry, PAGE, from).await?;
                if known != self.known {
                    self.locked_turns = LOCKED_TURNS;
                }
                self.known = known;
                state
            }
            Some(state) => state,
        };
        let mode = if self.locked_turns == 0 {
            TurnMode::Optimistic
        } else {
            TurnMode::Locked
        };
        Ok((state, mode))
    }

    /// The sale as the store holds it now, timed (`ticketing_sale_hydration_duration_seconds`).
    async fn hydrate(&self) -> Result<(SaleState, Known), Failed> {
        let started = Instant::now();
        let from = (SaleState::default(), Known::default());
        let hydrated =
            read_after(self.store.as_ref(), self.sale_id, &self.expiry, PAGE, from).await?;
        self.metrics
            .hydration_duration
            .with_label_values(&[self.store.kind()])
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(sale_id = %self.sale_id, events = hydrated.1.events, "sale hydrated");
        Ok(hydrated)
    }
}

/// `from` with every event of the sale the store holds after it folded in, read `page` events
/// at a time, and what of the sale that is.
async fn read_after(
    store: &dyn EventStore,
    sale_id: EventId,
    expiry: &ExpiryHandle,
    page: usize,
    from: (SaleState, Known),
) -> Result<(SaleState, Known), Failed> {
    let (mut state, mut known) = from;
    loop {
        let read = store
            .read_sale(sale_id, known.position, page)
            .await
            .map_err(Failed::Store)?;
        for recorded in &read {
            let event = codec::decode(recorded).map_err(|e| Failed::Command(e.into()))?;
            // A hold that ended (here before a reload, or on another instance) has no timer
            // to keep here.
            disarm_if_ended(expiry, sale_id, &event);
            state.apply(&event);
        }
        known.events += read.len() as u64;
        let Some(last) = read.last() else {
            return Ok((state, known));
        };
        known.position = last.position;
        if read.len() < page {
            return Ok((state, known));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sale::Lifecycle;
    use crate::domain::{ReservationId, SaleCommand};
    use crate::eventstore::memory::MemoryEventStore;
    use crate::eventstore::{codec, Metadata};
    use crate::runtime::expiry;
    use crate::runtime::sales::tests::{create_gala, hold_one_seat};

    /// Commits `command` to `store` as a writer would, on `state`.
    async fn commit(
        store: &dyn EventStore,
        sale: EventId,
        state: &mut SaleState,
        command: SaleCommand,
    ) {
        let decision = state.decide(sale, &command).unwrap();
        let mut rows = Vec::new();
        for event in &decision.events {
            let version = state.version(&event.stream()) + 1;
            rows.push(codec::encode(event, version, &Metadata::default()).unwrap());
            state.apply(event);
        }
        store.append(sale, rows).await.unwrap();
    }

    /// A sale read a few events at a time, with another sale's events between its own, folds
    /// to the same state as when read at once, and the writer knows all of it.
    #[tokio::test]
    async fn a_sale_read_in_pages_is_the_sale_read_at_once() {
        let store = MemoryEventStore::new();
        let (sale, other) = (EventId::random(), EventId::random());
        let now = chrono::Utc::now();
        let (mut written, mut elsewhere) = (SaleState::default(), SaleState::default());
        commit(&store, sale, &mut written, create_gala(now)).await;
        commit(&store, other, &mut elsewhere, create_gala(now)).await;
        for action in [Lifecycle::Publish, Lifecycle::OpenSales] {
            let lifecycle = SaleCommand::ChangeLifecycle { action, now };
            commit(&store, sale, &mut written, lifecycle.clone()).await;
            commit(&store, other, &mut elsewhere, lifecycle).await;
        }
        for _ in 0..7 {
            for (id, state) in [(sale, &mut written), (other, &mut elsewhere)] {
                let hold = hold_one_seat(ReservationId::random(), now);
                commit(&store, id, state, hold).await;
            }
        }
        let (expiry, _orders) = expiry::channel();
        let from = || (SaleState::default(), Known::default());
        let Ok((at_once, all)) = read_after(&store, sale, &expiry, usize::MAX, from()).await else {
            panic!("the sale could not be read at once");
        };
        assert_eq!(at_once, written);
        for page in [1, 3, 4] {
            let Ok((paged, known)) = read_after(&store, sale, &expiry, page, from()).await else {
                panic!("the sale could not be read in pages of {page}");
            };
            assert_eq!(paged, written, "pages of {page}");
            assert_eq!(known, all, "pages of {page}");
        }
    }
}
