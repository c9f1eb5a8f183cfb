//! Holds always end (invariant 5), also when the instance that armed a hold's timer died:
//! at start-up every pending hold found in the read models is armed again, and every
//! instance periodically arms the pending holds whose end has passed. Arming an already
//! armed hold is harmless: the reducer ignores a hold that ended meanwhile.

use crate::clock::Clock;
use crate::projections::{ReadError, ReadModel};
use crate::runtime::expiry::ExpiryHandle;
use std::sync::Arc;

/// Arms the expiry of every pending hold; returns how many there were.
pub async fn rearm_pending(
    reads: &dyn ReadModel,
    handle: &ExpiryHandle,
) -> Result<usize, ReadError> {
    let holds = reads.pending_holds().await?;
    for hold in &holds {
        handle.arm(hold.expires_at, hold.event_id, hold.reservation_id);
    }
    Ok(holds.len())
}

/// Every `every`, arms the pending holds whose end has passed. Their own instance normally
/// expires them on time; this catches the holds of an instance that died (several instances
/// share one database).
pub async fn sweep(
    reads: Arc<dyn ReadModel>,
    handle: ExpiryHandle,
    clock: Arc<dyn Clock>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now();
        match reads.pending_holds().await {
            Ok(holds) => {
                for hold in holds.into_iter().filter(|h| h.expires_at <= now) {
                    handle.arm(hold.expires_at, hold.event_id, hold.reservation_id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sweep for overdue holds"),
        }
    }
}
