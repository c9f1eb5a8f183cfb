//! Commands that work on the stores directly, for when the service is stopped (projection
//! rebuilds), has no admin yet (`users create-admin`), or keeps its state outside itself
//! (`cache clear` on Redis). They call the same library code the service runs where there is
//! some: `projections::rebuild`, `insights::rebuild`, `AuthService::ensure_admin`.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use ticketing::auth::postgres::PostgresAuthStore;
use ticketing::auth::AuthService;
use ticketing::clock::SystemClock;
use ticketing::config::Config;
use ticketing::db::{self, Database};
use ticketing::eventstore::postgres::PostgresEventStore;
use ticketing::projections::insights::postgres::PostgresInsights;
use ticketing::projections::postgres::PostgresReadModel;

/// The application name of the tool's connections in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ticketing-admin";

/// Few connections: the tool runs one statement at a time, and no statement time-out (a
/// rebuild's statements may run long).
pub fn pool_settings(config: &Config) -> db::PoolSettings {
    db::PoolSettings {
        max_connections: 2,
        min_connections: 0,
        statement_timeout: None,
        ..config.pool.clone()
    }
}

/// Connects to one of the service's databases and migrates it.
async fn connect_and_migrate(
    config: &Config,
    database: Database,
    url: &str,
) -> anyhow::Result<PgPool> {
    db::connect_and_migrate(database, url, &pool_settings(config), APPLICATION_NAME).await
}

pub async fn connect(config: &Config, url: &str, what: &str) -> anyhow::Result<PgPool> {
    db::connect_as(url, &pool_settings(config), APPLICATION_NAME)
        .await
        .with_context(|| format!("connecting to the {what} database"))
}

/// The event store's URL, or an explanation of why there is nothing to work on.
pub fn events_url(config: &Config) -> anyhow::Result<&str> {
    config.database_url.as_deref().context(
        "DATABASE_URL is not set. Without it the service keeps everything in its own memory: \
         there is no database to work on (a restart of an in-memory service starts empty)",
    )
}

/// Empties the read models and the insights and replays the event store into both.
pub async fn rebuild_projections(config: &Config) -> anyhow::Result<Value> {
    let events_url = events_url(config)?;
    let projections_url = config
        .projections_database_url
        .as_deref()
        .unwrap_or(events_url);
    // Same binary, same migrations: a no-op on a database the service already migrated.
    let events = connect_and_migrate(config, Database::Events, events_url).await?;
    let projections = connect_and_migrate(config, Database::Projections, projections_url).await?;
    let store = PostgresEventStore::new(events)
        .await
        .context("opening the event store")?;
    let reads = PostgresReadModel::new(projections.clone());
    let read_models = ticketing::projections::rebuild(&store, &reads)
        .await
        .context("rebuilding the read models")?;
    let insights = PostgresInsights::new(projections);
    let insights_position = ticketing::projections::insights::rebuild(&store, &insights)
        .await
        .context("rebuilding the insights")?;
    Ok(json!({
        "read_models": {
            "position": read_models.position,
            // Not in the read models: rebuild again with a build that reads them.
            "undecodable_events": read_models.undecodable,
        },
        "insights": {"position": insights_position},
    }))
}

/// Makes `email` an admin with `password` on the auth database.
pub async fn create_admin(config: &Config, email: &str, password: &str) -> anyhow::Result<Value> {
    let Some(url) = config
        .auth_database_url
        .as_deref()
        .or(config.database_url.as_deref())
    else {
        bail!(
            "neither AUTH_DATABASE_URL nor DATABASE_URL is set. An in-memory service keeps \
             its accounts in its own memory: start it with ADMIN_EMAIL and ADMIN_PASSWORD instead"
        );
    };
    let pool = connect_and_migrate(config, Database::Auth, url).await?;
    let auth = AuthService::new(
        Arc::new(PostgresAuthStore::new(pool)),
        Arc::new(SystemClock),
        config.session_ttl,
    );
    let user = auth
        .ensure_admin(email, password)
        .await
        .context("creating the admin")?;
    Ok(json!({
        "user_id": user.id.to_string(),
        "email": user.email,
        "role": user.role.as_str(),
    }))
}

/// Keys deleted per `DEL`.
const CLEAR_BATCH: usize = 500;

/// Deletes every key under `REDIS_KEY_PREFIX` in the Redis of `REDIS_URL`, walking them with
/// `SCAN` (never `KEYS`, which blocks Redis). Returns how many were deleted.
pub async fn clear_cache(config: &Config) -> anyhow::Result<Value> {
    let Some(url) = &config.redis_url else {
        bail!(
            "REDIS_URL is not set: the cache is in process, one per instance; it empties \
             itself within CACHE_TTL_SECONDS, or restart the instances"
        );
    };
    let client = redis::Client::open(url.as_str()).context("REDIS_URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let pattern = format!("{}*", config.redis_key_prefix);
    let mut keys: Vec<String> = Vec::new();
    {
        let mut scan: redis::AsyncIter<'_, String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(CLEAR_BATCH)
            .clone()
            .iter_async(&mut conn)
            .await
            .context("scanning Redis")?;
        while let Some(key) = scan.next_item().await {
            keys.push(key.context("scanning Redis")?);
        }
    }
    for batch in keys.chunks(CLEAR_BATCH) {
        let () = redis::cmd("DEL")
            .arg(batch)
            .query_async(&mut conn)
            .await
            .map(|_: i64| ())
            .context("deleting cache entries")?;
    }
    Ok(json!({ "prefix": config.redis_key_prefix, "deleted": keys.len() }))
}
