//! The waiting room's state in this instance: the store, the pass key, a short-lived copy of
//! each event's queue settings (so the reservation path asks the store at most once per
//! `SETTINGS_FRESH` per event and instance: one request asks while the others answer from the
//! copy), a copy of each waiting line (`LINE_FRESH`), from
//! which positions are answered with one small look-up instead of a count of everyone ahead,
//! and the admission ticker.

use crate::clock::Clock;
use crate::observability::Metrics;
use crate::queue::pass::PassKey;
use crate::queue::{QueueError, QueueSettings, QueueStore, Ticket, WaitingLine};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How long a copy of a queue's settings is used before the store is asked again: with one
/// read of the store, the most another instance's change (enabling or disabling a queue)
/// takes to reach this one.
pub const SETTINGS_FRESH: Duration = Duration::from_secs(1);

/// How long the other requests answer from an old copy while one asks the store for a fresh
/// one, at most (a read that takes longer is asked again by the next; a request dropped
/// while it asks, by a client gone or the request time-out, lets the next ask at once).
const ASKING_AT_MOST: Duration = Duration::from_secs(5);

/// A copy of one queue's settings.
#[derive(Clone)]
struct SettingsCopy {
    read_at: Instant,
    settings: Option<QueueSettings>,
    /// Since when a request has been asking the store for a fresh copy.
    asking_since: Option<Instant>,
}

/// A request asking the store for `event_id`'s settings: when it ends without a new copy (an
/// error, or dropped mid-way), the next request asks.
struct Asking<'a> {
    copies: &'a Mutex<HashMap<Uuid, SettingsCopy>>,
    event_id: Uuid,
    since: Instant,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(copy) = lock(self.copies).get_mut(&self.event_id) {
            if copy.asking_since == Some(self.since) {
                copy.asking_since = None;
            }
        }
    }
}

impl SettingsCopy {
    fn read_now(settings: Option<QueueSettings>) -> Self {
        SettingsCopy {
            read_at: Instant::now(),
            settings,
            asking_since: None,
        }
    }
}

/// How long a copy of a waiting line is used before it is read again (one read of every
/// waiting ticket's rank per second per queue and instance, while someone asks).
pub const LINE_FRESH: Duration = Duration::from_secs(1);

/// How often this instance advances a queue's admission at most (and the ticker's period).
const ADVANCE_EVERY: chrono::Duration = chrono::Duration::seconds(1);

pub struct WaitingRoom {
    pub store: Arc<dyn QueueStore>,
    pub key: PassKey,
    metrics: Arc<Metrics>,
    settings: Mutex<HashMap<Uuid, SettingsCopy>>,
    advanced: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// Held while a line is read, so that one request per instance reads it and the others
    /// wait for its copy (a tokio mutex: it is held across the read).
    lines: tokio::sync::Mutex<HashMap<Uuid, (Instant, Arc<WaitingLine>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WaitingRoom {
    pub fn new(store: Arc<dyn QueueStore>, key: PassKey, metrics: Arc<Metrics>) -> Self {
        WaitingRoom {
            store,
            key,
            metrics,
            settings: Mutex::new(HashMap::new()),
            advanced: Mutex::new(HashMap::new()),
            lines: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Stores new settings; this instance sees them at once, others within `SETTINGS_FRESH`.
    pub async fn put(
        &self,
        settings: &QueueSettings,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        self.store.put_settings(settings, now).await?;
        lock(&self.settings).insert(
            settings.event_id,
            SettingsCopy::read_now(Some(settings.clone())),
        );
        Ok(())
    }

    /// The event's queue settings, at most `SETTINGS_FRESH` old (and the one read of the
    /// store that refreshes them: while one request asks, the others answer from the copy,
    /// so an on-sale's crowd asks the store once a second, not once per request that found
    /// the copy old); while the store cannot be read, the last settings this instance knew (a
    /// database outage then answers from the event store, not from here), and the store's
    /// error only for an event never seen.
    pub async fn cached(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError> {
        let since = Instant::now();
        let known = {
            let mut copies = lock(&self.settings);
            match copies.get_mut(&event_id) {
                Some(copy) if copy.read_at.elapsed() < SETTINGS_FRESH => {
                    return Ok(copy.settings.clone())
                }
                Some(copy)
                    if copy
                        .asking_since
                        .is_some_and(|asked| asked.elapsed() < ASKING_AT_MOST) =>
                {
                    return Ok(copy.settings.clone())
                }
                Some(copy) => {
                    copy.asking_since = Some(since);
                    Some(copy.settings.clone())
                }
                None => None,
            }
        };
        let _asking = Asking {
            copies: &self.settings,
            event_id,
            since,
        };
        match self.store.settings(event_id).await {
            Ok(settings) => {
                lock(&self.settings).insert(event_id, SettingsCopy::read_now(settings.clone()));
                Ok(settings)
            }
            Err(e) => match known {
                Some(settings) => {
                    tracing::warn!(%event_id, error = %e, "queue settings unreadable; using the last known");
                    Ok(settings)
                }
                None => Err(e),
            },
        }
    }

    /// Whether the event's queue is enabled, at most `SETTINGS_FRESH` ago.
    pub async fn cached_enabled(&self, event_id: Uuid) -> Result<bool, QueueError> {
        Ok(self.cached(event_id).await?.is_some_and(|s| s.enabled))
    }

    /// How many wait ahead of `ticket`, plus one (0 once admitted). Exact: the copy of the
    /// line says who was ahead when it was read; the store adds those who joined in between
    /// since (the ticket included) and says how many were admitted since, all from the front.
    pub async fn position(&self, ticket: &Ticket) -> Result<u64, QueueError> {
        let line = self.line(ticket.event_id).await?;
        let me = (ticket.rank, ticket.id);
        let ahead = line.order.partition_point(|entry| *entry < me);
        let before = ahead.checked_sub(1).map(|i| line.order[i]);
        let since = self.store.position_since(ticket, before).await?;
        if since.between == 0 {
            return Ok(0);
        }
        let gone = since.admitted.saturating_sub(line.admitted);
        let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
        Ok(ahead.saturating_sub(gone) + since.between)
    }

    /// Drops the copy of the event's line: after a join in the shuffle window, which can land
    /// anywhere in it (not only behind everyone, which `position` accounts for). Joins on
    /// other instances reach this one's copy within `LINE_FRESH`.
    pub async fn forget_line(&self, event_id: Uuid) {
        self.lines.lock().await.remove(&event_id);
    }

    /// The copy of the event's waiting line, at most `LINE_FRESH` old.
    async fn line(&self, event_id: Uuid) -> Result<Arc<WaitingLine>, QueueError> {
        let mut lines = self.lines.lock().await;
        if let Some((at, line)) = lines.get(&event_id) {
            if at.elapsed() < LINE_FRESH {
                return Ok(Arc::clone(line));
            }
        }
        let line = Arc::new(self.store.waiting_line(event_id).await?);
        lines.insert(event_id, (Instant::now(), Arc::clone(&line)));
        Ok(line)
    }

    /// Lets the queue's admission advance to `now`, unless this instance did so less than
    /// `ADVANCE_EVERY` ago; `true` when someone was admitted.
    pub async fn advance(&self, event_id: Uuid, now: DateTime<Utc>) -> Result<bool, QueueError> {
        {
            let mut advanced = lock(&self.advanced);
            if let Some(last) = advanced.get(&event_id) {
                if now < *last + ADVANCE_EVERY && now >= *last {
                    return Ok(false);
                }
            }
            advanced.insert(event_id, now);
        }
        let admitted = self.store.advance(event_id, now).await?;
        let m = &self.metrics.queue;
        m.admitted
            .inc_by(u64::try_from(admitted.len()).unwrap_or(0));
        for ticket in &admitted {
            let waited = (now - ticket.joined_at).to_std().unwrap_or_default();
            m.wait_seconds.observe(waited.as_secs_f64());
        }
        Ok(!admitted.is_empty())
    }

    /// One round of the ticker: advances every enabled queue and refreshes the gauges.
    async fn tick(&self, now: DateTime<Utc>) -> Result<(), QueueError> {
        let (mut waiting, mut rate) = (0u64, 0u64);
        for settings in self.store.enabled().await? {
            self.advance(settings.event_id, now).await?;
            waiting += self.store.counts(settings.event_id).await?.waiting;
            rate += u64::from(settings.admit_per_minute);
        }
        let m = &self.metrics.queue;
        m.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        m.admit_per_minute
            .set(i64::try_from(rate).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// Advances every enabled queue once a second, so admission goes on while nobody asks.
pub async fn run_admission(room: Arc<WaitingRoom>, clock: Arc<dyn Clock>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = room.tick(clock.now()).await {
            tracing::warn!(error = %e, "waiting room admission failed; retrying next second");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueues;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// The memory store, counting reads of settings, each of which waits for a permit.
    struct Counted {
        inner: MemoryQueues,
        reads: AtomicUsize,
        permits: Semaphore,
    }

    #[async_trait]
    impl QueueStore for Counted {
        async fn put_settings(
            &self,
            s: &QueueSettings,
            now: DateTime<Utc>,
        ) -> Result<(), QueueError> {
            self.inner.put_settings(s, now).await
        }
        async fn settings(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _permit = self.permits.acquire().await.unwrap();
            self.inner.settings(event_id).await
        }
        async fn enabled(&self) -> Result<Vec<QueueSettings>, QueueError> {
            self.inner.enabled().await
        }
        async fn join(
            &self,
            event_id: Uuid,
            user_id: Uuid,
            draw: Option<i64>,
            now: DateTime<Utc>,
        ) -> Result<(Ticket, bool), QueueError> {
            self.inner.join(event_id, user_id, draw, now).await
        }
        async fn ticket(
            &self,
            event_id: Uuid,
            user_id: Uuid,
        ) -> Result<Option<Ticket>, QueueError> {
            self.inner.ticket(event_id, user_id).await
        }
        async fn position(&self, ticket: &Ticket) -> Result<u64, QueueError> {
            self.inner.position(ticket).await
        }
        async fn counts(&self, event_id: Uuid) -> Result<crate::queue::QueueCounts, QueueError> {
            self.inner.counts(event_id).await
        }
        async fn waiting_line(&self, event_id: Uuid) -> Result<WaitingLine, QueueError> {
            self.inner.waiting_line(event_id).await
        }
        async fn position_since(
            &self,
            ticket: &Ticket,
            after: Option<(i64, Uuid)>,
        ) -> Result<crate::queue::Since, QueueError> {
            self.inner.position_since(ticket, after).await
        }
        async fn advance(
            &self,
            event_id: Uuid,
            now: DateTime<Utc>,
        ) -> Result<Vec<Ticket>, QueueError> {
            self.inner.advance(event_id, now).await
        }
    }

    /// A room on a `Counted` store that holds an enabled queue, its settings read once.
    async fn room_with_a_queue() -> (Arc<WaitingRoom>, Arc<Counted>, QueueSettings) {
        let store = Arc::new(Counted {
            inner: MemoryQueues::default(),
            reads: AtomicUsize::new(0),
            permits: Semaphore::new(1),
        });
        let key = PassKey::new(b"a-test-key-of-at-least-32-bytes-long!").unwrap();
        let room = Arc::new(WaitingRoom::new(
            store.clone(),
            key,
            Arc::new(Metrics::new()),
        ));
        let settings = QueueSettings {
            event_id: Uuid::new_v4(),
            enabled: true,
            admit_per_minute: 60,
            pass_ttl_seconds: 600,
            shuffle_until: None,
        };
        store.put_settings(&settings, Utc::now()).await.unwrap();
        assert!(room.cached_enabled(settings.event_id).await.unwrap());
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        (room, store, settings)
    }

    /// A crowd that finds the copy of a queue's settings old asks the store once: the others
    /// answer from the old copy while that one read runs, and the read's answer is the copy
    /// from then on.
    #[tokio::test(start_paused = true)]
    async fn a_crowd_finding_the_settings_old_asks_the_store_once() {
        let (room, store, mut settings) = room_with_a_queue().await;
        // Another instance disables the queue; the store answers slowly.
        settings.enabled = false;
        store.put_settings(&settings, Utc::now()).await.unwrap();
        let slow = store.permits.acquire().await.unwrap();
        tokio::time::advance(SETTINGS_FRESH).await;
        let asking = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.cached_enabled(settings.event_id).await.unwrap() }
        });
        tokio::task::yield_now().await;
        for _ in 0..50 {
            let answer = tokio::time::timeout(
                Duration::from_millis(100),
                room.cached_enabled(settings.event_id),
            );
            let enabled = answer
                .await
                .expect("answered without waiting for the store");
            assert!(enabled.unwrap(), "the old copy");
        }
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            2,
            "one read for the crowd"
        );
        drop(slow);
        assert!(!asking.await.unwrap(), "the read's answer");
        assert!(!room.cached_enabled(settings.event_id).await.unwrap());
        assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    }

    /// A request dropped while it asks the store (a client gone, the request time-out) lets
    /// the next request ask at once; one whose read never answers holds the others on the
    /// old copy for `ASKING_AT_MOST` at most.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_stops_asking_hands_the_read_over() {
        let (room, store, settings) = room_with_a_queue().await;
        let slow = store.permits.acquire().await.unwrap();
        tokio::time::advance(SETTINGS_FRESH).await;
        let ask = || {
            let room = Arc::clone(&room);
            tokio::spawn(async move { room.cached_enabled(settings.event_id).await })
        };
        let dropped = ask();
        tokio::task::yield_now().await;
        dropped.abort();
        let _ = dropped.await;
        let stuck = ask();
        tokio::task::yield_now().await;
        assert_eq!(store.reads.load(Ordering::SeqCst), 3, "asked again at once");
        assert!(room.cached_enabled(settings.event_id).await.unwrap());
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            3,
            "the old copy meanwhile"
        );
        tokio::time::advance(ASKING_AT_MOST).await;
        drop(slow);
        assert!(room.cached_enabled(settings.event_id).await.unwrap());
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            4,
            "asked again after the bound"
        );
        stuck.await.unwrap().unwrap();
    }
}
