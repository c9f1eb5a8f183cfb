//! In-memory read models, the embedded default. One lock guards every view and the checkpoint,
//! so a batch is applied atomically with its checkpoint, as the PostgreSQL adapter does in one
//! transaction. At-least-once delivery: events at or below the checkpoint are skipped.

use super::*;
use crate::domain::events::DomainEvent as E;
use crate::domain::inventory::Inventory;
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::eventstore::codec;
use crate::paging::{Page, PageRequest};
use foldhash::HashMap;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The per-reservation tables are B-trees: a hash map's growth rehashes every entry at once,
/// under the lock every read takes.
#[derive(Default)]
struct Tables {
    checkpoint: u64,
    events: HashMap<EventId, (EventView, Inventory)>,
    reservations: BTreeMap<ReservationId, ReservationView>,
    payments: BTreeMap<PaymentId, PaymentView>,
}

#[derive(Default)]
pub struct MemoryReadModel {
    tables: Mutex<Tables>,
}

impl MemoryReadModel {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn sections(inventory: &Inventory) -> Vec<SectionView> {
    inventory
        .sections
        .iter()
        .map(|s| SectionView {
            name: s.name.clone(),
            capacity: s.capacity,
            price_cents: s.price_cents,
            available: s.available(),
            held: s.held,
            sold: s.sold,
        })
        .collect()
}

impl Tables {
    fn apply(&mut self, recorded: &RecordedEvent, event: &E) {
        match event {
            E::EventCreated(e) => {
                let view = EventView {
                    id: e.event_id.0,
                    owner_id: e.owner_id.0,
                    name: e.details.name.clone(),
                    description: e.details.description.clone(),
                    venue: VenueView {
                        name: e.details.venue.name.clone(),
                        address: e.details.venue.address.clone(),
                    },
                    starts_at: e.details.starts_at,
                    ends_at: e.details.ends_at,
                    currency: e.currency.to_string(),
                    status: EventStatus::Draft,
                    sections: Vec::new(),
                    max_tickets_per_customer: e.details.max_tickets_per_customer,
                    version: recorded.version,
                    created_at: e.at,
                    updated_at: e.at,
                };
                self.events.insert(e.event_id, (view, Inventory::default()));
            }
            E::EventDetailsChanged(e) => self.with_event(e.event_id, recorded, |v| {
                v.name = e.details.name.clone();
                v.description = e.details.description.clone();
                v.venue = VenueView {
                    name: e.details.venue.name.clone(),
                    address: e.details.venue.address.clone(),
                };
                v.starts_at = e.details.starts_at;
                v.ends_at = e.details.ends_at;
                v.max_tickets_per_customer = e.details.max_tickets_per_customer;
            }),
            E::EventPublished(e) => {
                self.with_event(e.event_id, recorded, |v| v.status = EventStatus::Published)
            }
            E::EventSalesOpened(e) => {
                self.with_event(e.event_id, recorded, |v| v.status = EventStatus::OnSale)
            }
            E::EventSalesClosed(e) => self.with_event(e.event_id, recorded, |v| {
                v.status = EventStatus::SalesClosed
            }),
            E::EventCancelled(e) => {
                self.with_event(e.event_id, recorded, |v| v.status = EventStatus::Cancelled)
            }
            E::InventoryStocked(e) => self.with_inventory(e.event_id, event),
            E::SeatsHeld(e) => self.with_inventory(e.event_id, event),
            E::HeldSeatsReleased(e) => self.with_inventory(e.event_id, event),
            E::HeldSeatsSold(e) => self.with_inventory(e.event_id, event),
            E::SoldSeatsReturned(e) => self.with_inventory(e.event_id, event),
            E::ReservationPlaced(e) => {
                self.reservations
                    .insert(e.reservation_id, ReservationView::from(e));
            }
            E::ReservationConfirmed(e) => {
                self.set_reservation(e.reservation_id, ReservationStatus::Confirmed, e.at);
                if let Some(r) = self.reservations.get_mut(&e.reservation_id) {
                    r.payment_id = Some(e.payment_id.0);
                }
            }
            E::ReservationCancelled(e) => {
                self.set_reservation(e.reservation_id, ReservationStatus::Cancelled, e.at)
            }
            E::ReservationExpired(e) => {
                self.set_reservation(e.reservation_id, ReservationStatus::Expired, e.at)
            }
            E::ReservationRefunded(e) => {
                self.set_reservation(e.reservation_id, ReservationStatus::Refunded, e.at);
            }
            E::PaymentCaptured(e) => {
                self.payments.insert(e.payment_id, PaymentView::from(e));
            }
            E::PaymentDeclined(e) => {
                self.payments.insert(e.payment_id, PaymentView::from(e));
            }
            E::PaymentRefunded(e) => {
                if let Some(p) = self.payments.get_mut(&e.payment_id) {
                    p.status = PaymentStatus::Refunded;
                    p.reason = Some(e.reason.clone());
                    p.updated_at = e.at;
                }
            }
        }
    }

    /// Applies a change of the event stream itself, which also moves its version.
    fn with_event(
        &mut self,
        id: EventId,
        recorded: &RecordedEvent,
        change: impl FnOnce(&mut EventView),
    ) {
        if let Some((view, _)) = self.events.get_mut(&id) {
            change(view);
            view.version = recorded.version;
            view.updated_at = recorded.recorded_at;
        }
    }

    fn with_inventory(&mut self, id: EventId, event: &E) {
        if let Some((view, inventory)) = self.events.get_mut(&id) {
            inventory.apply(event);
            view.sections = sections(inventory);
        }
    }

    fn set_reservation(&mut self, id: ReservationId, status: ReservationStatus, at: DateTime<Utc>) {
        if let Some(r) = self.reservations.get_mut(&id) {
            r.status = status;
            r.updated_at = at;
        }
    }
}

#[async_trait]
impl ProjectionWriter for MemoryReadModel {
    async fn apply(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<Applied> {
        // Decode outside the lock; an undecodable event is skipped with an error in the log
        // (TODO.md, "Bus and dead letter queue": stopping at it instead is the open choice).
        let decoded: Vec<(&Arc<RecordedEvent>, Result<E, codec::CodecError>)> =
            events.iter().map(|r| (r, codec::decode(r))).collect();
        let mut tables = self.lock();
        let mut applied = Applied::default();
        for (recorded, event) in decoded {
            if recorded.position <= tables.checkpoint {
                continue;
            }
            match event {
                Ok(event) => tables.apply(recorded, &event),
                Err(e) => {
                    applied.undecodable += 1;
                    tracing::error!(position = recorded.position, error = %e, "read model skipped an undecodable event")
                }
            }
            tables.checkpoint = recorded.position;
        }
        Ok(applied)
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        Ok(self.lock().checkpoint)
    }

    async fn reset(&self) -> anyhow::Result<()> {
        *self.lock() = Tables::default();
        Ok(())
    }
}

#[async_trait]
impl EventLookup for MemoryReadModel {
    async fn event(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
        Ok(self.lock().events.get(&id).map(|(v, _)| v.clone()))
    }
}

#[async_trait]
impl ReadModel for MemoryReadModel {
    async fn events(
        &self,
        query: &EventQuery,
        page: PageRequest,
    ) -> Result<Page<EventView>, ReadError> {
        let tables = self.lock();
        let mut items: Vec<EventView> = tables
            .events
            .values()
            .map(|(v, _)| v)
            .filter(|v| {
                let own = query.viewer.is_some_and(|u| u.0 == v.owner_id);
                (v.status != EventStatus::Draft || own || query.viewer_is_admin)
                    && query.status.is_none_or(|s| s == v.status)
                    && query.owner_id.is_none_or(|o| o.0 == v.owner_id)
            })
            .cloned()
            .collect();
        items.sort_by_key(|v| (v.starts_at, v.id));
        Ok(page.slice(items))
    }

    async fn reservation(&self, id: ReservationId) -> Result<Option<ReservationView>, ReadError> {
        Ok(self.lock().reservations.get(&id).cloned())
    }

    async fn reservations(
        &self,
        user: Option<UserId>,
        page: PageRequest,
    ) -> Result<Page<ReservationView>, ReadError> {
        let tables = self.lock();
        let mut items: Vec<ReservationView> = tables
            .reservations
            .values()
            .filter(|r| user.is_none_or(|u| u.0 == r.user_id))
            .cloned()
            .collect();
        items.sort_by_key(|x| std::cmp::Reverse((x.created_at, x.reservation_id)));
        Ok(page.slice(items))
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentView>, ReadError> {
        Ok(self.lock().payments.get(&id).cloned())
    }

    async fn recorded_payments(&self, ids: &[PaymentId]) -> Result<HashSet<PaymentId>, ReadError> {
        let tables = self.lock();
        let shown = ids.iter().filter(|id| tables.payments.contains_key(id));
        Ok(shown.copied().collect())
    }

    async fn payments_of(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<PaymentView>, ReadError> {
        let tables = self.lock();
        let mut items: Vec<PaymentView> = tables
            .payments
            .values()
            .filter(|p| p.user_id == user.0)
            .cloned()
            .collect();
        items.sort_by_key(|x| std::cmp::Reverse((x.created_at, x.payment_id)));
        Ok(page.slice(items))
    }

    async fn pending_holds(&self) -> Result<Vec<PendingHold>, ReadError> {
        Ok(self
            .lock()
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Pending)
            .map(|r| PendingHold {
                event_id: EventId(r.event_id),
                reservation_id: ReservationId(r.reservation_id),
                expires_at: r.expires_at,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), ReadError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory read model honours the shared read-model contract.
    #[tokio::test]
    async fn memory_read_model_passes_the_contract() {
        super::super::contract::run_all(&MemoryReadModel::new()).await;
    }

    /// The reference is indifferent to batch boundaries, as every adapter must be.
    #[tokio::test]
    async fn memory_read_model_shows_no_batch_boundaries() {
        super::super::contract::batch_boundaries_change_no_view(&MemoryReadModel::new()).await;
    }
}
