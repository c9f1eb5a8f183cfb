//! Who may do what: the ownership and role rules of API.md, decided here and nowhere else.
//! A resource the caller may not see answers 404 (its existence is not revealed); one they
//! may see but not change answers 403.

use super::AppError;
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
pub fn see_event(viewer: Option<&Principal>, event: EventView) -> Result<EventView, AppError> {
    if can_see_event(viewer, &event) {
        Ok(event)
    } else {
        Err(AppError::NotFound("event"))
    }
}

/// Changes to an event, and its sales figures: the owner or an admin.
pub fn manage_event(caller: &Principal, event: EventView) -> Result<EventView, AppError> {
    let event = see_event(Some(caller), event)?;
    if caller.is_admin() || caller.user_id.0 == event.owner_id {
        Ok(event)
    } else {
        Err(AppError::Forbidden(
            "only the event's organizer or an admin may do this",
        ))
    }
}

/// Creating events: organizers and admins.
pub fn create_events(caller: &Principal) -> Result<(), AppError> {
    match caller.role {
        Role::Organizer | Role::Admin => Ok(()),
        Role::Customer => Err(AppError::Forbidden(
            "only organizers and admins create events",
        )),
    }
}

/// A customer's own records (reservations, payments): the owner or an admin; others get 404.
pub fn own_record(caller: &Principal, owner: Uuid, what: &'static str) -> Result<(), AppError> {
    if caller.is_admin() || caller.user_id.0 == owner {
        Ok(())
    } else {
        Err(AppError::NotFound(what))
    }
}

/// Paying: only the reservation's owner. Admins may see it, so they get 403; others 404.
pub fn pay_for(caller: &Principal, owner: Uuid) -> Result<(), AppError> {
    own_record(caller, owner, "reservation")?;
    if caller.user_id.0 == owner {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "only the reservation's owner may pay for it",
        ))
    }
}

/// Collections named by a user id in the path: that user or an admin.
pub fn user_collection(caller: &Principal, user: Uuid) -> Result<(), AppError> {
    if caller.is_admin() || caller.user_id.0 == user {
        Ok(())
    } else {
        Err(AppError::Forbidden("you may only list your own records"))
    }
}

/// Operator routes (`/admin/...`): admins only.
pub fn admin_only(caller: &Principal) -> Result<(), AppError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(AppError::Forbidden("only admins may do this"))
    }
}
