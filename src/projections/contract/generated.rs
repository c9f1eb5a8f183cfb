//! Longer histories than the fixture's, decided by the pure domain the same way: a flash sale
//! of holds and payments (the shape the projector sees under load, for the benchmark), and
//! busy sales where holds end every possible way around a restock and a cancelled event.

use super::fixture::{capture, details, reserve, section, t, Log};
use crate::domain::events::{DomainEvent, SectionSpec};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::domain::sale::{EventPatch, Lifecycle};
use crate::domain::{Currency, EventId, PaymentId, ReservationId, SaleCommand, UserId};
use crate::eventstore::RecordedEvent;
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use uuid::Uuid;

/// Every id a history mentions, so that a snapshot can ask about each of them.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub events: Vec<EventId>,
    pub reservations: Vec<ReservationId>,
    pub payments: Vec<PaymentId>,
    pub users: Vec<UserId>,
}

/// A log and the ids it mentions.
pub struct History {
    pub log: Vec<Arc<RecordedEvent>>,
    pub ids: Ids,
}

pub(super) fn user(n: u128) -> UserId {
    UserId(Uuid::from_u128(0x05e2_0000 + n))
}

pub(super) fn reservation(n: usize) -> ReservationId {
    ReservationId(Uuid::from_u128(0x2e5_0000_0000 + n as u128))
}

pub(super) fn payment(n: usize) -> PaymentId {
    PaymentId(Uuid::from_u128(0xba1_0000_0000 + n as u128))
}

/// Creates, publishes and opens a USD sale owned by `owner`.
fn open_sale(
    log: &mut Log,
    sale: EventId,
    owner: UserId,
    at: DateTime<Utc>,
    sections: Vec<SectionSpec>,
) {
    let details = details("Flash", at + Duration::days(30), sections);
    let commands = [
        SaleCommand::CreateEvent {
            owner_id: owner,
            currency: Currency::USD,
            details,
            now: at,
        },
        SaleCommand::ChangeLifecycle {
            action: Lifecycle::Publish,
            now: at,
        },
        SaleCommand::ChangeLifecycle {
            action: Lifecycle::OpenSales,
            now: at,
        },
    ];
    for command in commands {
        if let Err(e) = log.attempt(sale, at, command) {
            panic!("opening a generated sale: {e}");
        }
    }
}

/// A flash sale: `holds` reservations of one or two seats in one event, each paid a little
/// later, so the log is `seats_held + placed` pairs interleaved with
/// `captured + confirmed + held_seats_sold` triples (5 events per reservation).
pub fn flash_sale(holds: usize) -> History {
    let sale = EventId(Uuid::from_u128(0xf1a5));
    let mut log = Log::default();
    let capacity = u32::try_from(holds).unwrap_or(u32::MAX).saturating_mul(2);
    let names = ["floor", "lower", "upper", "balcony"];
    let sections = names.iter().map(|n| section(n, capacity, 4500)).collect();
    open_sale(&mut log, sale, user(0), t(0), sections);
    let users: Vec<UserId> = (1..=1000).map(user).collect();
    const LAG: usize = 64;
    let pay = |log: &mut Log, n: usize, at: DateTime<Utc>| {
        let quantity = 1 + (n % 2) as i64;
        if let Err(e) = log.attempt(
            sale,
            at,
            capture(payment(n), reservation(n), 4500 * quantity)(at),
        ) {
            panic!("paying generated reservation {n}: {e}");
        }
    };
    for n in 0..holds {
        let at = t(1) + Duration::seconds(n as i64);
        let hold = reserve(
            reservation(n),
            users[n % users.len()],
            names[n % names.len()],
            1 + (n % 2) as u32,
        );
        if let Err(e) = log.attempt(sale, at, hold(at)) {
            panic!("holding generated reservation {n}: {e}");
        }
        if n >= LAG {
            pay(&mut log, n - LAG, at);
        }
    }
    let end = t(1) + Duration::seconds(holds as i64);
    for n in holds.saturating_sub(LAG)..holds {
        pay(&mut log, n, end);
    }
    History {
        log: log.events,
        ids: Ids {
            events: vec![sale],
            reservations: (0..holds).map(reservation).collect(),
            payments: (0..holds).map(payment).collect(),
            users: [user(0)].into_iter().chain(users).collect(),
        },
    }
}

/// Two sales over `steps` random commands (seeded, so the log is the same every run): holds
/// that are paid, paid late, declined, cancelled before and after payment, expired, refunded;
/// the first sale is renamed and restocked a third of the way in, the second closed half-way
/// and cancelled (releasing and refunding everything at once) at three quarters.
pub fn busy_sales(steps: usize, seed: u64) -> History {
    let (a, b) = (
        EventId(Uuid::from_u128(0xb05a)),
        EventId(Uuid::from_u128(0xb05b)),
    );
    let users: Vec<UserId> = (1..=5).map(user).collect();
    let mut log = Log::default();
    open_sale(
        &mut log,
        a,
        users[0],
        t(0),
        vec![section("floor", 40, 5000), section("balcony", 30, 2500)],
    );
    open_sale(&mut log, b, users[1], t(0), vec![section("pit", 25, 8000)]);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut holds, mut payments) = (0, 0);
    for step in 0..steps {
        let now = t(1 + step as i64);
        if step == steps / 3 {
            let patch = EventPatch {
                name: Some("Flash: extended".into()),
                sections: Some(vec![
                    section("box", 6, 12000),
                    section("floor", 60, 5000),
                    section("balcony", 30, 2500),
                ]),
                ..EventPatch::default()
            };
            let command = SaleCommand::UpdateEvent {
                expected_version: None,
                patch,
                now,
            };
            log.attempt(a, now, command).ok();
            continue;
        }
        if step == steps / 2 {
            let command = SaleCommand::ChangeLifecycle {
                action: Lifecycle::CloseSales,
                now,
            };
            log.attempt(b, now, command).ok();
            continue;
        }
        if step == steps * 3 / 4 {
            log.attempt(b, now, SaleCommand::CancelEvent { now }).ok();
            continue;
        }
        let sale = if rng.gen_bool(0.7) { a } else { b };
        let Some(state) = log.sales.get(&sale) else {
            continue;
        };
        let mut known: Vec<_> = state.reservations.values().cloned().collect();
        known.sort_by_key(|r| r.id);
        let pick =
            |rng: &mut StdRng, ok: &dyn Fn(&crate::domain::reservation::Reservation) -> bool| {
                let fits: Vec<_> = known.iter().filter(|r| ok(r)).collect();
                (!fits.is_empty()).then(|| fits[rng.gen_range(0..fits.len())].clone())
            };
        let pending =
            |r: &crate::domain::reservation::Reservation| r.status == ReservationStatus::Pending;
        let command = match rng.gen_range(0..100) {
            0..=39 => {
                let names: Vec<String> = state
                    .inventory
                    .sections
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                if names.is_empty() {
                    continue;
                }
                let name = &names[rng.gen_range(0..names.len())];
                holds += 1;
                let who = users[rng.gen_range(0..users.len())];
                reserve(reservation(holds), who, name, rng.gen_range(1..=3))(now)
            }
            40..=64 => {
                let Some(r) = pick(&mut rng, &|r| pending(r) && now < r.expires_at) else {
                    continue;
                };
                payments += 1;
                let cents = if rng.gen_bool(0.1) {
                    r.total.amount_cents + 1
                } else {
                    r.total.amount_cents
                };
                capture(payment(payments), r.id, cents)(now)
            }
            65..=67 => {
                let Some(r) = pick(&mut rng, &|_| true) else {
                    continue;
                };
                payments += 1;
                SaleCommand::RecordDecline {
                    payment_id: payment(payments),
                    reservation_id: r.id,
                    amount: r.total,
                    reason: "insufficient funds".into(),
                    now,
                }
            }
            68..=75 => {
                let Some(r) = pick(&mut rng, &|r| {
                    matches!(
                        r.status,
                        ReservationStatus::Pending | ReservationStatus::Confirmed
                    )
                }) else {
                    continue;
                };
                SaleCommand::CancelReservation {
                    reservation_id: r.id,
                    now,
                }
            }
            76..=90 => {
                let Some(r) = pick(&mut rng, &|r| pending(r) && r.expires_at <= now) else {
                    continue;
                };
                SaleCommand::ExpireReservation {
                    reservation_id: r.id,
                    now,
                }
            }
            91..=95 => {
                let mut paid: Vec<_> = state
                    .payments
                    .values()
                    .filter(|p| p.status == PaymentStatus::Captured)
                    .map(|p| p.id)
                    .collect();
                paid.sort();
                if paid.is_empty() {
                    continue;
                }
                let payment_id = paid[rng.gen_range(0..paid.len())];
                SaleCommand::RefundPayment {
                    payment_id,
                    reason: "changed their mind".into(),
                    now,
                }
            }
            _ => {
                // Paying a hold that already ended: captured and refunded in one commit.
                let Some(r) = pick(&mut rng, &|r| !pending(r)) else {
                    continue;
                };
                payments += 1;
                capture(payment(payments), r.id, r.total.amount_cents)(now)
            }
        };
        // Refusals (sold out, sales closed) are part of a busy sale; they record nothing.
        log.attempt(sale, now, command).ok();
    }
    History {
        log: log.events,
        ids: Ids {
            events: vec![a, b],
            reservations: (1..=holds).map(reservation).collect(),
            payments: (1..=payments).map(payment).collect(),
            users,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The busy sales put every kind of event in the log, several times, so the batching
    /// clause exercises every way the read models change.
    #[test]
    fn busy_sales_record_every_event_type() {
        let history = busy_sales(400, 7);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for event in &history.log {
            *counts.entry(event.event_type.as_str()).or_default() += 1;
        }
        println!("{} events: {counts:?}", history.log.len());
        for (name, _) in DomainEvent::CATALOGUE {
            assert!(counts.contains_key(name), "no {name} in {counts:?}");
        }
    }
}
