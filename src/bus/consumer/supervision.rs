//! How a running consumer is watched and stopped: when it counts as stalled (`StallPolicy`),
//! where its stall is reported for `/ready` (`ConsumerHealth`), and the switch that ends it
//! (`Supervision::stop`). Decides nothing about messages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// When a consumer counts as stalled, and whether it then rejoins its group
/// (`CONSUMER_STALL_SECONDS`, `CONSUMER_STALL_RECOVERY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallPolicy {
    /// Longest a consumer may go without partitions, or without receiving anything while it
    /// is behind; zero turns the detection off.
    pub after: Duration,
    /// Leave and join again as a new member when stalled (else only report it).
    pub recover: bool,
}

impl Default for StallPolicy {
    /// 15 s, and rejoin: as `Config::default()` has it.
    fn default() -> Self {
        StallPolicy {
            after: Duration::from_secs(15),
            recover: true,
        }
    }
}

/// The consumers' stalls, for `/ready`: the reason per stalled consumer, absent once it
/// recovered.
#[derive(Debug, Default)]
pub struct ConsumerHealth(Mutex<BTreeMap<&'static str, String>>);

impl ConsumerHealth {
    /// `"<consumer>: <reason>"` for every consumer stalled right now.
    pub fn stalls(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect()
    }

    pub(super) fn set(&self, name: &'static str, reason: Option<String>) {
        match reason {
            Some(reason) => self.lock().insert(name, reason),
            None => self.lock().remove(name),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a running consumer is watched and stopped.
pub struct Supervision {
    pub stall: StallPolicy,
    pub health: Arc<ConsumerHealth>,
    /// Becomes `true` at shutdown (or its sender is dropped): leave the group and end.
    pub stop: watch::Receiver<bool>,
}

/// Why a consumer counts as stalled, if it does: still without partitions `after` its join
/// began, or behind and without a message for longer than `after` (`after` zero: never).
pub(super) fn stall(
    after: Duration,
    joining_since: Option<Instant>,
    lag: Option<u64>,
    progress: Instant,
) -> Option<String> {
    if after.is_zero() {
        return None;
    }
    if let Some(since) = joining_since {
        let waited = since.elapsed();
        return (waited > after)
            .then(|| format!("no partitions assigned for {} s", waited.as_secs()));
    }
    let idle = progress.elapsed();
    match lag {
        Some(lag) if lag > 0 && idle > after => Some(format!(
            "{lag} messages behind and none received for {} s",
            idle.as_secs()
        )),
        _ => None,
    }
}

/// A batch settling for longer than `after`: the handler or the dead letter queue does not
/// answer (a stall, though messages were received).
pub(super) fn settling_too_long(after: Duration, since: Instant) -> Option<String> {
    let settling = since.elapsed();
    (!after.is_zero() && settling > after).then(|| {
        format!(
            "settling one batch for {} s: its handler or the dead letter queue does not answer",
            settling.as_secs()
        )
    })
}

/// Completes once shutdown began (the switch is on, or its sender is gone).
pub(super) async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
