//! The event's own life inside the sale: create, update, publish / open / close sales, and
//! cancel (which ends every hold and refunds every paid ticket in the same decision). The
//! status rules themselves are `concert::Event::transition`'s; this module only applies them.
//! Pure: never reads a clock or performs I/O.

use super::{Deciding, Decision, EventPatch, Lifecycle, SaleError};
use crate::domain::concert::{validate_details, EventError, LifecycleAction};
use crate::domain::events::{
    DomainEvent, EventCancelled, EventCreated, EventDetails, EventDetailsChanged, EventPublished,
    EventSalesClosed, EventSalesOpened, InventoryStocked, ReservationCancelled, StreamId,
};
use crate::domain::ids::UserId;
use crate::domain::money::Currency;
use crate::domain::reservation::{Reservation, ReservationStatus};
use chrono::{DateTime, Utc};
use smallvec::SmallVec;

impl Deciding<'_> {
    pub(super) fn create_event(
        &self,
        owner_id: UserId,
        currency: Currency,
        details: &EventDetails,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        if self.state.event.is_some() {
            return Err(EventError::AlreadyExists.into());
        }
        validate_details(details)?;
        Ok(Decision::done([
            EventCreated {
                event_id: self.event_id,
                owner_id,
                currency,
                details: details.clone(),
                at: now,
            }
            .into(),
            InventoryStocked {
                event_id: self.event_id,
                sections: details.sections.clone(),
            }
            .into(),
        ]))
    }

    pub(super) fn update_event(
        &self,
        expected_version: Option<u64>,
        patch: &EventPatch,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let event_id = self.event_id;
        let event = self.state.event()?;
        let actual = self.state.version(&StreamId::Event(event_id));
        if let Some(expected) = expected_version {
            if expected != actual {
                return Err(EventError::VersionConflict { expected, actual }.into());
            }
        }
        event.transition(LifecycleAction::Update)?;
        let current = &event.details;
        let details = EventDetails {
            name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
            description: patch
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            venue: patch.venue.clone().unwrap_or_else(|| current.venue.clone()),
            starts_at: patch.starts_at.unwrap_or(current.starts_at),
            ends_at: patch.ends_at.unwrap_or(current.ends_at),
            sections: patch
                .sections
                .clone()
                .unwrap_or_else(|| current.sections.clone()),
            max_tickets_per_customer: patch
                .max_tickets_per_customer
                .unwrap_or(current.max_tickets_per_customer),
        };
        validate_details(&details)?;
        let mut events: SmallVec<[DomainEvent; 4]> = SmallVec::new();
        if details.sections != current.sections {
            self.state.inventory.check_restock(&details.sections)?;
            events.push(
                InventoryStocked {
                    event_id,
                    sections: details.sections.clone(),
                }
                .into(),
            );
        }
        events.insert(
            0,
            EventDetailsChanged {
                event_id,
                details,
                at: now,
            }
            .into(),
        );
        Ok(Decision::done(events))
    }

    pub(super) fn change_lifecycle(
        &self,
        action: Lifecycle,
        now: DateTime<Utc>,
    ) -> Result<Decision, SaleError> {
        let (event_id, at) = (self.event_id, now);
        let (action, fact): (LifecycleAction, DomainEvent) = match action {
            Lifecycle::Publish => (
                LifecycleAction::Publish,
                EventPublished { event_id, at }.into(),
            ),
            Lifecycle::OpenSales => (
                LifecycleAction::OpenSales,
                EventSalesOpened { event_id, at }.into(),
            ),
            Lifecycle::CloseSales => (
                LifecycleAction::CloseSales,
                EventSalesClosed { event_id, at }.into(),
            ),
        };
        self.state.event()?.transition(action)?;
        Ok(Decision::done([fact]))
    }

    /// Cancels the event: pending holds are released, confirmed purchases refunded.
    pub(super) fn cancel_event(&self, now: DateTime<Utc>) -> Result<Decision, SaleError> {
        self.state.event()?.transition(LifecycleAction::Cancel)?;
        let mut events: SmallVec<[DomainEvent; 4]> = SmallVec::new();
        events.push(
            EventCancelled {
                event_id: self.event_id,
                at: now,
            }
            .into(),
        );
        // Deterministic order keeps replays and tests stable.
        let mut reservations: Vec<&Reservation> = self.state.reservations.values().collect();
        reservations.sort_by_key(|r| (r.placed_at, r.id));
        for r in reservations {
            match (r.status, r.payment_id) {
                (ReservationStatus::Pending, _) => events.extend(
                    self.release(
                        r,
                        ReservationCancelled {
                            reservation_id: r.id,
                            at: now,
                        }
                        .into(),
                    ),
                ),
                (ReservationStatus::Confirmed, Some(payment_id)) => {
                    events.extend(self.refund(payment_id, "event cancelled", now)?.events)
                }
                _ => {}
            }
        }
        Ok(Decision::done(events))
    }
}
