//! View types: the shapes the read models store and the HTTP API returns.

use crate::domain::concert::EventStatus;
use crate::domain::events::{PaymentCaptured, PaymentDeclined, ReservationPlaced};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema, utoipa::IntoParams)]
pub struct PageRequest {
    /// Page number, from 1.
    #[serde(default = "first_page")]
    pub page: u32,
    /// Items per page, 1..=100.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn first_page() -> u32 {
    1
}
fn default_page_size() -> u32 {
    20
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: 20,
        }
    }
}

impl PageRequest {
    pub fn is_valid(&self) -> bool {
        self.page >= 1 && (1..=MAX_PAGE_SIZE).contains(&self.page_size)
    }

    /// The page of `items` (already cut to this page) out of `total_count`.
    pub fn page_of<T>(self, items: Vec<T>, total_count: u64) -> Page<T> {
        Page {
            items,
            page: self.page,
            page_size: self.page_size,
            total_count,
            total_pages: total_count.div_ceil(u64::from(self.page_size.max(1))),
        }
    }

    /// Rows to skip in an SQL `OFFSET` for this page.
    pub fn offset(self) -> i64 {
        (i64::from(self.page.max(1)) - 1) * i64::from(self.page_size)
    }

    /// Cuts one page out of an already ordered list.
    pub fn slice<T>(self, items: Vec<T>) -> Page<T> {
        let total_count = items.len() as u64;
        let skip = (u64::from(self.page.max(1)) - 1) * u64::from(self.page_size);
        let items = items
            .into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(self.page_size as usize)
            .collect();
        Page {
            items,
            page: self.page,
            page_size: self.page_size,
            total_count,
            total_pages: total_count.div_ceil(u64::from(self.page_size.max(1))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub page_size: u32,
    pub total_count: u64,
    pub total_pages: u64,
}

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
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub currency: String,
    #[schema(value_type = String, example = "on_sale")]
    pub status: EventStatus,
    pub sections: Vec<SectionView>,
    /// Version of the event's stream; the `ETag` and `If-Match` value.
    pub version: u64,
    pub created_at: DateTime<Utc>,
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
    pub expires_at: DateTime<Utc>,
    pub payment_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
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
    pub created_at: DateTime<Utc>,
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
