//! Event administration: organizers (and admins) create events, change their details, move
//! them through their lifecycle (publish, open and close sales) and cancel them, which
//! releases every hold and refunds every paid ticket. The rules live in the domain; this
//! module checks who may act and runs the command with read-your-writes.

use super::{policy, App, AppError};
use crate::auth::Principal;
use crate::domain::events::EventDetails;
use crate::domain::sale::{EventPatch, Lifecycle};
use crate::domain::{Currency, EventId, SaleCommand};
use crate::eventstore::Metadata;
use crate::projections::EventView;

impl App {
    /// Creates an event owned by `caller`, in `currency` (an ISO 4217 code; USD by default).
    pub async fn create_event(
        &self,
        caller: &Principal,
        id: EventId,
        currency: Option<&str>,
        details: EventDetails,
        metadata: Metadata,
    ) -> Result<EventView, AppError> {
        policy::create_events(caller)?;
        let currency = match currency {
            None => Currency::USD,
            Some(code) => {
                Currency::parse(code).map_err(|e| AppError::field("currency", &e.to_string()))?
            }
        };
        let command = SaleCommand::CreateEvent {
            owner_id: caller.user_id,
            currency,
            details,
            now: self.clock.now(),
        };
        self.command(id, command, metadata).await?;
        self.event_view(id).await
    }

    /// Changes an event's details; with `expected_version`, only if nobody changed it since.
    pub async fn update_event(
        &self,
        caller: &Principal,
        id: EventId,
        expected_version: Option<u64>,
        patch: EventPatch,
        metadata: Metadata,
    ) -> Result<EventView, AppError> {
        let command = SaleCommand::UpdateEvent {
            expected_version,
            patch,
            now: self.clock.now(),
        };
        self.manage(caller, id, command, metadata).await?;
        self.event_view(id).await
    }

    /// Publishes an event, or opens or closes its sales.
    pub async fn change_lifecycle(
        &self,
        caller: &Principal,
        id: EventId,
        action: Lifecycle,
        metadata: Metadata,
    ) -> Result<EventView, AppError> {
        let command = SaleCommand::ChangeLifecycle {
            action,
            now: self.clock.now(),
        };
        self.manage(caller, id, command, metadata).await?;
        self.event_view(id).await
    }

    /// Cancels an event: holds are released and paid tickets refunded.
    pub async fn cancel_event(
        &self,
        caller: &Principal,
        id: EventId,
        metadata: Metadata,
    ) -> Result<(), AppError> {
        let command = SaleCommand::CancelEvent {
            now: self.clock.now(),
        };
        self.manage(caller, id, command, metadata).await
    }

    /// Runs `command` on event `id` if `caller` may manage it (its organizer or an admin).
    async fn manage(
        &self,
        caller: &Principal,
        id: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<(), AppError> {
        policy::manage_event(caller, self.event_view(id).await?)?;
        self.command(id, command, metadata).await.map(drop)
    }
}
