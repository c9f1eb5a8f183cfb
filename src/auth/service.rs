//! `AuthService`: registration, login, token authentication, logout and the start-up admin
//! bootstrap, over any `AuthStore` and an injected `Clock`. It normalises emails, hashes
//! passwords and mints tokens; it never logs a password, token or hash, and never hands the
//! store anything but hashes and token digests. Authorisation (who may hold which role) is
//! decided by the callers. With a `SessionCache`, `authenticate` answers repeated tokens from
//! memory; logout and role changes here evict from it at once.

use super::cache::{Cached, SessionCache};
use super::store::{AuthError, AuthStore, Principal, Role, User};
use super::{password, token};
use crate::clock::Clock;
use crate::domain::UserId;
use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A successful login. `token` is the only copy of the bearer secret: give it to the client
/// once, then drop it.
#[derive(Clone)]
pub struct LoginSession {
    pub token: String,
    pub user: User,
    pub expires_at: DateTime<Utc>,
}

/// Hand-written so that `{:?}` never prints the bearer token.
impl fmt::Debug for LoginSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginSession")
            .field("token", &"<redacted>")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Clone)]
pub struct AuthService {
    store: Arc<dyn AuthStore>,
    clock: Arc<dyn Clock>,
    session_ttl: chrono::Duration,
    sessions: Option<Arc<SessionCache>>,
}

/// Emails are compared trimmed and lowercased, so `Ada@Example.com ` and `ada@example.com`
/// are one account.
fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A real Argon2id hash (same parameters as user hashes) of a password nobody uses. Logins for
/// unknown emails verify against it so that they cost as much as logins for known ones and
/// response time does not reveal which emails have accounts. Computed once, on first need.
async fn dummy_hash() -> Result<&'static str, AuthError> {
    static DUMMY: OnceCell<String> = OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| password::hash("timing-equaliser: not a real password".to_owned()))
        .await
        .map(String::as_str)
}

impl AuthService {
    /// Sessions last `session_ttl` from login; time is read from `clock` only.
    pub fn new(
        store: Arc<dyn AuthStore>,
        clock: Arc<dyn Clock>,
        session_ttl: chrono::Duration,
    ) -> Self {
        Self {
            store,
            clock,
            session_ttl,
            sessions: None,
        }
    }

    /// Resolves repeated tokens from `cache` instead of the store (see `auth::cache`).
    pub fn with_session_cache(mut self, cache: Arc<SessionCache>) -> Self {
        self.sessions = Some(cache);
        self
    }

    /// The session cache, if any.
    pub fn session_cache(&self) -> Option<&Arc<SessionCache>> {
        self.sessions.as_ref()
    }

    /// The underlying store, e.g. for `/ready` (`ping`, `kind`).
    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    /// Creates an account with `role`. `EmailTaken` if the normalised email exists. Does not
    /// check whether the caller may claim `role`: the HTTP layer does.
    #[tracing::instrument(skip_all, fields(role = role.as_str(), user_id), err(level = "info"))]
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: Option<String>,
        role: Role,
    ) -> Result<User, AuthError> {
        let user = User {
            id: UserId::random(),
            email: normalize_email(email),
            name,
            role,
            password_hash: password::hash(password.to_owned()).await?,
            created_at: self.clock.now(),
        };
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        self.store.insert_user(&user).await?;
        Ok(user)
    }

    /// Checks the password and opens a session. Wrong password and unknown email are the same
    /// `InvalidCredentials`, and take about the same time (see `dummy_hash`).
    #[tracing::instrument(skip_all, fields(user_id), err(level = "info"))]
    pub async fn login(&self, email: &str, password: &str) -> Result<LoginSession, AuthError> {
        let email = normalize_email(email);
        let Some(user) = self.store.user_by_email(&email).await? else {
            let dummy = dummy_hash().await?.to_owned();
            // The outcome is irrelevant; only the work matters.
            let _ = password::verify(password.to_owned(), dummy).await?;
            return Err(AuthError::InvalidCredentials);
        };
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        if !password::verify(password.to_owned(), user.password_hash.clone()).await? {
            return Err(AuthError::InvalidCredentials);
        }
        let token = token::generate();
        let expires_at = self.clock.now() + self.session_ttl;
        self.store
            .insert_session(&token::digest(&token), user.id, expires_at)
            .await?;
        Ok(LoginSession {
            token,
            user,
            expires_at,
        })
    }

    /// Resolves a bearer token to its caller: from the session cache when it holds the token,
    /// else in one store look-up (then cached). Unknown, expired (`now >= expires_at`) and
    /// orphaned (user gone) sessions are all `InvalidToken`; expired ones are deleted (orphans
    /// go with their user in PostgreSQL, by foreign key cascade).
    #[tracing::instrument(skip_all, fields(user_id), err(level = "debug"))]
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let key = token::digest(token);
        let ticket = match self.sessions.as_deref().map(|cache| cache.get(&key)) {
            Some(Cached::Hit(principal, expires_at)) => {
                return self.admit(&key, principal, expires_at).await;
            }
            Some(Cached::Miss(ticket)) => Some(ticket),
            Some(Cached::Off) | None => None,
        };
        let Some((user, expires_at)) = self.store.session_user(&key).await? else {
            // Unknown token, or its user is gone (the session row goes with it).
            return Err(AuthError::InvalidToken);
        };
        let principal = Principal {
            user_id: user.id,
            role: user.role,
            email: user.email,
        };
        if let (Some(cache), Some(ticket)) = (&self.sessions, ticket) {
            if self.clock.now() < expires_at {
                cache.put(ticket, key.clone(), principal.clone(), expires_at);
            }
        }
        self.admit(&key, principal, expires_at).await
    }

    /// The caller of a live session; an expired one is forgotten and refused.
    async fn admit(
        &self,
        key: &str,
        principal: Principal,
        expires_at: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        tracing::Span::current().record("user_id", tracing::field::display(principal.user_id));
        if self.clock.now() >= expires_at {
            self.forget_session(key).await;
            return Err(AuthError::InvalidToken);
        }
        Ok(principal)
    }

    /// Ends the session of `token`; the token stops working at once here (and, through the
    /// store's revocation feed, within 1 s on other instances). Logging out an unknown or
    /// already-ended session succeeds.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        let key = token::digest(token);
        let deleted = self.store.delete_session(&key).await;
        self.evict_session(&key);
        deleted
    }

    /// Start-up bootstrap: makes `email` an admin with `password`, creating the account if it
    /// does not exist, otherwise promoting it and replacing its password. Idempotent: an admin
    /// with that password already is left as is (every instance runs this at start-up). A
    /// promoted or re-passworded account loses its sessions (`AuthStore::update_user`): a
    /// token someone got for that email before it was the admin's does not become an admin's
    /// token; it stops working at once here and within 1 s on other instances.
    #[tracing::instrument(skip_all, fields(user_id), err)]
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<User, AuthError> {
        let email = normalize_email(email);
        if let Some(user) = self.store.user_by_email(&email).await? {
            if user.role == Role::Admin
                && password::verify(password.to_owned(), user.password_hash.clone()).await?
            {
                return Ok(user);
            }
            let password_hash = password::hash(password.to_owned()).await?;
            return self.promote(user, password_hash).await;
        }
        let password_hash = password::hash(password.to_owned()).await?;
        let user = User {
            id: UserId::random(),
            email,
            name: None,
            role: Role::Admin,
            password_hash,
            created_at: self.clock.now(),
        };
        match self.store.insert_user(&user).await {
            Ok(()) => {
                tracing::Span::current().record("user_id", tracing::field::display(user.id));
                Ok(user)
            }
            // Someone registered the email between our lookup and insert: promote them.
            Err(AuthError::EmailTaken) => match self.store.user_by_email(&user.email).await? {
                Some(existing) => self.promote(existing, user.password_hash).await,
                None => Err(AuthError::Internal(
                    "admin email reported taken but not found".into(),
                )),
            },
            Err(e) => Err(e),
        }
    }

    async fn promote(&self, mut user: User, password_hash: String) -> Result<User, AuthError> {
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        user.role = Role::Admin;
        user.password_hash = password_hash;
        let updated = self.store.update_user(&user).await;
        if let Some(cache) = &self.sessions {
            cache.evict_user(user.id);
        }
        updated.map(|()| user)
    }

    /// Best-effort removal of a dead session: the caller is rejected either way.
    async fn forget_session(&self, key: &str) {
        self.evict_session(key);
        if let Err(e) = self.store.delete_session(key).await {
            tracing::warn!(error = %e, "could not delete a dead session");
        }
    }

    fn evict_session(&self, key: &str) {
        if let Some(cache) = &self.sessions {
            cache.evict_session(key);
        }
    }
}

#[cfg(test)]
mod tests;
