//! Tests of `AuditLog`: the queue, its overflow, and the limit on repeated refusals.

use super::*;

/// A store whose inserts wait at a gate the test opens, counting the calls that arrived.
struct GatedStore {
    inner: memory::MemoryAuditStore,
    gate: tokio::sync::Semaphore,
    entered: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl AuditStore for GatedStore {
    async fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.insert(records).await
    }
    async fn list(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, AuditError> {
        self.inner.list(filter, page).await
    }
    async fn ping(&self) -> Result<(), AuditError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "gated"
    }
}

/// A record queued through the handle lands in the store, and a full queue drops and
/// counts: with the writer stuck in the store and a queue of one, the first record is in
/// the writer's batch, the next one fills the queue, and the 49 after it must be dropped.
#[tokio::test]
async fn queued_records_are_written_and_overflow_is_counted() {
    let store = Arc::new(GatedStore {
        inner: memory::MemoryAuditStore::default(),
        gate: tokio::sync::Semaphore::new(0),
        entered: Default::default(),
    });
    let metrics = Arc::new(Metrics::new());
    let (log, task) = AuditLog::spawn(
        store.clone(),
        Arc::clone(&metrics),
        1,
        Duration::from_secs(3600),
    );
    let record = AuditRecord::new(Utc::now(), "auth.login", "user", AuditResult::Success);
    log.record(record.clone());
    // The writer takes it and waits in the store (this runtime has one thread, so nothing
    // else runs between the `record` calls below).
    let started = std::time::Instant::now();
    while store.entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the writer never wrote"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        log.record(AuditRecord::new(Utc::now(), "x", "y", AuditResult::Failure));
    }
    let dropped = metrics.audit_records.with_label_values(&["dropped"]).get();
    assert_eq!(
        dropped, 49,
        "a full queue drops and counts every record it refuses"
    );
    store.gate.add_permits(1_000);
    drop(log);
    task.await.unwrap();
    let written = metrics.audit_records.with_label_values(&["written"]).get();
    assert_eq!(written, 2);
    let page = store
        .list(
            &AuditFilter::default(),
            PageRequest {
                page: 1,
                page_size: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total_count, written);
    assert!(page.items.iter().any(|r| r.id == record.id));
}

/// One caller's refusals past the burst are counted, not written; another caller's are
/// written all the same.
#[tokio::test]
async fn a_caller_s_repeated_refusals_are_throttled_and_counted() {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(memory::MemoryAuditStore::default());
    let limit = Duration::from_secs(3600);
    let (log, task) = AuditLog::spawn(store, Arc::clone(&metrics), 1_000, limit);
    let denied = || AuditRecord::new(Utc::now(), "access.denied", "route", AuditResult::Denied);
    let (prober, other) = (Uuid::new_v4(), Uuid::new_v4());
    let started = std::time::Instant::now();
    for _ in 0..50 {
        log.record_refusal(prober, denied());
    }
    // At most one more of the prober's per second the loop took (it takes microseconds).
    let refills = started.elapsed().as_secs() + 1;
    log.record_refusal(other, denied());
    drop(log);
    task.await.unwrap();
    let count = |outcome| metrics.audit_records.with_label_values(&[outcome]).get();
    let (written, throttled) = (count("written"), count("throttled"));
    assert_eq!(written + throttled, 51);
    let burst = u64::from(REFUSAL_BURST);
    assert!(
        (burst + 1..=burst + 1 + refills).contains(&written),
        "{written} written"
    );
}
