//! The batch half of the insights contract: `apply_batch` is all or nothing, recognises
//! duplicates inside a batch and against what was applied before, and gives the same answers
//! as one event at a time; and the consumer settles a poll's worth on the adapter with one
//! dead-letter look-up, parking the streams that have an open dead letter.

use super::{answers_match_the_fixture, deliveries};
use crate::bus::consumer::{Applied, Consumer, Outcome, RetryPolicy};
use crate::bus::envelope::BusEvent;
use crate::bus::{envelope, Delivery, Topics};
use crate::clock::{Clock, SystemClock};
use crate::dlq::{
    Closing, DeadLetter, DeadLetters, DlqError, DlqStats, DlqStatus, NewDeadLetter, Parked,
};
use crate::observability::Metrics;
use crate::paging::{Page, PageRequest};
use crate::projections::contract::fixture::history;
use crate::projections::insights::{Insights, InsightsError, InsightsProjection, CONSUMER};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Batches on a fresh adapter: a refused batch changes nothing; then the log in batches of
/// four, each also carrying the previous batch's last event (applied already) and its own
/// first event again (a duplicate inside the batch), answers exactly those as duplicates and
/// ends with the fixture's answers.
pub async fn run_batches(insights: &dyn Insights) {
    let log = deliveries();
    let unplaced = log
        .iter()
        .find(|e| e.event_type == "reservation.confirmed")
        .unwrap();
    assert_ne!(log[0].event_type, "reservation.placed");
    let refused = insights
        .apply_batch(&[log[0].clone(), unplaced.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, InsightsError::Inconsistent { .. }),
        "{refused}"
    );

    for (k, chunk) in log.chunks(4).enumerate() {
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        if k > 0 {
            batch.push(log[k * 4 - 1].clone());
            expected.push(Applied::Duplicate);
        }
        batch.extend(chunk.iter().cloned());
        expected.extend(chunk.iter().map(|_| Applied::Applied));
        batch.push(chunk[0].clone());
        expected.push(Applied::Duplicate);
        assert_eq!(
            insights.apply_batch(&batch).await.unwrap(),
            expected,
            "batch {k} (the refused batch must have changed nothing)"
        );
    }
    answers_match_the_fixture(insights).await;
}

/// The whole log in one batch, reordered across streams (each stream keeps its order) so that
/// every confirmation comes in one run: a run of several purchases of the same sections, as a
/// busy on-sale delivers them, adds up to the fixture's totals.
pub async fn run_confirmations_in_one_run(insights: &dyn Insights) {
    let log = deliveries();
    let confirmed_at: HashMap<&str, usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event_type == "reservation.confirmed")
        .map(|(i, e)| (e.stream_id.as_str(), i))
        .collect();
    assert!(confirmed_at.len() >= 3, "the fixture has several purchases");
    let phase = |(i, e): &(usize, &BusEvent)| match confirmed_at.get(e.stream_id.as_str()) {
        Some(&at) if *i == at => 1,
        Some(&at) if *i > at => 2,
        _ => 0,
    };
    let mut ordered: Vec<(usize, &BusEvent)> = log.iter().enumerate().collect();
    ordered.sort_by_key(|entry| (phase(entry), entry.0));
    let batch: Vec<BusEvent> = ordered.into_iter().map(|(_, e)| e.clone()).collect();
    let applied = insights.apply_batch(&batch).await.unwrap();
    assert!(
        applied.iter().all(|a| *a == Applied::Applied),
        "{applied:?}"
    );
    answers_match_the_fixture(insights).await;
}

/// Two members of the group holding the same partitions for a while (a rebalance): `a` and
/// `b` (two adapters on one store) apply the whole log at once, in batches of different sizes
/// that overlap. Every event is applied by exactly one of them, the other answering a
/// duplicate, and the figures count each purchase once. A batch that lost a race and failed
/// (transiently) is tried again, as the consumer would.
pub async fn run_concurrent_members(a: Arc<dyn Insights>, b: Arc<dyn Insights>) {
    let log = deliveries();
    let member = |insights: Arc<dyn Insights>, size: usize| {
        let log = log.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for chunk in log.chunks(size) {
                let mut tries = 0;
                let applied = loop {
                    tries += 1;
                    match insights.apply_batch(chunk).await {
                        Ok(applied) => break applied,
                        Err(InsightsError::Unavailable(e)) if tries < 20 => {
                            tracing::info!(error = %e, "retrying a batch");
                        }
                        Err(e) => panic!("batch failed: {e}"),
                    }
                };
                answers.extend(applied);
            }
            answers
        })
    };
    let (first, second) = (member(a.clone(), 3), member(b, 5));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    for (i, (x, y)) in first.iter().zip(&second).enumerate() {
        let applied = [x, y].iter().filter(|a| ***a == Applied::Applied).count();
        assert_eq!(
            applied, 1,
            "event {i} applied by exactly one member: {x:?} {y:?}"
        );
    }
    answers_match_the_fixture(a.as_ref()).await;
}

/// The whole log as one poll's worth, settled by the insights consumer on `insights` and
/// `dlq`: the stream with an open dead letter is parked behind it, everything else applied,
/// with one look-up of the dead letter queue; the same batch again is all duplicates (and the
/// parked stream parked again).
pub async fn run_consumer_batch(insights: Arc<dyn Insights>, dlq: Arc<dyn DeadLetters>) {
    let topics = Topics::new("t.");
    let batch: Vec<Delivery> = history()
        .iter()
        .filter_map(|e| envelope::seal(&topics, e))
        .filter(|m| envelope::open(m).is_ok())
        .zip(0..)
        .map(|(message, offset)| Delivery {
            message: std::sync::Arc::new(message),
            partition: 0,
            offset,
        })
        .collect();
    let stream = |d: &Delivery| d.message.header(envelope::STREAM_ID).unwrap().to_owned();
    let parked = batch
        .iter()
        .rev()
        .find(|d| d.message.header(envelope::EVENT_TYPE) == Some("reservation.placed"))
        .map(stream)
        .unwrap();
    let head = dlq.park(blocking(&parked)).await.unwrap();
    let counted = Arc::new(Counted {
        inner: dlq,
        lookups: AtomicUsize::new(0),
    });
    let consumer = Consumer {
        handler: Arc::new(InsightsProjection(insights)),
        dlq: counted.clone(),
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(SystemClock),
        retry: RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        answer_limit: Duration::from_secs(3600),
    };

    for (round, settled) in [Outcome::Applied, Outcome::Duplicate]
        .into_iter()
        .enumerate()
    {
        let outcomes = consumer.settle_batch(&batch, "test").await;
        assert_eq!(counted.lookups.load(Ordering::SeqCst), round + 1);
        for (d, outcome) in batch.iter().zip(outcomes) {
            let expected = if stream(d) == parked {
                Outcome::Parked
            } else {
                settled
            };
            assert_eq!(outcome, expected, "round {round}: {}", stream(d));
        }
    }
    let behind = counted
        .list(Some(DlqStatus::Pending), PageRequest::default())
        .await
        .unwrap();
    assert!(behind.items.len() > 1, "{behind:?}");
    assert!(behind
        .items
        .iter()
        .filter(|e| e.id != head)
        .all(|e| e.parked_behind == Some(head) && e.stream_id.as_deref() == Some(&*parked)));
}

/// An open dead letter of `stream`, as if its first event had failed.
fn blocking(stream: &str) -> NewDeadLetter {
    NewDeadLetter {
        consumer: CONSUMER.into(),
        topic: "t.reservations".into(),
        partition: 0,
        offset: 0,
        message_key: stream.into(),
        stream_id: Some(stream.into()),
        stream_version: Some(0),
        event_type: Some("reservation.placed".into()),
        event_version: Some(1),
        payload: vec![],
        headers: vec![],
        error: "broken".into(),
        causes: vec![],
        parked_behind: None,
        retry_count: 0,
        failed_at: SystemClock.now(),
    }
}

/// A dead letter queue that counts look-ups of open entries.
struct Counted {
    inner: Arc<dyn DeadLetters>,
    lookups: AtomicUsize,
}

#[async_trait]
impl DeadLetters for Counted {
    async fn park(&self, entry: NewDeadLetter) -> Result<i64, DlqError> {
        self.inner.park(entry).await
    }
    async fn open_entry_of(&self, consumer: &str, stream: &str) -> Result<Option<i64>, DlqError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.open_entry_of(consumer, stream).await
    }
    async fn stranded_heads(
        &self,
        closed_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        self.inner.stranded_heads(closed_before).await
    }
    async fn open_entries_of(
        &self,
        consumer: &str,
        streams: &[&str],
    ) -> Result<HashMap<String, i64>, DlqError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.open_entries_of(consumer, streams).await
    }
    async fn get(&self, id: i64) -> Result<DeadLetter, DlqError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        status: Option<DlqStatus>,
        page: PageRequest,
    ) -> Result<Page<DeadLetter>, DlqError> {
        self.inner.list(status, page).await
    }
    async fn stats(&self) -> Result<DlqStats, DlqError> {
        self.inner.stats().await
    }
    async fn park_behind_open(&self, entry: NewDeadLetter) -> Result<Option<Parked>, DlqError> {
        self.inner.park_behind_open(entry).await
    }
    async fn claim(&self, id: i64, at: DateTime<Utc>) -> Result<DeadLetter, DlqError> {
        self.inner.claim(id, at).await
    }
    async fn release_stale_claims(
        &self,
        claimed_before: DateTime<Utc>,
    ) -> Result<Vec<i64>, DlqError> {
        self.inner.release_stale_claims(claimed_before).await
    }
    async fn retry_failed(
        &self,
        id: i64,
        error: String,
        causes: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<DeadLetter, DlqError> {
        self.inner.retry_failed(id, error, causes, at).await
    }
    async fn close(
        &self,
        id: i64,
        from: DlqStatus,
        closing: Closing,
    ) -> Result<DeadLetter, DlqError> {
        self.inner.close(id, from, closing).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
