//! Per-customer limits (`max_tickets_per_customer`): given / when / then tests, and a property
//! test that no admitted hold takes a customer past the limit and that no hold is refused for
//! it without need, under random interleavings by several customers with a changing limit.

use super::{Decision, EventPatch, Lifecycle, SaleCommand, SaleError, SaleState};
use crate::domain::concert::{EventError, EventStatus};
use crate::domain::events::{EventDetails, SectionSpec, Venue};
use crate::domain::ids::{EventId, PaymentId, ReservationId, UserId};
use crate::domain::inventory::InventoryError;
use crate::domain::money::{Currency, Money};
use crate::domain::reservation::{ReservationError, ReservationStatus};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn t(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
}

fn details(capacity: u32, limit: Option<u32>) -> EventDetails {
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
            price_cents: 1000,
        }],
        max_tickets_per_customer: limit,
    }
}

struct Sale {
    id: EventId,
    state: SaleState,
}

impl Sale {
    fn on_sale(capacity: u32, limit: Option<u32>) -> Self {
        let mut sale = Sale {
            id: EventId::random(),
            state: SaleState::default(),
        };
        sale.run(SaleCommand::CreateEvent {
            owner_id: UserId::random(),
            currency: Currency::USD,
            details: details(capacity, limit),
            now: t(0),
        });
        for action in [Lifecycle::Publish, Lifecycle::OpenSales] {
            sale.run(SaleCommand::ChangeLifecycle { action, now: t(0) });
        }
        sale
    }

    fn when(&self, command: &SaleCommand) -> Result<Decision, SaleError> {
        self.state.decide(self.id, command)
    }

    /// Decides and commits; panics when refused (a `given` step).
    fn run(&mut self, command: SaleCommand) {
        let decision = self.when(&command).expect("given command must succeed");
        for e in &decision.events {
            self.state.apply(e);
        }
    }

    fn try_run(&mut self, command: &SaleCommand) -> Result<(), SaleError> {
        let decision = self.when(command)?;
        for e in &decision.events {
            self.state.apply(e);
        }
        Ok(())
    }

    fn set_limit(&mut self, limit: Option<u32>, now: DateTime<Utc>) -> Result<(), SaleError> {
        self.try_run(&SaleCommand::UpdateEvent {
            expected_version: None,
            patch: EventPatch {
                max_tickets_per_customer: Some(limit),
                ..EventPatch::default()
            },
            now,
        })
    }
}

fn reserve(id: ReservationId, user: UserId, quantity: u32, now: DateTime<Utc>) -> SaleCommand {
    SaleCommand::Reserve {
        reservation_id: id,
        user_id: user,
        section: "floor".into(),
        quantity,
        hold_for: Duration::minutes(15),
        now,
    }
}

fn pay(sale: &Sale, r: ReservationId, payment: PaymentId, now: DateTime<Utc>) -> SaleCommand {
    let due = sale
        .state
        .reservations
        .get(&r)
        .map_or(0, |x| x.total.amount_cents);
    let amount = Money::new(due, Currency::USD);
    SaleCommand::RecordCapture {
        payment_id: payment,
        reservation_id: r,
        amount,
        charge_id: "ch".into(),
        now,
    }
}

fn limit_refusal(limit: u32, held: u32, requested: u32) -> SaleError {
    SaleError::CustomerLimit {
        limit,
        held,
        requested,
    }
}

/// A customer may hold up to the limit over several reservations; one more ticket is refused
/// with what they hold, while another customer is not affected.
#[test]
fn holds_up_to_the_limit_are_admitted_and_one_more_is_refused() {
    let mut sale = Sale::on_sale(100, Some(4));
    let (ann, bob) = (UserId::random(), UserId::random());
    sale.run(reserve(ReservationId::random(), ann, 3, t(1)));
    sale.run(reserve(ReservationId::random(), ann, 1, t(1)));
    assert_eq!(sale.state.tickets_of(ann), 4);
    let refused = sale.when(&reserve(ReservationId::random(), ann, 1, t(2)));
    assert_eq!(refused.unwrap_err(), limit_refusal(4, 4, 1));
    sale.run(reserve(ReservationId::random(), bob, 4, t(2)));
    // A single request above the limit is refused even with nothing held.
    let carol = UserId::random();
    let refused = sale.when(&reserve(ReservationId::random(), carol, 5, t(2)));
    assert_eq!(refused.unwrap_err(), limit_refusal(4, 0, 5));
}

/// Paying keeps the tickets counted; cancelling a hold, its expiry and a refund give them back.
#[test]
fn cancel_expiry_and_refund_give_the_allowance_back() {
    let mut sale = Sale::on_sale(100, Some(2));
    let ann = UserId::random();
    let (r1, r2, r3) = (
        ReservationId::random(),
        ReservationId::random(),
        ReservationId::random(),
    );
    sale.run(reserve(r1, ann, 2, t(1)));
    sale.run(SaleCommand::CancelReservation {
        reservation_id: r1,
        now: t(2),
    });
    assert_eq!(sale.state.tickets_of(ann), 0, "cancelled");
    sale.run(reserve(r2, ann, 2, t(3)));
    sale.run(SaleCommand::ExpireReservation {
        reservation_id: r2,
        now: t(20),
    });
    assert_eq!(sale.state.tickets_of(ann), 0, "expired");
    sale.run(reserve(r3, ann, 2, t(21)));
    let payment = PaymentId::random();
    sale.run(pay(&sale, r3, payment, t(22)));
    assert_eq!(sale.state.tickets_of(ann), 2, "confirmed tickets count");
    let refused = sale.when(&reserve(ReservationId::random(), ann, 1, t(23)));
    assert_eq!(refused.unwrap_err(), limit_refusal(2, 2, 1));
    sale.run(SaleCommand::RefundPayment {
        payment_id: payment,
        reason: "changed plans".into(),
        now: t(24),
    });
    assert_eq!(sale.state.tickets_of(ann), 0, "refunded");
    sale.run(reserve(ReservationId::random(), ann, 2, t(25)));
}

/// Lowering the limit below what a customer holds keeps their tickets and refuses new ones;
/// raising or removing it admits them again.
#[test]
fn lowering_the_limit_keeps_held_tickets_and_refuses_new_ones() {
    let mut sale = Sale::on_sale(100, Some(6));
    let ann = UserId::random();
    let held = ReservationId::random();
    sale.run(reserve(held, ann, 5, t(1)));
    sale.set_limit(Some(2), t(2)).unwrap();
    assert_eq!(
        sale.state.reservations[&held].status,
        ReservationStatus::Pending
    );
    assert_eq!(sale.state.tickets_of(ann), 5);
    let refused = sale.when(&reserve(ReservationId::random(), ann, 1, t(3)));
    assert_eq!(refused.unwrap_err(), limit_refusal(2, 5, 1));
    sale.set_limit(None, t(4)).unwrap();
    sale.run(reserve(ReservationId::random(), ann, 10, t(5)));
    assert_eq!(sale.state.tickets_of(ann), 15);
}

/// Without a limit nothing is refused for it; a second attempt of the same reservation is a
/// duplicate, not a second count.
#[test]
fn no_limit_admits_everything_and_a_repeat_is_not_counted_twice() {
    let mut sale = Sale::on_sale(100, None);
    let ann = UserId::random();
    for _ in 0..5 {
        sale.run(reserve(ReservationId::random(), ann, 10, t(1)));
    }
    let mut sale = Sale::on_sale(100, Some(3));
    let r = ReservationId::random();
    sale.run(reserve(r, ann, 3, t(1)));
    let before = sale.state.clone();
    let repeat = sale.when(&reserve(r, ann, 3, t(2))).unwrap_err();
    assert_eq!(repeat, ReservationError::AlreadyExists.into());
    assert_eq!(sale.state, before);
    assert_eq!(sale.state.tickets_of(ann), 3);
}

/// A limit outside 1..=100 is a validation error on creation and on update.
#[test]
fn limits_outside_one_to_a_hundred_are_invalid() {
    for bad in [0, 101] {
        let created = SaleState::default().decide(
            EventId::random(),
            &SaleCommand::CreateEvent {
                owner_id: UserId::random(),
                currency: Currency::USD,
                details: details(10, Some(bad)),
                now: t(0),
            },
        );
        let Err(SaleError::Event(EventError::Invalid(problems))) = created else {
            panic!("limit {bad} accepted on creation");
        };
        assert_eq!(problems[0].field, "max_tickets_per_customer");
        let mut sale = Sale::on_sale(10, Some(5));
        let updated = sale.set_limit(Some(bad), t(1));
        assert!(
            matches!(updated, Err(SaleError::Event(EventError::Invalid(_)))),
            "limit {bad} accepted on update"
        );
    }
    for good in [1, 100] {
        Sale::on_sale(10, Some(good))
            .set_limit(Some(good), t(1))
            .unwrap();
    }
}

// ---- property test ----

const CUSTOMERS: usize = 3;
const CAPACITY: u32 = 20;

#[derive(Debug, Clone)]
enum Step {
    Reserve(usize, u32),
    /// The same reservation again (a retry reaching the writer).
    Repeat(usize),
    Pay(usize),
    Cancel(usize),
    Expire(usize),
    Refund(usize),
    Wait(i64),
    SetLimit(Option<u32>),
    ToggleSales,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        50 => (0..CUSTOMERS, 1u32..=5).prop_map(|(c, q)| Step::Reserve(c, q)),
        5 => any::<usize>().prop_map(Step::Repeat),
        20 => any::<usize>().prop_map(Step::Pay),
        10 => any::<usize>().prop_map(Step::Cancel),
        10 => any::<usize>().prop_map(Step::Expire),
        10 => any::<usize>().prop_map(Step::Refund),
        10 => (1i64..20).prop_map(Step::Wait),
        4 => proptest::option::weighted(0.8, 1u32..=8).prop_map(Step::SetLimit),
        1 => Just(Step::ToggleSales),
    ]
}

/// Each customer's pending + confirmed tickets, counted from the reservations themselves.
fn recount(state: &SaleState) -> BTreeMap<UserId, u32> {
    let mut held = BTreeMap::new();
    for r in state.reservations.values() {
        if matches!(
            r.status,
            ReservationStatus::Pending | ReservationStatus::Confirmed
        ) {
            *held.entry(r.user_id).or_insert(0) += r.quantity;
        }
    }
    held
}

/// Why a refused hold was refused rightly: the event not on sale, a repeated id, too few seats,
/// or the limit. Returns a failure message when the refusal had no such reason.
fn check_refusal(
    state: &SaleState,
    command: &SaleCommand,
    refused: &SaleError,
) -> Result<(), String> {
    let SaleCommand::Reserve {
        reservation_id,
        user_id,
        quantity,
        ..
    } = command
    else {
        return Ok(());
    };
    let event = state.event.as_ref().ok_or("no event")?;
    let held = recount(state).get(user_id).copied().unwrap_or(0);
    let necessary = match refused {
        SaleError::CustomerLimit {
            limit,
            held: told,
            requested,
        } => {
            event.details.max_tickets_per_customer == Some(*limit)
                && *told == held
                && requested == quantity
                && held + quantity > *limit
        }
        SaleError::Event(EventError::SalesNotOpen { .. }) => event.status != EventStatus::OnSale,
        SaleError::Reservation(ReservationError::AlreadyExists) => {
            state.reservations.contains_key(reservation_id)
        }
        SaleError::Inventory(InventoryError::SoldOut { .. }) => {
            let s = &state.inventory.sections[0];
            s.held + s.sold + quantity > s.capacity
        }
        _ => false,
    };
    necessary
        .then_some(())
        .ok_or_else(|| format!("refused without need: {refused:?} for {command:?}"))
}

proptest! {
    /// Random interleavings of reserve (also repeated), pay, cancel, expire, refund by several
    /// customers, with a random limit that changes mid-way: a hold is admitted only when the
    /// customer's pending + confirmed tickets plus it stay within the limit at that moment,
    /// every refusal has a real reason, and the running count always equals a recount.
    #[test]
    fn no_customer_passes_the_limit_and_no_refusal_is_needless(
        limit in proptest::option::weighted(0.9, 1u32..=8),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut sale = Sale::on_sale(CAPACITY, limit);
        let customers: Vec<UserId> = (0..CUSTOMERS).map(|_| UserId::random()).collect();
        let mut placed: Vec<(ReservationId, UserId, u32)> = Vec::new();
        let mut now = t(1);
        for step in steps {
            let pick = |i: usize| placed.get(i % placed.len().max(1)).copied();
            let command = match step {
                Step::Reserve(c, quantity) => {
                    let id = ReservationId::random();
                    placed.push((id, customers[c], quantity));
                    reserve(id, customers[c], quantity, now)
                }
                Step::Repeat(i) => match pick(i) {
                    Some((id, user, quantity)) => reserve(id, user, quantity, now),
                    None => continue,
                },
                Step::Pay(i) => match pick(i) {
                    Some((id, _, _)) => pay(&sale, id, PaymentId::random(), now),
                    None => continue,
                },
                Step::Cancel(i) => match pick(i) {
                    Some((id, _, _)) => SaleCommand::CancelReservation { reservation_id: id, now },
                    None => continue,
                },
                Step::Expire(i) => match pick(i) {
                    Some((id, _, _)) => SaleCommand::ExpireReservation { reservation_id: id, now },
                    None => continue,
                },
                Step::Refund(i) => {
                    let paid = pick(i).and_then(|(id, _, _)| sale.state.reservations.get(&id)?.payment_id);
                    match paid {
                        Some(payment_id) => SaleCommand::RefundPayment { payment_id, reason: "test".into(), now },
                        None => continue,
                    }
                }
                Step::Wait(minutes) => {
                    now += Duration::minutes(minutes);
                    continue;
                }
                Step::SetLimit(limit) => {
                    prop_assert!(sale.set_limit(limit, now).is_ok());
                    continue;
                }
                Step::ToggleSales => {
                    let action = match sale.state.event.as_ref().map(|e| e.status) {
                        Some(EventStatus::OnSale) => Lifecycle::CloseSales,
                        _ => Lifecycle::OpenSales,
                    };
                    SaleCommand::ChangeLifecycle { action, now }
                }
            };
            let before = sale.state.clone();
            match sale.try_run(&command) {
                Ok(()) => {
                    if let SaleCommand::Reserve { user_id, .. } = &command {
                        let held = recount(&sale.state).get(user_id).copied().unwrap_or(0);
                        let limit = sale.state.event.as_ref().and_then(|e| e.details.max_tickets_per_customer);
                        prop_assert!(
                            limit.is_none_or(|l| held <= l),
                            "admitted to {} tickets over the limit {:?}", held, limit
                        );
                    }
                }
                Err(refused) => {
                    prop_assert_eq!(&sale.state, &before, "a refusal changed the sale");
                    if let Err(why) = check_refusal(&sale.state, &command, &refused) {
                        prop_assert!(false, "{}", why);
                    }
                }
            }
            let mut counted = sale.state.tickets_by_customer.clone();
            counted.retain(|_, n| *n > 0);
            prop_assert_eq!(counted, recount(&sale.state), "the running count drifted");
        }
    }
}
