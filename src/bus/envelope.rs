//! How a committed event travels on the bus: the payload is the stored payload, byte for
//! byte (bincode, see EVENT_VERSIONING.md), and everything a consumer needs to decode,
//! order and trace it rides in headers. `open` is the consumer's side: a message it cannot
//! read is a `Poison`, which goes to the dead letter queue at once.

use super::{BusMessage, Topics};
use crate::domain::{DomainEvent, EventId, UserId};
use crate::eventstore::{codec, Metadata, RecordedEvent};
use chrono::{DateTime, Utc};

pub const EVENT_TYPE: &str = "event-type";
pub const EVENT_VERSION: &str = "event-version";
pub const STREAM_ID: &str = "stream-id";
pub const STREAM_VERSION: &str = "stream-version";
pub const POSITION: &str = "position";
pub const SALE_ID: &str = "sale-id";
pub const RECORDED_AT: &str = "recorded-at";
pub const CORRELATION_ID: &str = "correlation-id";
pub const CAUSATION_ID: &str = "causation-id";
pub const USER_ID: &str = "user-id";
pub const TRACEPARENT: &str = "traceparent";
/// How many headers a message has at most: the eleven above.
const HEADERS: usize = 11;

/// An event as a consumer handles it: the decoded event and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEvent {
    pub stream_id: String,
    pub version: u64,
    pub position: u64,
    pub sale_id: EventId,
    pub event_type: String,
    pub event_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub event: DomainEvent,
}

/// Why a message cannot be handled, ever, as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {header} is malformed: {value:?}")]
    BadHeader { header: &'static str, value: String },
    #[error(transparent)]
    Undecodable(#[from] codec::CodecError),
}

/// The message that publishes `event`, or `None` for a stream of no known category.
pub fn seal(topics: &Topics, event: &RecordedEvent) -> Option<BusMessage> {
    let topic = topics.for_stream(&event.stream_id)?;
    let mut headers = Vec::with_capacity(HEADERS);
    headers.extend([
        (EVENT_TYPE.into(), event.event_type.clone()),
        (EVENT_VERSION.into(), event.event_version.to_string()),
        (STREAM_ID.into(), event.stream_id.clone()),
        (STREAM_VERSION.into(), event.version.to_string()),
        (POSITION.into(), event.position.to_string()),
        (SALE_ID.into(), event.sale_id.to_string()),
        (RECORDED_AT.into(), event.recorded_at.to_rfc3339()),
    ]);
    let m = &event.metadata;
    let optional = [
        (CORRELATION_ID, m.correlation_id.clone()),
        (CAUSATION_ID, m.causation_id.clone()),
        (USER_ID, m.user_id.map(|u| u.to_string())),
        (TRACEPARENT, m.traceparent.clone()),
    ];
    headers.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.into(), v))),
    );
    Some(BusMessage {
        topic,
        key: event.stream_id.clone(),
        headers,
        payload: event.payload.clone(),
    })
}

/// Reads a message back into an event, or says why it never will be.
pub fn open(message: &BusMessage) -> Result<BusEvent, Poison> {
    let event_type = required(message, EVENT_TYPE)?.to_owned();
    let event_version = parsed(message, EVENT_VERSION)?;
    let event = codec::decode_parts(&event_type, event_version, &message.payload)?;
    let user_id = match message.header(USER_ID) {
        None => None,
        Some(v) => Some(
            v.parse::<uuid::Uuid>()
                .map(UserId)
                .map_err(|_| Poison::BadHeader {
                    header: USER_ID,
                    value: v.to_owned(),
                })?,
        ),
    };
    let recorded_at = required(message, RECORDED_AT)?;
    Ok(BusEvent {
        stream_id: required(message, STREAM_ID)?.to_owned(),
        version: parsed(message, STREAM_VERSION)?,
        position: parsed(message, POSITION)?,
        sale_id: EventId(parsed(message, SALE_ID)?),
        recorded_at: DateTime::parse_from_rfc3339(recorded_at)
            .map_err(|_| Poison::BadHeader {
                header: RECORDED_AT,
                value: recorded_at.to_owned(),
            })?
            .with_timezone(&Utc),
        metadata: Metadata {
            correlation_id: message.header(CORRELATION_ID).map(str::to_owned),
            causation_id: message.header(CAUSATION_ID).map(str::to_owned),
            user_id,
            traceparent: message.header(TRACEPARENT).map(str::to_owned),
            // The log's record of an idempotent answer: no consumer needs it, and it does not
            // ride the bus.
            request_fingerprint: None,
        },
        event_type,
        event_version,
        event,
    })
}

fn required<'m>(message: &'m BusMessage, header: &'static str) -> Result<&'m str, Poison> {
    message.header(header).ok_or(Poison::MissingHeader(header))
}

fn parsed<T: std::str::FromStr>(message: &BusMessage, header: &'static str) -> Result<T, Poison> {
    let value = required(message, header)?;
    value.parse().map_err(|_| Poison::BadHeader {
        header,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::EventPublished;

    fn recorded() -> RecordedEvent {
        let sale = EventId::random();
        let event = DomainEvent::from(EventPublished {
            event_id: sale,
            at: Utc::now(),
        });
        let metadata = Metadata {
            correlation_id: Some("corr-1".into()),
            causation_id: None,
            user_id: Some(UserId(uuid::Uuid::new_v4())),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            request_fingerprint: None,
        };
        let new = codec::encode(&event, 3, &metadata).unwrap();
        RecordedEvent {
            position: 42,
            sale_id: sale,
            stream_id: new.stream_id,
            version: new.version,
            event_type: new.event_type.into(),
            event_version: new.event_version,
            payload: new.payload,
            metadata,
            recorded_at: DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    /// What a consumer opens is what the store committed, envelope and all.
    #[test]
    fn a_sealed_event_opens_to_the_same_event() {
        let event = recorded();
        let message = seal(&Topics::new("t."), &event).unwrap();
        assert_eq!(&*message.topic, "t.events");
        assert_eq!(message.key, event.stream_id);
        let opened = open(&message).unwrap();
        assert_eq!(opened.position, 42);
        assert_eq!(opened.version, 3);
        assert_eq!(opened.metadata, event.metadata);
        assert_eq!(opened.recorded_at, event.recorded_at);
        assert_eq!(opened.event, codec::decode(&event).unwrap());
    }

    /// Garbage, an unknown version and a missing header are poison, each with a reason.
    #[test]
    fn unreadable_messages_are_poison_with_a_reason() {
        let good = seal(&Topics::new("t."), &recorded()).unwrap();
        let mut garbage = good.clone();
        garbage.payload = vec![0xff; 3];
        assert!(matches!(
            open(&garbage),
            Err(Poison::Undecodable(codec::CodecError::Malformed { .. }))
        ));
        let mut future = good.clone();
        for (k, v) in &mut future.headers {
            if k == EVENT_VERSION {
                *v = "99".into();
            }
        }
        let err = open(&future).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        let mut headless = good;
        headless.headers.retain(|(k, _)| k != POSITION);
        assert_eq!(
            open(&headless).unwrap_err(),
            Poison::MissingHeader(POSITION)
        );
    }
}
