//! Builds the application from a `Config` (adapters -> stores -> background tasks -> router)
//! and serves it until a shutdown future completes. Tests use the same path with port 0 and
//! a `ManualClock`, so what they exercise is what production runs.

use crate::app::dead_letters::{self, DeadLetterAdmin};
use crate::app::idempotency::IdempotencyStore;
use crate::app::queue::{run_admission, WaitingRoom};
use crate::app::reconcile::{self, Reconciler};
use crate::app::{holds, reads::Reads, warm, webhooks::Webhooks, App};
mod adapters;
mod breakers;
mod bus;
mod metrics;
mod serve;

use crate::audit::memory::MemoryAuditStore;
use crate::audit::postgres::PostgresAuditStore;
use crate::audit::{AuditLog, AuditStore};
use crate::auth::cache::SessionCache;
use crate::auth::memory::MemoryAuthStore;
use crate::auth::postgres::PostgresAuthStore;
use crate::auth::{revocations, AuthService, AuthStore};
use crate::bus::consumer::{Consumer, ConsumerHealth, Handler, RetryPolicy, Supervision};
use crate::bus::kafka::KafkaBus;
use crate::bus::memory::MemoryBus;
use crate::bus::relay::{MemoryCursor, PostgresCursor, Relay, RelayCursor};
use crate::bus::{EventBus, Topics};
use crate::cache::memory::MemoryCache;
use crate::cache::redis::RedisCache;
use crate::cache::{Cache, EventCache, Invalidator};
use crate::clock::Clock;
use crate::config::{AppEnv, Config};
use crate::db;
use crate::dlq::memory::MemoryDeadLetters;
use crate::dlq::postgres::PostgresDeadLetters;
use crate::dlq::DeadLetters;
use crate::eventstore::memory::MemoryEventStore;
use crate::eventstore::postgres::PostgresEventStore;
use crate::eventstore::EventStore;
use crate::http::{self, AppState, Shared};
use crate::observability::Metrics;
use crate::payment::refunds::RefundSettlement;
use crate::payment::simulated::{drill, SimulatedGateway};
use crate::payment::PaymentGateway;
use crate::projections::insights::memory::MemoryInsights;
use crate::projections::insights::postgres::PostgresInsights;
use crate::projections::insights::{Insights, InsightsProjection};
use crate::projections::memory::MemoryReadModel;
use crate::projections::postgres::PostgresReadModel;
use crate::projections::{EventLookup, ProjectionWriter, Projector, ReadModel};
use crate::queue::pass::PassKey;
use crate::runtime::checkpoints::{Checkpoints, MemoryCheckpoints, PostgresCheckpoints};
use crate::runtime::{expiry, subscription, Sales};
use crate::webhooks::dispatch::{DeliverySettings, Dispatcher};
use crate::webhooks::fanout::WebhookFanout;
use adapters::{cache_adapter, in_memory, on_postgres, Adapters};
use anyhow::{bail, Context};
use bus::{start_bus, ConsumersTask, RelayTask};
use metrics::initialise_metrics;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A built service: its state and the background tasks it runs.
pub struct Service {
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

/// Audit records queued for the background writer before new ones are dropped (and counted):
/// minutes of the busiest audited traffic, a few MB at most.
const AUDIT_QUEUE: usize = 10_000;

/// How often each instance returns dead letters whose retry was abandoned (claimed longer
/// than `dlq::CLAIM_TIMEOUT` ago) to pending.
const DLQ_CLAIM_SWEEP: Duration = Duration::from_secs(60);

/// Wires adapters, stores and background tasks.
pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Service> {
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
        webhooks,
        queues,
        durable_cursor,
        processor,
        session_feed,
    } = adapters;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    initialise_metrics(&metrics, &config, store.kind(), &pools);
    let gateway = Arc::new(SimulatedGateway::new(
        config.payment_latency,
        config.payment_failure_rate,
        Arc::clone(&clock),
        processor,
    ));
    let db_limit = config.pool.answer_limit();
    let guards = breakers::guard(
        store,
        Arc::clone(&gateway) as Arc<dyn PaymentGateway>,
        (config.breaker, config.payment_timeout),
        db_limit,
        &metrics,
    );
    let store = Arc::clone(&guards.store);
    // Sessions are cached; on PostgreSQL other instances' revocations arrive over the feed.
    let sessions = Arc::new(match session_feed {
        Some(_) => SessionCache::guarded(Arc::clone(&metrics)),
        None => SessionCache::local(Arc::clone(&metrics)),
    });
    let auth = AuthService::new(accounts, Arc::clone(&clock), config.session_ttl)
        .with_session_cache(Arc::clone(&sessions));
    let (audit, audit_writer) = AuditLog::spawn(audit, Arc::clone(&metrics), AUDIT_QUEUE, db_limit);
    let idempotency = Arc::new(idempotency);

    let (expiry_handle, expiry_inbox) = expiry::channel();
    let invalidator = Invalidator::new(
        cache_adapter(&config)?,
        config.cache_ttl,
        Arc::clone(&metrics),
    );
    breakers::observed(invalidator.breaker(), &metrics);
    let breakers = breakers::board(guards.all, invalidator.breaker());
    let (read_progress, projector) = subscription::spawn(
        Arc::clone(&store),
        Arc::new(Projector {
            reads: projector,
            metrics: Arc::clone(&metrics),
            cache: Arc::clone(&invalidator) as Arc<dyn crate::projections::ViewInvalidation>,
            answer_limit: db_limit,
        }),
    );
    let published = read_progress.clone();
    let cache = Arc::new(EventCache::new(
        invalidator,
        Arc::clone(&reads) as Arc<dyn EventLookup>,
        move || published.position(),
        config.cache_ttl,
        config.cache_enabled,
    ));
    let read_side = Arc::new(Reads::new(Arc::clone(&reads), cache, read_progress.clone()));
    let sales = Sales::new(
        Arc::clone(&store),
        expiry_handle.clone(),
        Arc::clone(&metrics),
        (config.max_batch, config.sale_mailbox),
        Arc::clone(&read_side) as Arc<dyn crate::runtime::CommitWatch>,
    );
    let (_, refunds) = subscription::spawn(
        Arc::clone(&store),
        Arc::new(RefundSettlement::new(
            Arc::clone(&guards.gateway),
            checkpoints,
        )),
    );
    let mut tasks = vec![
        projector,
        refunds,
        tokio::spawn(purge_idempotency_keys(Arc::clone(&idempotency))),
    ];
    if let Some(pool) = session_feed {
        tasks.push(revocations::spawn(pool.clone(), pool, sessions));
    }
    let consumer_health = Arc::new(ConsumerHealth::default());
    let dispatcher = Dispatcher::new(
        Arc::clone(&webhooks),
        Arc::clone(&clock),
        Arc::clone(&metrics),
        DeliverySettings {
            max_attempts: config.webhook_max_attempts,
            retry_base: config.webhook_retry_base,
            strict: config.app_env == AppEnv::Production,
            answer_limit: db_limit,
            ..DeliverySettings::default()
        },
    )
    .context("building the webhook HTTP client")?;
    tasks.push(dispatcher.spawn_sweep());
    if let Some(path) = &config.fault_gateway_file {
        tracing::warn!(
            ?path,
            "FAULT_GATEWAY_FILE is set: the simulated processor follows it"
        );
        let follow = drill::follow(Arc::clone(&gateway), path.clone());
        tasks.push(tokio::spawn(follow));
    }
    let handlers: Vec<Arc<dyn Handler>> = vec![
        Arc::new(InsightsProjection(Arc::clone(&insights))),
        Arc::new(WebhookFanout::new(
            Arc::clone(&webhooks),
            Arc::clone(&reads),
            read_progress.clone(),
            dispatcher.clone(),
            Arc::clone(&clock),
        )),
    ];
    let (bus, dlq, relay, consumers) = start_bus(
        &config,
        durable_cursor,
        dlq,
        handlers,
        (&store, &metrics, &clock),
        (&consumer_health, &guards.bus),
    )
    .await?;
    tasks.push(tokio::spawn(dead_letters::sweep(
        dlq.clone(),
        DLQ_CLAIM_SWEEP,
    )));

    // Holds always end: re-arm every pending hold once the read models caught up.
    let head = *store.subscribe_head().borrow();
    if !read_progress.wait_for(head, Duration::from_secs(120)).await {
        bail!("read models did not catch up with the event store within 120 s");
    }
    let rearmed = holds::rearm_pending(reads.as_ref(), &expiry_handle)
        .await
        .context("listing pending holds")?;
    tracing::info!(count = rearmed, "re-armed expiry of pending holds");
    // A new instance's first buyers do not wait for a long sale's load.
    warm::warm_start(reads.as_ref(), &sales, warm::WITHIN).await;
    tasks.push(tokio::spawn(holds::sweep(
        Arc::clone(&reads),
        expiry_handle.clone(),
        Arc::clone(&clock),
        config.expiry_sweep,
    )));
    tasks.push(tokio::spawn(expiry::run(
        expiry_inbox,
        Arc::new(sales.clone()),
        Arc::clone(&clock),
        Arc::clone(&metrics),
    )));

    if let (Some(email), Some(password)) = (&config.admin_email, &config.admin_password) {
        auth.ensure_admin(email, password)
            .await
            .context("creating the bootstrap admin from ADMIN_EMAIL/ADMIN_PASSWORD")?;
        tracing::info!("bootstrap admin account ready");
    }

    let queue = Arc::new(WaitingRoom::new(
        queues,
        queue_pass_key(&config).context("QUEUE_PASS_SECRET")?,
        Arc::clone(&metrics),
    ));
    tasks.push(tokio::spawn(run_admission(
        Arc::clone(&queue),
        Arc::clone(&clock),
    )));
    let rate_limiter = Arc::new(http::ratelimit::RateLimiter::new(
        config.rate_limits,
        config.trust_proxy,
    ));
    let app = App {
        sales,
        reads: read_side,
        insights,
        gateway: Arc::clone(&guards.gateway),
        idempotency,
        dead_letters: dlq,
        clock: Arc::clone(&clock),
        metrics: Arc::clone(&metrics),
        hold_for: config.reservation_ttl,
        webhooks: Webhooks {
            store: webhooks,
            dispatcher,
            strict: config.app_env == AppEnv::Production,
        },
        crash_after_capture: config.fault_crash_after_capture,
        queue,
        retries: Default::default(),
    };
    if config.fault_crash_after_capture {
        tracing::warn!("FAULT_CRASH_AFTER_CAPTURE is set: the process aborts after every capture");
    }
    let app = Arc::new(app);
    tasks.push(tokio::spawn(reconcile::run(
        Reconciler::new(Arc::clone(&app), config.request_timeout),
        config.reconcile_interval,
    )));
    let state = AppState::new(Shared {
        config,
        rate_limiter,
        app,
        bus,
        auth,
        clock,
        metrics,
        pools,
        audit,
        draining: Arc::new(AtomicBool::new(false)),
        started_at,
        consumer_health,
        breakers,
    });
    Ok(Service {
        state,
        gateway,
        tasks,
        relay,
        consumers,
        audit_writer,
    })
}

/// The key that signs queue passes: `QUEUE_PASS_SECRET` (required in production by the
/// configuration), else a fixed development key, said loudly.
fn queue_pass_key(config: &Config) -> Result<PassKey, crate::queue::pass::BadKey> {
    match &config.queue_pass_secret {
        Some(secret) => PassKey::new(secret.as_bytes()),
        None => {
            tracing::warn!(
                "QUEUE_PASS_SECRET is not set: queue passes are signed with a fixed development \
                 key that anyone can read in the source; set it (the same on every instance)"
            );
            PassKey::new(DEV_QUEUE_PASS_SECRET)
        }
    }
}

/// The development key of queue passes (never in production: the configuration refuses).
const DEV_QUEUE_PASS_SECRET: &[u8] = b"ticketing-development-queue-pass-secret";

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
