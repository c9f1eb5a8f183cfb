//! Serving a built `Service` and its orderly stop: `/ready` drains first, in-flight requests
//! finish within a grace, the outbox relay publishes what they committed, the bus consumers
//! leave their groups and the audit writer flushes, each within a bound that keeps the exit
//! inside the 30 s an orchestrator grants after SIGTERM.

use super::Service;
use crate::http;
use anyhow::Context;
use std::future::{Future, IntoFuture};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long shutdown waits for queued audit records to be written.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// After the listener closes, how long in-flight requests may take before the process stops
/// anyway: keeps the exit within the 30 s an orchestrator usually grants after SIGTERM.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(20);

/// How long the bus consumers may take at shutdown to finish joining and leave their groups.
const CONSUMERS_LEAVE: Duration = Duration::from_secs(15);

/// How long the outbox relay may take to publish the last events at shutdown (bounded, so the
/// exit stays within the 30 s an orchestrator grants; what is left is published later).
const RELAY_FLUSH: Duration = Duration::from_secs(5);

impl Service {
    /// Serves HTTP on `listener` until `shutdown` completes, then drains: `/ready` answers 503
    /// at once, the listener keeps accepting for `SHUTDOWN_DRAIN_SECONDS`, then closes while
    /// in-flight requests finish (for at most `IN_FLIGHT_GRACE`), the outbox relay publishes what
    /// they committed (for at most `RELAY_FLUSH`), and the background tasks stop.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, "listening");
        let draining = Arc::clone(&self.state.draining);
        let drain = self.state.config.shutdown_drain;
        let (closing, closed) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!(drain_s = drain.as_secs(), "draining: /ready answers 503");
            tokio::time::sleep(drain).await;
            tracing::info!("closing the listener; finishing in-flight requests");
            let _ = closing.send(());
        };
        let router = http::router(self.state);
        // The peer address is the rate-limit key when no trusted proxy names the client.
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        let give_up = async {
            if closed.await.is_err() {
                // The server ended on its own, before any shutdown signal.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(IN_FLIGHT_GRACE).await;
        };
        tokio::select! {
            served = server => served.context("serving HTTP")?,
            () = give_up => tracing::warn!(
                grace_s = IN_FLIGHT_GRACE.as_secs(),
                "in-flight requests did not finish in time; stopping anyway"
            ),
        }
        // Publish what the last requests committed before the process goes; meanwhile the
        // consumers leave their groups (a member that vanishes can wedge a rebalance).
        let _ = self.relay.stop.send(true);
        let _ = self.consumers.stop.send(true);
        if tokio::time::timeout(RELAY_FLUSH, self.relay.task)
            .await
            .is_err()
        {
            tracing::warn!("the outbox relay did not flush in time; the outbox keeps the rest");
        }
        let left = async {
            for task in self.consumers.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(CONSUMERS_LEAVE, left).await.is_err() {
            tracing::warn!("a bus consumer did not leave its group in time");
        }
        for task in self.tasks {
            task.abort();
        }
        if tokio::time::timeout(AUDIT_FLUSH, self.audit_writer)
            .await
            .is_err()
        {
            tracing::warn!("queued audit records were not all written before stopping");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
