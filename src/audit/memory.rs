//! In-memory `AuditStore`: a vector behind a mutex, for the embedded default and tests.
//! Not durable; like every adapter it stores only what it is given.

use super::{AuditError, AuditFilter, AuditRecord, AuditStore};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryAuditStore {
    records: Mutex<Vec<AuditRecord>>,
}

impl MemoryAuditStore {
    /// A poisoned lock only means another thread panicked mid-push; the vector is still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AuditRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.lock().extend_from_slice(records);
        Ok(())
    }

    async fn list(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, AuditError> {
        // Newest inserted first, then a stable sort by time: ties keep that order.
        let mut found: Vec<AuditRecord> = self
            .lock()
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(r.at));
        Ok(page.slice(found))
    }

    async fn ping(&self) -> Result<(), AuditError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    /// The in-memory store honours the same contract as the PostgreSQL one.
    #[tokio::test]
    async fn memory_store_passes_the_audit_store_contract() {
        super::super::contract::run_all(&super::MemoryAuditStore::default()).await;
    }
}
