//! The contract's batching clause: how the log is cut into batches must not show in any view.
//! An adapter that folds a batch before writing it (as the PostgreSQL one does) must end where
//! applying the events one by one ends, which `memory.rs`, the reference, does by construction.

use super::fixture::{self, GALA, PAYMENTS, RESERVATIONS, SHOW, USERS};
use super::generated::{self, History, Ids};
use super::generated::{payment, reservation};
use super::inconsistent::{inconsistent, ODD};
use super::Projection;
use crate::paging::MAX_PAGE_SIZE;
use crate::projections::memory::MemoryReadModel;
use crate::projections::*;

/// Everything every query answers about the ids of a history, every page of every list.
#[derive(Debug, PartialEq)]
pub struct Views {
    checkpoint: u64,
    events: Vec<Option<EventView>>,
    listings: Vec<Vec<EventView>>,
    reservations: Vec<Option<ReservationView>>,
    reservation_lists: Vec<Vec<ReservationView>>,
    payments: Vec<Option<PaymentView>>,
    payment_lists: Vec<Vec<PaymentView>>,
    pending: Vec<PendingHold>,
}

/// Walks every page of a listing, checking that the totals agree with what was listed.
async fn all_pages<T, F>(mut page: impl FnMut(PageRequest) -> F) -> Vec<T>
where
    F: std::future::Future<Output = Result<Page<T>, ReadError>>,
{
    let mut items = Vec::new();
    for n in 1.. {
        let request = PageRequest {
            page: n,
            page_size: MAX_PAGE_SIZE,
        };
        let got = page(request).await.unwrap();
        let done = got.items.is_empty();
        items.extend(got.items);
        if done {
            assert_eq!(
                got.total_count,
                items.len() as u64,
                "total_count of a listing"
            );
            return items;
        }
    }
    unreachable!("pages are numbered by u32")
}

/// Asks every query of the port about every id and user of `ids`.
pub async fn views(model: &dyn Projection, ids: &Ids) -> Views {
    let mut v = Views {
        checkpoint: model.checkpoint().await.unwrap(),
        events: Vec::new(),
        listings: Vec::new(),
        reservations: Vec::new(),
        reservation_lists: vec![all_pages(|p| model.reservations(None, p)).await],
        payments: Vec::new(),
        payment_lists: Vec::new(),
        pending: model.pending_holds().await.unwrap(),
    };
    v.pending.sort_by_key(|h| (h.expires_at, h.reservation_id));
    for id in &ids.events {
        v.events.push(model.event(*id).await.unwrap());
    }
    let statuses = [None, Some(EventStatus::Draft), Some(EventStatus::OnSale)];
    for status in statuses.into_iter().chain([Some(EventStatus::Cancelled)]) {
        for admin in [false, true] {
            let query = EventQuery {
                status,
                viewer_is_admin: admin,
                ..EventQuery::default()
            };
            v.listings
                .push(all_pages(|p| model.events(&query, p)).await);
        }
    }
    for id in &ids.reservations {
        v.reservations.push(model.reservation(*id).await.unwrap());
    }
    for id in &ids.payments {
        v.payments.push(model.payment(*id).await.unwrap());
    }
    for user in &ids.users {
        let user = *user;
        v.reservation_lists
            .push(all_pages(|p| model.reservations(Some(user), p)).await);
        v.payment_lists
            .push(all_pages(|p| model.payments_of(user, p)).await);
    }
    v
}

/// The fixture's history with its ids.
fn fixture_history() -> History {
    History {
        log: fixture::history(),
        ids: Ids {
            events: vec![GALA, SHOW],
            reservations: RESERVATIONS.to_vec(),
            payments: PAYMENTS.to_vec(),
            users: USERS.to_vec(),
        },
    }
}

/// Applies `log` from an empty model in batches of `size`.
async fn apply_in_batches(model: &dyn Projection, log: &[Arc<RecordedEvent>], size: usize) {
    model.reset().await.unwrap();
    for batch in log.chunks(size) {
        model.apply(batch).await.unwrap();
    }
}

/// Each history, applied one event per batch, in small and odd-sized batches, and as one
/// batch, shows exactly what the in-memory reference shows after applying it event by event;
/// for the inconsistent history, that is counters that saturated at zero along the way.
pub async fn batch_boundaries_change_no_view(model: &dyn Projection) {
    let histories = [
        ("the fixture", fixture_history()),
        ("busy sales", generated::busy_sales(400, 7)),
        ("an inconsistent log", inconsistent()),
    ];
    for (name, history) in histories {
        let reference = MemoryReadModel::new();
        apply_in_batches(&reference, &history.log, 1).await;
        let expected = views(&reference, &history.ids).await;
        for size in [1, 2, 7, 64, history.log.len()] {
            apply_in_batches(model, &history.log, size).await;
            let got = views(model, &history.ids).await;
            assert!(
                got == expected,
                "{name} in batches of {size}:\n{got:#?}\nexpected:\n{expected:#?}"
            );
        }
    }

    // The reference itself, spelled out for the inconsistent log.
    let odd = model.event(ODD).await.unwrap().unwrap();
    let floor = &odd.sections[0];
    assert_eq!((floor.held, floor.sold, floor.available), (2, 1, 7));
    let twice = model.reservation(reservation(3)).await.unwrap().unwrap();
    assert_eq!(twice.payment_id, Some(payment(3).0));
    let refunded = model.payment(payment(1)).await.unwrap().unwrap();
    assert_eq!(refunded.reason.as_deref(), Some("second"));
}
