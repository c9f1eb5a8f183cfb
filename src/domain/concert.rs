//! The concert aggregate `Event` (stream `event-<id>`): what an organizer sells and its
//! lifecycle draft -> published -> on_sale -> sales_closed, with cancellation from any live
//! state. Named `concert` so it is never mistaken for `events` (the event catalogue); the types
//! keep the API's word "event". Pure: validation and transitions only; it never counts seats
//! (that is `inventory`) and never reads a clock or performs I/O.

use super::events::{DomainEvent, EventDetails};
use super::ids::{EventId, UserId};
use super::money::Currency;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// Longest accepted section list; an event with more is almost certainly a client bug.
pub const MAX_SECTIONS: usize = 100;

/// The range of `max_tickets_per_customer` an organizer may set.
pub const CUSTOMER_LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Draft,
    Published,
    OnSale,
    SalesClosed,
    Cancelled,
}

impl EventStatus {
    pub const ALL: [EventStatus; 5] = [
        EventStatus::Draft,
        EventStatus::Published,
        EventStatus::OnSale,
        EventStatus::SalesClosed,
        EventStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Draft => "draft",
            EventStatus::Published => "published",
            EventStatus::OnSale => "on_sale",
            EventStatus::SalesClosed => "sales_closed",
            EventStatus::Cancelled => "cancelled",
        }
    }
}

/// What may be done to an event, checked against its status by `Event::transition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Publish,
    OpenSales,
    CloseSales,
    Update,
    Cancel,
}

impl fmt::Display for LifecycleAction {
    /// The verb as it reads in "cannot {action} an event that is {status}" (API problem text).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LifecycleAction::Publish => "publish",
            LifecycleAction::OpenSales => "open sales for",
            LifecycleAction::CloseSales => "close sales for",
            LifecycleAction::Update => "update",
            LifecycleAction::Cancel => "cancel",
        })
    }
}

/// A field that broke a rule, as the HTTP edge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event not found")]
    NotFound,
    #[error("an event with this id already exists")]
    AlreadyExists,
    #[error("cannot {action} an event that is {}", status.as_str())]
    InvalidTransition {
        status: EventStatus,
        action: LifecycleAction,
    },
    #[error("the event is {}: tickets are not on sale", status.as_str())]
    SalesNotOpen { status: EventStatus },
    #[error("version mismatch: expected {expected}, actual {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("invalid event details")]
    Invalid(Vec<FieldProblem>),
}

/// The folded state of one event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub owner_id: UserId,
    pub currency: Currency,
    pub details: EventDetails,
    pub status: EventStatus,
}

impl Event {
    /// Folds one event of this aggregate; events of other aggregates are ignored.
    pub fn apply(state: &mut Option<Event>, event: &DomainEvent) {
        match (state, event) {
            (state @ None, DomainEvent::EventCreated(e)) => {
                *state = Some(Event {
                    id: e.event_id,
                    owner_id: e.owner_id,
                    currency: e.currency,
                    details: e.details.clone(),
                    status: EventStatus::Draft,
                })
            }
            (Some(s), DomainEvent::EventDetailsChanged(e)) => s.details = e.details.clone(),
            (Some(s), DomainEvent::EventPublished(_)) => s.status = EventStatus::Published,
            (Some(s), DomainEvent::EventSalesOpened(_)) => s.status = EventStatus::OnSale,
            (Some(s), DomainEvent::EventSalesClosed(_)) => s.status = EventStatus::SalesClosed,
            (Some(s), DomainEvent::EventCancelled(_)) => s.status = EventStatus::Cancelled,
            _ => {}
        }
    }

    /// Checks that `action` may move the event from its current status, and to which.
    pub fn transition(&self, action: LifecycleAction) -> Result<EventStatus, EventError> {
        use EventStatus::*;
        use LifecycleAction as A;
        let next = match (action, self.status) {
            (A::Publish, Draft) => Published,
            (A::OpenSales, Published | SalesClosed) => OnSale,
            (A::CloseSales, OnSale) => SalesClosed,
            (A::Cancel, Draft | Published | OnSale | SalesClosed) => Cancelled,
            (A::Update, Draft | Published | OnSale | SalesClosed) => self.status,
            _ => {
                return Err(EventError::InvalidTransition {
                    status: self.status,
                    action,
                })
            }
        };
        Ok(next)
    }

    pub fn ensure_on_sale(&self) -> Result<(), EventError> {
        match self.status {
            EventStatus::OnSale => Ok(()),
            status => Err(EventError::SalesNotOpen { status }),
        }
    }
}

/// Whether `at` lies in the years 0001 to 9999, as an RFC 3339 date-time does. chrono reads
/// years beyond (signed, six digits), and PostgreSQL cannot store those before 4713 BC: such
/// an event would be in the log but never in a read model.
pub fn in_calendar(at: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&at.year())
}

/// The rules every set of event details obeys, reported field by field.
pub fn validate_details(details: &EventDetails) -> Result<(), EventError> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: &str| {
        problems.push(FieldProblem {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    if details.name.trim().is_empty() {
        problem("name", "must not be empty");
    }
    for (field, at) in [
        ("starts_at", &details.starts_at),
        ("ends_at", &details.ends_at),
    ] {
        if !in_calendar(at) {
            problem(field, "must be within the years 0001 to 9999");
        }
    }
    if details.ends_at <= details.starts_at {
        problem("ends_at", "must be after starts_at");
    }
    if details.sections.is_empty() || details.sections.len() > MAX_SECTIONS {
        problem(
            "sections",
            &format!("must list between 1 and {MAX_SECTIONS} sections"),
        );
    }
    let mut seen = HashSet::new();
    for (i, section) in details.sections.iter().enumerate() {
        if section.name.trim().is_empty() {
            problem(&format!("sections[{i}].name"), "must not be empty");
        } else if !seen.insert(section.name.as_str()) {
            problem(
                &format!("sections[{i}].name"),
                "must be unique within the event",
            );
        }
        if section.capacity == 0 {
            problem(&format!("sections[{i}].capacity"), "must be at least 1");
        }
        if section.price_cents < 0 {
            problem(
                &format!("sections[{i}].price_cents"),
                "must not be negative",
            );
        }
    }
    if let Some(limit) = details.max_tickets_per_customer {
        if !CUSTOMER_LIMIT_RANGE.contains(&limit) {
            problem(
                "max_tickets_per_customer",
                &format!(
                    "must be between {} and {}, or null for no limit",
                    CUSTOMER_LIMIT_RANGE.start(),
                    CUSTOMER_LIMIT_RANGE.end()
                ),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EventError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::Venue;
    use chrono::{TimeZone, Utc};

    fn event(status: EventStatus) -> Event {
        let starts_at = Utc.with_ymd_and_hms(2030, 1, 1, 20, 0, 0).unwrap();
        Event {
            id: EventId::random(),
            owner_id: UserId::random(),
            currency: Currency::USD,
            details: EventDetails {
                name: "Concert".into(),
                description: None,
                venue: Venue {
                    name: "Hall".into(),
                    address: "1 Main St".into(),
                },
                starts_at,
                ends_at: starts_at + chrono::Duration::hours(2),
                sections: Vec::new(),
                max_tickets_per_customer: None,
            },
            status,
        }
    }

    /// A refused transition reads exactly as the API has always reported it.
    #[test]
    fn refused_transitions_keep_their_problem_text() {
        use EventStatus::*;
        use LifecycleAction as A;
        for (status, action, text) in [
            (
                OnSale,
                A::Publish,
                "cannot publish an event that is on_sale",
            ),
            (
                Draft,
                A::OpenSales,
                "cannot open sales for an event that is draft",
            ),
            (
                Published,
                A::CloseSales,
                "cannot close sales for an event that is published",
            ),
            (
                Cancelled,
                A::Update,
                "cannot update an event that is cancelled",
            ),
            (
                Cancelled,
                A::Cancel,
                "cannot cancel an event that is cancelled",
            ),
        ] {
            let refused = event(status).transition(action).unwrap_err();
            assert_eq!(refused.to_string(), text);
        }
    }

    /// Given a draft, publishing, opening, closing and reopening sales walk the lifecycle.
    #[test]
    fn the_lifecycle_moves_forward_and_sales_can_reopen() {
        use EventStatus::*;
        use LifecycleAction as A;
        let mut e = event(Draft);
        for (action, next) in [
            (A::Publish, Published),
            (A::OpenSales, OnSale),
            (A::CloseSales, SalesClosed),
            (A::OpenSales, OnSale),
            (A::Update, OnSale),
            (A::Cancel, Cancelled),
        ] {
            e.status = e.transition(action).unwrap();
            assert_eq!(e.status, next);
        }
    }
}
