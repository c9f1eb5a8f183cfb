//! The contract's fixture: fixed ids, a history of two sales decided by the pure domain
//! (`SaleState`) and encoded as the log delivers it, and the views the API must show after it.
//! Ids are fixed so that orders and ties are known in advance.

use crate::domain::concert::EventStatus;
use crate::domain::events::{EventDetails, SectionSpec, Venue};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::domain::sale::{EventPatch, Lifecycle};
use crate::domain::{
    Currency, EventId, Money, PaymentId, ReservationId, SaleCommand, SaleState, UserId,
};
use crate::eventstore::{codec, Metadata, RecordedEvent};
use crate::projections::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

pub const ALICE: UserId = UserId(Uuid::from_u128(0xa11ce));
pub const BOB: UserId = UserId(Uuid::from_u128(0xb0b));
pub const CAROL: UserId = UserId(Uuid::from_u128(0xca201));
pub const DAVE: UserId = UserId(Uuid::from_u128(0xda7e));
/// Alice's draft. It starts before the show but has the larger id: lists order by start.
pub const GALA: EventId = EventId(Uuid::from_u128(0xe2));
/// Bob's event, on sale with two sections.
pub const SHOW: EventId = EventId(Uuid::from_u128(0xe1));
pub const fn rid(n: u128) -> ReservationId {
    ReservationId(Uuid::from_u128(0x5e00 + n))
}
pub const fn pid(n: u128) -> PaymentId {
    PaymentId(Uuid::from_u128(0xba00 + n))
}
pub const R1: ReservationId = rid(1);
pub const R2: ReservationId = rid(2);
/// R3 and R4 are placed at the same instant; R4 is placed after R3 but has the smaller id.
pub const R3: ReservationId = rid(4);
pub const R4: ReservationId = rid(3);
pub const R5: ReservationId = rid(5);
pub const R6: ReservationId = rid(6);
pub const RESERVATIONS: [ReservationId; 6] = [R1, R2, R3, R4, R5, R6];
pub const DECLINED: PaymentId = pid(1);
pub const P2: PaymentId = pid(2);
pub const P4: PaymentId = pid(4);
pub const P5: PaymentId = pid(5);
pub const P6: PaymentId = pid(6);
pub const PAYMENTS: [PaymentId; 5] = [DECLINED, P2, P4, P5, P6];
pub const USERS: [UserId; 4] = [ALICE, BOB, CAROL, DAVE];

/// Minutes after noon, 1 January 2030; whole seconds, so every store keeps them exactly.
pub fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minutes)
}

pub(super) fn section(name: &str, capacity: u32, price_cents: i64) -> SectionSpec {
    SectionSpec {
        name: name.into(),
        capacity,
        price_cents,
    }
}

pub(super) fn details(
    name: &str,
    starts_at: DateTime<Utc>,
    sections: Vec<SectionSpec>,
) -> EventDetails {
    EventDetails {
        name: name.into(),
        description: None,
        venue: Venue {
            name: "Hall".into(),
            address: "1 Main St".into(),
        },
        starts_at,
        ends_at: starts_at + Duration::hours(2),
        sections,
        max_tickets_per_customer: None,
    }
}

/// The log being written: sale states as the writers hold them, and the recorded events.
#[derive(Default)]
pub(super) struct Log {
    pub(super) sales: HashMap<EventId, SaleState>,
    pub(super) events: Vec<Arc<RecordedEvent>>,
}

impl Log {
    /// Decides `command` at `at` and records its events, committed one second later.
    fn run(
        &mut self,
        sale: EventId,
        at: DateTime<Utc>,
        command: impl FnOnce(DateTime<Utc>) -> SaleCommand,
    ) {
        if let Err(e) = self.attempt(sale, at, command(at)) {
            panic!("the contract's history must be valid: {e}");
        }
    }

    /// Decides `command` for `sale` and records its events, committed one second after `at`;
    /// a refused command records nothing.
    pub(super) fn attempt(
        &mut self,
        sale: EventId,
        at: DateTime<Utc>,
        command: SaleCommand,
    ) -> Result<(), crate::domain::sale::SaleError> {
        let state = self.sales.entry(sale).or_default();
        let decision = state.decide(sale, &command)?;
        let mut encoded = Vec::new();
        for event in &decision.events {
            let version = state.version(&event.stream()) + 1;
            state.apply(event);
            encoded.push(codec::encode(event, version, &Metadata::default()).expect("encodes"));
        }
        for new in encoded {
            self.push(RecordedEvent {
                position: 0,
                sale_id: sale,
                stream_id: new.stream_id,
                version: new.version,
                event_type: new.event_type.to_owned(),
                event_version: new.event_version,
                payload: new.payload,
                metadata: new.metadata,
                recorded_at: at + Duration::seconds(1),
            });
        }
        Ok(())
    }

    pub(super) fn push(&mut self, mut event: RecordedEvent) {
        event.position = self.events.len() as u64 + 1;
        self.events.push(Arc::new(event));
    }
}

pub(super) fn reserve(
    id: ReservationId,
    user: UserId,
    section: &str,
    quantity: u32,
) -> impl FnOnce(DateTime<Utc>) -> SaleCommand {
    let section = section.to_owned();
    move |now| SaleCommand::Reserve {
        reservation_id: id,
        user_id: user,
        section,
        quantity,
        hold_for: Duration::minutes(15),
        now,
    }
}

pub(super) fn capture(
    payment: PaymentId,
    reservation: ReservationId,
    cents: i64,
) -> impl FnOnce(DateTime<Utc>) -> SaleCommand {
    move |now| SaleCommand::RecordCapture {
        payment_id: payment,
        reservation_id: reservation,
        amount: Money::new(cents, Currency::USD),
        charge_id: format!("ch_{payment}"),
        now,
    }
}

/// Two sales: Alice's draft gala, and Bob's show, whose reservations end every possible way.
pub fn history() -> Vec<Arc<RecordedEvent>> {
    let mut log = Log::default();
    let eur = Currency::parse("EUR").expect("EUR is a currency");
    let gala = details("Gala", t(60 * 24), vec![section("stalls", 30, 4000)]);
    log.run(GALA, t(0), |now| SaleCommand::CreateEvent {
        owner_id: ALICE,
        currency: eur,
        details: gala,
        now,
    });
    let show = EventDetails {
        max_tickets_per_customer: Some(10),
        ..details(
            "Concert",
            t(60 * 48),
            vec![section("floor", 100, 5000), section("balcony", 50, 2500)],
        )
    };
    log.run(SHOW, t(0), |now| SaleCommand::CreateEvent {
        owner_id: BOB,
        currency: Currency::USD,
        details: show,
        now,
    });
    log.run(SHOW, t(1), |now| SaleCommand::ChangeLifecycle {
        action: Lifecycle::Publish,
        now,
    });
    log.run(SHOW, t(2), |now| SaleCommand::ChangeLifecycle {
        action: Lifecycle::OpenSales,
        now,
    });
    log.run(SHOW, t(10), reserve(R1, CAROL, "floor", 2));
    log.run(SHOW, t(11), reserve(R2, CAROL, "balcony", 3));
    log.run(SHOW, t(12), |now| SaleCommand::RecordDecline {
        payment_id: DECLINED,
        reservation_id: R2,
        amount: Money::new(7500, Currency::USD),
        reason: "card declined".into(),
        now,
    });
    // Events this build cannot decode: skipped, yet the checkpoint moves past them.
    for (event_type, payload) in [
        ("event.renamed_in_2031", vec![1]),
        ("event.published", vec![]),
    ] {
        log.push(RecordedEvent {
            position: 0,
            sale_id: SHOW,
            stream_id: format!("mystery-{event_type}"),
            version: 1,
            event_type: event_type.into(),
            event_version: 1,
            payload,
            metadata: Metadata::default(),
            recorded_at: t(12),
        });
    }
    log.run(SHOW, t(14), reserve(R3, DAVE, "floor", 1));
    log.run(SHOW, t(14), reserve(R4, DAVE, "balcony", 2));
    log.run(SHOW, t(15), |now| SaleCommand::CancelReservation {
        reservation_id: R3,
        now,
    });
    log.run(SHOW, t(16), reserve(R5, CAROL, "floor", 4));
    log.run(SHOW, t(17), capture(P5, R5, 20000));
    // Placed before R5 but paid after it: history orders by purchase, sales by first sale.
    log.run(SHOW, t(18), capture(P2, R2, 7500));
    let patch = EventPatch {
        name: Some("Concert: late show".into()),
        description: Some(Some("Doors at seven".into())),
        sections: Some(vec![
            section("balcony", 60, 2500),
            section("floor", 100, 5000),
            section("box", 10, 15000),
        ]),
        // Below the 9 tickets Carol holds by now: she keeps them.
        max_tickets_per_customer: Some(Some(4)),
        ..EventPatch::default()
    };
    log.run(SHOW, t(20), |now| SaleCommand::UpdateEvent {
        expected_version: Some(3),
        patch,
        now,
    });
    log.run(SHOW, t(30), |now| SaleCommand::ExpireReservation {
        reservation_id: R4,
        now,
    });
    // Paid after the hold expired: captured and refunded in one commit; the seats stay free.
    log.run(SHOW, t(31), capture(P4, R4, 5000));
    log.run(SHOW, t(32), |now| SaleCommand::RefundPayment {
        payment_id: P5,
        reason: "customer request".into(),
        now,
    });
    log.run(SHOW, t(33), reserve(R6, DAVE, "floor", 1));
    log.run(SHOW, t(34), capture(P6, R6, 5000));
    log.events
}

// ---- what the API must show after the whole history ----

fn section_view(name: &str, capacity: u32, price_cents: i64, held: u32, sold: u32) -> SectionView {
    SectionView {
        name: name.into(),
        capacity,
        price_cents,
        available: capacity - held - sold,
        held,
        sold,
    }
}

pub fn gala_view() -> EventView {
    EventView {
        id: GALA.0,
        owner_id: ALICE.0,
        name: "Gala".into(),
        description: None,
        venue: VenueView {
            name: "Hall".into(),
            address: "1 Main St".into(),
        },
        starts_at: t(60 * 24),
        ends_at: t(60 * 26),
        currency: "EUR".into(),
        status: EventStatus::Draft,
        sections: vec![section_view("stalls", 30, 4000, 0, 0)],
        max_tickets_per_customer: None,
        version: 1,
        created_at: t(0),
        updated_at: t(0),
    }
}

/// Renamed and restocked (sections reordered, one added) after sales began.
pub fn show_view() -> EventView {
    EventView {
        id: SHOW.0,
        owner_id: BOB.0,
        name: "Concert: late show".into(),
        description: Some("Doors at seven".into()),
        venue: VenueView {
            name: "Hall".into(),
            address: "1 Main St".into(),
        },
        starts_at: t(60 * 48),
        ends_at: t(60 * 50),
        currency: "USD".into(),
        status: EventStatus::OnSale,
        sections: vec![
            section_view("balcony", 60, 2500, 0, 3),
            section_view("floor", 100, 5000, 2, 1),
            section_view("box", 10, 15000, 0, 0),
        ],
        max_tickets_per_customer: Some(4),
        version: 4,
        created_at: t(0),
        // The commit time of the last change of the event stream, not the command's time.
        updated_at: t(20) + Duration::seconds(1),
    }
}

pub fn reservation_view(id: ReservationId) -> ReservationView {
    let (user, section, quantity, status, total, placed, payment, updated) = match id {
        R1 => (
            CAROL,
            "floor",
            2,
            ReservationStatus::Pending,
            10000,
            10,
            None,
            10,
        ),
        R2 => (
            CAROL,
            "balcony",
            3,
            ReservationStatus::Confirmed,
            7500,
            11,
            Some(P2),
            18,
        ),
        R3 => (
            DAVE,
            "floor",
            1,
            ReservationStatus::Cancelled,
            5000,
            14,
            None,
            15,
        ),
        R4 => (
            DAVE,
            "balcony",
            2,
            ReservationStatus::Expired,
            5000,
            14,
            None,
            30,
        ),
        R5 => (
            CAROL,
            "floor",
            4,
            ReservationStatus::Refunded,
            20000,
            16,
            Some(P5),
            32,
        ),
        _ => (
            DAVE,
            "floor",
            1,
            ReservationStatus::Confirmed,
            5000,
            33,
            Some(P6),
            34,
        ),
    };
    ReservationView {
        reservation_id: id.0,
        event_id: SHOW.0,
        user_id: user.0,
        section: section.into(),
        quantity,
        status,
        total_cents: total,
        currency: "USD".into(),
        expires_at: t(placed + 15),
        payment_id: payment.map(|p: PaymentId| p.0),
        created_at: t(placed),
        updated_at: t(updated),
    }
}

pub fn payment_view(id: PaymentId) -> PaymentView {
    let late = "automatic refund: the reservation is expired, not pending";
    let (reservation, user, status, amount, reason, created, updated) = match id {
        DECLINED => (
            R2,
            CAROL,
            PaymentStatus::Failed,
            7500,
            Some("card declined"),
            12,
            12,
        ),
        P2 => (R2, CAROL, PaymentStatus::Captured, 7500, None, 18, 18),
        P4 => (R4, DAVE, PaymentStatus::Refunded, 5000, Some(late), 31, 31),
        P5 => (
            R5,
            CAROL,
            PaymentStatus::Refunded,
            20000,
            Some("customer request"),
            17,
            32,
        ),
        _ => (R6, DAVE, PaymentStatus::Captured, 5000, None, 34, 34),
    };
    PaymentView {
        payment_id: id.0,
        reservation_id: reservation.0,
        event_id: SHOW.0,
        user_id: user.0,
        status,
        amount_cents: amount,
        currency: "USD".into(),
        reason: reason.map(str::to_owned),
        created_at: t(created),
        updated_at: t(updated),
    }
}

pub fn history_entry(id: ReservationId, purchased: i64) -> HistoryEntry {
    let r = reservation_view(id);
    HistoryEntry {
        reservation_id: r.reservation_id,
        event_id: r.event_id,
        event_name: "Concert: late show".into(),
        section: r.section,
        quantity: r.quantity,
        total_cents: r.total_cents,
        currency: r.currency,
        status: r.status,
        payment_id: r.payment_id,
        purchased_at: t(purchased),
    }
}
