//! Given / when / then tests of the sale, plus a property test of invariants 1 and 2.

use super::{
    Decision, Effect, EventPatch, Lifecycle, Outcome, SaleCommand, SaleError, SaleState, Undo,
};
use crate::domain::concert::{EventError, EventStatus};
use crate::domain::events::{DomainEvent, EventDetails, SectionSpec, Venue};
use crate::domain::ids::{EventId, PaymentId, ReservationId, UserId};
use crate::domain::inventory::InventoryError;
use crate::domain::money::{Currency, Money};
use crate::domain::payment::{Payment, PaymentStatus};
use crate::domain::reservation::{ReservationError, ReservationStatus};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

fn t(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
}

fn details(capacity: u32) -> EventDetails {
    EventDetails {
        name: "Concert".into(),
        description: None,
        venue: Venue {
            name: "Hall".into(),
            address: "1 Main St".into(),
        },
        starts_at: t(60 * 24),
        ends_at: t(60 * 26),
        sections: vec![SectionSpec {
            name: "floor".into(),
            capacity,
            price_cents: 2500,
        }],
        max_tickets_per_customer: None,
    }
}

/// A tiny harness: `given` commands are decided and applied, `when` returns the decision.
struct Sale {
    id: EventId,
    state: SaleState,
}

impl Sale {
    fn new() -> Self {
        Sale {
            id: EventId::random(),
            state: SaleState::default(),
        }
    }

    fn given(mut self, command: SaleCommand) -> Self {
        let decision = self.when(&command).expect("given command must succeed");
        self.commit(&decision);
        self
    }

    fn when(&self, command: &SaleCommand) -> Result<Decision, SaleError> {
        self.state.decide(self.id, command)
    }

    fn commit(&mut self, decision: &Decision) {
        for e in &decision.events {
            self.state.apply(e);
        }
    }

    /// `event`, published and on sale.
    fn on_sale_with(event: EventDetails) -> Self {
        Sale::new()
            .given(SaleCommand::CreateEvent {
                owner_id: UserId::random(),
                currency: Currency::USD,
                details: event,
                now: t(0),
            })
            .given(SaleCommand::ChangeLifecycle {
                action: Lifecycle::Publish,
                now: t(0),
            })
            .given(SaleCommand::ChangeLifecycle {
                action: Lifecycle::OpenSales,
                now: t(0),
            })
    }

    fn on_sale(capacity: u32) -> Self {
        Sale::on_sale_with(details(capacity))
    }
}

fn reserve(id: ReservationId, quantity: u32, now: DateTime<Utc>) -> SaleCommand {
    SaleCommand::Reserve {
        reservation_id: id,
        user_id: UserId::random(),
        section: "floor".into(),
        quantity,
        hold_for: Duration::minutes(15),
        now,
    }
}

fn capture(
    payment: PaymentId,
    reservation: ReservationId,
    cents: i64,
    now: DateTime<Utc>,
) -> SaleCommand {
    SaleCommand::RecordCapture {
        payment_id: payment,
        reservation_id: reservation,
        amount: Money::new(cents, Currency::USD),
        charge_id: "ch_1".into(),
        now,
    }
}

fn types(decision: &Decision) -> Vec<&'static str> {
    decision
        .events
        .iter()
        .map(DomainEvent::event_type)
        .collect()
}

/// A repeat of a placed reservation is a duplicate even when its section is sold out, and
/// after its hold ended: the id is checked before the seats (and the customer's limit).
/// `App::reserve` relies on it: a sold-out refusal proves the key's first attempt placed
/// nothing, so it does not look for one.
#[test]
fn a_repeat_is_a_duplicate_even_when_sold_out_or_ended() {
    let r = ReservationId::random();
    let duplicate: SaleError = ReservationError::AlreadyExists.into();
    let sale = Sale::on_sale(2).given(reserve(r, 2, t(1)));
    assert_eq!(sale.when(&reserve(r, 2, t(2))).unwrap_err(), duplicate);
    let sale = sale.given(SaleCommand::ExpireReservation {
        reservation_id: r,
        now: t(20),
    });
    let sale = sale.given(reserve(ReservationId::random(), 2, t(21)));
    assert_eq!(sale.when(&reserve(r, 2, t(22))).unwrap_err(), duplicate);
}

/// Reserving holds seats and places the reservation in one decision, and arms the expiry.
#[test]
fn reserving_holds_seats_and_places_the_reservation_atomically() {
    let sale = Sale::on_sale(10);
    let r = ReservationId::random();
    let decision = sale.when(&reserve(r, 3, t(1))).unwrap();
    assert_eq!(
        types(&decision),
        ["inventory.seats_held", "reservation.placed"]
    );
    assert_eq!(
        decision.effects.as_slice(),
        [Effect::ArmExpiry {
            reservation_id: r,
            at: t(16)
        }]
    );
}

/// A request for more seats than remain is refused and reports what is left.
#[test]
fn reserving_more_than_available_is_sold_out() {
    let sale = Sale::on_sale(4).given(reserve(ReservationId::random(), 3, t(1)));
    let err = sale
        .when(&reserve(ReservationId::random(), 2, t(2)))
        .unwrap_err();
    assert_eq!(
        err,
        InventoryError::SoldOut {
            section: "floor".into(),
            available: 1
        }
        .into()
    );
}

/// Seats can only be reserved while the event is on sale.
#[test]
fn reserving_before_sales_open_is_refused() {
    let sale = Sale::new().given(SaleCommand::CreateEvent {
        owner_id: UserId::random(),
        currency: Currency::USD,
        details: details(10),
        now: t(0),
    });
    let err = sale
        .when(&reserve(ReservationId::random(), 1, t(1)))
        .unwrap_err();
    assert_eq!(
        err,
        EventError::SalesNotOpen {
            status: EventStatus::Draft
        }
        .into()
    );
}

/// Paying the exact total within the hold confirms and moves held seats to sold.
#[test]
fn capture_within_the_hold_confirms_the_purchase() {
    let r = ReservationId::random();
    let mut sale = Sale::on_sale(10).given(reserve(r, 2, t(1)));
    let decision = sale
        .when(&capture(PaymentId::random(), r, 5000, t(5)))
        .unwrap();
    assert_eq!(
        types(&decision),
        [
            "payment.captured",
            "reservation.confirmed",
            "inventory.held_seats_sold"
        ]
    );
    sale.commit(&decision);
    let stock = sale.state.inventory.section("floor").unwrap();
    assert_eq!((stock.held, stock.sold), (0, 2));
}

/// A capture that arrives after the hold ended is refunded in the same commit.
#[test]
fn capture_after_expiry_is_refunded_at_once() {
    let r = ReservationId::random();
    let sale = Sale::on_sale(10).given(reserve(r, 2, t(1)));
    let decision = sale
        .when(&capture(PaymentId::random(), r, 5000, t(30)))
        .unwrap();
    assert_eq!(types(&decision), ["payment.captured", "payment.refunded"]);
    assert!(matches!(decision.outcome, Outcome::Compensated(_)));
}

/// A capture of the wrong amount never confirms a reservation.
#[test]
fn capture_of_the_wrong_amount_is_refunded() {
    let r = ReservationId::random();
    let sale = Sale::on_sale(10).given(reserve(r, 2, t(1)));
    let decision = sale
        .when(&capture(PaymentId::random(), r, 100, t(2)))
        .unwrap();
    assert_eq!(types(&decision), ["payment.captured", "payment.refunded"]);
}

/// The expiry timer is a no-op once the reservation has ended, and early timers are refused.
#[test]
fn expiry_releases_only_pending_holds_that_are_due() {
    let r = ReservationId::random();
    let sale = Sale::on_sale(10).given(reserve(r, 2, t(1)));
    let early = SaleCommand::ExpireReservation {
        reservation_id: r,
        now: t(10),
    };
    assert!(matches!(
        sale.when(&early),
        Err(SaleError::Reservation(
            ReservationError::NotYetExpired { .. }
        ))
    ));
    let due = SaleCommand::ExpireReservation {
        reservation_id: r,
        now: t(16),
    };
    assert_eq!(
        types(&sale.when(&due).unwrap()),
        ["reservation.expired", "inventory.held_seats_released"]
    );
    let paid = sale.given(capture(PaymentId::random(), r, 5000, t(2)));
    assert!(paid.when(&due).unwrap().events.is_empty());
}

/// Cancelling the event releases holds and refunds paid tickets.
#[test]
fn cancelling_the_event_releases_holds_and_refunds_purchases() {
    let (held, paid) = (ReservationId::random(), ReservationId::random());
    let sale = Sale::on_sale(10)
        .given(reserve(held, 1, t(1)))
        .given(reserve(paid, 2, t(2)))
        .given(capture(PaymentId::random(), paid, 5000, t(3)));
    let decision = sale.when(&SaleCommand::CancelEvent { now: t(4) }).unwrap();
    assert_eq!(
        types(&decision),
        [
            "event.cancelled",
            "reservation.cancelled",
            "inventory.held_seats_released",
            "payment.refunded",
            "reservation.refunded",
            "inventory.sold_seats_returned"
        ]
    );
}

/// A stale expected version is reported with both versions.
#[test]
fn update_with_a_stale_version_conflicts() {
    let sale = Sale::on_sale(10);
    let err = sale
        .when(&SaleCommand::UpdateEvent {
            expected_version: Some(1),
            patch: EventPatch::default(),
            now: t(1),
        })
        .unwrap_err();
    assert_eq!(
        err,
        EventError::VersionConflict {
            expected: 1,
            actual: 3
        }
        .into()
    );
}

/// Capacity cannot shrink below the seats already held or sold.
#[test]
fn shrinking_capacity_below_committed_seats_is_refused() {
    let sale = Sale::on_sale(10).given(reserve(ReservationId::random(), 5, t(1)));
    let mut patch = EventPatch::default();
    let mut spec = details(4).sections;
    spec[0].capacity = 4;
    patch.sections = Some(spec);
    let err = sale
        .when(&SaleCommand::UpdateEvent {
            expected_version: None,
            patch,
            now: t(2),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        SaleError::Inventory(InventoryError::CapacityBelowCommitted { committed: 5, .. })
    ));
}

// ---- property test: invariants 1 and 2 after every step of a random interleaving ----

/// The sections of the property test's event: (name, capacity, price in cents).
const SECTIONS: [(&str, u32, i64); 3] =
    [("floor", 12, 2500), ("balcony", 6, 1500), ("box", 3, 9000)];

/// What the card processor does with a payment attempt.
#[derive(Debug, Clone, Copy)]
enum Gateway {
    /// Captures the amount due.
    Captures,
    /// Declines the card.
    Declines,
    /// Is unavailable: nothing is charged, so no command reaches the sale.
    Fails,
    /// Captures a different amount (a client bug or a tampered request).
    CapturesWrongAmount,
}

#[derive(Debug, Clone)]
enum Step {
    Reserve(usize, u32),
    Pay(usize, Gateway),
    Cancel(usize),
    Expire(usize),
    Refund(usize),
    Wait(i64),
    CloseSales,
    CancelEvent,
}

fn step() -> impl Strategy<Value = Step> {
    let gateway = prop_oneof![
        6 => Just(Gateway::Captures),
        2 => Just(Gateway::Declines),
        1 => Just(Gateway::Fails),
        1 => Just(Gateway::CapturesWrongAmount),
    ];
    prop_oneof![
        60 => (0..SECTIONS.len(), 1u32..=4).prop_map(|(s, q)| Step::Reserve(s, q)),
        60 => (any::<usize>(), gateway).prop_map(|(i, g)| Step::Pay(i, g)),
        16 => any::<usize>().prop_map(Step::Cancel),
        16 => any::<usize>().prop_map(Step::Expire),
        16 => any::<usize>().prop_map(Step::Refund),
        20 => (1i64..20).prop_map(Step::Wait),
        1 => Just(Step::CloseSales),
        1 => Just(Step::CancelEvent),
    ]
}

/// Invariant 1 (no oversell) and 2 (every sale balances), checked on the folded state.
fn assert_invariants(state: &SaleState) {
    for stock in &state.inventory.sections {
        assert!(
            stock.held + stock.sold <= stock.capacity,
            "oversold: {stock:?}"
        );
        let of = |status| -> u32 {
            state
                .reservations
                .values()
                .filter(|r| r.section == stock.name && r.status == status)
                .map(|r| r.quantity)
                .sum()
        };
        assert_eq!(stock.held, of(ReservationStatus::Pending), "held drifted");
        assert_eq!(stock.sold, of(ReservationStatus::Confirmed), "sold drifted");
    }
    for r in state.reservations.values() {
        let live: Vec<&Payment> = state
            .payments
            .values()
            .filter(|p| p.reservation_id == r.id && p.status == PaymentStatus::Captured)
            .collect();
        if r.status == ReservationStatus::Confirmed {
            assert_eq!(live.len(), 1, "confirmed without exactly one live payment");
            assert_eq!(live[0].amount, r.total, "payment of the wrong amount");
            assert_eq!(r.payment_id, Some(live[0].id));
        } else {
            assert!(
                live.is_empty(),
                "money kept for a reservation that is {:?}",
                r.status
            );
        }
    }
    // The money kept is exactly the price of the seats sold.
    let kept: i64 = state
        .payments
        .values()
        .filter(|p| p.status == PaymentStatus::Captured)
        .map(|p| p.amount.amount_cents)
        .sum();
    let sold: i64 = state
        .inventory
        .sections
        .iter()
        .map(|s| i64::from(s.sold) * s.price_cents)
        .sum();
    assert_eq!(kept, sold, "money kept differs from the seats sold");
    if state.event.as_ref().map(|e| e.status) == Some(EventStatus::Cancelled) {
        assert!(
            state.reservations.values().all(|r| !matches!(
                r.status,
                ReservationStatus::Pending | ReservationStatus::Confirmed
            )),
            "a cancelled event keeps a hold or a ticket"
        );
    }
}

/// Builds the command a step sends, or `None` when it sends none (a wait, or a payment the
/// gateway failed before anything was charged).
fn command_of(
    step: &Step,
    state: &SaleState,
    ids: &mut Vec<ReservationId>,
    now: &mut DateTime<Utc>,
) -> Option<SaleCommand> {
    let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
    let now_ = *now;
    match *step {
        Step::Reserve(section, quantity) => {
            let id = ReservationId::random();
            ids.push(id);
            Some(SaleCommand::Reserve {
                reservation_id: id,
                user_id: UserId::random(),
                section: SECTIONS[section].0.into(),
                quantity,
                hold_for: Duration::minutes(15),
                now: now_,
            })
        }
        Step::Pay(i, gateway) => {
            let r = pick(i)?;
            let due = state
                .reservations
                .get(&r)
                .map_or(0, |x| x.total.amount_cents);
            match gateway {
                Gateway::Captures => Some(capture(PaymentId::random(), r, due, now_)),
                Gateway::CapturesWrongAmount => {
                    Some(capture(PaymentId::random(), r, due + 1, now_))
                }
                Gateway::Declines => Some(SaleCommand::RecordDecline {
                    payment_id: PaymentId::random(),
                    reservation_id: r,
                    amount: Money::new(due, Currency::USD),
                    reason: "declined".into(),
                    now: now_,
                }),
                Gateway::Fails => None,
            }
        }
        Step::Cancel(i) => pick(i).map(|r| SaleCommand::CancelReservation {
            reservation_id: r,
            now: now_,
        }),
        Step::Expire(i) => pick(i).map(|r| SaleCommand::ExpireReservation {
            reservation_id: r,
            now: now_,
        }),
        Step::Refund(i) => pick(i)
            .and_then(|r| state.reservations.get(&r).and_then(|x| x.payment_id))
            .map(|p| SaleCommand::RefundPayment {
                payment_id: p,
                reason: "test".into(),
                now: now_,
            }),
        Step::Wait(minutes) => {
            *now += Duration::minutes(minutes);
            None
        }
        Step::CloseSales => Some(SaleCommand::ChangeLifecycle {
            action: Lifecycle::CloseSales,
            now: now_,
        }),
        Step::CancelEvent => Some(SaleCommand::CancelEvent { now: now_ }),
    }
}

/// What must be refused, whatever else happened: a hold when sales are not open or more seats
/// than the section has left.
fn must_refuse(state: &SaleState, command: &SaleCommand) -> Option<&'static str> {
    let SaleCommand::Reserve {
        section, quantity, ..
    } = command
    else {
        return None;
    };
    if state.event.as_ref().map(|e| e.status) != Some(EventStatus::OnSale) {
        return Some("a hold while sales are not open");
    }
    let stock = state
        .inventory
        .sections
        .iter()
        .find(|s| &s.name == section)?;
    (stock.held + stock.sold + quantity > stock.capacity).then_some("more seats than are left")
}

fn event_of_sections() -> EventDetails {
    EventDetails {
        sections: SECTIONS
            .iter()
            .map(|(name, capacity, price_cents)| SectionSpec {
                name: (*name).into(),
                capacity: *capacity,
                price_cents: *price_cents,
            })
            .collect(),
        ..details(1)
    }
}

proptest! {
    // Cases: proptest's default (256), or PROPTEST_CASES (CI sets 1024). A failure prints the
    // minimal failing steps and the seed (`cc ...`), also saved under proptest-regressions/.

    /// Random interleavings of reserve, pay (captured, declined, failed, wrong amount), cancel,
    /// expire, refund, closing sales and cancelling the event, over several sections, never
    /// break invariants 1 and 2; a refused command changes nothing.
    #[test]
    fn random_interleavings_keep_invariants(steps in proptest::collection::vec(step(), 1..150)) {
        let mut sale = Sale::on_sale_with(event_of_sections());
        let mut now = t(1);
        let mut ids: Vec<ReservationId> = Vec::new();
        for step in steps {
            let before = sale.state.clone();
            let Some(command) = command_of(&step, &sale.state, &mut ids, &mut now) else {
                prop_assert_eq!(&sale.state, &before, "a step without a command changed the sale");
                continue;
            };
            let refuse = must_refuse(&sale.state, &command);
            match sale.when(&command) {
                Ok(decision) => {
                    prop_assert!(refuse.is_none(), "accepted {}: {:?}", refuse.unwrap_or_default(), command);
                    sale.commit(&decision);
                    if decision.events.is_empty() {
                        prop_assert_eq!(&sale.state, &before, "no events, yet the sale changed");
                    }
                }
                Err(refused) => {
                    // Refused: nothing to commit, and the same command is refused again.
                    prop_assert_eq!(&sale.state, &before);
                    prop_assert_eq!(sale.when(&command).err(), Some(refused));
                }
            }
            assert_invariants(&sale.state);
        }
    }

    /// A batch of random steps decided and applied as tentative events (as a writer's
    /// optimistic turn does), then undone, leaves the sale exactly as it was before the batch,
    /// whatever came before it.
    #[test]
    fn an_undone_batch_leaves_the_sale_as_it_was(
        steps in proptest::collection::vec(step(), 1..150),
        batch_from in 0usize..150,
    ) {
        let mut sale = Sale::on_sale_with(event_of_sections());
        let mut now = t(1);
        let mut ids: Vec<ReservationId> = Vec::new();
        let mut batch: Option<(SaleState, Undo)> = None;
        for (i, step) in steps.iter().enumerate() {
            if i == batch_from {
                batch = Some((sale.state.clone(), Undo::new(&sale.state)));
            }
            let Some(command) = command_of(step, &sale.state, &mut ids, &mut now) else {
                continue;
            };
            let Ok(decision) = sale.when(&command) else {
                continue;
            };
            match &mut batch {
                Some((_, undo)) => {
                    for e in &decision.events {
                        sale.state.apply_undoable(e, undo);
                    }
                }
                None => sale.commit(&decision),
            }
        }
        if let Some((before, undo)) = batch {
            sale.state.undo(undo);
            prop_assert_eq!(&sale.state, &before);
        }
    }
}
