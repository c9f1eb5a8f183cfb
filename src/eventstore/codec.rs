//! Encoding domain events for the store and decoding them back through upcasters.
//! An unknown (type, version) is a typed error that consumers park in the DLQ; never a panic.

use super::{Metadata, NewEvent, RecordedEvent};
use crate::domain::DomainEvent;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event {event_type} version {event_version}")]
    Unknown {
        event_type: String,
        event_version: u16,
    },
    #[error("malformed payload for {event_type} v{event_version}: {reason}")]
    Malformed {
        event_type: String,
        event_version: u16,
        reason: String,
    },
    #[error("cannot encode {event_type}: {reason}")]
    Encode {
        event_type: &'static str,
        reason: String,
    },
}

/// Turns a domain event into a row to append at `version` of its stream.
pub fn encode(
    event: &DomainEvent,
    version: u64,
    metadata: &Metadata,
) -> Result<NewEvent, CodecError> {
    let payload = event.encode_payload().map_err(|e| CodecError::Encode {
        event_type: event.event_type(),
        reason: e.to_string(),
    })?;
    Ok(NewEvent {
        stream_id: event.stream().text(),
        version,
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload,
        metadata: Metadata {
            // Kept on the event that opens a stream, the one a retry reads
            // (`Metadata::request_fingerprint`), not repeated on the others of its command.
            request_fingerprint: match version {
                1 => metadata.request_fingerprint.clone(),
                _ => None,
            },
            correlation_id: metadata.correlation_id.clone(),
            causation_id: metadata.causation_id.clone(),
            user_id: metadata.user_id,
            traceparent: metadata.traceparent.clone(),
        },
    })
}

/// Decodes a stored event, upcasting older payload versions to the current one.
pub fn decode(event: &RecordedEvent) -> Result<DomainEvent, CodecError> {
    decode_parts(&event.event_type, event.event_version, &event.payload)
}

pub fn decode_parts(
    event_type: &str,
    event_version: u16,
    payload: &[u8],
) -> Result<DomainEvent, CodecError> {
    let decoded = DomainEvent::decode_current(event_type, event_version, payload)
        .or_else(|| upcasters::upcast(event_type, event_version, payload));
    match decoded {
        Some(Ok(event)) => Ok(event),
        Some(Err(e)) => Err(CodecError::Malformed {
            event_type: event_type.to_owned(),
            event_version,
            reason: e.to_string(),
        }),
        None => Err(CodecError::Unknown {
            event_type: event_type.to_owned(),
            event_version,
        }),
    }
}

/// Upcasters: each turns a payload of an old (type, version) into today's event. Adding a
/// version means keeping the old shape here, frozen, next to a conversion; never editing it.
mod upcasters {
    use crate::domain::events::{
        EventCreated, EventDetails, EventDetailsChanged, ReservationPlaced, SectionSpec, Venue,
    };
    use crate::domain::{Currency, DomainEvent, EventId, Money, ReservationId, UserId};
    use bincode::error::DecodeError;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    type Upcast = Option<Result<DomainEvent, DecodeError>>;

    pub fn upcast(event_type: &str, event_version: u16, payload: &[u8]) -> Upcast {
        match (event_type, event_version) {
            ("reservation.placed", 1) => {
                Some(decode::<ReservationPlacedV1>(payload).map(|v1| v1.upcast().into()))
            }
            ("event.created", 1) => {
                Some(decode::<EventCreatedV1>(payload).map(|v1| v1.upcast().into()))
            }
            ("event.details_changed", 1) => {
                Some(decode::<EventDetailsChangedV1>(payload).map(|v1| v1.upcast().into()))
            }
            _ => None,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
        bincode::serde::decode_from_slice(payload, bincode::config::standard()).map(|(v, _)| v)
    }

    /// `reservation.placed` v1, frozen: it had no unit price.
    #[derive(Deserialize)]
    struct ReservationPlacedV1 {
        reservation_id: ReservationId,
        event_id: EventId,
        user_id: UserId,
        section: String,
        quantity: u32,
        total: Money,
        placed_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    }

    impl ReservationPlacedV1 {
        /// v1 -> v2: every seat of a reservation had the same price, so it is total / quantity.
        fn upcast(self) -> ReservationPlaced {
            let unit_price_cents = self
                .total
                .amount_cents
                .checked_div(i64::from(self.quantity))
                .unwrap_or(0);
            ReservationPlaced {
                reservation_id: self.reservation_id,
                event_id: self.event_id,
                user_id: self.user_id,
                section: self.section,
                quantity: self.quantity,
                unit_price_cents,
                total: self.total,
                placed_at: self.placed_at,
                expires_at: self.expires_at,
            }
        }
    }

    /// The event details of `event.created` / `event.details_changed` v1, frozen: they had no
    /// per-customer limit.
    #[derive(Deserialize)]
    struct EventDetailsV1 {
        name: String,
        description: Option<String>,
        venue: Venue,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        sections: Vec<SectionSpec>,
    }

    impl EventDetailsV1 {
        /// v1 -> v2: events written before limits existed have none.
        fn upcast(self) -> EventDetails {
            EventDetails {
                name: self.name,
                description: self.description,
                venue: self.venue,
                starts_at: self.starts_at,
                ends_at: self.ends_at,
                sections: self.sections,
                max_tickets_per_customer: None,
            }
        }
    }

    /// `event.created` v1, frozen.
    #[derive(Deserialize)]
    struct EventCreatedV1 {
        event_id: EventId,
        owner_id: UserId,
        currency: Currency,
        details: EventDetailsV1,
        at: DateTime<Utc>,
    }

    impl EventCreatedV1 {
        fn upcast(self) -> EventCreated {
            EventCreated {
                event_id: self.event_id,
                owner_id: self.owner_id,
                currency: self.currency,
                details: self.details.upcast(),
                at: self.at,
            }
        }
    }

    /// `event.details_changed` v1, frozen.
    #[derive(Deserialize)]
    struct EventDetailsChangedV1 {
        event_id: EventId,
        details: EventDetailsV1,
        at: DateTime<Utc>,
    }

    impl EventDetailsChangedV1 {
        fn upcast(self) -> EventDetailsChanged {
            EventDetailsChanged {
                event_id: self.event_id,
                details: self.details.upcast(),
                at: self.at,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct FixtureRow {
        event_type: String,
        event_version: u16,
        payload_hex: String,
    }

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Every event ever written at v1 (frozen in tests/fixtures/events-v1.json) still decodes:
    /// unchanged types re-encode to the same bytes, and reservation.placed v1 is upcast to v2.
    #[test]
    fn v1_fixture_events_still_decode_after_schema_changes() {
        let rows: Vec<FixtureRow> =
            serde_json::from_str(include_str!("../../tests/fixtures/events-v1.json")).unwrap();
        assert_eq!(
            rows.len(),
            DomainEvent::CATALOGUE.len(),
            "one fixture row per event type"
        );
        for row in rows {
            let payload = bytes(&row.payload_hex);
            let event = decode_parts(&row.event_type, row.event_version, &payload)
                .unwrap_or_else(|e| panic!("{} v{}: {e}", row.event_type, row.event_version));
            assert_eq!(event.event_type(), row.event_type);
            if event.event_version() == row.event_version {
                assert_eq!(
                    event.encode_payload().unwrap(),
                    payload,
                    "{} changed shape without a new version",
                    row.event_type
                );
            }
            let limit = match &event {
                DomainEvent::EventCreated(e) => Some(e.details.max_tickets_per_customer),
                DomainEvent::EventDetailsChanged(e) => Some(e.details.max_tickets_per_customer),
                _ => None,
            };
            assert!(matches!(limit, None | Some(None)), "v1 events had no limit");
            if let DomainEvent::ReservationPlaced(placed) = &event {
                assert_eq!(event.event_version(), 2);
                assert_eq!(
                    (
                        placed.unit_price_cents,
                        placed.quantity,
                        placed.total.amount_cents
                    ),
                    (2500, 2, 5000)
                );
            }
        }
    }

    /// The payloads written at v2 (tests/fixtures/events-v2.json: `event.created` with a limit
    /// of 4, `event.details_changed` without one) decode at today's version and re-encode to
    /// the same bytes, so a change of shape without a new version fails here too.
    #[test]
    fn v2_fixture_events_decode_with_their_customer_limit() {
        let rows: Vec<FixtureRow> =
            serde_json::from_str(include_str!("../../tests/fixtures/events-v2.json")).unwrap();
        let mut limits = Vec::new();
        for row in rows {
            let payload = bytes(&row.payload_hex);
            let event = decode_parts(&row.event_type, row.event_version, &payload)
                .unwrap_or_else(|e| panic!("{} v{}: {e}", row.event_type, row.event_version));
            assert_eq!(event.event_version(), row.event_version);
            assert_eq!(
                event.encode_payload().unwrap(),
                payload,
                "{}",
                row.event_type
            );
            limits.push(match event {
                DomainEvent::EventCreated(e) => e.details.max_tickets_per_customer,
                DomainEvent::EventDetailsChanged(e) => e.details.max_tickets_per_customer,
                other => panic!("unexpected {}", other.event_type()),
            });
        }
        assert_eq!(limits, [Some(4), None]);
    }

    /// A request's fingerprint goes with the event that opens a stream, and only with it.
    #[test]
    fn the_request_fingerprint_is_kept_on_a_stream_s_first_event() {
        let event: DomainEvent = crate::domain::events::EventSalesOpened {
            event_id: crate::domain::EventId::random(),
            at: chrono::Utc::now(),
        }
        .into();
        let metadata = Metadata {
            correlation_id: Some("c".into()),
            request_fingerprint: Some("ab".repeat(32)),
            ..Metadata::default()
        };
        let first = encode(&event, 1, &metadata).unwrap();
        assert_eq!(first.metadata, metadata);
        let later = encode(&event, 2, &metadata).unwrap();
        assert_eq!(
            later.metadata,
            Metadata {
                request_fingerprint: None,
                ..metadata
            }
        );
    }

    /// A name or version this build does not know is a typed error, never a panic.
    #[test]
    fn unknown_types_and_versions_are_typed_errors() {
        for (event_type, version) in [("reservation.placed", 99), ("ticket.teleported", 1)] {
            assert_eq!(
                decode_parts(event_type, version, &[1, 2, 3]),
                Err(CodecError::Unknown {
                    event_type: event_type.into(),
                    event_version: version
                })
            );
        }
        assert!(matches!(
            decode_parts("event.published", 1, &[0xff]),
            Err(CodecError::Malformed { .. })
        ));
    }
}
