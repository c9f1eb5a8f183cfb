//! The storage adapters the service runs on: all in memory (no `DATABASE_URL`), or all on
//! PostgreSQL (each database connected and migrated, one pool per role); and the cache
//! adapter, Redis with `REDIS_URL` or in process.

use super::*;
use crate::db::Database;
use crate::payment::simulated::Ledger;
use crate::queue::memory::MemoryQueues;
use crate::queue::postgres::PostgresQueues;
use crate::queue::QueueStore;
use crate::webhooks::memory::MemoryWebhooks;
use crate::webhooks::postgres::PostgresWebhooks;
use crate::webhooks::WebhookStore;

/// The storage adapters: all in memory, or all on PostgreSQL.
pub(super) struct Adapters {
    pub(super) store: Arc<dyn EventStore>,
    /// The read models as queries see them.
    pub(super) reads: Arc<dyn ReadModel>,
    /// The same read models, as the projector writes them (its own connections).
    pub(super) projector: Arc<dyn ProjectionWriter>,
    pub(super) accounts: Arc<dyn AuthStore>,
    pub(super) audit: Arc<dyn AuditStore>,
    pub(super) checkpoints: Arc<dyn Checkpoints>,
    pub(super) idempotency: IdempotencyStore,
    pub(super) pools: db::NamedPools,
    pub(super) dlq: Arc<dyn DeadLetters>,
    pub(super) insights: Arc<dyn Insights>,
    pub(super) webhooks: Arc<dyn WebhookStore>,
    pub(super) queues: Arc<dyn QueueStore>,
    /// Where the outbox relay has published up to, when it survives a restart (PostgreSQL).
    pub(super) durable_cursor: Option<Arc<dyn RelayCursor>>,
    /// The simulated card processor's ledger (its own table and pool on PostgreSQL, so that
    /// it outlives the process like a real processor's).
    pub(super) processor: Ledger,
    /// The session revocation feed's own two connections to the accounts' database, one to
    /// listen and one for heartbeats, so that a busy accounts pool cannot delay a heartbeat
    /// (PostgreSQL: other instances may revoke sessions); none in memory.
    pub(super) session_feed: Option<sqlx::PgPool>,
}

pub(super) async fn in_memory() -> Adapters {
    tracing::warn!(
        "running on IN-MEMORY adapters (event store, read models, accounts): nothing survives \
         a restart; set DATABASE_URL for durable storage"
    );
    let reads = Arc::new(MemoryReadModel::new());
    Adapters {
        store: Arc::new(MemoryEventStore::new()),
        projector: Arc::clone(&reads) as Arc<dyn ProjectionWriter>,
        reads,
        accounts: Arc::new(MemoryAuthStore::new()),
        audit: Arc::new(MemoryAuditStore::default()),
        checkpoints: Arc::new(MemoryCheckpoints::default()),
        idempotency: IdempotencyStore::default(),
        pools: db::NamedPools::default(),
        dlq: Arc::new(MemoryDeadLetters::new()),
        insights: Arc::new(MemoryInsights::new()),
        webhooks: Arc::new(MemoryWebhooks::default()),
        queues: Arc::new(MemoryQueues::default()),
        durable_cursor: None,
        processor: Ledger::memory(),
        session_feed: None,
    }
}

/// Connects and migrates the three databases. Each role gets its own pool, even on one
/// database, so that request traffic can never queue the work every request waits for
/// (writers' appends, the projector) behind itself: up to `4 x DB_MAX_CONNECTIONS + 11`
/// connections per instance (`DB_MAX_CONNECTIONS` for the simulated processor's ledger too;
/// 2 for the projector, 3 for webhook deliveries, 2 for the session revocation feed, 4 for
/// the waiting rooms).
pub(super) async fn on_postgres(config: &Config, events_url: &str) -> anyhow::Result<Adapters> {
    let projections_url = config
        .projections_database_url
        .as_deref()
        .unwrap_or(events_url);
    let auth_url = config.auth_database_url.as_deref().unwrap_or(events_url);
    let open = |database, url| db::connect_and_migrate(database, url, &config.pool, "ticketing");
    let events = open(Database::Events, events_url).await?;
    let projections = open(Database::Projections, projections_url).await?;
    let auth = open(Database::Auth, auth_url).await?;
    let projector_settings = db::PoolSettings {
        max_connections: 2,
        ..config.pool.clone()
    };
    let projector = db::connect(projections_url, &projector_settings)
        .await
        .context("connecting to the projections database")?;
    // Webhook deliveries get their own small pool on the event store's database, so that a
    // burst of deliveries never queues the writers' appends.
    let webhook_settings = db::PoolSettings {
        max_connections: 3,
        ..config.pool.clone()
    };
    let webhooks = db::connect(events_url, &webhook_settings)
        .await
        .context("connecting the webhooks pool to the event store's database")?;
    // The simulated processor plays an outside party: a pool of its own, outside `pools`, as
    // large as a request pool (every payment request charges once: with 2 connections it was
    // what bounded full purchases, BENCHMARKS.md session 22).
    let processor_settings = config.pool.clone();
    let processor = db::connect(events_url, &processor_settings)
        .await
        .context("connecting the simulated processor's ledger to the event store's database")?;
    // The session revocation feed: one connection listens, the other sends heartbeats.
    let feed_settings = db::PoolSettings {
        max_connections: 2,
        ..config.pool.clone()
    };
    let session_feed = db::connect(auth_url, &feed_settings)
        .await
        .context("connecting the session feed to the accounts' database")?;
    // The waiting rooms get their own small pool too: a crowd polling its positions at an
    // on-sale must not queue the sale's appends.
    let queue_settings = db::PoolSettings {
        max_connections: 4,
        ..config.pool.clone()
    };
    let queues = db::connect(events_url, &queue_settings)
        .await
        .context("connecting the waiting room pool to the event store's database")?;
    tracing::info!("running on PostgreSQL (event store, read models, accounts)");
    // The batches, like the writers' turns and the projector, give up on a call without an
    // answer (a database gone without a reset) instead of waiting for the kernel.
    let limit = config.pool.answer_limit();
    let pools = db::NamedPools::new(vec![
        ("events", events.clone()),
        ("projections", projections.clone()),
        ("projector", projector.clone()),
        ("auth", auth.clone()),
        ("webhooks", webhooks.clone()),
        ("queue", queues.clone()),
    ]);
    Ok(Adapters {
        pools,
        store: Arc::new(PostgresEventStore::new(events.clone()).await?),
        reads: Arc::new(PostgresReadModel::new(projections.clone()).answering_within(limit)),
        projector: Arc::new(PostgresReadModel::new(projector)),
        accounts: Arc::new(PostgresAuthStore::new(auth.clone())),
        audit: Arc::new(PostgresAuditStore::new(auth.clone())),
        checkpoints: Arc::new(PostgresCheckpoints::new(projections.clone(), limit)),
        idempotency: IdempotencyStore::durable(auth, limit),
        dlq: Arc::new(PostgresDeadLetters::new(events.clone())),
        webhooks: Arc::new(PostgresWebhooks::new(webhooks)),
        queues: Arc::new(PostgresQueues::new(queues, limit)),
        insights: Arc::new(PostgresInsights::new(projections)),
        durable_cursor: Some(Arc::new(PostgresCursor::new(events.clone()).await?)),
        processor: Ledger::postgres(processor, limit),
        session_feed: Some(session_feed),
    })
}

/// Redis with `REDIS_URL` (connected lazily: the service starts while Redis is down, and reads
/// go to PostgreSQL until it answers), else the in-process cache.
pub(super) fn cache_adapter(config: &Config) -> anyhow::Result<Arc<dyn Cache>> {
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
