//! `Breaker`: a circuit breaker for one dependency (PostgreSQL, the payment gateway, Redis, the
//! bus). Closed, it lets every call through and opens after `consecutive` failures in a row,
//! or when at least `ratio_percent` of the last `window` calls failed. Open, it refuses calls
//! at once (the caller answers 503 + `Retry-After` instead of waiting for a timeout) until
//! `cool_down` has passed; then it is half-open and lets exactly one probe through, whose
//! result closes it or opens it again. Only failures of the dependency count (a timeout, an
//! unreachable host), never a refusal it answered (a conflict, a declined card).
//!
//! Time comes from a `Clock`, so the state machine is tested on a manual clock. State changes
//! are reported to one observer (metrics and logs, set at start-up); `Breakers` is the list
//! of a process's breakers for `/ready`, `/metrics` and the dashboard.

use crate::clock::Clock;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive: u32,
    /// The failure share (percent) of the last `window` calls that opens it.
    pub ratio_percent: u32,
    /// How many recent calls the ratio looks at; 0 turns the ratio off.
    pub window: usize,
    /// How long an open breaker refuses calls before it lets a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive: 5,
            ratio_percent: 50,
            window: 20,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// What `/metrics` shows: 0 closed, 1 half-open, 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The gauge value of `ticketing_circuit_breaker_state`.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A breaker's state as reported: why it is not closed, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: &'static str,
    pub state: BreakerState,
    /// The failure that opened it last (kept while half-open).
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
    /// While open: how long calls are still refused.
    pub retry_after: Option<Duration>,
}

/// A call refused because the breaker is open (or half-open with its probe in flight).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} circuit breaker is open; retry in {}s", retry_after_secs(*.retry_after))]
pub struct Refused {
    pub name: &'static str,
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds for a `Retry-After` header: at least 1.
    pub fn retry_after_secs(&self) -> u32 {
        retry_after_secs(self.retry_after)
    }
}

fn retry_after_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Told of every state change: (breaker name, new state, reason).
pub type Observer = Box<dyn Fn(&'static str, BreakerState, Option<&str>) + Send + Sync>;

struct Inner {
    state: BreakerState,
    since: DateTime<Utc>,
    reason: Option<String>,
    consecutive: u32,
    /// Recent outcomes, `true` for a failure; at most `window` long.
    recent: VecDeque<bool>,
    probing: bool,
}

pub struct Breaker {
    name: &'static str,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    observer: OnceLock<Observer>,
}

/// Leave to make one call; report how it went with `success` or `failure`. Dropped without a
/// verdict (the call was cancelled), it counts for nothing, and a half-open breaker lets the
/// next call probe.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(None, self.probe);
    }

    pub fn failure(mut self, reason: &str) {
        self.done = true;
        self.breaker.record(Some(reason), self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.lock().probing = false;
        }
    }
}

impl Breaker {
    pub fn new(name: &'static str, config: BreakerConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        let since = clock.now();
        Arc::new(Breaker {
            name,
            config,
            clock,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                since,
                reason: None,
                consecutive: 0,
                recent: VecDeque::new(),
                probing: false,
            }),
            observer: OnceLock::new(),
        })
    }

    /// Sets the one observer of state changes; a second call is ignored.
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave for one call, or `Refused` while open (and while half-open with a probe out).
    pub fn admit(&self) -> Result<Permit<'_>, Refused> {
        let mut inner = self.lock();
        let mut changed = None;
        if inner.state == BreakerState::Open {
            // The clock is read only here and on a switch: a closed breaker is on every
            // call to its dependency, several per hold.
            let now = self.clock.now();
            let reopen_at = inner.since
                + chrono::Duration::from_std(self.config.cool_down)
                    .unwrap_or(chrono::Duration::MAX);
            if now < reopen_at {
                return Err(Refused {
                    name: self.name,
                    retry_after: (reopen_at - now).to_std().unwrap_or_default(),
                });
            }
            changed = Some(self.switch(&mut inner, BreakerState::HalfOpen, now));
        }
        let probe = inner.state == BreakerState::HalfOpen;
        if probe {
            if inner.probing {
                return Err(Refused {
                    name: self.name,
                    retry_after: Duration::from_secs(1),
                });
            }
            inner.probing = true;
        }
        drop(inner);
        if let Some((state, reason)) = changed {
            self.tell(state, reason.as_deref());
        }
        Ok(Permit {
            breaker: self,
            probe,
            done: false,
        })
    }

    /// Runs `call` through the breaker: refused at once while open; otherwise the call's
    /// error counts as a failure when `failed` gives a reason for it.
    pub async fn call<T, E, F>(
        &self,
        call: F,
        failed: impl Fn(&E) -> Option<String>,
    ) -> Result<Result<T, E>, Refused>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.admit()?;
        let result = call.await;
        match result.as_ref().err().and_then(&failed) {
            Some(reason) => permit.failure(&reason),
            None => permit.success(),
        }
        Ok(result)
    }

    /// Records an outcome seen without asking leave (a loop that retries by itself, like
    /// the outbox relay): the state then reports whether the dependency is failing.
    pub fn witness(&self, failure: Option<&str>) {
        self.record(failure, false);
    }

    fn record(&self, failure: Option<&str>, probe: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probing = false;
        }
        let window = self.config.window;
        if window > 0 {
            inner.recent.push_back(failure.is_some());
            while inner.recent.len() > window {
                inner.recent.pop_front();
            }
        }
        let changed = match failure {
            None => {
                inner.consecutive = 0;
                (inner.state != BreakerState::Closed).then(|| {
                    inner.recent.clear();
                    self.switch(&mut inner, BreakerState::Closed, self.clock.now())
                })
            }
            Some(reason) => {
                inner.consecutive = inner.consecutive.saturating_add(1);
                let failed = inner.recent.iter().filter(|f| **f).count();
                let by_ratio = window > 0
                    && inner.recent.len() >= window
                    && failed * 100 >= window * self.config.ratio_percent as usize;
                let trips = match inner.state {
                    BreakerState::Closed => {
                        inner.consecutive >= self.config.consecutive.max(1) || by_ratio
                    }
                    BreakerState::HalfOpen => true,
                    // A call let through before it opened failed late: nothing changes.
                    BreakerState::Open => false,
                };
                inner.reason = Some(reason.to_owned());
                trips.then(|| self.switch(&mut inner, BreakerState::Open, self.clock.now()))
            }
        };
        drop(inner);
        if let Some((state, reason)) = changed {
            self.tell(state, reason.as_deref());
        }
    }

    /// Moves to `to` as of `now`; returns what to report once the lock is released.
    fn switch(
        &self,
        inner: &mut Inner,
        to: BreakerState,
        now: DateTime<Utc>,
    ) -> (BreakerState, Option<String>) {
        inner.state = to;
        inner.since = now;
        if to == BreakerState::Closed {
            inner.reason = None;
        }
        (to, inner.reason.clone())
    }

    fn tell(&self, state: BreakerState, reason: Option<&str>) {
        if let Some(observer) = self.observer.get() {
            observer(self.name, state, reason);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.now();
        let inner = self.lock();
        let retry_after = (inner.state == BreakerState::Open).then(|| {
            (inner.since + chrono::Duration::from_std(self.config.cool_down).unwrap_or_default()
                - now)
                .to_std()
                .unwrap_or_default()
        });
        Snapshot {
            name: self.name,
            state: inner.state,
            reason: inner.reason.clone(),
            since: inner.since,
            retry_after,
        }
    }
}

/// Every breaker of a process, for `/ready`, `/metrics` and `/admin/dashboard/system`.
#[derive(Clone, Default)]
pub struct Breakers(Vec<Arc<Breaker>>);

impl Breakers {
    pub fn new(breakers: Vec<Arc<Breaker>>) -> Self {
        Breakers(breakers)
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.0.iter().map(|b| b.snapshot()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Breaker>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests;
