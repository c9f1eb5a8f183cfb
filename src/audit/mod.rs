//! The audit trail of sensitive actions (logins, registrations, event changes, refunds, every
//! DLQ action, and callers refused by role): the `AuditRecord` type, the `AuditStore` port
//! with its memory and PostgreSQL adapters, and `AuditLog`, the handle request handlers use.
//! Recording never blocks or fails a request: `AuditLog::record` puts the record on a bounded
//! channel that a background task writes in batches; a full channel or a failed write is
//! counted in `ticketing_audit_records_total` and logged, never silently lost. A record must
//! never hold a password, a token or a hash.

#[cfg(test)]
pub mod contract;
pub mod memory;
pub mod postgres;

use crate::backoff::Backoff;
use crate::observability::Metrics;
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// The action was carried out.
    Success,
    /// The action was attempted and failed (bad credentials, a conflict, invalid input).
    Failure,
    /// The caller was not allowed to do it.
    Denied,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Success => "success",
            AuditResult::Failure => "failure",
            AuditResult::Denied => "denied",
        }
    }

    /// The stored text back; anything else is corrupt data.
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        Self::try_from(text.to_owned())
    }
}

impl TryFrom<String> for AuditResult {
    type Error = AuditError;

    fn try_from(text: String) -> Result<Self, AuditError> {
        match text.as_str() {
            "success" => Ok(AuditResult::Success),
            "failure" => Ok(AuditResult::Failure),
            "denied" => Ok(AuditResult::Denied),
            other => Err(AuditError::Internal(format!(
                "unknown audit result {other:?}"
            ))),
        }
    }
}

/// One audited action. General on purpose: `action` is a dotted name (`auth.login`,
/// `event.cancel`, `payment.refund`, `dlq.retry`, `access.denied`) and the resource a type
/// (`user`, `event`, `payment`, `reservation`, `dlq_entry`, `route`) plus an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// The signed-in caller; `None` for an anonymous caller or a failed login.
    pub actor_id: Option<Uuid>,
    /// The caller's role, or the attempted email of a failed login.
    pub actor_label: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub result: AuditResult,
    pub correlation_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// Anything else worth keeping (a refund reason, the error of a failed attempt).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl AuditRecord {
    /// A record of `action` on a resource of `resource_type`, without actor or request data.
    pub fn new(
        at: DateTime<Utc>,
        action: impl Into<String>,
        resource_type: impl Into<String>,
        result: AuditResult,
    ) -> Self {
        AuditRecord {
            id: Uuid::new_v4(),
            at,
            actor_id: None,
            actor_label: None,
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id: None,
            result,
            correlation_id: None,
            client_ip: None,
            user_agent: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn resource_id(mut self, id: impl ToString) -> Self {
        self.resource_id = Some(id.to_string());
        self
    }

    pub fn actor(mut self, id: Option<Uuid>, label: impl Into<String>) -> Self {
        self.actor_id = id;
        self.actor_label = Some(label.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// What `GET /admin/audit` may filter on; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
}

impl AuditFilter {
    /// Whether `record` passes the filter (the memory adapter's query, and the contract's).
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.actor_id.is_none_or(|a| record.actor_id == Some(a))
            && self.action.as_ref().is_none_or(|a| &record.action == a)
            && self
                .resource_type
                .as_ref()
                .is_none_or(|t| &record.resource_type == t)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|i| record.resource_id.as_ref() == Some(i))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The store cannot be reached right now; worth a retry.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("internal audit store error: {0}")]
    Internal(String),
}

/// Where audit records are kept. Records are only ever inserted.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Inserts every record, atomically.
    async fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError>;
    /// Matching records, newest first: by `at`, and records of the same instant in reverse
    /// insertion order.
    async fn list(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, AuditError>;
    async fn ping(&self) -> Result<(), AuditError>;
    fn kind(&self) -> &'static str;
}

/// Most records the background writer inserts in one statement.
const WRITE_BATCH: usize = 256;
/// Attempts per batch before its records are counted as failed.
const WRITE_ATTEMPTS: u32 = 3;

/// Refusals a caller can repeat at will (`AuditLog::record_refusal`) recorded per actor: a
/// burst of this many, then one a second.
const REFUSAL_BURST: u32 = 10;
/// Every this many refusals, the limit forgets the actors whose burst is full again.
const REFUSAL_SWEEP_EVERY: u64 = 1_024;

/// The handle handlers record with; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    store: Arc<dyn AuditStore>,
    metrics: Arc<Metrics>,
    refusals: Arc<DefaultKeyedRateLimiter<Uuid>>,
    refusals_seen: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the background writer with a channel of `capacity` records. The task ends once
    /// every `AuditLog` clone is dropped and the channel is drained. A write without an answer
    /// within `limit` fails (and is retried), so a connection gone silent cannot hold it.
    pub fn spawn(
        store: Arc<dyn AuditStore>,
        metrics: Arc<Metrics>,
        capacity: usize,
        limit: Duration,
    ) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let writer = write_batches(rx, Arc::clone(&store), Arc::clone(&metrics), limit);
        let task = tokio::spawn(writer);
        let quota = Quota::per_second(NonZeroU32::MIN)
            .allow_burst(NonZeroU32::new(REFUSAL_BURST).unwrap_or(NonZeroU32::MIN));
        let refusals = Arc::new(RateLimiter::keyed(quota));
        let log = AuditLog {
            tx,
            store,
            metrics,
            refusals,
            refusals_seen: Arc::default(),
        };
        (log, task)
    }

    /// Queues a refusal `actor` can repeat at will (a route their role does not open) as
    /// `record` does, past a burst of `REFUSAL_BURST` at most one a second per actor: the rest
    /// are counted (`throttled`) and not written, so that one caller cannot fill the queue
    /// every other record goes through.
    pub fn record_refusal(&self, actor: Uuid, record: AuditRecord) {
        if self.refusals_seen.fetch_add(1, Ordering::Relaxed) % REFUSAL_SWEEP_EVERY == 0 {
            self.refusals.retain_recent();
            self.refusals.shrink_to_fit();
        }
        if self.refusals.check_key(&actor).is_err() {
            self.metrics
                .audit_records
                .with_label_values(&["throttled"])
                .inc();
            return;
        }
        self.record(record);
    }

    /// Queues `record` for writing without waiting. When the queue is full (the store is down
    /// or far behind) the record is dropped, counted and logged with its action and resource.
    pub fn record(&self, record: AuditRecord) {
        if let Err(e) = self.tx.try_send(record) {
            let (why, record) = match e {
                mpsc::error::TrySendError::Full(r) => ("queue full", r),
                mpsc::error::TrySendError::Closed(r) => ("writer stopped", r),
            };
            self.metrics
                .audit_records
                .with_label_values(&["dropped"])
                .inc();
            tracing::error!(
                reason = why,
                action = %record.action,
                resource_type = %record.resource_type,
                resource_id = ?record.resource_id,
                actor_id = ?record.actor_id,
                result = record.result.as_str(),
                "audit record dropped"
            );
        }
    }

    pub async fn list(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, AuditError> {
        self.store.list(filter, page).await
    }

    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }
}

/// The background writer: takes whatever is queued (up to `WRITE_BATCH`), inserts it in one
/// call, retries a failed batch with backoff, and counts and logs records it had to give up on.
async fn write_batches(
    mut rx: mpsc::Receiver<AuditRecord>,
    store: Arc<dyn AuditStore>,
    metrics: Arc<Metrics>,
    limit: Duration,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut attempt = 0;
        let mut backoff = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            attempt += 1;
            let silent = || AuditError::Unavailable("no answer in time".into());
            match crate::db::within(limit, store.insert(&batch), silent).await {
                Ok(()) => {
                    metrics
                        .audit_records
                        .with_label_values(&["written"])
                        .inc_by(batch.len() as u64);
                    break;
                }
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "audit write failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => {
                    metrics
                        .audit_records
                        .with_label_values(&["failed"])
                        .inc_by(batch.len() as u64);
                    for r in &batch {
                        tracing::error!(
                            error = %e,
                            action = %r.action,
                            resource_type = %r.resource_type,
                            resource_id = ?r.resource_id,
                            actor_id = ?r.actor_id,
                            result = r.result.as_str(),
                            at = %r.at,
                            "audit record could not be written"
                        );
                    }
                    break;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests;
