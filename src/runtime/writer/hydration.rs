//! How a sale's writer loads its sale: before its first turn, and again after a turn left its
//! state behind. The sale's events are read a page at a time (`PAGE`), each page a statement
//! of its own, outside any turn: writers of the sale on other instances go on meanwhile (a
//! hydration inside a locked turn held the sale for as long as it took), and no statement
//! grows with the sale (read at once, a long sale would meet the server's statement time-out
//! and could never be hydrated). The turn that follows is locked and hands the writer only
//! what was appended after the last page: positions become visible in order, so nothing can
//! commit behind a page already read.

use super::{disarm_if_ended, Failed};
use crate::domain::{EventId, SaleState};
use crate::eventstore::{codec, EventStore, Known};
use crate::runtime::expiry::ExpiryHandle;

/// Events per read: a few MB, a statement of some tens of milliseconds.
pub(super) const PAGE: usize = 10_000;

/// The sale as the store holds it now, and what of it that is, read `page` events at a time.
pub(super) async fn hydrate(
    store: &dyn EventStore,
    sale_id: EventId,
    expiry: &ExpiryHandle,
    page: usize,
) -> Result<(SaleState, Known), Failed> {
    let mut state = SaleState::default();
    let mut known = Known::default();
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
        let Ok((at_once, all)) = hydrate(&store, sale, &expiry, usize::MAX).await else {
            panic!("the sale could not be read at once");
        };
        assert_eq!(at_once, written);
        for page in [1, 3, 4] {
            let Ok((paged, known)) = hydrate(&store, sale, &expiry, page).await else {
                panic!("the sale could not be read in pages of {page}");
            };
            assert_eq!(paged, written, "pages of {page}");
            assert_eq!(known, all, "pages of {page}");
        }
    }
}
