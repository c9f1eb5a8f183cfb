//! Who may do what: the ownership and role rules of API.md, decided here and nowhere else.
//! A resource the caller may not see answers 404 (its existence is not revealed); one they
//! may see but not change answers 403.

use super::error::ApiError;
use crate::auth::{Principal, Role};
use crate::domain::concert::EventStatus;
use crate::projections::EventView;
use uuid::Uuid;

/// May `viewer` see this event? Drafts are visible to their owner and admins only.
pub fn can_see_event(viewer: Option<&Principal>, event: &EventView) -> bool {
    event.status != EventStatus::Draft
        || viewer.is_some_and(|p| p.is_admin() || p.user_id.0 == event.owner_id)
}

/// Reads of an event: 404 when the caller may not see it.
pub fn see_event(viewer: Option<&Principal>, event: EventView) -> Result<EventView, ApiError> {
    if can_see_event(viewer, &event) {
        Ok(event)
    } else {
        Err(ApiError::NotFound("event"))
    }
}

/// Changes to an event, and its sales figures: the owner or an admin.
pub fn manage_event(caller: &Principal, event: EventView) -> Result<EventView, ApiError> {
    let event = see_event(Some(caller), event)?;
    if caller.is_admin() || caller.user_id.0 == event.owner_id {
        Ok(event)
    } else {
        Err(ApiError::Forbidden(
            "only the event's organizer or an admin may do this",
        ))
    }
}

/// Creating events: organizers and admins.
pub fn create_events(caller: &Principal) -> Result<(), ApiError> {
    match caller.role {
        Role::Organizer | Role::Admin => Ok(()),
        Role::Customer => Err(ApiError::Forbidden(
            "only organizers and admins create events",
        )),
    }
}

/// A customer's own records (reservations, payments): the owner or an admin; others get 404.
pub fn own_record(caller: &Principal, owner: Uuid, what: &'static str) -> Result<(), ApiError> {
    if caller.is_admin() || caller.user_id.0 == owner {
        Ok(())
    } else {
        Err(ApiError::NotFound(what))
    }
}

/// Paying: only the reservation's owner. Admins may see it, so they get 403; others 404.
pub fn pay_for(caller: &Principal, owner: Uuid) -> Result<(), ApiError> {
    own_record(caller, owner, "reservation")?;
    if caller.user_id.0 == owner {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the reservation's owner may pay for it",
        ))
    }
}

/// Collections named by a user id in the path: that user or an admin.
pub fn user_collection(caller: &Principal, user: Uuid) -> Result<(), ApiError> {
    if caller.is_admin() || caller.user_id.0 == user {
        Ok(())
    } else {
        Err(ApiError::Forbidden("you may only list your own records"))
    }
}

/// Operator routes (`/admin/...`): admins only.
pub fn admin_only(caller: &Principal) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only admins may do this"))
    }
}
