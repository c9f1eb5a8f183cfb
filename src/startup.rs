//! Builds the application from a `Config` (adapters -> stores -> background tasks -> router)
//! and serves it until a shutdown future completes. Tests use the same path with port 0 and
//! a `ManualClock`, so what they exercise is what production runs.

use crate::auth::memory::MemoryAuthStore;
use crate::auth::AuthService;
use crate::config::Config;
use crate::eventstore::memory::MemoryEventStore;
use crate::eventstore::EventStore;
use crate::http::{self, idempotency::IdempotencyStore, AppState};
use crate::observability::Metrics;
use crate::payment::refunds::RefundSettlement;
use crate::payment::simulated::SimulatedGateway;
use crate::payment::PaymentGateway;
use crate::projections::memory::MemoryReadModel;
use crate::projections::{Projector, ReadModel};
use crate::runtime::{expiry, subscription, Clock, Sales};
use anyhow::{bail, Context};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A built application: its state and the background tasks it runs.
pub struct App {
    pub state: AppState,
    /// The simulated processor, exposed so tests can reconcile money against it.
    pub gateway: Arc<SimulatedGateway>,
    tasks: Vec<JoinHandle<()>>,
}

/// Wires adapters, stores and background tasks.
pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    for (var, set) in [
        ("DATABASE_URL", config.database_url.is_some()),
        ("KAFKA_BROKERS", config.kafka_brokers.is_some()),
        ("REDIS_URL", config.redis_url.is_some()),
    ] {
        if set {
            bail!("{var} is set, but this build only has the in-memory adapters; unset it to run in memory");
        }
    }
    tracing::warn!(
        "running on IN-MEMORY adapters (event store, read models, accounts, bus, cache): \
         nothing survives a restart; set DATABASE_URL for durable storage"
    );
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let reads: Arc<dyn ReadModel> = Arc::new(MemoryReadModel::new());
    let gateway = Arc::new(SimulatedGateway::new(
        config.payment_latency,
        config.payment_failure_rate,
    ));
    let auth = AuthService::new(
        Arc::new(MemoryAuthStore::new()),
        Arc::clone(&clock),
        config.session_ttl,
    );

    let (expiry_handle, expiry_inbox) = expiry::channel();
    let sales = Sales::new(
        Arc::clone(&store),
        expiry_handle.clone(),
        Arc::clone(&metrics),
        config.max_batch,
    );
    let (read_progress, projector) =
        subscription::spawn(Arc::clone(&store), Arc::new(Projector(Arc::clone(&reads))));
    let (_, refunds) = subscription::spawn(
        Arc::clone(&store),
        Arc::new(RefundSettlement::new(
            Arc::clone(&gateway) as Arc<dyn PaymentGateway>
        )),
    );
    let mut tasks = vec![projector, refunds];

    // Holds always end: re-arm every pending hold once the read models caught up.
    let head = *store.subscribe_head().borrow();
    if !read_progress.wait_for(head, Duration::from_secs(60)).await {
        bail!("read models did not catch up with the event store within 60 s");
    }
    let holds = reads
        .pending_holds()
        .await
        .context("listing pending holds")?;
    tracing::info!(count = holds.len(), "re-arming expiry of pending holds");
    for hold in holds {
        expiry_handle.arm(hold.expires_at, hold.event_id, hold.reservation_id);
    }
    tasks.push(tokio::spawn(expiry::run(
        expiry_inbox,
        expiry_handle,
        sales.clone(),
        Arc::clone(&clock),
        Arc::clone(&metrics),
    )));

    if let (Some(email), Some(password)) = (&config.admin_email, &config.admin_password) {
        auth.ensure_admin(email, password)
            .await
            .context("creating the bootstrap admin from ADMIN_EMAIL/ADMIN_PASSWORD")?;
        tracing::info!("bootstrap admin account ready");
    }

    let state = AppState {
        config,
        sales,
        reads,
        read_progress,
        auth,
        gateway: Arc::clone(&gateway) as Arc<dyn PaymentGateway>,
        clock,
        metrics,
        idempotency: Arc::new(IdempotencyStore::default()),
    };
    Ok(App {
        state,
        gateway,
        tasks,
    })
}

impl App {
    /// Serves HTTP on `listener` until `shutdown` completes, then stops the background tasks.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, "listening");
        let router = http::router(self.state);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        for task in self.tasks {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}
