//! Webhook endpoints as organizers manage them: register (the secret is shown once, here),
//! list, read, delete, rotate the secret (the old one keeps signing for 24 hours), read the
//! delivery log and redeliver. An endpoint is seen only by its owner and admins (404 to
//! anyone else); an endpoint limited to one event needs that event to be the caller's. In
//! production a URL must resolve to public addresses only (`webhooks::guard`).

use super::{policy, queries, App, AppError, FieldError};
use crate::auth::Principal;
use crate::domain::{DomainEvent, EventId};
use crate::paging::{Page, PageRequest};
use crate::webhooks::dispatch::Dispatcher;
use crate::webhooks::{
    guard, signing, DeliveryView, Endpoint, EndpointStatus, EndpointView, WebhookError,
    WebhookStore,
};
use std::sync::Arc;
use uuid::Uuid;

/// How long the previous secret keeps signing after a rotation.
const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

/// Longest URL accepted.
const MAX_URL: usize = 2000;

/// The webhook store, the dispatcher and the address policy.
pub struct Webhooks {
    pub store: Arc<dyn WebhookStore>,
    pub dispatcher: Dispatcher,
    /// Production: only public addresses.
    pub strict: bool,
}

/// What an organizer registers.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub event_id: Option<Uuid>,
    pub description: Option<String>,
}

/// A registered endpoint with its secret, shown this once.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_` + base64 of 32 random bytes.
    pub secret: String,
}

impl From<WebhookError> for AppError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "webhook store unavailable");
                AppError::Unavailable {
                    detail: "the webhook store is unavailable".into(),
                    retry_after: 1,
                }
            }
            WebhookError::Corrupt(_) => AppError::Internal(anyhow::Error::new(e)),
        }
    }
}

/// Event types an endpoint may ask for: `*` or a type organizers hear about.
fn known_type(t: &str) -> bool {
    t == "*"
        || DomainEvent::CATALOGUE
            .iter()
            .any(|(name, _)| *name == t && !name.starts_with("inventory."))
}

impl App {
    /// Registers an endpoint for `caller` (organizers and admins).
    pub async fn create_webhook(
        &self,
        caller: &Principal,
        new: NewEndpoint,
    ) -> Result<WithSecret, AppError> {
        policy::create_events(caller)?;
        let mut errors = Vec::new();
        let url = new.url.trim().to_owned();
        if url.len() > MAX_URL {
            errors.push(FieldError::new("url", "must be at most 2000 characters"));
        } else if let Err(e) = guard::check_url(&url, self.webhooks.strict).await {
            errors.push(FieldError::new("url", e.to_string()));
        }
        if new.event_types.is_empty() {
            errors.push(FieldError::new(
                "event_types",
                "must name at least one type or \"*\"",
            ));
        }
        if let Some(bad) = new.event_types.iter().find(|t| !known_type(t)) {
            errors.push(FieldError::new(
                "event_types",
                format!("unknown event type {bad:?}"),
            ));
        }
        if !errors.is_empty() {
            return Err(AppError::Validation(errors));
        }
        if let Some(event) = new.event_id {
            let view = self
                .reads
                .fresh()
                .await
                .event(EventId(event))
                .await?
                .ok_or(AppError::NotFound("event"))?;
            policy::manage_event(caller, view)?;
        }
        let endpoint = Endpoint {
            id: Uuid::new_v4(),
            owner_id: caller.user_id.0,
            url,
            event_types: new.event_types,
            event_id: new.event_id,
            description: new.description.map(|d| d.trim().to_owned()),
            status: EndpointStatus::Active,
            secret: signing::new_secret(),
            previous_secret: None,
            created_at: self.clock.now(),
            from_position: *self.event_store().subscribe_head().borrow(),
        };
        self.webhooks.store.create(&endpoint).await?;
        Ok(WithSecret {
            endpoint: endpoint.view(),
            secret: endpoint.secret,
        })
    }

    /// The caller's endpoints (an admin's: every endpoint), oldest first.
    pub async fn webhooks(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> Result<Page<EndpointView>, AppError> {
        policy::create_events(caller)?;
        let page = queries::valid_page(page)?;
        let owner = (!caller.is_admin()).then_some(caller.user_id.0);
        let found = self.webhooks.store.list(owner, page).await?;
        Ok(Page {
            items: found.items.iter().map(Endpoint::view).collect(),
            page: found.page,
            page_size: found.page_size,
            total_count: found.total_count,
            total_pages: found.total_pages,
        })
    }

    /// One endpoint the caller owns (or any, for an admin); 404 otherwise.
    async fn own_webhook(&self, caller: &Principal, id: Uuid) -> Result<Endpoint, AppError> {
        let endpoint = self
            .webhooks
            .store
            .get(id)
            .await?
            .ok_or(AppError::NotFound("webhook"))?;
        policy::own_record(caller, endpoint.owner_id, "webhook")?;
        Ok(endpoint)
    }

    pub async fn webhook(&self, caller: &Principal, id: Uuid) -> Result<EndpointView, AppError> {
        Ok(self.own_webhook(caller, id).await?.view())
    }

    pub async fn delete_webhook(&self, caller: &Principal, id: Uuid) -> Result<(), AppError> {
        self.own_webhook(caller, id).await?;
        if self.webhooks.store.delete(id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound("webhook"))
        }
    }

    /// A new secret; the previous one keeps signing for 24 hours.
    pub async fn rotate_webhook_secret(
        &self,
        caller: &Principal,
        id: Uuid,
    ) -> Result<String, AppError> {
        self.own_webhook(caller, id).await?;
        let secret = signing::new_secret();
        let until = self.clock.now() + ROTATION_OVERLAP;
        self.webhooks
            .store
            .rotate(id, &secret, until)
            .await?
            .ok_or(AppError::NotFound("webhook"))?;
        Ok(secret)
    }

    /// The endpoint's delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        caller: &Principal,
        id: Uuid,
        page: PageRequest,
    ) -> Result<Page<DeliveryView>, AppError> {
        self.own_webhook(caller, id).await?;
        let page = queries::valid_page(page)?;
        let found = self.webhooks.store.deliveries(id, page).await?;
        Ok(Page {
            items: found.items.iter().map(|d| d.view()).collect(),
            page: found.page,
            page_size: found.page_size,
            total_count: found.total_count,
            total_pages: found.total_pages,
        })
    }

    /// Sends a delivery again, with its message id, and a fresh allowance of attempts.
    pub async fn redeliver_webhook(
        &self,
        caller: &Principal,
        id: Uuid,
        delivery: Uuid,
    ) -> Result<(), AppError> {
        let endpoint = self.own_webhook(caller, id).await?;
        if endpoint.status == EndpointStatus::Disabled {
            return Err(AppError::Conflict {
                kind: "invalid-state",
                detail: "the endpoint is disabled (its receiver answered 410 Gone)".into(),
            });
        }
        self.webhooks
            .store
            .redeliver(id, delivery)
            .await?
            .ok_or(AppError::NotFound("delivery"))?;
        self.webhooks.dispatcher.wake(id);
        Ok(())
    }
}
