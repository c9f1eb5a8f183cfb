//! Stall supervision, on a scripted bus whose consumers join or never do: a consumer that gets
//! no partitions is reported stalled, rejoins as a new member when recovery is on, only
//! reports when it is off, and leaves its group when stopped.

use super::*;
use crate::bus::BusMessage;
use crate::clock::ManualClock;
use crate::dlq::memory::MemoryDeadLetters;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// A bus whose first `stuck` subscriptions never get partitions; later ones join at once and
/// have nothing to deliver.
#[derive(Default)]
struct Scripted {
    stuck: usize,
    subscribed: AtomicUsize,
    closed: Arc<AtomicUsize>,
}

struct Member {
    joining_since: Option<Instant>,
    closed: Arc<AtomicUsize>,
}

#[async_trait]
impl EventBus for Scripted {
    async fn publish(&self, _: Vec<BusMessage>) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    async fn subscribe(
        &self,
        _: &str,
        _: &[String],
    ) -> Result<Box<dyn BusConsumer>, crate::bus::BusError> {
        let n = self.subscribed.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Member {
            joining_since: (n < self.stuck).then(Instant::now),
            closed: Arc::clone(&self.closed),
        }))
    }
    async fn ensure_topics(&self, _: &[String]) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
}

#[async_trait]
impl BusConsumer for Member {
    async fn next(&mut self) -> Result<Delivery, crate::bus::BusError> {
        std::future::pending().await
    }
    async fn commit(&mut self, _: &Delivery) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    async fn lag(&self) -> Option<u64> {
        self.joining_since.is_none().then_some(0)
    }
    fn joining_since(&self) -> Option<Instant> {
        self.joining_since
    }
    async fn close(self: Box<Self>) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Quiet;

#[async_trait]
impl Handler for Quiet {
    fn name(&self) -> &'static str {
        "quiet"
    }
    fn topics(&self) -> &'static [&'static str] {
        &["events"]
    }
    async fn handle(&self, _: &BusEvent) -> Result<Applied, HandlerError> {
        Ok(Applied::Applied)
    }
}

struct Running {
    bus: Arc<Scripted>,
    metrics: Arc<Metrics>,
    health: Arc<ConsumerHealth>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn run(stuck: usize, recover: bool) -> Running {
    let bus = Arc::new(Scripted {
        stuck,
        ..Scripted::default()
    });
    let (metrics, health, stop, task) = supervised(
        Arc::new(Quiet),
        Arc::clone(&bus) as Arc<dyn EventBus>,
        recover,
    );
    Running {
        bus,
        metrics,
        health,
        stop,
        task,
    }
}

/// `handler`'s consumer on `bus`, stalled after 100 ms: its metrics, health, stop switch, task.
fn supervised(
    handler: Arc<dyn Handler>,
    bus: Arc<dyn EventBus>,
    recover: bool,
) -> (
    Arc<Metrics>,
    Arc<ConsumerHealth>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ConsumerHealth::default());
    let (stop, stopped) = watch::channel(false);
    let consumer = Consumer {
        handler,
        dlq: Arc::new(MemoryDeadLetters::new()),
        metrics: Arc::clone(&metrics),
        clock: Arc::new(ManualClock::new(chrono::Utc::now())),
        retry: RetryPolicy::default(),
        answer_limit: Duration::from_secs(3600),
    };
    let supervision = Supervision {
        stall: StallPolicy {
            after: Duration::from_millis(100),
            recover,
        },
        health: Arc::clone(&health),
        stop: stopped,
    };
    let task = consumer.spawn(bus, Topics::new("t."), supervision);
    (metrics, health, stop, task)
}

/// Polls `check` every 20 ms until it holds; panics after 10 s.
async fn until(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer whose join never completes is reported, leaves, joins again as a new member,
/// and is healthy once that member has its partitions.
#[tokio::test]
async fn a_consumer_without_partitions_rejoins_as_a_new_member() {
    let r = run(1, true);
    let rejoins = r.metrics.consumer_rejoins.with_label_values(&["quiet"]);
    until("one rejoin", || rejoins.get() == 1).await;
    until("healthy again", || {
        r.health.stalls().is_empty()
            && r.metrics
                .consumer_stalled
                .with_label_values(&["quiet"])
                .get()
                == 0
            && r.metrics
                .consumer_lag_known
                .with_label_values(&["quiet"])
                .get()
                == 1
    })
    .await;
    assert_eq!(r.bus.subscribed.load(Ordering::SeqCst), 2);
    assert_eq!(
        r.bus.closed.load(Ordering::SeqCst),
        1,
        "the stuck member left"
    );
    r.stop.send(true).unwrap();
    r.task.await.unwrap();
    assert_eq!(
        r.bus.closed.load(Ordering::SeqCst),
        2,
        "stopping leaves the group"
    );
}

/// With recovery off the stall is only reported: the reason for `/ready`, the gauge at 1, the
/// lag unknown (no series), and no rejoin.
#[tokio::test]
async fn with_recovery_off_a_stall_is_reported_and_kept() {
    let r = run(usize::MAX, false);
    until("the stall is reported", || !r.health.stalls().is_empty()).await;
    let stalls = r.health.stalls();
    assert!(
        stalls[0].starts_with("quiet: no partitions assigned for"),
        "{stalls:?}"
    );
    assert_eq!(
        r.metrics
            .consumer_stalled
            .with_label_values(&["quiet"])
            .get(),
        1
    );
    assert_eq!(
        r.metrics
            .consumer_lag_known
            .with_label_values(&["quiet"])
            .get(),
        0
    );
    let text = r.metrics.render();
    assert!(
        !text.contains("ticketing_consumer_lag_events{"),
        "an unknown lag has no series:\n{text}"
    );
    assert_eq!(
        r.metrics
            .consumer_rejoins
            .with_label_values(&["quiet"])
            .get(),
        0
    );
    assert_eq!(r.bus.subscribed.load(Ordering::SeqCst), 1);
    r.stop.send(true).unwrap();
    r.task.await.unwrap();
}

/// Handles nothing, ever: a handler stuck on a lock with no statement time-out.
struct Hanging;

#[async_trait]
impl Handler for Hanging {
    fn name(&self) -> &'static str {
        "hanging"
    }
    fn topics(&self) -> &'static [&'static str] {
        &["events"]
    }
    async fn handle(&self, _: &BusEvent) -> Result<Applied, HandlerError> {
        std::future::pending().await
    }
}

/// A consumer that received a batch and cannot settle it is reported stalled while it waits
/// (it has partitions and its lag is known, so only the settling shows it), for `/ready`.
#[tokio::test]
async fn a_batch_that_never_settles_is_reported_as_a_stall() {
    use crate::bus::memory::MemoryBus;
    let bus = Arc::new(MemoryBus::new());
    bus.ensure_topics(&[super::tests::TOPIC.into()])
        .await
        .unwrap();
    let (metrics, health, _stop, task) = supervised(
        Arc::new(Hanging),
        Arc::clone(&bus) as Arc<dyn EventBus>,
        true,
    );
    let message = super::tests::message(crate::domain::EventId::random(), 1, 1);
    bus.publish(vec![message]).await.unwrap();
    until("the stall is reported", || !health.stalls().is_empty()).await;
    let stalls = health.stalls();
    assert!(
        stalls[0].starts_with("hanging: settling one batch for"),
        "{stalls:?}"
    );
    let stalled = metrics.consumer_stalled.with_label_values(&["hanging"]);
    assert_eq!(stalled.get(), 1);
    task.abort();
}
