//! Time as a dependency. Reducers never read a clock: handlers take `now` from a `Clock` and
//! put it in the command. Tests drive expiry with `ManualClock` instead of waiting.

pub mod rfc3339;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Timelike, Utc};
use tokio::sync::watch;

#[async_trait]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Completes once `now() >= at`.
    async fn sleep_until(&self, at: DateTime<Utc>);
}

/// The wall clock, at microsecond precision: what PostgreSQL stores, so that a time read back
/// from any adapter equals the one that went in.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        now.with_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now)
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        // Re-check after waking: the wall clock may have been adjusted meanwhile.
        loop {
            let left = at - Utc::now();
            match left.to_std() {
                Ok(d) if !d.is_zero() => tokio::time::sleep(d).await,
                _ => return,
            }
        }
    }
}

/// A clock that only moves when told to.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: watch::Sender::new(start),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += by);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        let mut rx = self.now.subscribe();
        // The sender lives as long as the clock, which outlives its sleepers.
        let _ = rx.wait_for(|now| *now >= at).await;
    }
}
