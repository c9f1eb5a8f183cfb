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
        stream_id: event.stream().to_string(),
        version,
        event_type: event.event_type(),
        event_version: event.event_version(),
        payload,
        metadata: metadata.clone(),
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
    match DomainEvent::decode_current(event_type, event_version, payload) {
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
