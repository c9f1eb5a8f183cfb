//! Builds the application from a `Config` (adapters -> stores -> background tasks -> router)
//! and serves it until a shutdown future completes. Tests use the same path with port 0 and
//! a `ManualClock`, so what they exercise is what production runs.

use crate::audit::memory::MemoryAuditStore;
use crate::audit::postgres::PostgresAuditStore;
use crate::audit::{AuditLog, AuditStore};
use crate::auth::memory::MemoryAuthStore;
use crate::auth::postgres::PostgresAuthStore;
use crate::auth::{AuthService, AuthStore};
use crate::bus::consumer::{Consumer, ConsumerHealth, Handler, RetryPolicy, Supervision};
use crate::bus::kafka::KafkaBus;
use crate::bus::memory::MemoryBus;
use crate::bus::relay::{MemoryCursor, PostgresCursor, Relay, RelayCursor};
use crate::bus::{EventBus, Topics};
use crate::cache::memory::MemoryCache;
use crate::cache::redis::RedisCache;
use crate::cache::{Cache, EventCache, Invalidator};
use crate::config::Config;
use crate::db;
use crate::dlq::memory::MemoryDeadLetters;
use crate::dlq::postgres::PostgresDeadLetters;
use crate::dlq::service::DlqService;
use crate::dlq::DeadLetters;
use crate::eventstore::memory::MemoryEventStore;
use crate::eventstore::postgres::PostgresEventStore;
use crate::eventstore::EventStore;
use crate::http::{self, idempotency::IdempotencyStore, AppState};
use crate::observability::Metrics;
use crate::payment::refunds::RefundSettlement;
use crate::payment::simulated::SimulatedGateway;
use crate::payment::PaymentGateway;
use crate::projections::insights::memory::MemoryInsights;
use crate::projections::insights::postgres::PostgresInsights;
use crate::projections::insights::{Insights, InsightsProjection};
use crate::projections::memory::MemoryReadModel;
use crate::projections::postgres::PostgresReadModel;
use crate::projections::{Projector, ReadModel};
use crate::runtime::checkpoints::{Checkpoints, MemoryCheckpoints, PostgresCheckpoints};
use crate::runtime::{expiry, subscription, Clock, Sales};
use anyhow::{bail, Context};
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
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
    relay: RelayTask,
    consumers: ConsumersTask,
    /// Not aborted at shutdown: it ends by itself once the router (every `AuditLog`) is gone
    /// and the queue is written.
    audit_writer: JoinHandle<()>,
}

/// The outbox relay's task and the switch that makes it flush and stop at shutdown.
struct RelayTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The bus consumers' tasks and the switch that makes them leave their groups and stop.
struct ConsumersTask {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Audit records queued for the background writer before new ones are dropped (and counted):
/// minutes of the busiest audited traffic, a few MB at most.
const AUDIT_QUEUE: usize = 10_000;

/// How long shutdown waits for queued audit records to be written.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// The storage adapters: all in memory, or all on PostgreSQL.
struct Adapters {
    store: Arc<dyn EventStore>,
    /// The read models as queries see them.
    reads: Arc<dyn ReadModel>,
    /// The same read models, as the projector writes them (its own connections).
    projector: Arc<dyn ReadModel>,
    accounts: Arc<dyn AuthStore>,
    audit: Arc<dyn AuditStore>,
    checkpoints: Arc<dyn Checkpoints>,
    idempotency: IdempotencyStore,
    pools: db::NamedPools,
    dlq: Arc<dyn DeadLetters>,
    insights: Arc<dyn Insights>,
    /// Where the outbox relay has published up to, when it survives a restart (PostgreSQL).
    durable_cursor: Option<Arc<dyn RelayCursor>>,
}

async fn in_memory() -> Adapters {
    tracing::warn!(
        "running on IN-MEMORY adapters (event store, read models, accounts): nothing survives \
         a restart; set DATABASE_URL for durable storage"
    );
    let reads: Arc<dyn ReadModel> = Arc::new(MemoryReadModel::new());
    Adapters {
        store: Arc::new(MemoryEventStore::new()),
        projector: Arc::clone(&reads),
        reads,
        accounts: Arc::new(MemoryAuthStore::new()),
        audit: Arc::new(MemoryAuditStore::default()),
        checkpoints: Arc::new(MemoryCheckpoints::default()),
        idempotency: IdempotencyStore::default(),
        pools: db::NamedPools::default(),
        dlq: Arc::new(MemoryDeadLetters::new()),
        insights: Arc::new(MemoryInsights::new()),
        durable_cursor: None,
    }
}

/// Connects and migrates the three databases. Each role gets its own pool, even on one
/// database, so that request traffic can never queue the work every request waits for
/// (writers' appends, the projector) behind itself: up to `3 x DB_MAX_CONNECTIONS + 2`
/// connections per instance.
async fn on_postgres(config: &Config, events_url: &str) -> anyhow::Result<Adapters> {
    let connect = |url: &str, settings: db::PoolSettings, what: &'static str| {
        let url = url.to_owned();
        async move {
            db::connect(&url, &settings)
                .await
                .with_context(|| format!("connecting to the {what} database"))
        }
    };
    let projections_url = config
        .projections_database_url
        .as_deref()
        .unwrap_or(events_url);
    let auth_url = config.auth_database_url.as_deref().unwrap_or(events_url);
    let events = connect(events_url, config.pool.clone(), "event store").await?;
    let projections = connect(projections_url, config.pool.clone(), "projections").await?;
    let projector_settings = db::PoolSettings {
        max_connections: 2,
        ..config.pool.clone()
    };
    let projector = connect(projections_url, projector_settings, "projections").await?;
    let auth = connect(auth_url, config.pool.clone(), "auth").await?;

    db::events_migrator()
        .run(&events)
        .await
        .context("migrating the event store")?;
    db::projections_migrator()
        .run(&projections)
        .await
        .context("migrating the projections")?;
    db::auth_migrator()
        .run(&auth)
        .await
        .context("migrating the auth database")?;
    tracing::info!("running on PostgreSQL (event store, read models, accounts)");
    let pools = db::NamedPools::new(vec![
        ("events", events.clone()),
        ("projections", projections.clone()),
        ("projector", projector.clone()),
        ("auth", auth.clone()),
    ]);
    Ok(Adapters {
        pools,
        store: Arc::new(PostgresEventStore::new(events.clone()).await?),
        reads: Arc::new(PostgresReadModel::new(projections.clone())),
        projector: Arc::new(PostgresReadModel::new(projector)),
        accounts: Arc::new(PostgresAuthStore::new(auth.clone())),
        audit: Arc::new(PostgresAuditStore::new(auth.clone())),
        checkpoints: Arc::new(PostgresCheckpoints(projections.clone())),
        idempotency: IdempotencyStore::durable(auth),
        dlq: Arc::new(PostgresDeadLetters::new(events.clone())),
        insights: Arc::new(PostgresInsights::new(projections)),
        durable_cursor: Some(Arc::new(PostgresCursor::new(events.clone()).await?)),
    })
}

/// Wires adapters, stores and background tasks.
pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    let started_at = std::time::Instant::now();
    let adapters = match &config.database_url {
        None => in_memory().await,
        Some(url) => on_postgres(&config, url).await?,
    };
    let Adapters {
        store,
        reads,
        projector,
        accounts,
        audit,
        checkpoints,
        idempotency,
        pools,
        dlq,
        insights,
        durable_cursor,
    } = adapters;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let gateway = Arc::new(SimulatedGateway::new(
        config.payment_latency,
        config.payment_failure_rate,
    ));
    let auth = AuthService::new(accounts, Arc::clone(&clock), config.session_ttl);
    let (audit, audit_writer) = AuditLog::spawn(audit, Arc::clone(&metrics), AUDIT_QUEUE);
    let idempotency = Arc::new(idempotency);

    let (expiry_handle, expiry_inbox) = expiry::channel();
    let sales = Sales::new(
        Arc::clone(&store),
        expiry_handle.clone(),
        Arc::clone(&metrics),
        config.max_batch,
    );
    let invalidator = Invalidator::new(
        cache_adapter(&config)?,
        config.cache_ttl,
        Arc::clone(&metrics),
    );
    let (read_progress, projector) = subscription::spawn(
        Arc::clone(&store),
        Arc::new(Projector {
            reads: projector,
            metrics: Arc::clone(&metrics),
            cache: Arc::clone(&invalidator),
        }),
    );
    let published = read_progress.clone();
    let cache = Arc::new(EventCache::new(
        invalidator,
        Arc::clone(&reads),
        move || published.position(),
        config.cache_ttl,
        config.cache_enabled,
    ));
    let (_, refunds) = subscription::spawn(
        Arc::clone(&store),
        Arc::new(RefundSettlement::new(
            Arc::clone(&gateway) as Arc<dyn PaymentGateway>,
            checkpoints,
        )),
    );
    let mut tasks = vec![
        projector,
        refunds,
        tokio::spawn(purge_idempotency_keys(Arc::clone(&idempotency))),
    ];
    let consumer_health = Arc::new(ConsumerHealth::default());
    let (bus, dlq, relay, consumers) = start_bus(
        &config,
        durable_cursor,
        dlq,
        &insights,
        (&store, &metrics, &clock),
        &consumer_health,
    )
    .await?;

    // Holds always end: re-arm every pending hold once the read models caught up.
    let head = *store.subscribe_head().borrow();
    if !read_progress.wait_for(head, Duration::from_secs(120)).await {
        bail!("read models did not catch up with the event store within 120 s");
    }
    let holds = reads
        .pending_holds()
        .await
        .context("listing pending holds")?;
    tracing::info!(count = holds.len(), "re-arming expiry of pending holds");
    for hold in holds {
        expiry_handle.arm(hold.expires_at, hold.event_id, hold.reservation_id);
    }
    tasks.push(tokio::spawn(expiry::sweep(
        Arc::clone(&reads),
        expiry_handle.clone(),
        Arc::clone(&clock),
        config.expiry_sweep,
    )));
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

    let rate_limiter = Arc::new(http::ratelimit::RateLimiter::new(
        config.rate_limits,
        config.trust_proxy,
    ));
    let state = AppState {
        config,
        rate_limiter,
        sales,
        reads,
        read_progress,
        insights,
        bus,
        dlq,
        auth,
        gateway: Arc::clone(&gateway) as Arc<dyn PaymentGateway>,
        clock,
        metrics,
        idempotency,
        pools,
        cache,
        audit,
        draining: Arc::new(AtomicBool::new(false)),
        started_at,
        consumer_health,
    };
    Ok(App {
        state,
        gateway,
        tasks,
        relay,
        consumers,
        audit_writer,
    })
}

/// Redis with `REDIS_URL` (connected lazily: the service starts while Redis is down, and reads
/// go to PostgreSQL until it answers), else the in-process cache.
fn cache_adapter(config: &Config) -> anyhow::Result<Arc<dyn Cache>> {
    Ok(match &config.redis_url {
        Some(url) => {
            tracing::info!(prefix = %config.redis_key_prefix, "caching event reads in Redis");
            Arc::new(
                RedisCache::new(url, &config.redis_key_prefix, config.cache_timeout)
                    .context("REDIS_URL")?,
            )
        }
        None => Arc::new(MemoryCache::default()),
    })
}

/// Starts the outbox relay and the bus consumers: on Kafka with `KAFKA_BROKERS`, else on the
/// in-process bus. The in-process bus forgets everything on restart, so its relay starts from
/// the beginning of the log (consumers skip what they applied); on Kafka the relay's cursor
/// is durable where the event store is.
async fn start_bus(
    config: &Config,
    durable_cursor: Option<Arc<dyn RelayCursor>>,
    dlq: Arc<dyn DeadLetters>,
    insights: &Arc<dyn Insights>,
    (store, metrics, clock): (&Arc<dyn EventStore>, &Arc<Metrics>, &Arc<dyn Clock>),
    health: &Arc<ConsumerHealth>,
) -> anyhow::Result<(Arc<dyn EventBus>, DlqService, RelayTask, ConsumersTask)> {
    let topics = Topics::new(config.kafka_topic_prefix.clone());
    let (bus, cursor): (Arc<dyn EventBus>, Arc<dyn RelayCursor>) = match &config.kafka_brokers {
        None => (
            Arc::new(MemoryBus::new()),
            Arc::new(MemoryCursor::default()),
        ),
        Some(brokers) => (
            Arc::new(KafkaBus::new(brokers).context("configuring the Kafka clients")?),
            durable_cursor.unwrap_or_else(|| Arc::new(MemoryCursor::default())),
        ),
    };
    tracing::info!(bus = bus.kind(), prefix = %config.kafka_topic_prefix, "event bus");
    // Best effort: a broker that is down now must not stop the service; the relay creates
    // the topics again before it publishes.
    if let Err(e) = bus.ensure_topics(&topics.all()).await {
        tracing::warn!(error = %e, "cannot create the bus topics yet");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = RelayTask {
        stop,
        task: Relay {
            store: Arc::clone(store),
            bus: Arc::clone(&bus),
            topics: topics.clone(),
            cursor,
            metrics: Arc::clone(metrics),
            clock: Arc::clone(clock),
        }
        .spawn(stopped),
    };
    let handlers: Vec<Arc<dyn Handler>> = vec![Arc::new(InsightsProjection(Arc::clone(insights)))];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut consumers = ConsumersTask {
        stop,
        tasks: Vec::new(),
    };
    for handler in &handlers {
        let consumer = Consumer {
            handler: Arc::clone(handler),
            dlq: Arc::clone(&dlq),
            metrics: Arc::clone(metrics),
            clock: Arc::clone(clock),
            retry: RetryPolicy::default(),
        };
        let supervision = Supervision {
            stall: config.consumer_stall,
            health: Arc::clone(health),
            stop: stopped.clone(),
        };
        consumers
            .tasks
            .push(consumer.spawn(Arc::clone(&bus), topics.clone(), supervision));
    }
    Ok((
        bus,
        DlqService::new(dlq, handlers, Arc::clone(clock)),
        relay,
        consumers,
    ))
}

/// Deletes idempotent answers older than 24 hours, hourly.
async fn purge_idempotency_keys(store: Arc<IdempotencyStore>) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        match store.purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "cannot purge idempotency keys"),
        }
    }
}

/// After the listener closes, how long in-flight requests may take before the process stops
/// anyway: keeps the exit within the 30 s an orchestrator usually grants after SIGTERM.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(20);

/// How long the bus consumers may take at shutdown to finish joining and leave their groups.
const CONSUMERS_LEAVE: Duration = Duration::from_secs(15);

/// Waits for every task in turn (each is running already; the order does not matter).
async fn futures_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// How long the outbox relay may take to publish the last events at shutdown (bounded, so the
/// exit stays within the 30 s an orchestrator grants; what is left is published later).
const RELAY_FLUSH: Duration = Duration::from_secs(5);

impl App {
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
        // Publish what the last requests committed before the process goes, and meanwhile
        // let the consumers leave their groups (a member that vanishes instead delays or,
        // on some brokers, wedges its group's next rebalance).
        let _ = self.relay.stop.send(true);
        let _ = self.consumers.stop.send(true);
        if tokio::time::timeout(RELAY_FLUSH, self.relay.task)
            .await
            .is_err()
        {
            tracing::warn!("the outbox relay did not flush in time; the outbox keeps the rest");
        }
        let left = futures_all(self.consumers.tasks);
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
