//! Webhooks: organizers' systems hear about their sales. An organizer registers endpoints
//! (URL, event types or `*`, optionally one event); the `WebhookFanout` bus consumer
//! (`fanout.rs`) turns each event of the organizer's own events into one delivery per
//! subscribed endpoint, stored here with a message id stable per (event, endpoint); the
//! `Dispatcher` (`dispatch.rs`) posts them (`post.rs`), signed by the Standard Webhooks
//! scheme (`signing.rs`), with one bounded worker per endpoint so that a slow or dead
//! endpoint never delays another. `guard.rs` refuses private addresses in production. The
//! port is `WebhookStore`, with `memory` and `postgres` adapters that both pass `contract`.

#[cfg(test)]
mod contract;
pub mod dispatch;
pub mod fanout;
pub mod guard;
pub mod memory;
mod post;
pub mod postgres;
pub mod signing;

use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Whether an endpoint receives deliveries, as its organizer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    Active,
    /// A delivery exhausted its attempts; new deliveries are still tried, and the next
    /// success makes it active again.
    Failing,
    /// The receiver answered `410 Gone`: nothing more is sent.
    Disabled,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Active => "active",
            EndpointStatus::Failing => "failing",
            EndpointStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(EndpointStatus::Active),
            "failing" => Some(EndpointStatus::Failing),
            "disabled" => Some(EndpointStatus::Disabled),
            _ => None,
        }
    }
}

/// A registered endpoint with its signing secrets. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub url: String,
    /// Event type names (`reservation.confirmed`, ...) or `*`.
    pub event_types: Vec<String>,
    /// Only this event's deliveries, when set.
    pub event_id: Option<Uuid>,
    pub description: Option<String>,
    pub status: EndpointStatus,
    pub secret: String,
    /// The secret before the last rotation, and until when it still signs.
    pub previous_secret: Option<(String, DateTime<Utc>)>,
    pub created_at: DateTime<Utc>,
    /// The event log's head when the endpoint was registered: it hears only of later events
    /// (a bus that replays the log, as the in-process one does at start-up, sends no history).
    pub from_position: u64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("owner_id", &self.owner_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("event_id", &self.event_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Whether this endpoint wants `event_type` of event `event_id`.
    pub fn wants(&self, event_type: &str, event_id: Uuid) -> bool {
        self.status != EndpointStatus::Disabled
            && self.event_id.is_none_or(|only| only == event_id)
            && self.event_types.iter().any(|t| t == "*" || t == event_type)
    }

    /// The secrets that sign a message sent at `now`: the current one, and the previous one
    /// during the 24 hours after a rotation.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let Some((previous, until)) = &self.previous_secret {
            if now < *until {
                secrets.push(previous);
            }
        }
        secrets
    }

    /// What the API shows: everything but the secrets.
    pub fn view(&self) -> EndpointView {
        EndpointView {
            id: self.id,
            owner_id: self.owner_id,
            url: self.url.clone(),
            event_types: self.event_types.clone(),
            event_id: self.event_id,
            description: self.description.clone(),
            status: self.status,
            created_at: self.created_at,
        }
    }
}

/// An endpoint as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub event_id: Option<Uuid>,
    pub description: Option<String>,
    pub status: EndpointStatus,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One message to one endpoint, with what became of it. `body` is fixed when the message is
/// made, so every attempt sends (and signs) the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The `webhook-id`: the same for every attempt and redelivery.
    pub message_id: String,
    pub event_type: String,
    pub body: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Delivery {
    pub fn view(&self) -> DeliveryView {
        DeliveryView {
            id: self.id,
            message_id: self.message_id.clone(),
            event_type: self.event_type.clone(),
            status: self.status,
            attempts: self.attempts,
            last_status_code: self.last_status_code,
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
        }
    }
}

/// A delivery in the endpoint's log (the body is not repeated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub message_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The outcome of one attempt, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub status: DeliveryStatus,
    pub status_code: Option<u16>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// A delivery still pending stays held by its sender until then (its next attempt and
    /// that attempt's time-out, see `WebhookStore::claim`); `None` lets it go.
    pub held_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook store unavailable: {0}")]
    Unavailable(String),
    /// A stored row that cannot be read back (a bug or a hand edit).
    #[error("corrupt webhook row: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn create(&self, endpoint: &Endpoint) -> Result<(), WebhookError>;
    async fn get(&self, id: Uuid) -> Result<Option<Endpoint>, WebhookError>;
    /// Endpoints of `owner` (every endpoint for `None`), oldest first.
    async fn list(
        &self,
        owner: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Endpoint>, WebhookError>;
    /// Deletes the endpoint and its deliveries; `false` when there was none.
    async fn delete(&self, id: Uuid) -> Result<bool, WebhookError>;
    /// Makes `secret` current; the old one keeps signing until `previous_until`.
    async fn rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, WebhookError>;
    async fn set_status(&self, id: Uuid, status: EndpointStatus) -> Result<(), WebhookError>;
    /// The endpoints of any of `owners` that are not disabled, by id: what the fan-out filters
    /// a batch's events against (`Endpoint::wants`, `from_position`).
    async fn subscribers(&self, owners: &[Uuid]) -> Result<Vec<Endpoint>, WebhookError>;
    /// Stores new deliveries, skipping any whose (endpoint, message id) exists; returns the
    /// ones stored.
    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<Vec<Delivery>, WebhookError>;
    /// Up to `limit` pending deliveries of `endpoint` that no instance holds at `now`, oldest
    /// first.
    async fn pending(
        &self,
        endpoint: Uuid,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>, WebhookError>;
    /// Holds `delivery` for `holder` (one id per sending instance) until `until` if it is
    /// pending and nobody else holds it at `now`: only its holder sends it, so instances do
    /// not send one delivery at once (a holder that dies lets go when `until` passes). The
    /// holder claims again before each attempt, which extends its hold. False when another
    /// holds it or it is not pending any more.
    async fn claim(
        &self,
        delivery: Uuid,
        holder: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, WebhookError>;
    /// Endpoints that have pending deliveries.
    async fn endpoints_with_pending(&self) -> Result<Vec<Uuid>, WebhookError>;
    /// Pending deliveries over every endpoint.
    async fn pending_count(&self) -> Result<u64, WebhookError>;
    /// Records `holder`'s attempt: one more attempt, its status code, the new status. Only
    /// the holder of a pending delivery records (false, and nothing changes, when another
    /// instance claimed it since, a redelivery let it go, or it was settled): a late answer
    /// never undoes what the delivery's current sender recorded.
    async fn record_attempt(
        &self,
        delivery: Uuid,
        holder: Uuid,
        attempt: Attempt,
    ) -> Result<bool, WebhookError>;
    /// The endpoint's deliveries, newest first.
    async fn deliveries(
        &self,
        endpoint: Uuid,
        page: PageRequest,
    ) -> Result<Page<Delivery>, WebhookError>;
    /// Makes a delivery of `endpoint` pending again with a fresh allowance of attempts
    /// (its count of attempts is kept) and held by nobody; `None` when it does not exist.
    async fn redeliver(
        &self,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Option<Delivery>, WebhookError>;
}
