//! Service tests: round trips over the in-memory store, with time driven by `ManualClock`,
//! through a session cache (as the service runs).

use super::*;
use crate::auth::memory::MemoryAuthStore;
use crate::clock::ManualClock;
use crate::observability::Metrics;
use chrono::{Duration, TimeZone};

struct Harness {
    auth: AuthService,
    store: Arc<MemoryAuthStore>,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn hits(&self) -> u64 {
        self.metrics
            .cache_requests
            .with_label_values(&["sessions", "hit"])
            .get()
    }
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn harness() -> Harness {
    let store = Arc::new(MemoryAuthStore::new());
    let clock = Arc::new(ManualClock::new(start()));
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(SessionCache::local(Arc::clone(&metrics)));
    let auth = AuthService::new(store.clone(), clock.clone(), Duration::hours(1))
        .with_session_cache(cache);
    Harness {
        auth,
        store,
        clock,
        metrics,
    }
}

/// A registered user can log in, and the token identifies them with their role.
#[tokio::test]
async fn registered_user_can_log_in_and_authenticate() {
    let h = harness();
    let user = h
        .auth
        .register(
            "ada@example.com",
            "hunter22",
            Some("Ada".into()),
            Role::Organizer,
        )
        .await
        .unwrap();
    assert_eq!(user.created_at, start());
    assert!(user.password_hash.starts_with("$argon2id$"));

    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    assert_eq!(session.user, user);
    assert_eq!(session.expires_at, start() + Duration::hours(1));

    let me = h.auth.authenticate(&session.token).await.unwrap();
    assert_eq!(
        me,
        Principal {
            user_id: user.id,
            role: Role::Organizer,
            email: "ada@example.com".into()
        }
    );
    assert!(!me.is_admin());
}

/// A wrong password and an unknown email fail identically.
#[tokio::test]
async fn wrong_password_and_unknown_email_are_both_invalid_credentials() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let wrong = h
        .auth
        .login("ada@example.com", "hunter23")
        .await
        .unwrap_err();
    let unknown = h
        .auth
        .login("bob@example.com", "hunter22")
        .await
        .unwrap_err();
    assert_eq!(wrong, AuthError::InvalidCredentials);
    assert_eq!(unknown, AuthError::InvalidCredentials);
    assert_eq!(wrong.to_string(), unknown.to_string());
}

/// After logout the token is rejected, and a second logout is harmless.
#[tokio::test]
async fn logout_makes_the_token_stop_working() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    h.auth.authenticate(&session.token).await.unwrap();
    h.auth.logout(&session.token).await.unwrap();
    assert_eq!(
        h.auth.authenticate(&session.token).await,
        Err(AuthError::InvalidToken)
    );
    h.auth.logout(&session.token).await.unwrap();
}

/// A session works until just before its expiry, fails from the expiry instant on, and is
/// then removed from the store.
#[tokio::test]
async fn an_expired_session_is_rejected_and_deleted() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();

    h.clock.advance(Duration::hours(1) - Duration::seconds(1));
    h.auth.authenticate(&session.token).await.unwrap();

    h.clock.advance(Duration::seconds(1));
    assert_eq!(
        h.auth.authenticate(&session.token).await,
        Err(AuthError::InvalidToken)
    );
    let key = token::digest(&session.token);
    assert_eq!(h.store.session(&key).await.unwrap(), None);
}

/// The store holds the token's SHA-256 digest as the session key, never the token itself.
#[tokio::test]
async fn the_stored_session_key_is_the_digest_not_the_token() {
    let h = harness();
    let user = h
        .auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    let key = token::digest(&session.token);
    assert_ne!(key, session.token);
    assert_eq!(
        h.store.session(&key).await.unwrap(),
        Some((user.id, session.expires_at))
    );
    assert_eq!(h.store.session(&session.token).await.unwrap(), None);
    assert!(!format!("{session:?}").contains(&session.token));
}

/// A token that was never issued is rejected.
#[tokio::test]
async fn an_unknown_token_is_rejected() {
    let h = harness();
    assert_eq!(
        h.auth.authenticate(&token::generate()).await,
        Err(AuthError::InvalidToken)
    );
}

/// `ensure_admin` creates a missing admin, and promotes an existing account while
/// replacing its password.
#[tokio::test]
async fn ensure_admin_creates_then_promotes() {
    let h = harness();
    let created = h
        .auth
        .ensure_admin("root@example.com", "first-pw")
        .await
        .unwrap();
    assert_eq!(created.role, Role::Admin);
    let me = h
        .auth
        .authenticate(
            &h.auth
                .login("root@example.com", "first-pw")
                .await
                .unwrap()
                .token,
        )
        .await
        .unwrap();
    assert!(me.is_admin());

    let customer = h
        .auth
        .register(
            "Ops@Example.com",
            "old-pw",
            Some("Ops".into()),
            Role::Customer,
        )
        .await
        .unwrap();
    let promoted = h
        .auth
        .ensure_admin("ops@example.com", "new-pw")
        .await
        .unwrap();
    assert_eq!(promoted.id, customer.id);
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(promoted.name.as_deref(), Some("Ops"));
    assert_eq!(
        h.store.user_by_id(customer.id).await.unwrap(),
        Some(promoted)
    );
    assert_eq!(
        h.auth.login("ops@example.com", "old-pw").await.unwrap_err(),
        AuthError::InvalidCredentials
    );
    h.auth.login("ops@example.com", "new-pw").await.unwrap();
}

/// Emails match regardless of case and surrounding spaces, for login and for uniqueness.
#[tokio::test]
async fn emails_are_case_insensitive() {
    let h = harness();
    let user = h
        .auth
        .register("  Ada@Example.COM ", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    assert_eq!(user.email, "ada@example.com");
    let session = h.auth.login("ADA@example.com", "hunter22").await.unwrap();
    assert_eq!(session.user.id, user.id);
    assert_eq!(
        h.auth
            .register("ada@EXAMPLE.com", "other-pw", None, Role::Customer)
            .await
            .unwrap_err(),
        AuthError::EmailTaken
    );
}

/// A session whose user no longer exists is rejected (PostgreSQL also deletes it by cascade).
#[tokio::test]
async fn a_session_of_a_missing_user_is_rejected() {
    let h = harness();
    let token = token::generate();
    h.store
        .insert_session(
            &token::digest(&token),
            UserId::random(),
            start() + Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(
        h.auth.authenticate(&token).await,
        Err(AuthError::InvalidToken)
    );
}

/// A repeated token is answered from the cache: the store is not asked again (a session
/// deleted behind the service's back is still served, which is what proves it).
#[tokio::test]
async fn a_repeated_token_does_not_ask_the_store() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    let first = h.auth.authenticate(&session.token).await.unwrap();
    assert_eq!(h.hits(), 0);
    h.store
        .delete_session(&token::digest(&session.token))
        .await
        .unwrap();
    assert_eq!(h.auth.authenticate(&session.token).await.unwrap(), first);
    assert_eq!(h.hits(), 1);
}

/// Logout evicts the cached token at once; other sessions of the user stay cached.
#[tokio::test]
async fn logout_evicts_the_cached_token() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let one = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    let two = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    h.auth.authenticate(&one.token).await.unwrap();
    h.auth.authenticate(&two.token).await.unwrap();
    h.auth.logout(&one.token).await.unwrap();
    assert_eq!(
        h.auth.authenticate(&one.token).await,
        Err(AuthError::InvalidToken)
    );
    let hits = h.hits();
    h.auth.authenticate(&two.token).await.unwrap();
    assert_eq!(h.hits(), hits + 1);
}

/// A promotion ends the account's sessions, cached ones too: the token someone signed in with
/// before does not become an admin's. The admin signs in anew; the start-up bootstrap run again
/// with the same password leaves that session alone.
#[tokio::test]
async fn a_promotion_ends_the_accounts_sessions() {
    let h = harness();
    h.auth
        .register("ops@example.com", "old-pw", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ops@example.com", "old-pw").await.unwrap();
    assert_eq!(
        h.auth.authenticate(&session.token).await.unwrap().role,
        Role::Customer
    );
    h.auth
        .ensure_admin("ops@example.com", "new-pw")
        .await
        .unwrap();
    assert_eq!(
        h.auth.authenticate(&session.token).await,
        Err(AuthError::InvalidToken)
    );
    let admin = h.auth.login("ops@example.com", "new-pw").await.unwrap();
    h.auth
        .ensure_admin("ops@example.com", "new-pw")
        .await
        .unwrap();
    assert!(h.auth.authenticate(&admin.token).await.unwrap().is_admin());
}

/// A cached session still ends at its expiry.
#[tokio::test]
async fn a_cached_session_still_expires() {
    let h = harness();
    h.auth
        .register("ada@example.com", "hunter22", None, Role::Customer)
        .await
        .unwrap();
    let session = h.auth.login("ada@example.com", "hunter22").await.unwrap();
    h.auth.authenticate(&session.token).await.unwrap();
    h.auth.authenticate(&session.token).await.unwrap();
    assert_eq!(h.hits(), 1);
    h.clock.advance(Duration::hours(1));
    assert_eq!(
        h.auth.authenticate(&session.token).await,
        Err(AuthError::InvalidToken)
    );
}
