//! The in-memory `WebhookStore`: endpoints and deliveries in maps behind one lock (never
//! held across an await).

use super::{
    Attempt, Delivery, DeliveryStatus, Endpoint, EndpointStatus, WebhookError, WebhookStore,
};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

#[derive(Default)]
struct State {
    endpoints: HashMap<Uuid, Endpoint>,
    /// In arrival order, so "newest first" is the reverse.
    deliveries: Vec<Delivery>,
    /// Who holds a pending delivery (the instance sending it), and until when.
    held: HashMap<Uuid, (Uuid, DateTime<Utc>)>,
}

impl State {
    /// Whether nobody but `holder` (if any) holds `delivery` at `now`.
    fn free(&self, delivery: Uuid, holder: Option<Uuid>, now: DateTime<Utc>) -> bool {
        self.held
            .get(&delivery)
            .is_none_or(|(by, until)| *until <= now || Some(*by) == holder)
    }
}

#[derive(Default)]
pub struct MemoryWebhooks(Mutex<State>);

impl MemoryWebhooks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl WebhookStore for MemoryWebhooks {
    async fn create(&self, endpoint: &Endpoint) -> Result<(), WebhookError> {
        self.state().endpoints.insert(endpoint.id, endpoint.clone());
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Endpoint>, WebhookError> {
        Ok(self.state().endpoints.get(&id).cloned())
    }

    async fn list(
        &self,
        owner: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Endpoint>, WebhookError> {
        let mut all: Vec<Endpoint> = self
            .state()
            .endpoints
            .values()
            .filter(|e| owner.is_none_or(|o| e.owner_id == o))
            .cloned()
            .collect();
        all.sort_by_key(|e| (e.created_at, e.id));
        Ok(page.slice(all))
    }

    async fn delete(&self, id: Uuid) -> Result<bool, WebhookError> {
        let mut state = self.state();
        state.deliveries.retain(|d| d.endpoint_id != id);
        Ok(state.endpoints.remove(&id).is_some())
    }

    async fn rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, WebhookError> {
        let mut state = self.state();
        let Some(endpoint) = state.endpoints.get_mut(&id) else {
            return Ok(None);
        };
        let old = std::mem::replace(&mut endpoint.secret, secret.to_owned());
        endpoint.previous_secret = Some((old, previous_until));
        Ok(Some(endpoint.clone()))
    }

    async fn set_status(&self, id: Uuid, status: EndpointStatus) -> Result<(), WebhookError> {
        if let Some(endpoint) = self.state().endpoints.get_mut(&id) {
            endpoint.status = status;
        }
        Ok(())
    }

    async fn subscribers(&self, owners: &[Uuid]) -> Result<Vec<Endpoint>, WebhookError> {
        let mut found: Vec<Endpoint> = self
            .state()
            .endpoints
            .values()
            .filter(|e| owners.contains(&e.owner_id) && e.status != EndpointStatus::Disabled)
            .cloned()
            .collect();
        found.sort_by_key(|e| e.id);
        Ok(found)
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<Vec<Delivery>, WebhookError> {
        let mut state = self.state();
        let mut stored = Vec::new();
        for d in deliveries {
            let exists = state
                .deliveries
                .iter()
                .any(|o| o.endpoint_id == d.endpoint_id && o.message_id == d.message_id);
            if !exists && state.endpoints.contains_key(&d.endpoint_id) {
                state.deliveries.push(d.clone());
                stored.push(d.clone());
            }
        }
        Ok(stored)
    }

    async fn pending(
        &self,
        endpoint: Uuid,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>, WebhookError> {
        let state = self.state();
        Ok(state
            .deliveries
            .iter()
            .filter(|d| d.endpoint_id == endpoint && d.status == DeliveryStatus::Pending)
            .filter(|d| state.free(d.id, None, now))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn claim(
        &self,
        delivery: Uuid,
        holder: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, WebhookError> {
        let mut state = self.state();
        let pending = state
            .deliveries
            .iter()
            .any(|d| d.id == delivery && d.status == DeliveryStatus::Pending);
        if !pending || !state.free(delivery, Some(holder), now) {
            return Ok(false);
        }
        state.held.insert(delivery, (holder, until));
        Ok(true)
    }

    async fn endpoints_with_pending(&self) -> Result<Vec<Uuid>, WebhookError> {
        let mut ids: Vec<Uuid> = self
            .state()
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .map(|d| d.endpoint_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn pending_count(&self) -> Result<u64, WebhookError> {
        Ok(self
            .state()
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .count() as u64)
    }

    async fn record_attempt(
        &self,
        delivery: Uuid,
        holder: Uuid,
        attempt: Attempt,
    ) -> Result<bool, WebhookError> {
        let mut state = self.state();
        if state.held.get(&delivery).map(|(by, _)| *by) != Some(holder) {
            return Ok(false);
        }
        let pending = |d: &&mut Delivery| d.id == delivery && d.status == DeliveryStatus::Pending;
        let Some(d) = state.deliveries.iter_mut().find(pending) else {
            return Ok(false);
        };
        d.attempts += 1;
        d.status = attempt.status;
        d.last_status_code = attempt.status_code;
        d.next_attempt_at = attempt.next_attempt_at;
        match attempt.held_until {
            Some(until) => state.held.insert(delivery, (holder, until)),
            None => state.held.remove(&delivery),
        };
        Ok(true)
    }

    async fn deliveries(
        &self,
        endpoint: Uuid,
        page: PageRequest,
    ) -> Result<Page<Delivery>, WebhookError> {
        let mine: Vec<Delivery> = self
            .state()
            .deliveries
            .iter()
            .rev()
            .filter(|d| d.endpoint_id == endpoint)
            .cloned()
            .collect();
        Ok(page.slice(mine))
    }

    async fn redeliver(
        &self,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Option<Delivery>, WebhookError> {
        let mut state = self.state();
        let Some(d) = state
            .deliveries
            .iter_mut()
            .find(|d| d.id == delivery && d.endpoint_id == endpoint)
        else {
            return Ok(None);
        };
        d.status = DeliveryStatus::Pending;
        d.next_attempt_at = None;
        let redelivered = d.clone();
        state.held.remove(&delivery);
        Ok(Some(redelivered))
    }
}

#[cfg(test)]
mod tests {
    /// The in-memory store keeps the webhook store contract.
    #[tokio::test]
    async fn memory_store_passes_the_webhook_store_contract() {
        super::super::contract::run(&super::MemoryWebhooks::default()).await;
    }
}
