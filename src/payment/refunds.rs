//! Refund settlement: a process manager that follows the event log and, for every
//! `payment.refunded` event, asks the gateway to return the money. Driven by durable events
//! from a checkpoint, so a restart resumes it; the gateway's idempotency makes replays safe.

use super::{GatewayError, PaymentGateway};
use crate::domain::DomainEvent;
use crate::eventstore::{codec, RecordedEvent};
use crate::runtime::subscription::Subscriber;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct RefundSettlement {
    gateway: Arc<dyn PaymentGateway>,
    checkpoint: AtomicU64,
}

impl RefundSettlement {
    pub fn new(gateway: Arc<dyn PaymentGateway>) -> Self {
        Self {
            gateway,
            checkpoint: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Subscriber for RefundSettlement {
    fn name(&self) -> &'static str {
        "refund-settlement"
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        Ok(self.checkpoint.load(Ordering::Acquire))
    }

    async fn handle(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        for recorded in events {
            if recorded.event_type == "payment.refunded" {
                if let Ok(DomainEvent::PaymentRefunded(e)) = codec::decode(recorded) {
                    match self.gateway.refund(e.payment_id).await {
                        Ok(()) => {}
                        // Transient: fail the batch so the runner retries with backoff.
                        Err(e @ GatewayError::Unavailable(_)) => return Err(e.into()),
                        // Permanent: retrying cannot help; it must not block later refunds.
                        Err(e @ GatewayError::RefundRefused(_)) => tracing::error!(
                            position = recorded.position,
                            error = %e,
                            "gateway refused a refund; needs manual reconciliation"
                        ),
                    }
                }
            }
            // Progress is kept per event so a failure retries only what is left.
            self.checkpoint.store(recorded.position, Ordering::Release);
        }
        Ok(())
    }
}
