//! The waiting room's state in this instance: the store, the pass key, a short-lived copy of
//! each event's queue settings (so the reservation path asks the store at most once per
//! `SETTINGS_FRESH` per event and instance), a copy of each waiting line (`LINE_FRESH`), from
//! which positions are answered with one small look-up instead of a count of everyone ahead,
//! and the admission ticker.

use crate::clock::Clock;
use crate::observability::Metrics;
use crate::queue::pass::PassKey;
use crate::queue::{QueueError, QueueSettings, QueueStore, Ticket, WaitingLine};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a copy of a queue's settings is used before the store is asked again: the most
/// another instance's change (enabling or disabling a queue) takes to reach this one.
pub const SETTINGS_FRESH: Duration = Duration::from_secs(1);

/// How long a copy of a waiting line is used before it is read again (one read of every
/// waiting ticket's rank per second per queue and instance, while someone asks).
pub const LINE_FRESH: Duration = Duration::from_secs(1);

/// How often this instance advances a queue's admission at most (and the ticker's period).
const ADVANCE_EVERY: chrono::Duration = chrono::Duration::seconds(1);

pub struct WaitingRoom {
    pub store: Arc<dyn QueueStore>,
    pub key: PassKey,
    metrics: Arc<Metrics>,
    settings: Mutex<HashMap<Uuid, (Instant, Option<QueueSettings>)>>,
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
        lock(&self.settings).insert(settings.event_id, (Instant::now(), Some(settings.clone())));
        Ok(())
    }

    /// The event's queue settings, at most `SETTINGS_FRESH` old; while the store cannot be
    /// read, the last settings this instance knew (a database outage then answers from the
    /// event store, not from here), and the store's error only for an event never seen.
    pub async fn cached(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError> {
        let known = lock(&self.settings).get(&event_id).cloned();
        if let Some((at, settings)) = &known {
            if at.elapsed() < SETTINGS_FRESH {
                return Ok(settings.clone());
            }
        }
        match self.store.settings(event_id).await {
            Ok(settings) => {
                lock(&self.settings).insert(event_id, (Instant::now(), settings.clone()));
                Ok(settings)
            }
            Err(e) => match known {
                Some((_, settings)) => {
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
