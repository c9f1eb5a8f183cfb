//! Refund settlement: a process manager that follows the event log and, for every
//! `payment.refunded` event, asks the gateway to return the money. Driven by durable events
//! from a checkpoint, so a restart resumes it; the gateway's idempotency makes replays safe.
//! The checkpoint is written after every batch that settled a refund, otherwise only every
//! `SAVE_EVERY_EVENTS` events or `SAVE_EVERY` (a sale's batches have nothing for it): what a
//! restart re-reads beyond the saved position then holds no refund, or only the one whose
//! save a crash cut short, which the gateway refunds once whatever the repeats.

use super::{GatewayError, PaymentGateway};
use crate::domain::DomainEvent;
use crate::eventstore::{codec, RecordedEvent};
use crate::runtime::checkpoints::Checkpoints;
use crate::runtime::subscription::Subscriber;
use async_trait::async_trait;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

const NAME: &str = "refund-settlement";

/// With nothing settled, the checkpoint is written once this many events went by...
const SAVE_EVERY_EVENTS: u64 = 10_000;
/// ... or once this long passed since it was last written (at the next batch).
const SAVE_EVERY: Duration = Duration::from_secs(10);

pub struct RefundSettlement {
    gateway: Arc<dyn PaymentGateway>,
    checkpoints: Arc<dyn Checkpoints>,
    /// The position last written (or read) and when.
    saved: Mutex<(u64, Instant)>,
    save_every: (u64, Duration),
}

impl RefundSettlement {
    pub fn new(gateway: Arc<dyn PaymentGateway>, checkpoints: Arc<dyn Checkpoints>) -> Self {
        Self {
            gateway,
            checkpoints,
            saved: Mutex::new((0, Instant::now())),
            save_every: (SAVE_EVERY_EVENTS, SAVE_EVERY),
        }
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, (u64, Instant)> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn save(&self, position: u64) -> anyhow::Result<()> {
        self.checkpoints.save(NAME, position).await?;
        *self.saved() = (position, Instant::now());
        Ok(())
    }

    /// Whether handling up to `position` is worth a write although nothing was settled.
    fn due(&self, position: u64) -> bool {
        let (saved, at) = *self.saved();
        position.saturating_sub(saved) >= self.save_every.0 || at.elapsed() >= self.save_every.1
    }
}

#[async_trait]
impl Subscriber for RefundSettlement {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        let position = self.checkpoints.load(NAME).await?;
        *self.saved() = (position, Instant::now());
        Ok(position)
    }

    async fn handle(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        let mut handled = None;
        let mut settled = false;
        for recorded in events {
            if recorded.event_type == "payment.refunded" {
                if let Ok(DomainEvent::PaymentRefunded(e)) = codec::decode(recorded) {
                    settled = true;
                    match self.gateway.refund(e.payment_id).await {
                        Ok(()) => {}
                        // Transient: keep what was settled, fail so the runner retries the rest.
                        Err(
                            e @ (GatewayError::Unavailable(_)
                            | GatewayError::NoAnswer(_)
                            | GatewayError::Open(_)),
                        ) => {
                            if let Some(position) = handled {
                                self.save(position).await?;
                            }
                            return Err(e.into());
                        }
                        // Permanent: retrying cannot help; it must not block later refunds.
                        Err(e @ GatewayError::RefundRefused(_)) => tracing::error!(
                            position = recorded.position,
                            error = %e,
                            "gateway refused a refund; needs manual reconciliation"
                        ),
                    }
                }
            }
            handled = Some(recorded.position);
        }
        match handled {
            Some(position) if settled || self.due(position) => self.save(position).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
