//! `WebhookFanout`: the bus consumer that turns each event into deliveries. For an event of
//! the events, reservations or payments topics it finds the sale's organizer, the organizer's
//! endpoints that want the event's type (and event), builds the body once (`{type,
//! timestamp, data}` with the public view of the reservation, payment or event, as the API
//! shows it) and stores one delivery per endpoint, with a message id derived from (stream,
//! version, endpoint): a redelivered bus message makes the same ids and stores nothing new.
//! A poll's worth of events is one batch (`Handler::handle_batch`): one look-up of the
//! endpoints of the batch's organizers, filtered here by type, event and `from_position`
//! exactly as per event, and one `enqueue` for the batch; with no endpoint registered a
//! batch costs that one look-up. Before it reads a view it waits (at most `SHOWN_WITHIN`) for
//! this instance's read models to apply the events it describes: they follow the log on their
//! own. It only stores and wakes the dispatcher; sending is not on the consumer's path, so a slow
//! receiver never holds up the bus. Failures to read or store are transient (the consumer
//! retries and dead-letters them like any other).

use super::dispatch::Dispatcher;
use super::{Delivery, DeliveryStatus, Endpoint, WebhookError, WebhookStore};
use crate::bus::consumer::{Applied, Handler, HandlerError};
use crate::bus::envelope::BusEvent;
use crate::clock::Clock;
use crate::domain::events::StreamId;
use crate::domain::DomainEvent;
use crate::projections::{ReadError, ReadModel};
use crate::runtime::subscription::Progress;
use async_trait::async_trait;
use foldhash::{HashMap, HashMapExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// How long the fan-out waits for the read models to apply the events it describes before it
/// reads their views anyway (a view still missing is then retried as a transient failure).
const SHOWN_WITHIN: Duration = Duration::from_secs(1);

/// Its name: the consumer group and the `consumer` of its dead letters.
pub const CONSUMER: &str = "webhooks";

/// Namespace of the message ids (a v5 UUID of stream, version and endpoint).
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6b1d_6a0e_58c4_4bb4_9d0b_1f3c_77a2_e5d1);

pub struct WebhookFanout {
    pub store: Arc<dyn WebhookStore>,
    pub reads: Arc<dyn ReadModel>,
    /// How far `reads` applied the log.
    applied: Progress,
    pub dispatcher: Dispatcher,
    pub clock: Arc<dyn Clock>,
    /// Organizer of each sale seen so far (it never changes).
    owners: Mutex<HashMap<Uuid, Uuid>>,
}

impl WebhookFanout {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        reads: Arc<dyn ReadModel>,
        applied: Progress,
        dispatcher: Dispatcher,
        clock: Arc<dyn Clock>,
    ) -> Self {
        WebhookFanout {
            store,
            reads,
            applied,
            dispatcher,
            clock,
            owners: Mutex::new(HashMap::new()),
        }
    }

    const TOPICS: &'static [&'static str] = &["events", "reservations", "payments"];

    /// The organizer of `sale`, whose event `position` is about.
    async fn owner_of(&self, sale: Uuid, position: u64) -> Result<Uuid, HandlerError> {
        if let Some(owner) = self.cached_owner(sale) {
            return Ok(owner);
        }
        self.shown(position).await;
        let view = self
            .reads
            .event(crate::domain::EventId(sale))
            .await
            .map_err(read_error)?
            .ok_or_else(|| not_yet("event", sale))?;
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sale, view.owner_id);
        Ok(view.owner_id)
    }

    fn cached_owner(&self, sale: Uuid) -> Option<Uuid> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sale)
            .copied()
    }

    /// Waits until the read models applied `position`, at most `SHOWN_WITHIN`.
    async fn shown(&self, position: u64) {
        if !self.applied.wait_for(position, SHOWN_WITHIN).await {
            tracing::debug!(
                position,
                "the read models lag behind the bus; reading anyway"
            );
        }
    }

    /// The public view the body carries, as the API shows it.
    async fn data(&self, event: &BusEvent) -> Result<serde_json::Value, HandlerError> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| HandlerError::Permanent(format!("cannot encode a view: {e}")))
        };
        let stream = event.event.stream();
        match stream {
            StreamId::Reservation(id) => {
                let view = self.reads.reservation(id).await.map_err(read_error)?;
                json(serde_json::to_value(
                    view.ok_or_else(|| not_yet("reservation", id.0))?,
                ))
            }
            StreamId::Payment(id) => {
                let view = self.reads.payment(id).await.map_err(read_error)?;
                json(serde_json::to_value(
                    view.ok_or_else(|| not_yet("payment", id.0))?,
                ))
            }
            StreamId::Event(id) | StreamId::Inventory(id) => {
                let view = self.reads.event(id).await.map_err(read_error)?;
                json(serde_json::to_value(
                    view.ok_or_else(|| not_yet("event", id.0))?,
                ))
            }
        }
    }
}

fn read_error(e: ReadError) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

/// The read models have not applied the event yet (they follow the log independently).
fn not_yet(what: &str, id: Uuid) -> HandlerError {
    HandlerError::Transient(format!("the read models do not show {what} {id} yet"))
}

fn store_error(e: WebhookError) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

/// The `webhook-id` of `event` for `endpoint`: the same for every delivery of that pair.
pub fn message_id(stream_id: &str, version: u64, endpoint: Uuid) -> String {
    let name = format!("{stream_id}/{version}/{endpoint}");
    format!(
        "msg_{}",
        Uuid::new_v5(&MESSAGE_NAMESPACE, name.as_bytes()).simple()
    )
}

/// Whether organizers hear about this event at all (inventory bookkeeping is internal).
fn deliverable(event: &DomainEvent) -> bool {
    !matches!(
        event,
        DomainEvent::InventoryStocked(_)
            | DomainEvent::SeatsHeld(_)
            | DomainEvent::HeldSeatsReleased(_)
            | DomainEvent::HeldSeatsSold(_)
            | DomainEvent::SoldSeatsReturned(_)
    )
}

#[async_trait]
impl Handler for WebhookFanout {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn topics(&self) -> &'static [&'static str] {
        Self::TOPICS
    }

    async fn handle(&self, event: &BusEvent) -> Result<Applied, HandlerError> {
        let applied = self.fan_out(std::slice::from_ref(event)).await?;
        Ok(applied.first().copied().unwrap_or(Applied::Applied))
    }

    async fn handle_batch(
        &self,
        events: &[BusEvent],
    ) -> Option<Result<Vec<Applied>, HandlerError>> {
        Some(self.fan_out(events).await)
    }
}

impl WebhookFanout {
    /// The deliveries of a batch: one look-up of the endpoints of the batch's organizers (none
    /// at all when no event is deliverable), one `enqueue` of every delivery, in event order.
    /// An event is a `Duplicate` when it had deliveries to make and all were stored before.
    async fn fan_out(&self, events: &[BusEvent]) -> Result<Vec<Applied>, HandlerError> {
        let mut applied = vec![Applied::Applied; events.len()];
        let mut owned = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if deliverable(&event.event) {
                owned.push((i, self.owner_of(event.sale_id.0, event.position).await?));
            }
        }
        let mut owners: Vec<Uuid> = owned.iter().map(|(_, owner)| *owner).collect();
        owners.sort_unstable();
        owners.dedup();
        if owners.is_empty() {
            return Ok(applied);
        }
        let endpoints = self.store.subscribers(&owners).await.map_err(store_error)?;
        if endpoints.is_empty() {
            return Ok(applied);
        }
        let last = owned.iter().map(|&(i, _)| events[i].position).max();
        self.shown(last.unwrap_or_default()).await;
        let now = self.clock.now();
        let mut deliveries: Vec<Delivery> = Vec::new();
        // The event of each delivery, by index.
        let mut of_event = Vec::new();
        for (i, owner) in owned {
            let event = &events[i];
            let wanted: Vec<&Endpoint> = endpoints
                .iter()
                .filter(|e| {
                    e.owner_id == owner
                        && e.wants(&event.event_type, event.sale_id.0)
                        && event.position > e.from_position
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let body = serde_json::json!({
                "type": event.event_type,
                "timestamp": event.recorded_at,
                "data": self.data(event).await?,
            })
            .to_string();
            for endpoint in wanted {
                deliveries.push(Delivery {
                    id: Uuid::new_v4(),
                    endpoint_id: endpoint.id,
                    message_id: message_id(&event.stream_id, event.version, endpoint.id),
                    event_type: event.event_type.clone(),
                    body: body.clone(),
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    last_status_code: None,
                    next_attempt_at: Some(now),
                    created_at: now,
                });
                of_event.push(i);
            }
        }
        if deliveries.is_empty() {
            return Ok(applied);
        }
        let stored = self.store.enqueue(&deliveries).await.map_err(store_error)?;
        let stored_ids: HashSet<Uuid> = stored.iter().map(|d| d.id).collect();
        for &i in &of_event {
            applied[i] = Applied::Duplicate;
        }
        for (delivery, &i) in deliveries.iter().zip(&of_event) {
            if stored_ids.contains(&delivery.id) {
                applied[i] = Applied::Applied;
            }
        }
        for endpoint in stored.iter().map(|d| d.endpoint_id).collect::<HashSet<_>>() {
            self.dispatcher.wake(endpoint);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests;
