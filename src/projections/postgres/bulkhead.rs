//! The read models' bulkhead: at most as many queries in flight as the pool has connections;
//! the others wait their turn in a FIFO queue (tokio's fair semaphore) for up to
//! `QUEUE_WAIT_FACTOR` pool acquire time-outs. A burst of reads larger than the pool (512
//! client connections on a pool of 10) thus waits in line instead of each timing out on the
//! pool after `DB_ACQUIRE_TIMEOUT_SECONDS` and answering 503; a query that gets its turn finds
//! a connection at once, so the acquire time-out is left to tell a database that is gone.

use crate::projections::ReadError;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How many pool acquire time-outs a query may wait in the queue before it gives up (503).
const QUEUE_WAIT_FACTOR: u32 = 4;

pub(super) struct Bulkhead {
    gate: Semaphore,
    wait: Duration,
}

impl Bulkhead {
    /// A bulkhead sized to `pool`: one query per connection, the rest queued.
    pub(super) fn sized_to(pool: &PgPool) -> Self {
        let options = pool.options();
        let connections = usize::try_from(options.get_max_connections()).unwrap_or(1);
        Bulkhead {
            gate: Semaphore::new(connections.max(1)),
            wait: options.get_acquire_timeout() * QUEUE_WAIT_FACTOR,
        }
    }

    /// Waits for a query's turn; `Unavailable` (503) when the queue did not move in time.
    pub(super) async fn turn(&self) -> Result<SemaphorePermit<'_>, ReadError> {
        match tokio::time::timeout(self.wait, self.gate.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ReadError::Unavailable("the read models are closed".into())),
            Err(_) => Err(ReadError::Unavailable(format!(
                "read queries waited longer than {:?} for a connection",
                self.wait
            ))),
        }
    }
}
