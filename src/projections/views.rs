//! View types: the shapes the read models store and the HTTP API returns.

use crate::domain::concert::EventStatus;
use crate::domain::events::{PaymentCaptured, PaymentDeclined, ReservationPlaced};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VenueView {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SectionView {
    pub name: String,
    pub capacity: u32,
    pub price_cents: i64,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub venue: VenueView,
    #[serde(with = "crate::clock::rfc3339")]
    pub starts_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub ends_at: DateTime<Utc>,
    pub currency: String,
    #[schema(value_type = String, example = "on_sale")]
    pub status: EventStatus,
    pub sections: Vec<SectionView>,
    /// The most tickets (pending + confirmed) one customer may hold; `null` = no limit.
    /// (`default`: a JSON view without the field reads as no limit.)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_tickets_per_customer: Option<u32>,
    /// Version of the event's stream; the `ETag` and `If-Match` value.
    pub version: u64,
    #[serde(with = "crate::clock::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AvailabilityView {
    pub event_id: Uuid,
    pub sections: Vec<SectionView>,
    pub total_available: u64,
}

impl From<&EventView> for AvailabilityView {
    fn from(e: &EventView) -> Self {
        AvailabilityView {
            event_id: e.id,
            sections: e.sections.clone(),
            total_available: e.sections.iter().map(|s| u64::from(s.available)).sum(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReservationView {
    pub reservation_id: Uuid,
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub section: String,
    pub quantity: u32,
    #[schema(value_type = String, example = "pending")]
    pub status: ReservationStatus,
    pub total_cents: i64,
    pub currency: String,
    #[serde(with = "crate::clock::rfc3339")]
    pub expires_at: DateTime<Utc>,
    pub payment_id: Option<Uuid>,
    #[serde(with = "crate::clock::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub reservation_id: Uuid,
    pub event_id: Uuid,
    pub user_id: Uuid,
    #[schema(value_type = String, example = "captured")]
    pub status: PaymentStatus,
    pub amount_cents: i64,
    pub currency: String,
    /// Why a payment failed or was refunded.
    pub reason: Option<String>,
    #[serde(with = "crate::clock::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::clock::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SectionSales {
    pub section: String,
    pub tickets_sold: u64,
    pub revenue_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SalesView {
    pub event_id: Uuid,
    pub tickets_sold: u64,
    pub revenue_cents: i64,
    pub currency: String,
    pub by_section: Vec<SectionSales>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub reservation_id: Uuid,
    pub event_id: Uuid,
    pub event_name: String,
    pub section: String,
    pub quantity: u32,
    pub total_cents: i64,
    pub currency: String,
    #[schema(value_type = String, example = "confirmed")]
    pub status: ReservationStatus,
    pub payment_id: Option<Uuid>,
    #[serde(with = "crate::clock::rfc3339")]
    pub purchased_at: DateTime<Utc>,
}

/// A reservation as it is right after it was placed: what the read models store for it and
/// what the command's answer shows, from the same code.
impl From<&ReservationPlaced> for ReservationView {
    fn from(e: &ReservationPlaced) -> Self {
        ReservationView {
            reservation_id: e.reservation_id.0,
            event_id: e.event_id.0,
            user_id: e.user_id.0,
            section: e.section.clone(),
            quantity: e.quantity,
            status: ReservationStatus::Pending,
            total_cents: e.total.amount_cents,
            currency: e.total.currency.to_string(),
            expires_at: e.expires_at,
            payment_id: None,
            created_at: e.placed_at,
            updated_at: e.placed_at,
        }
    }
}

impl PaymentView {
    /// A payment as its first event records it.
    fn recorded(
        ids: (
            crate::domain::PaymentId,
            crate::domain::ReservationId,
            crate::domain::EventId,
            crate::domain::UserId,
        ),
        amount: crate::domain::Money,
        status: PaymentStatus,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        let (payment, reservation, event, user) = ids;
        PaymentView {
            payment_id: payment.0,
            reservation_id: reservation.0,
            event_id: event.0,
            user_id: user.0,
            status,
            amount_cents: amount.amount_cents,
            currency: amount.currency.to_string(),
            reason,
            created_at: at,
            updated_at: at,
        }
    }
}

impl From<&PaymentCaptured> for PaymentView {
    fn from(e: &PaymentCaptured) -> Self {
        let ids = (e.payment_id, e.reservation_id, e.event_id, e.user_id);
        PaymentView::recorded(ids, e.amount, PaymentStatus::Captured, None, e.at)
    }
}

impl From<&PaymentDeclined> for PaymentView {
    fn from(e: &PaymentDeclined) -> Self {
        let ids = (e.payment_id, e.reservation_id, e.event_id, e.user_id);
        PaymentView::recorded(
            ids,
            e.amount,
            PaymentStatus::Failed,
            Some(e.reason.clone()),
            e.at,
        )
    }
}
