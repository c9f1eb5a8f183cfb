//! PostgreSQL plumbing shared by the adapters: pool settings (with the serving pools'
//! server-side `statement_timeout` and TCP keep-alives), the three migration sets (run on a
//! connection of their own, without that time-out), error classification, and fresh
//! throw-away databases for tests. The migration sets use disjoint
//! version ranges (events 1xxx.., projections 2xxx.., auth 3xxx..) and ignore each other's
//! rows, so they can share one database (and one `_sqlx_migrations` table) or live apart.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Connection pool settings, from `DB_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// The server cancels a statement running longer (`DB_STATEMENT_TIMEOUT_MS`); `None` for
    /// long admin work (migrations never get it).
    pub statement_timeout: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            statement_timeout: Some(Duration::from_secs(5)),
        }
    }
}

impl PoolSettings {
    /// How long one call of the service's serial tasks (a sale's writer turn, a batch, a
    /// projector's batch) may go without any answer before it is abandoned: the acquire
    /// time-out plus three statement time-outs (a locked turn is up to three statements in a
    /// row), or three times 30 s without a statement time-out. A live server answers, or
    /// cancels, well before; only a database gone without a reset (a host that failed over, a
    /// route that drops packets) gets here, and the kernel would otherwise keep the call
    /// waiting for many minutes, stalling everything queued behind it.
    pub fn answer_limit(&self) -> Duration {
        let statement = self.statement_timeout.unwrap_or(Duration::from_secs(30));
        self.acquire_timeout + 3 * statement
    }
}

/// How long after a call was abandoned the connections returned to the pools are checked
/// with a bounded ping first (`abandoned`).
const SUSPICION: Duration = Duration::from_secs(5);

/// Until when (milliseconds after `CLOCK_START`) returned connections are suspect.
static SUSPECT_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
static CLOCK_START: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    let start = CLOCK_START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Says that a call was given up without an answer: its connection may have gone silent.
/// sqlx checks a returned connection with a ping that waits as long as the kernel does, and
/// holds the connection's place in its pool meanwhile; so for the next `SUSPICION` every
/// connection returned to a pool is first pinged with a bound (`serving`), and one that does
/// not answer is dropped without a word, freeing its place for a new connection.
pub fn abandoned() {
    SUSPECT_UNTIL_MS.fetch_max(
        now_ms().saturating_add(SUSPICION.as_millis() as u64),
        Ordering::SeqCst,
    );
}

fn suspect() -> bool {
    now_ms() < SUSPECT_UNTIL_MS.load(Ordering::SeqCst)
}

/// `call`'s answer, or `gave_up()` once `limit` passed without one (`abandoned` is said
/// before the call, and the connection it holds, are dropped).
pub async fn within<T, E>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
    gave_up: impl FnOnce() -> E,
) -> Result<T, E> {
    let call = std::pin::pin!(call);
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => {
            abandoned();
            Err(gave_up())
        }
    }
}

/// A `LISTEN`ing connection, on a pool of its own with `pool`'s settings. sqlx's listener,
/// dropped, sends `UNLISTEN` on its connection without a bound and keeps the connection's
/// pool slot meanwhile: on a connection gone silent that is for as long as the kernel waits.
/// With a pool of its own per listener, a replaced listener strands only its own slot.
pub async fn listener(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    sqlx::postgres::PgListener::connect_with(&own).await
}

/// The pools of one instance by role (`events`, `projections`, `projector`, `auth`): a
/// fixed, bounded set of names, so they can label metrics.
#[derive(Clone, Default)]
pub struct NamedPools(Arc<[(&'static str, PgPool)]>);

impl NamedPools {
    pub fn new(pools: Vec<(&'static str, PgPool)>) -> Self {
        NamedPools(pools.into())
    }

    /// Each role with its pool's `(open connections, idle connections)` right now.
    pub fn sizes(&self) -> impl Iterator<Item = (&'static str, u32, usize)> + '_ {
        self.0
            .iter()
            .map(|(name, pool)| (*name, pool.size(), pool.num_idle()))
    }
}

/// Opens a pool; connections are made lazily except `min_connections`.
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    connect_as(url, settings, "ticketing").await
}

/// Opens a pool whose connections show up in `pg_stat_activity` as `application_name`, so
/// that tools (`ticketing-admin`) are not mistaken for the service.
pub async fn connect_as(
    url: &str,
    settings: &PoolSettings,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    let options =
        serving(PgConnectOptions::from_str(url)?, settings).application_name(application_name);
    let check_within = settings.acquire_timeout;
    PgPoolOptions::new()
        .after_release(move |conn, _| {
            Box::pin(async move {
                if !suspect() {
                    return Ok(true);
                }
                // An error closes the connection without the goodbye a silent one would hold.
                match tokio::time::timeout(check_within, sqlx::Connection::ping(conn)).await {
                    Ok(answer) => answer.map(|()| true),
                    Err(_) => Err(sqlx::Error::PoolTimedOut),
                }
            })
        })
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(settings.idle_timeout)
        .max_lifetime(settings.max_lifetime)
        .connect_with(options)
        .await
}

/// Server-side settings of every pooled connection: the statement time-out, and TCP
/// keep-alives so the server notices a client gone without a reset (a black-holed network) in
/// about a minute and ends its backend, releasing the locks it held. (sqlx offers no
/// client-side keep-alive; a statement on a connection cut that way waits for the kernel.)
fn serving(options: PgConnectOptions, settings: &PoolSettings) -> PgConnectOptions {
    let keepalive = [
        ("tcp_keepalives_idle", 30),
        ("tcp_keepalives_interval", 10),
        ("tcp_keepalives_count", 3),
    ];
    let options = options.options(keepalive);
    match settings.statement_timeout {
        Some(limit) => options.options([("statement_timeout", limit.as_millis())]),
        None => options,
    }
}

fn tolerant(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// Migrations of the event store (`migrations_events/`).
pub fn events_migrator() -> Migrator {
    tolerant(sqlx::migrate!("./migrations_events"))
}

/// Migrations of the read models (`migrations_projections/`).
pub fn projections_migrator() -> Migrator {
    tolerant(sqlx::migrate!("./migrations_projections"))
}

/// Migrations of accounts, sessions and idempotency keys (`migrations_auth/`).
pub fn auth_migrator() -> Migrator {
    tolerant(sqlx::migrate!("./migrations_auth"))
}

/// The service's three databases (they may be one): each has its own migration set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Events,
    Projections,
    Auth,
}

impl Database {
    fn migrator(self) -> Migrator {
        match self {
            Database::Events => events_migrator(),
            Database::Projections => projections_migrator(),
            Database::Auth => auth_migrator(),
        }
    }

    /// The variable that names its URL (the others fall back to `DATABASE_URL`).
    fn variable(self) -> &'static str {
        match self {
            Database::Events => "DATABASE_URL",
            Database::Projections => "PROJECTIONS_DATABASE_URL or DATABASE_URL",
            Database::Auth => "AUTH_DATABASE_URL or DATABASE_URL",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Database::Events => "event store",
            Database::Projections => "projections",
            Database::Auth => "auth",
        }
    }
}

/// Connects to `database` at `url` (as `application_name`) and runs its migrations, a no-op
/// on a database already migrated. Errors say which database failed and at which step.
pub async fn connect_and_migrate(
    database: Database,
    url: &str,
    settings: &PoolSettings,
    application_name: &str,
) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    use sqlx::Connection;
    let (name, variable) = (database.name(), database.variable());
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("{variable} is not a PostgreSQL URL"))?;
    // One direct attempt first: the pool would retry a refused connection until its acquire
    // timeout and then say only "pool timed out", without the cause or the address.
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    let at = format!("the {name} database ({variable}: host {host}, port {port})");
    // The migrations run on that connection, never under the serving pools' time-out.
    let mut direct = match tokio::time::timeout(
        settings.acquire_timeout,
        sqlx::PgConnection::connect_with(&options),
    )
    .await
    {
        Err(_) => anyhow::bail!(
            "cannot connect to {at}: no answer within {:?}",
            settings.acquire_timeout
        ),
        Ok(Err(e)) => return Err(e).with_context(|| format!("cannot connect to {at}")),
        Ok(Ok(direct)) => direct,
    };
    database
        .migrator()
        .run(&mut direct)
        .await
        .with_context(|| format!("migrating the {} database", database.name()))?;
    let _ = direct.close().await;
    connect_as(url, settings, application_name)
        .await
        .with_context(|| format!("connecting to {at}"))
}

/// True when `error` is a unique violation of the named constraint.
pub fn violates(error: &sqlx::Error, constraint: &str) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation() && e.constraint() == Some(constraint))
}

/// Throw-away databases for tests.
pub mod testing {
    use sqlx::Connection;

    /// The server tests create their databases on: `TEST_DATABASE_URL`, else a local default.
    pub fn admin_url() -> String {
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
            "postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable".into()
        })
    }

    /// `url` with its database name replaced by `database`.
    pub fn with_database(url: &str, database: &str) -> String {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q)));
        let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
        match query {
            Some(q) => format!("{prefix}/{database}?{q}"),
            None => format!("{prefix}/{database}"),
        }
    }

    /// Drops the database `url` names (made by [`fresh_database`]), closing its connections.
    /// Best effort: a left-over is dropped by `scripts/services.sh` later.
    pub async fn drop_database(url: &str) {
        let Some(name) = url
            .split('?')
            .next()
            .and_then(|base| base.rsplit_once('/'))
            .map(|(_, name)| name.to_owned())
            .filter(|name| name.starts_with("ticketing_test_"))
        else {
            return;
        };
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }

    /// A connection to a fresh database that `migrator` has migrated.
    pub async fn migrated_connection(migrator: sqlx::migrate::Migrator) -> sqlx::PgConnection {
        let url = fresh_database().await;
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        migrator
            .run(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot migrate {url}: {e}"));
        conn
    }

    /// Panics unless the plan `lines` (of `EXPLAIN`) read through `index` and never
    /// sequentially.
    pub fn assert_probes_only(lines: &[String], index: &str) {
        let plan = lines.join("\n");
        assert!(plan.contains(index), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }

    /// Creates an empty database with a unique name and returns its URL. Panics with the way
    /// to start PostgreSQL when the server cannot be reached (tests must not skip silently).
    pub async fn fresh_database() -> String {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                "PostgreSQL is not reachable at {admin} ({e}). Start it with ./scripts/services.sh \
                 (or set TEST_DATABASE_URL to a server where the user may create databases)"
            )
            });
        // The creation time in the name lets scripts/services.sh drop stale databases.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("ticketing_test_{created}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database on {admin}: {e}"));
        with_database(&admin, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serving pool's connections carry the statement time-out: a statement running past
    /// it is cancelled by the server (SQLSTATE 57014, which the adapters report as
    /// unavailable, 503). The migrations ran under none: with the pool's 1 ms they could not
    /// have created their tables in time.
    #[tokio::test]
    async fn pools_get_the_statement_timeout_and_migrations_do_not() {
        let url = testing::fresh_database().await;
        let settings = PoolSettings {
            max_connections: 2,
            statement_timeout: Some(Duration::from_millis(1)),
            ..PoolSettings::default()
        };
        let pool = connect_and_migrate(Database::Events, &url, &settings, "ticketing")
            .await
            .expect("migrations run without the time-out");
        let error = sqlx::query("SELECT pg_sleep(1)")
            .execute(&pool)
            .await
            .expect_err("cancelled past the time-out");
        let code = error.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("57014"), "{error}");
        pool.close().await;
        testing::drop_database(&url).await;
    }
}
