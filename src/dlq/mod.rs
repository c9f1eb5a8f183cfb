//! The dead letter queue: messages a bus consumer could not handle, and the later messages of
//! the same stream parked behind them. The `DeadLetters` port stores entries and their
//! status transitions (pending -> processing -> resolved | pending, pending -> resolved |
//! discarded; processing -> pending again once a claim is older than `CLAIM_TIMEOUT`);
//! `app::dead_letters` drives retries through the original handler. Parking behind an open
//! entry is one atomic step with the check, serialized with closing that entry, so a message
//! is never parked behind an entry whose followers were already replayed. Adapters: `memory`,
//! `postgres` (table in `migrations_events/`); both pass `contract`.

#[cfg(test)]
pub mod contract;
pub mod memory;
pub mod postgres;

use crate::domain::UserId;
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlqStatus {
    Pending,
    Processing,
    Resolved,
    Discarded,
}

impl DlqStatus {
    pub const ALL: [DlqStatus; 4] = [
        DlqStatus::Pending,
        DlqStatus::Processing,
        DlqStatus::Resolved,
        DlqStatus::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Pending => "pending",
            DlqStatus::Processing => "processing",
            DlqStatus::Resolved => "resolved",
            DlqStatus::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Pending and processing entries block their stream.
    pub fn is_open(self) -> bool {
        matches!(self, DlqStatus::Pending | DlqStatus::Processing)
    }
}

/// What a consumer records when it gives up on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message_key: String,
    pub stream_id: Option<String>,
    pub stream_version: Option<u64>,
    pub event_type: Option<String>,
    pub event_version: Option<u16>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub error: String,
    /// The error's cause chain, outermost first.
    pub causes: Vec<String>,
    pub parked_behind: Option<i64>,
    pub retry_count: u32,
    pub failed_at: DateTime<Utc>,
}

/// One entry as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message_key: String,
    pub stream_id: Option<String>,
    pub stream_version: Option<u64>,
    pub event_type: Option<String>,
    pub event_version: Option<u16>,
    /// The payload, base64 (standard alphabet).
    pub payload_base64: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub error: String,
    pub causes: Vec<String>,
    pub parked_behind: Option<i64>,
    pub retry_count: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub status: DlqStatus,
    pub resolved_by: Option<uuid::Uuid>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub notes: Option<String>,
}

impl DeadLetter {
    /// The message's payload as it was received.
    pub fn payload(&self) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.payload_base64)
            .unwrap_or_default()
    }

    /// The message's headers as they were received.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    }
}

/// Entries per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DlqStats {
    pub pending: u64,
    pub processing: u64,
    pub resolved: u64,
    pub discarded: u64,
}

impl DlqStats {
    /// Sets `ticketing_dlq_entries{status}` to these counts.
    pub fn record(&self, metrics: &crate::observability::Metrics) {
        for (status, n) in [
            ("pending", self.pending),
            ("processing", self.processing),
            ("resolved", self.resolved),
            ("discarded", self.discarded),
        ] {
            metrics
                .dlq_entries
                .with_label_values(&[status])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// How long a retry may hold an entry (`processing`) before the entry counts as abandoned by
/// an instance that died mid-retry and returns to `pending`. Retries run one handler call
/// (seconds at most), so five minutes is far beyond a live one.
pub const CLAIM_TIMEOUT: chrono::Duration = chrono::Duration::minutes(5);

/// A message parked behind the open entry of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub id: i64,
    pub behind: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter {0} not found")]
    NotFound(i64),
    /// The entry is not in a state the action applies to.
    #[error("dead letter {id} is {status:?}")]
    WrongStatus { id: i64, status: DlqStatus },
    /// An earlier entry of the same stream is still open: it goes first.
    #[error("dead letter {id} waits behind entry {behind} of the same stream")]
    Blocked { id: i64, behind: i64 },
    #[error("dead letter queue unavailable: {0}")]
    Unavailable(String),
}

/// How an entry was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub status: DlqStatus,
    pub by: Option<UserId>,
    pub notes: Option<String>,
    pub at: DateTime<Utc>,
}

#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Records a new pending entry and returns its id.
    async fn park(&self, entry: NewDeadLetter) -> Result<i64, DlqError>;
    /// When `entry`'s stream has an open entry for its consumer, records `entry` parked
    /// behind the oldest one and returns both ids; else records nothing. Check and insert are
    /// one step, ordered with `close` of that entry: either the close comes first (nothing is
    /// parked) or the parked entry exists before the close is seen, so whoever replays the
    /// followers after the close finds it.
    async fn park_behind_open(&self, entry: NewDeadLetter) -> Result<Option<Parked>, DlqError>;
    /// The oldest open entry of `stream_id` for `consumer`, if any: later messages of the
    /// stream must wait behind it.
    async fn open_entry_of(&self, consumer: &str, stream_id: &str)
        -> Result<Option<i64>, DlqError>;
    /// `open_entry_of` for many streams at once (a consumer's batch): the oldest open entry
    /// of each of `stream_ids` that has one. The default asks per stream; adapters answer in
    /// one look-up.
    async fn open_entries_of(
        &self,
        consumer: &str,
        stream_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, i64>, DlqError> {
        let mut heads = std::collections::HashMap::new();
        for stream in stream_ids {
            if let Some(head) = self.open_entry_of(consumer, stream).await? {
                heads.insert((*stream).to_owned(), head);
            }
        }
        Ok(heads)
    }
    /// Entries closed before `closed_before` whose followers wait for nobody: the oldest
    /// open entry of their stream (for their consumer) is parked behind them and was never
    /// tried, so the replay that follows a close did not run to its end (its request timed
    /// out, its instance died, the queue was away). Oldest first, at most 100.
    async fn stranded_heads(
        &self,
        closed_before: DateTime<Utc>,
    ) -> Result<Vec<DeadLetter>, DlqError>;
    async fn get(&self, id: i64) -> Result<DeadLetter, DlqError>;
    /// Newest first, optionally only one status.
    async fn list(
        &self,
        status: Option<DlqStatus>,
        page: PageRequest,
    ) -> Result<Page<DeadLetter>, DlqError>;
    async fn stats(&self) -> Result<DlqStats, DlqError>;
    /// pending -> processing at `at`, for a retry; refused while an earlier entry of the same
    /// stream is open.
    async fn claim(&self, id: i64, at: DateTime<Utc>) -> Result<DeadLetter, DlqError>;
    /// processing -> pending for every entry claimed before `claimed_before` (its retry's
    /// instance died); returns their ids.
    async fn release_stale_claims(
        &self,
        claimed_before: DateTime<Utc>,
    ) -> Result<Vec<i64>, DlqError>;
    /// processing -> pending after a failed retry: the new error, one more retry.
    async fn retry_failed(
        &self,
        id: i64,
        error: String,
        causes: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<DeadLetter, DlqError>;
    /// An entry in status `from` (pending or processing) -> resolved or discarded.
    async fn close(
        &self,
        id: i64,
        from: DlqStatus,
        closing: Closing,
    ) -> Result<DeadLetter, DlqError>;
    fn kind(&self) -> &'static str;
}
