//! The contract every `ReadModel` adapter passes; each adapter's tests call `run_all`. The
//! history is decided by the pure domain, not hand-written events, so no database or event
//! store is needed to build it (see `fixture`). Expected values are written out: the contract
//! checks what the API shows, not one adapter against another. `batching` adds that how the
//! log is cut into batches never shows; `generated` and `inconsistent` hold the
//! longer histories it uses.

mod batching;
pub mod fixture;
pub mod generated;
mod inconsistent;

use super::*;
pub use batching::batch_boundaries_change_no_view;

/// Both sides of a read model, as the suite writes and then reads it.
pub trait Projection: ReadModel + ProjectionWriter {}
impl<T: ReadModel + ProjectionWriter> Projection for T {}
pub use fixture::history;
use fixture::*;
use uuid::Uuid;

fn request(page: u32, page_size: u32) -> PageRequest {
    PageRequest { page, page_size }
}

pub fn page_of<T>(items: Vec<T>, page: u32, page_size: u32, total_count: u64) -> Page<T> {
    Page {
        items,
        page,
        page_size,
        total_count,
        total_pages: total_count.div_ceil(u64::from(page_size)),
    }
}

fn listing(
    viewer: Option<UserId>,
    admin: bool,
    status: Option<EventStatus>,
    owner: Option<UserId>,
) -> EventQuery {
    EventQuery {
        status,
        owner_id: owner,
        viewer,
        viewer_is_admin: admin,
    }
}

// ---- the contract ----

/// Runs every contract check against a fresh, empty read model.
pub async fn run_all(model: &dyn Projection) {
    assert_eq!(
        model.checkpoint().await.unwrap(),
        0,
        "the contract needs an empty read model"
    );
    model.ping().await.unwrap();
    let log = history();
    let applied = model.apply(&log).await.unwrap();
    assert_eq!(
        applied.undecodable, 2,
        "the fixture's two undecodable events"
    );
    every_query_shows_the_history(model, log.len() as u64).await;
    let once = snapshot(model).await;
    duplicate_delivery_changes_nothing(model, &log, &once).await;
    overlapping_batches_give_the_same_views(model, &log, &once).await;
    a_reset_empties_every_view_and_a_replay_rebuilds_them(model, &log, &once).await;
}

/// After the whole log, every query answers exactly what the fixture expects.
async fn every_query_shows_the_history(model: &dyn Projection, last: u64) {
    assert_eq!(
        model.checkpoint().await.unwrap(),
        last,
        "past the undecodable events too"
    );

    events_show_their_seats_and_list_by_visibility(model).await;
    reservations_are_found_and_listed_newest_first(model).await;
    payments_are_found_and_listed_newest_first(model).await;
    pending_holds_are_listed(model).await;
}

/// Events with their sections; drafts only for their owner and admins; filters; pages.
async fn events_show_their_seats_and_list_by_visibility(model: &dyn Projection) {
    assert_eq!(model.event(GALA).await.unwrap(), Some(gala_view()));
    assert_eq!(model.event(SHOW).await.unwrap(), Some(show_view()));
    assert_eq!(
        model.event(EventId(Uuid::from_u128(7))).await.unwrap(),
        None
    );

    let everything = model
        .events(&listing(None, true, None, None), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        everything,
        page_of(vec![gala_view(), show_view()], 1, 20, 2)
    );
    let (on_sale, draft) = (Some(EventStatus::OnSale), Some(EventStatus::Draft));
    let cases = [
        (listing(None, false, None, None), vec![SHOW]),
        (listing(Some(ALICE), false, None, None), vec![GALA, SHOW]),
        (listing(Some(CAROL), false, None, None), vec![SHOW]),
        (listing(None, true, None, None), vec![GALA, SHOW]),
        (listing(None, false, draft, None), vec![]),
        (listing(Some(BOB), false, draft, None), vec![]),
        (listing(Some(ALICE), false, draft, None), vec![GALA]),
        (listing(None, true, draft, None), vec![GALA]),
        (listing(None, false, on_sale, None), vec![SHOW]),
        (
            listing(None, true, Some(EventStatus::Published), None),
            vec![],
        ),
        (listing(None, false, None, Some(ALICE)), vec![]),
        (listing(Some(ALICE), false, None, Some(ALICE)), vec![GALA]),
        (listing(Some(BOB), false, None, Some(ALICE)), vec![]),
        (listing(None, true, None, Some(ALICE)), vec![GALA]),
        (listing(None, false, None, Some(BOB)), vec![SHOW]),
        (listing(None, true, draft, Some(BOB)), vec![]),
        (listing(Some(BOB), false, on_sale, Some(BOB)), vec![SHOW]),
    ];
    for (query, expected) in cases {
        let page = model.events(&query, PageRequest::default()).await.unwrap();
        let ids: Vec<EventId> = page.items.iter().map(|e| EventId(e.id)).collect();
        assert_eq!(
            (ids, page.total_count),
            (expected.clone(), expected.len() as u64),
            "{query:?}"
        );
    }
    let admin = listing(None, true, None, None);
    for (n, items) in [(1, vec![gala_view()]), (2, vec![show_view()]), (3, vec![])] {
        let page = model.events(&admin, request(n, 1)).await.unwrap();
        assert_eq!(page, page_of(items, n, 1, 2), "page {n} of events");
    }
}

/// Reservations in every final status, by id and listed newest first (ties by id).
async fn reservations_are_found_and_listed_newest_first(model: &dyn Projection) {
    for id in RESERVATIONS {
        assert_eq!(
            model.reservation(id).await.unwrap(),
            Some(reservation_view(id))
        );
    }
    assert_eq!(model.reservation(rid(99)).await.unwrap(), None);
    let views =
        |ids: &[ReservationId]| ids.iter().map(|r| reservation_view(*r)).collect::<Vec<_>>();
    let newest_first = [R6, R5, R3, R4, R2, R1];
    assert_eq!(
        model
            .reservations(None, PageRequest::default())
            .await
            .unwrap(),
        page_of(views(&newest_first), 1, 20, 6)
    );
    for (user, ids) in [
        (CAROL, vec![R5, R2, R1]),
        (DAVE, vec![R6, R3, R4]),
        (ALICE, vec![]),
    ] {
        let page = model
            .reservations(Some(user), PageRequest::default())
            .await
            .unwrap();
        assert_eq!(
            page,
            page_of(views(&ids), 1, 20, ids.len() as u64),
            "reservations of {user}"
        );
    }
    for (n, ids) in [
        (1, &newest_first[..4]),
        (2, &newest_first[4..]),
        (3, &[][..]),
    ] {
        let page = model.reservations(None, request(n, 4)).await.unwrap();
        assert_eq!(
            page,
            page_of(views(ids), n, 4, 6),
            "page {n} of reservations"
        );
    }
    assert_eq!(
        model.reservations(Some(DAVE), request(2, 2)).await.unwrap(),
        page_of(views(&[R4]), 2, 2, 3)
    );
}

/// Payments, declined and refunded ones too, by id and per customer, newest first.
async fn payments_are_found_and_listed_newest_first(model: &dyn Projection) {
    for id in PAYMENTS {
        assert_eq!(model.payment(id).await.unwrap(), Some(payment_view(id)));
    }
    assert_eq!(model.payment(pid(99)).await.unwrap(), None);
    let mut asked = PAYMENTS.to_vec();
    asked.extend([pid(99), pid(98)]);
    assert_eq!(
        model.recorded_payments(&asked).await.unwrap(),
        PAYMENTS.into_iter().collect(),
        "only the recorded ones"
    );
    assert!(model.recorded_payments(&[]).await.unwrap().is_empty());
    let views = |ids: &[PaymentId]| ids.iter().map(|p| payment_view(*p)).collect::<Vec<_>>();
    for (user, ids) in [
        (CAROL, vec![P2, P5, DECLINED]),
        (DAVE, vec![P6, P4]),
        (BOB, vec![]),
    ] {
        let page = model
            .payments_of(user, PageRequest::default())
            .await
            .unwrap();
        assert_eq!(
            page,
            page_of(views(&ids), 1, 20, ids.len() as u64),
            "payments of {user}"
        );
    }
    assert_eq!(
        model.payments_of(CAROL, request(2, 2)).await.unwrap(),
        page_of(views(&[DECLINED]), 2, 2, 3)
    );
    assert_eq!(
        model.payments_of(CAROL, request(9, 2)).await.unwrap(),
        page_of(vec![], 9, 2, 3)
    );
}

/// Pending holds are what start-up re-arms.
async fn pending_holds_are_listed(model: &dyn Projection) {
    let pending = PendingHold {
        event_id: SHOW,
        reservation_id: R1,
        expires_at: t(25),
    };
    assert_eq!(model.pending_holds().await.unwrap(), vec![pending]);
}

/// Everything every query answers for the contract's ids and users, to compare two states.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    checkpoint: u64,
    events: Vec<Option<EventView>>,
    listings: Vec<Page<EventView>>,
    reservations: Vec<Option<ReservationView>>,
    reservation_pages: Vec<Page<ReservationView>>,
    payments: Vec<Option<PaymentView>>,
    payment_pages: Vec<Page<PaymentView>>,
    pending: Vec<PendingHold>,
}

/// Asks every query of the port about every id and user of the fixture.
pub async fn snapshot(model: &dyn Projection) -> Snapshot {
    let all = PageRequest::default();
    let mut s = Snapshot {
        checkpoint: model.checkpoint().await.unwrap(),
        events: Vec::new(),
        listings: Vec::new(),
        reservations: Vec::new(),
        reservation_pages: vec![model.reservations(None, all).await.unwrap()],
        payments: Vec::new(),
        payment_pages: Vec::new(),
        pending: model.pending_holds().await.unwrap(),
    };
    s.pending.sort_by_key(|h| (h.expires_at, h.reservation_id));
    for id in [GALA, SHOW] {
        s.events.push(model.event(id).await.unwrap());
    }
    let statuses = [None, Some(EventStatus::Draft), Some(EventStatus::OnSale)];
    for viewer in [None, Some(ALICE), Some(BOB)] {
        for admin in [false, true] {
            for status in statuses {
                for owner in [None, Some(ALICE), Some(BOB)] {
                    let query = listing(viewer, admin, status, owner);
                    s.listings.push(model.events(&query, all).await.unwrap());
                }
            }
        }
    }
    for id in RESERVATIONS {
        s.reservations.push(model.reservation(id).await.unwrap());
    }
    for id in PAYMENTS {
        s.payments.push(model.payment(id).await.unwrap());
    }
    for user in USERS {
        s.reservation_pages
            .push(model.reservations(Some(user), all).await.unwrap());
        s.payment_pages
            .push(model.payments_of(user, all).await.unwrap());
    }
    s
}

/// At-least-once delivery: the whole log, an older batch and an empty one, again.
async fn duplicate_delivery_changes_nothing(
    model: &dyn Projection,
    log: &[Arc<RecordedEvent>],
    once: &Snapshot,
) {
    for batch in [log, &log[..log.len() / 2], &[]] {
        let applied = model.apply(batch).await.unwrap();
        assert_eq!(applied.undecodable, 0, "counted once, when first skipped");
    }
    assert_eq!(
        &snapshot(model).await,
        once,
        "a duplicate delivery changed the views"
    );
}

/// However the log is cut into overlapping batches, the views end the same.
async fn overlapping_batches_give_the_same_views(
    model: &dyn Projection,
    log: &[Arc<RecordedEvent>],
    once: &Snapshot,
) {
    let (third, two_thirds) = (log.len() / 3, log.len() * 2 / 3);
    model.reset().await.unwrap();
    model.apply(&log[..two_thirds]).await.unwrap();
    assert_eq!(model.checkpoint().await.unwrap(), two_thirds as u64);
    model.apply(&log[third..]).await.unwrap();
    assert_eq!(&snapshot(model).await, once, "two overlapping batches");

    // Small batches, each repeating the tail of the one before, as a retried subscription does.
    model.reset().await.unwrap();
    let mut start = 0;
    while start < log.len() {
        model
            .apply(&log[start..(start + 5).min(log.len())])
            .await
            .unwrap();
        start += 3;
    }
    assert_eq!(&snapshot(model).await, once, "many overlapping batches");
}

/// A rebuild: `reset` empties every view and the checkpoint, a replay gives the same answers.
async fn a_reset_empties_every_view_and_a_replay_rebuilds_them(
    model: &dyn Projection,
    log: &[Arc<RecordedEvent>],
    once: &Snapshot,
) {
    model.reset().await.unwrap();
    let all = PageRequest::default();
    assert_eq!(model.checkpoint().await.unwrap(), 0);
    assert_eq!(model.event(SHOW).await.unwrap(), None);
    assert_eq!(
        model
            .events(&listing(None, true, None, None), all)
            .await
            .unwrap(),
        page_of(vec![], 1, 20, 0)
    );
    assert_eq!(model.reservation(R1).await.unwrap(), None);
    assert_eq!(
        model.reservations(None, all).await.unwrap(),
        page_of(vec![], 1, 20, 0)
    );
    assert_eq!(model.payment(P2).await.unwrap(), None);
    assert_eq!(
        model.payments_of(CAROL, all).await.unwrap(),
        page_of(vec![], 1, 20, 0)
    );
    assert_eq!(model.pending_holds().await.unwrap(), vec![]);
    model.apply(log).await.unwrap();
    assert_eq!(
        &snapshot(model).await,
        once,
        "a replay from position 0 after reset"
    );
}
