//! The event catalogue: every fact the write side can record, with its stable `event_type` name
//! and schema `event_version`. Payload structs are what gets bincode-encoded; renaming a Rust
//! type is harmless, changing a payload's fields needs a new version and an upcaster
//! (see EVENT_VERSIONING.md). Nothing here performs I/O.

use super::ids::{EventId, PaymentId, ReservationId, UserId};
use super::money::{Currency, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a ticketed event takes place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Venue {
    pub name: String,
    pub address: String,
}

/// A priced block of seats as the organizer defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionSpec {
    pub name: String,
    pub capacity: u32,
    pub price_cents: i64,
}

/// Everything an organizer describes about an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetails {
    pub name: String,
    pub description: Option<String>,
    pub venue: Venue,
    #[serde(with = "crate::clock::rfc3339")]
    pub starts_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub ends_at: DateTime<Utc>,
    pub sections: Vec<SectionSpec>,
    /// Since `event.created` / `event.details_changed` v2: the most tickets one customer may
    /// hold (pending + confirmed) for the event; `None` = no limit (v1 events are upcast so).
    pub max_tickets_per_customer: Option<u32>,
}

// ---- Event aggregate (`event-<id>`) ----
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCreated {
    pub event_id: EventId,
    pub owner_id: UserId,
    pub currency: Currency,
    pub details: EventDetails,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetailsChanged {
    pub event_id: EventId,
    pub details: EventDetails,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPublished {
    pub event_id: EventId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSalesOpened {
    pub event_id: EventId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSalesClosed {
    pub event_id: EventId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCancelled {
    pub event_id: EventId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}

// ---- Inventory aggregate (`inventory-<event id>`) ----
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryStocked {
    pub event_id: EventId,
    pub sections: Vec<SectionSpec>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsHeld {
    pub event_id: EventId,
    pub reservation_id: ReservationId,
    pub section: String,
    pub quantity: u32,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSeatsReleased {
    pub event_id: EventId,
    pub reservation_id: ReservationId,
    pub section: String,
    pub quantity: u32,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSeatsSold {
    pub event_id: EventId,
    pub reservation_id: ReservationId,
    pub section: String,
    pub quantity: u32,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoldSeatsReturned {
    pub event_id: EventId,
    pub reservation_id: ReservationId,
    pub section: String,
    pub quantity: u32,
}

// ---- Reservation aggregate (`reservation-<id>`) ----
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationPlaced {
    pub reservation_id: ReservationId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub section: String,
    pub quantity: u32,
    /// Since v2: the section's price when the seats were held (v1 events are upcast).
    pub unit_price_cents: i64,
    pub total: Money,
    #[serde(with = "crate::clock::rfc3339")]
    pub placed_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub expires_at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationConfirmed {
    pub reservation_id: ReservationId,
    pub payment_id: PaymentId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationCancelled {
    pub reservation_id: ReservationId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationExpired {
    pub reservation_id: ReservationId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRefunded {
    pub reservation_id: ReservationId,
    pub payment_id: PaymentId,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}

// ---- Payment aggregate (`payment-<id>`) ----
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub payment_id: PaymentId,
    pub reservation_id: ReservationId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub amount: Money,
    pub charge_id: String,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub payment_id: PaymentId,
    pub reservation_id: ReservationId,
    pub event_id: EventId,
    pub user_id: UserId,
    pub amount: Money,
    pub reason: String,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: PaymentId,
    pub reservation_id: ReservationId,
    pub amount: Money,
    pub reason: String,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: DateTime<Utc>,
}

thread_local! {
    /// Where a payload is encoded before it is copied out at its exact size: written straight
    /// into a new vector, bincode made it grow four or five times per event, and the event log
    /// kept the doubling's spare bytes for good. It keeps what it grew to, up to about twice
    /// the largest payload encoded on this thread (an event's text is bounded by the request
    /// body limit or by what the service writes itself, as a refund's reason).
    static PAYLOAD_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Declares the catalogue once: the enum, `From` impls, and the stable name and version of each
/// variant, so the three can never drift apart.
macro_rules! catalogue {
    ($($variant:ident => $name:literal, $version:literal);* $(;)?) => {
        /// Any event of any aggregate.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum DomainEvent {
            $($variant($variant),)*
        }

        $(impl From<$variant> for DomainEvent {
            fn from(event: $variant) -> Self {
                DomainEvent::$variant(event)
            }
        })*

        impl DomainEvent {
            /// Stable name stored beside the payload; never derived from `Debug`.
            pub fn event_type(&self) -> &'static str {
                match self { $(DomainEvent::$variant(_) => $name,)* }
            }

            /// Schema version of the payload as written today.
            pub fn event_version(&self) -> u16 {
                match self { $(DomainEvent::$variant(_) => $version,)* }
            }

            /// Encodes the payload (not the enum tag: the name and version travel beside it),
            /// in a vector of exactly its size (`PAYLOAD_SCRATCH`).
            pub fn encode_payload(&self) -> Result<Vec<u8>, bincode::error::EncodeError> {
                let config = bincode::config::standard();
                PAYLOAD_SCRATCH.with_borrow_mut(|scratch| {
                    scratch.clear();
                    match self {
                        $(DomainEvent::$variant(e) => {
                            bincode::serde::encode_into_std_write(e, scratch, config)
                        })*
                    }?;
                    Ok(scratch.to_vec())
                })
            }

            /// Decodes a payload written at the *current* version of `event_type`.
            /// Returns `None` for a name or version this build does not know; older versions go
            /// through the upcasters in `eventstore::codec` first.
            pub fn decode_current(
                event_type: &str,
                event_version: u16,
                payload: &[u8],
            ) -> Option<Result<DomainEvent, bincode::error::DecodeError>> {
                let config = bincode::config::standard();
                match (event_type, event_version) {
                    $(($name, $version) => Some(
                        bincode::serde::decode_from_slice::<$variant, _>(payload, config)
                            .map(|(e, _)| DomainEvent::$variant(e)),
                    ),)*
                    _ => None,
                }
            }

            /// Every (name, current version) pair, for documentation and tests.
            pub const CATALOGUE: &'static [(&'static str, u16)] = &[$(($name, $version),)*];
        }
    };
}

catalogue! {
    EventCreated => "event.created", 2;
    EventDetailsChanged => "event.details_changed", 2;
    EventPublished => "event.published", 1;
    EventSalesOpened => "event.sales_opened", 1;
    EventSalesClosed => "event.sales_closed", 1;
    EventCancelled => "event.cancelled", 1;
    InventoryStocked => "inventory.stocked", 1;
    SeatsHeld => "inventory.seats_held", 1;
    HeldSeatsReleased => "inventory.held_seats_released", 1;
    HeldSeatsSold => "inventory.held_seats_sold", 1;
    SoldSeatsReturned => "inventory.sold_seats_returned", 1;
    ReservationPlaced => "reservation.placed", 2;
    ReservationConfirmed => "reservation.confirmed", 1;
    ReservationCancelled => "reservation.cancelled", 1;
    ReservationExpired => "reservation.expired", 1;
    ReservationRefunded => "reservation.refunded", 1;
    PaymentCaptured => "payment.captured", 1;
    PaymentDeclined => "payment.declined", 1;
    PaymentRefunded => "payment.refunded", 1;
}

/// The stream an event belongs to: one stream per aggregate instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    Event(EventId),
    Inventory(EventId),
    Reservation(ReservationId),
    Payment(PaymentId),
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.category(), self.uuid())
    }
}

impl StreamId {
    /// The aggregate type, used as a metric label and to choose the bus topic.
    pub fn category(&self) -> &'static str {
        match self {
            StreamId::Event(_) => "event",
            StreamId::Inventory(_) => "inventory",
            StreamId::Reservation(_) => "reservation",
            StreamId::Payment(_) => "payment",
        }
    }

    fn uuid(&self) -> uuid::Uuid {
        match self {
            StreamId::Event(id) | StreamId::Inventory(id) => id.0,
            StreamId::Reservation(id) => id.0,
            StreamId::Payment(id) => id.0,
        }
    }

    /// What `Display` writes, built at its exact size without the formatting machinery:
    /// every event appended is stamped with it.
    pub fn text(&self) -> String {
        let category = self.category();
        let mut text = String::with_capacity(category.len() + 1 + uuid::fmt::Hyphenated::LENGTH);
        text.push_str(category);
        text.push('-');
        text.push_str(
            self.uuid()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        text
    }
}

impl DomainEvent {
    /// The stream this event is appended to.
    pub fn stream(&self) -> StreamId {
        use DomainEvent as E;
        match self {
            E::EventCreated(e) => StreamId::Event(e.event_id),
            E::EventDetailsChanged(e) => StreamId::Event(e.event_id),
            E::EventPublished(e) => StreamId::Event(e.event_id),
            E::EventSalesOpened(e) => StreamId::Event(e.event_id),
            E::EventSalesClosed(e) => StreamId::Event(e.event_id),
            E::EventCancelled(e) => StreamId::Event(e.event_id),
            E::InventoryStocked(e) => StreamId::Inventory(e.event_id),
            E::SeatsHeld(e) => StreamId::Inventory(e.event_id),
            E::HeldSeatsReleased(e) => StreamId::Inventory(e.event_id),
            E::HeldSeatsSold(e) => StreamId::Inventory(e.event_id),
            E::SoldSeatsReturned(e) => StreamId::Inventory(e.event_id),
            E::ReservationPlaced(e) => StreamId::Reservation(e.reservation_id),
            E::ReservationConfirmed(e) => StreamId::Reservation(e.reservation_id),
            E::ReservationCancelled(e) => StreamId::Reservation(e.reservation_id),
            E::ReservationExpired(e) => StreamId::Reservation(e.reservation_id),
            E::ReservationRefunded(e) => StreamId::Reservation(e.reservation_id),
            E::PaymentCaptured(e) => StreamId::Payment(e.payment_id),
            E::PaymentDeclined(e) => StreamId::Payment(e.payment_id),
            E::PaymentRefunded(e) => StreamId::Payment(e.payment_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Two variants sharing a stored name would make old events decode as the wrong type.
    #[test]
    fn event_type_names_are_unique() {
        let names: HashSet<_> = DomainEvent::CATALOGUE.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), DomainEvent::CATALOGUE.len());
    }

    /// A payload encodes without its enum tag and decodes back by name and version.
    #[test]
    fn payload_round_trips_through_name_and_version() {
        let event = DomainEvent::from(EventPublished {
            event_id: EventId::random(),
            at: Utc::now(),
        });
        let bytes = event.encode_payload().unwrap();
        let back = DomainEvent::decode_current(event.event_type(), event.event_version(), &bytes);
        assert_eq!(back.unwrap().unwrap(), event);
        assert!(DomainEvent::decode_current("event.published", 99, &bytes).is_none());
    }

    /// Payloads of different sizes, one after the other on the same thread: each is what
    /// bincode writes for it alone, nothing left of the one before, and no spare capacity kept.
    #[test]
    fn each_payload_is_its_own_bytes_at_its_exact_size() {
        let long = DomainEvent::from(PaymentDeclined {
            payment_id: PaymentId::random(),
            reservation_id: ReservationId::random(),
            event_id: EventId::random(),
            user_id: UserId::random(),
            amount: Money::new(5000, Currency::parse("EUR").unwrap()),
            reason: "x".repeat(300),
            at: Utc::now(),
        });
        let short = DomainEvent::from(EventPublished {
            event_id: EventId::random(),
            at: Utc::now(),
        });
        for event in [&long, &short, &long] {
            let bytes = event.encode_payload().unwrap();
            let alone = match event {
                DomainEvent::PaymentDeclined(e) => {
                    bincode::serde::encode_to_vec(e, bincode::config::standard())
                }
                DomainEvent::EventPublished(e) => {
                    bincode::serde::encode_to_vec(e, bincode::config::standard())
                }
                _ => unreachable!(),
            };
            assert_eq!(bytes, alone.unwrap());
            assert_eq!(bytes.capacity(), bytes.len());
        }
    }

    /// `text` is `Display`, and both are the stored stream ids, for every kind of stream.
    #[test]
    fn a_stream_id_as_text_is_what_display_writes() {
        let id = uuid::Uuid::new_v4();
        for (stream, stored) in [
            (StreamId::Event(EventId(id)), format!("event-{id}")),
            (StreamId::Inventory(EventId(id)), format!("inventory-{id}")),
            (
                StreamId::Reservation(ReservationId(id)),
                format!("reservation-{id}"),
            ),
            (StreamId::Payment(PaymentId(id)), format!("payment-{id}")),
        ] {
            assert_eq!(
                (stream.text(), stream.to_string()),
                (stored.clone(), stored)
            );
        }
    }
}
