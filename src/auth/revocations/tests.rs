//! Two `AuthService`s on one PostgreSQL database, each with its own guarded session cache and
//! feed, as two instances have: what one revokes, the other stops serving within the bound.

use super::*;
use crate::auth::postgres::PostgresAuthStore;
use crate::auth::{AuthError, AuthService, Principal, Role};
use crate::clock::SystemClock;
use crate::db::{self, testing::fresh_database};
use crate::observability::Metrics;
use std::time::Instant;

/// The documented bound: a revocation on one instance reaches the others within 1 s.
const BOUND: Duration = Duration::from_secs(1);

struct Instance {
    auth: AuthService,
    cache: Arc<SessionCache>,
    metrics: Arc<Metrics>,
    _feed: JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self._feed.abort();
    }
}

async fn instance(url: &str) -> Instance {
    let pool = db::connect(url, &db::PoolSettings::default())
        .await
        .unwrap();
    db::auth_migrator().run(&pool).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(SessionCache::guarded(Arc::clone(&metrics)));
    let feed = spawn(pool.clone(), pool.clone(), Arc::clone(&cache));
    let auth = AuthService::new(
        Arc::new(PostgresAuthStore::new(pool)),
        Arc::new(SystemClock),
        chrono::Duration::hours(1),
    )
    .with_session_cache(Arc::clone(&cache));
    Instance {
        auth,
        cache,
        metrics,
        _feed: feed,
    }
}

impl Instance {
    fn hits(&self) -> u64 {
        self.metrics
            .cache_requests
            .with_label_values(&["sessions", "hit"])
            .get()
    }

    /// Waits until the feed is live, then resolves `token` until it comes from the cache.
    async fn cached(&self, token: &str) -> Principal {
        poll("the feed to be live", Duration::from_secs(10), || async {
            self.cache.is_live()
        })
        .await;
        let started = Instant::now();
        loop {
            let before = self.hits();
            let principal = self.auth.authenticate(token).await.unwrap();
            if self.hits() > before {
                return principal;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never a hit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls `check` every 10 ms until it holds; panics once `deadline` passed.
async fn poll<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn two_instances() -> (String, Instance, Instance) {
    let url = fresh_database().await;
    let a = instance(&url).await;
    let b = instance(&url).await;
    (url, a, b)
}

/// A logout on A: B, which served the token from its cache, refuses it within the bound.
#[tokio::test]
async fn a_logout_on_one_instance_reaches_the_others_cache_within_the_bound() {
    let (_, a, b) = two_instances().await;
    a.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = a.auth.login("ada@example.com", "hunter22").await.unwrap();
    b.cached(&session.token).await;

    a.auth.logout(&session.token).await.unwrap();

    poll("B refuses the token", BOUND, || async {
        b.auth.authenticate(&session.token).await == Err(AuthError::InvalidToken)
    })
    .await;
}

/// A promotion on A ends the account's sessions: B refuses its cached caller within the bound.
#[tokio::test]
async fn a_role_change_on_one_instance_reaches_the_others_cache_within_the_bound() {
    let (_, a, b) = two_instances().await;
    a.auth
        .register("bob@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = a.auth.login("bob@example.com", "hunter22").await.unwrap();
    assert_eq!(b.cached(&session.token).await.role, Role::Customer);

    a.auth
        .ensure_admin("bob@example.com", "hunter33")
        .await
        .unwrap();

    poll("B refuses the ended session", BOUND, || async {
        b.auth.authenticate(&session.token).await == Err(AuthError::InvalidToken)
    })
    .await;
}

/// A lost feed connection empties the cache: a session deleted meanwhile, without any
/// notification (as if the feed lost it), is refused once the feed is back.
#[tokio::test]
async fn a_lost_feed_empties_the_cache() {
    let (url, a, b) = two_instances().await;
    a.auth
        .register("cy@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = a.auth.login("cy@example.com", "hunter22").await.unwrap();
    b.cached(&session.token).await;
    let pool = db::connect(&url, &db::PoolSettings::default())
        .await
        .unwrap();

    // Cut every feed connection and delete the session behind the feed's back.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(crate::auth::token::digest(&session.token))
        .execute(&pool)
        .await
        .unwrap();

    poll("B refuses the token", BOUND, || async {
        b.auth.authenticate(&session.token).await == Err(AuthError::InvalidToken)
    })
    .await;
    poll(
        "the feed to be live again",
        Duration::from_secs(10),
        || async { b.cache.is_live() },
    )
    .await;
    assert_eq!(
        b.auth.authenticate(&session.token).await,
        Err(AuthError::InvalidToken)
    );
}
