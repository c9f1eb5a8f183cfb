//! Refund settlement: a process manager that follows the event log and, for every
//! `payment.refunded` event, asks the gateway to return the money. Driven by durable events
//! from a checkpoint, so a restart resumes it; the gateway's idempotency makes replays safe.

use super::{GatewayError, PaymentGateway};
use crate::domain::DomainEvent;
use crate::eventstore::{codec, RecordedEvent};
use crate::runtime::checkpoints::Checkpoints;
use crate::runtime::subscription::Subscriber;
use async_trait::async_trait;
use std::sync::Arc;

const NAME: &str = "refund-settlement";

pub struct RefundSettlement {
    gateway: Arc<dyn PaymentGateway>,
    checkpoints: Arc<dyn Checkpoints>,
}

impl RefundSettlement {
    pub fn new(gateway: Arc<dyn PaymentGateway>, checkpoints: Arc<dyn Checkpoints>) -> Self {
        Self {
            gateway,
            checkpoints,
        }
    }
}

#[async_trait]
impl Subscriber for RefundSettlement {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        self.checkpoints.load(NAME).await
    }

    async fn handle(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        let mut handled = None;
        for recorded in events {
            if recorded.event_type == "payment.refunded" {
                if let Ok(DomainEvent::PaymentRefunded(e)) = codec::decode(recorded) {
                    match self.gateway.refund(e.payment_id).await {
                        Ok(()) => {}
                        // Transient: keep what was settled, fail so the runner retries the rest.
                        Err(e @ (GatewayError::Unavailable(_) | GatewayError::Open(_))) => {
                            if let Some(position) = handled {
                                self.checkpoints.save(NAME, position).await?;
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
        if let Some(position) = handled {
            self.checkpoints.save(NAME, position).await?;
        }
        Ok(())
    }
}
