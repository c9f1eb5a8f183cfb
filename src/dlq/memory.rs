//! The dead letter queue in memory, for the in-memory service and tests.

use super::{
    Closing, DeadLetter, DeadLetters, DlqError, DlqStats, DlqStatus, NewDeadLetter, Parked,
};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Every entry, and when each `processing` one was claimed. One lock over both, so parking
/// behind an entry and closing it are ordered.
#[derive(Default)]
struct Entries {
    list: Vec<DeadLetter>,
    claimed_at: HashMap<i64, DateTime<Utc>>,
}

#[derive(Default)]
pub struct MemoryDeadLetters(Mutex<Entries>);

impl MemoryDeadLetters {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn oldest_open(entries: &[DeadLetter], consumer: &str, stream_id: &str) -> Option<i64> {
    entries
        .iter()
        .find(|e| {
            e.status.is_open()
                && e.consumer == consumer
                && e.stream_id.as_deref() == Some(stream_id)
        })
        .map(|e| e.id)
}

fn push(entries: &mut Vec<DeadLetter>, e: NewDeadLetter) -> i64 {
    let id = i64::try_from(entries.len()).unwrap_or(i64::MAX) + 1;
    entries.push(DeadLetter {
        id,
        consumer: e.consumer,
        topic: e.topic,
        partition: e.partition,
        offset: e.offset,
        message_key: e.message_key,
        stream_id: e.stream_id,
        stream_version: e.stream_version,
        event_type: e.event_type,
        event_version: e.event_version,
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&e.payload),
        metadata: e
            .headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        error: e.error,
        causes: e.causes,
        parked_behind: e.parked_behind,
        retry_count: e.retry_count,
        first_failed_at: e.failed_at,
        last_failed_at: e.failed_at,
        status: DlqStatus::Pending,
        resolved_by: None,
        resolved_at: None,
        notes: None,
    });
    id
}

/// Ids start at 1, so an entry's index is `id - 1`.
fn find(entries: &mut [DeadLetter], id: i64) -> Result<&mut DeadLetter, DlqError> {
    id.checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| entries.get_mut(i))
        .ok_or(DlqError::NotFound(id))
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn park(&self, e: NewDeadLetter) -> Result<i64, DlqError> {
        Ok(push(&mut self.lock().list, e))
    }

    async fn park_behind_open(&self, mut e: NewDeadLetter) -> Result<Option<Parked>, DlqError> {
        let mut entries = self.lock();
        let Some(stream) = e.stream_id.as_deref() else {
            return Ok(None);
        };
        let Some(behind) = oldest_open(&entries.list, &e.consumer, stream) else {
            return Ok(None);
        };
        e.parked_behind = Some(behind);
        let id = push(&mut entries.list, e);
        Ok(Some(Parked { id, behind }))
    }

    async fn open_entry_of(
        &self,
        consumer: &str,
        stream_id: &str,
    ) -> Result<Option<i64>, DlqError> {
        Ok(oldest_open(&self.lock().list, consumer, stream_id))
    }

    async fn stranded_heads(
        &self,
        closed_before: DateTime<Utc>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let entries = self.lock();
        let list = &entries.list;
        let closed_long_ago = |id: i64| {
            list.iter().find(|h| h.id == id).filter(|h| {
                !h.status.is_open() && h.resolved_at.is_some_and(|at| at < closed_before)
            })
        };
        let mut heads: Vec<DeadLetter> = list
            .iter()
            .filter(|f| f.status == DlqStatus::Pending && f.retry_count == 0)
            .filter(|f| {
                f.stream_id
                    .as_deref()
                    .and_then(|s| oldest_open(list, &f.consumer, s))
                    == Some(f.id)
            })
            .filter_map(|f| f.parked_behind.and_then(closed_long_ago))
            .cloned()
            .collect();
        heads.sort_by_key(|h| h.id);
        heads.truncate(100);
        Ok(heads)
    }

    async fn get(&self, id: i64) -> Result<DeadLetter, DlqError> {
        find(&mut self.lock().list, id).map(|e| e.clone())
    }

    async fn list(
        &self,
        status: Option<DlqStatus>,
        page: PageRequest,
    ) -> Result<Page<DeadLetter>, DlqError> {
        let items: Vec<DeadLetter> = self
            .lock()
            .list
            .iter()
            .rev()
            .filter(|e| status.is_none_or(|s| e.status == s))
            .cloned()
            .collect();
        Ok(page.slice(items))
    }

    async fn stats(&self) -> Result<DlqStats, DlqError> {
        let mut stats = DlqStats::default();
        for e in self.lock().list.iter() {
            *match e.status {
                DlqStatus::Pending => &mut stats.pending,
                DlqStatus::Processing => &mut stats.processing,
                DlqStatus::Resolved => &mut stats.resolved,
                DlqStatus::Discarded => &mut stats.discarded,
            } += 1;
        }
        Ok(stats)
    }

    async fn claim(&self, id: i64, at: DateTime<Utc>) -> Result<DeadLetter, DlqError> {
        let mut guard = self.lock();
        let Entries { list, claimed_at } = &mut *guard;
        let entries = list;
        let entry = find(entries, id)?.clone();
        if entry.status != DlqStatus::Pending {
            return Err(DlqError::WrongStatus {
                id,
                status: entry.status,
            });
        }
        if let Some(earlier) = entries.iter().find(|e| {
            e.id < id
                && e.status.is_open()
                && e.consumer == entry.consumer
                && entry.stream_id.is_some()
                && e.stream_id == entry.stream_id
        }) {
            return Err(DlqError::Blocked {
                id,
                behind: earlier.id,
            });
        }
        let entry = find(entries, id)?;
        entry.status = DlqStatus::Processing;
        claimed_at.insert(id, at);
        Ok(entry.clone())
    }

    async fn release_stale_claims(
        &self,
        claimed_before: DateTime<Utc>,
    ) -> Result<Vec<i64>, DlqError> {
        let mut guard = self.lock();
        let Entries { list, claimed_at } = &mut *guard;
        let mut released = Vec::new();
        for entry in list.iter_mut() {
            let stale = claimed_at
                .get(&entry.id)
                .is_none_or(|at| *at < claimed_before);
            if entry.status == DlqStatus::Processing && stale {
                entry.status = DlqStatus::Pending;
                claimed_at.remove(&entry.id);
                released.push(entry.id);
            }
        }
        Ok(released)
    }

    async fn retry_failed(
        &self,
        id: i64,
        error: String,
        causes: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<DeadLetter, DlqError> {
        let mut entries = self.lock();
        let entry = find(&mut entries.list, id)?;
        if entry.status != DlqStatus::Processing {
            return Err(DlqError::WrongStatus {
                id,
                status: entry.status,
            });
        }
        entry.status = DlqStatus::Pending;
        entry.error = error;
        entry.causes = causes;
        entry.retry_count += 1;
        entry.last_failed_at = at;
        Ok(entry.clone())
    }

    async fn close(
        &self,
        id: i64,
        from: DlqStatus,
        closing: Closing,
    ) -> Result<DeadLetter, DlqError> {
        let mut entries = self.lock();
        let entry = find(&mut entries.list, id)?;
        if entry.status != from {
            return Err(DlqError::WrongStatus {
                id,
                status: entry.status,
            });
        }
        entry.status = closing.status;
        entry.resolved_by = closing.by.map(|u| u.0);
        entry.resolved_at = Some(closing.at);
        entry.notes = closing.notes;
        Ok(entry.clone())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
