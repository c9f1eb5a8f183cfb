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

/// The sale as the store holds it now, and what of it that is.
pub(super) async fn hydrate(
    store: &dyn EventStore,
    sale_id: EventId,
    expiry: &ExpiryHandle,
) -> Result<(SaleState, Known), Failed> {
    let mut state = SaleState::default();
    let mut known = Known::default();
    loop {
        let page = store
            .read_sale(sale_id, known.position, PAGE)
            .await
            .map_err(Failed::Store)?;
        for recorded in &page {
            let event = codec::decode(recorded).map_err(|e| Failed::Command(e.into()))?;
            // A hold that ended (here before a reload, or on another instance) has no timer
            // to keep here.
            disarm_if_ended(expiry, sale_id, &event);
            state.apply(&event);
        }
        known.events += page.len() as u64;
        let Some(last) = page.last() else {
            return Ok((state, known));
        };
        known.position = last.position;
        if page.len() < PAGE {
            return Ok((state, known));
        }
    }
}
