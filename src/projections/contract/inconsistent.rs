//! A log no domain decides, to pin down what the reference does with it: counters that would
//! go below zero, fields set twice, events for rows that do not exist. Applied one event at a
//! time, `memory.rs` saturates counters at zero at every step and lets the newest event win;
//! an adapter that nets a batch's deltas first, or keeps the first of two changes, differs.

use super::fixture::{details, section, t, Log};
use super::generated::{payment, reservation, user, History, Ids};
use crate::domain::events::{self as ev, DomainEvent};
use crate::domain::{Currency, EventId, Money, PaymentId, ReservationId};
use crate::eventstore::{codec, Metadata, RecordedEvent};
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

/// The sale of the inconsistent log.
pub const ODD: EventId = EventId(Uuid::from_u128(0x0dd));
/// An event that was never created.
pub const GHOST: EventId = EventId(Uuid::from_u128(0x404));

fn seats(kind: &str, event_id: EventId, section: &str, quantity: u32) -> DomainEvent {
    let (reservation_id, section) = (reservation(1), section.to_owned());
    match kind {
        "held" => ev::SeatsHeld {
            event_id,
            reservation_id,
            section,
            quantity,
        }
        .into(),
        "released" => ev::HeldSeatsReleased {
            event_id,
            reservation_id,
            section,
            quantity,
        }
        .into(),
        "sold" => ev::HeldSeatsSold {
            event_id,
            reservation_id,
            section,
            quantity,
        }
        .into(),
        _ => ev::SoldSeatsReturned {
            event_id,
            reservation_id,
            section,
            quantity,
        }
        .into(),
    }
}

fn placed(id: ReservationId, event_id: EventId, section: &str, quantity: u32) -> DomainEvent {
    ev::ReservationPlaced {
        reservation_id: id,
        event_id,
        user_id: user(9),
        section: section.into(),
        quantity,
        unit_price_cents: 500,
        total: Money::new(500 * i64::from(quantity), Currency::USD),
        placed_at: t(0),
        expires_at: t(15),
    }
    .into()
}

fn confirmed(id: ReservationId, payment_id: PaymentId, at: DateTime<Utc>) -> DomainEvent {
    ev::ReservationConfirmed {
        reservation_id: id,
        payment_id,
        at,
    }
    .into()
}

fn refunded(payment_id: PaymentId, reason: &str, at: DateTime<Utc>) -> DomainEvent {
    let amount = Money::new(1000, Currency::USD);
    let (reservation_id, reason) = (reservation(1), reason.to_owned());
    ev::PaymentRefunded {
        payment_id,
        reservation_id,
        amount,
        reason,
        at,
    }
    .into()
}

/// In `ODD`, section `floor`: 2 seats released before any are held, 3 held, 1 sold returned
/// before any are sold, 1 sold: 2 held and 1 sold one by one, 0 and 0 netted. Reservation 1
/// (2 floor seats, 1000 cents) is refunded, then confirmed: 2 tickets for 0 cents. Reservation
/// 3 (1 `gallery` seat) is confirmed twice: 2 tickets, 1000 cents, the second payment and
/// purchase time. Payment 1 is refunded twice; the second reason stays. Reservation 4 is sold
/// for `GHOST`, which has no sales to count it in; reservation 2 and payment 9 do not exist.
pub fn inconsistent() -> History {
    let (r1, r3, r4) = (reservation(1), reservation(3), reservation(4));
    let (p1, p3) = (payment(1), payment(3));
    let created = ev::EventCreated {
        event_id: ODD,
        owner_id: user(9),
        currency: Currency::USD,
        details: details("Odd", t(0), vec![section("floor", 10, 500)]),
        at: t(0),
    };
    let stocked = ev::InventoryStocked {
        event_id: ODD,
        sections: vec![section("floor", 10, 500)],
    };
    let captured = ev::PaymentCaptured {
        payment_id: p1,
        reservation_id: r1,
        event_id: ODD,
        user_id: user(9),
        amount: Money::new(1000, Currency::USD),
        charge_id: "ch_odd".into(),
        at: t(1),
    };
    let events: Vec<(DomainEvent, u64)> = vec![
        (created.into(), 1),
        (stocked.into(), 1),
        (seats("released", ODD, "floor", 2), 2),
        (seats("held", ODD, "floor", 3), 3),
        (seats("returned", ODD, "floor", 1), 4),
        (seats("sold", ODD, "floor", 1), 5),
        (seats("held", ODD, "nowhere", 4), 6),
        (seats("held", GHOST, "floor", 4), 1),
        (placed(r1, ODD, "floor", 2), 1),
        (
            ev::ReservationRefunded {
                reservation_id: r1,
                payment_id: p1,
                at: t(1),
            }
            .into(),
            2,
        ),
        (confirmed(r1, p1, t(2)), 3),
        (confirmed(reservation(2), p1, t(2)), 2),
        (placed(r3, ODD, "gallery", 1), 1),
        (confirmed(r3, p1, t(3)), 2),
        (confirmed(r3, p3, t(4)), 3),
        (placed(r4, GHOST, "floor", 1), 1),
        (confirmed(r4, p1, t(5)), 2),
        (captured.into(), 1),
        (refunded(p1, "first", t(6)), 2),
        (refunded(p1, "second", t(7)), 3),
        (refunded(payment(9), "unknown", t(8)), 2),
    ];
    let mut log = Log::default();
    for (event, version) in events {
        let new = codec::encode(&event, version, &Metadata::default()).expect("encodes");
        log.push(RecordedEvent {
            position: 0,
            sale_id: ODD,
            stream_id: new.stream_id,
            version,
            event_type: new.event_type.to_owned(),
            event_version: new.event_version,
            payload: new.payload,
            metadata: new.metadata,
            recorded_at: t(0) + Duration::seconds(1),
        });
    }
    History {
        log: log.events,
        ids: Ids {
            events: vec![ODD, GHOST],
            reservations: (1..=4).map(reservation).collect(),
            payments: vec![p1, p3, payment(9)],
            users: vec![user(9)],
        },
    }
}
