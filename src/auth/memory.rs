//! In-memory `AuthStore`: the embedded default. Same semantics as a database adapter (unique
//! emails checked atomically with the insert, sessions keyed by token digest), none of the
//! durability: accounts and sessions vanish on restart.

use super::store::{AuthError, AuthStore, User};
use crate::domain::UserId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct Tables {
    users: HashMap<UserId, User>,
    /// Normalised email -> user id; the uniqueness index.
    by_email: HashMap<String, UserId>,
    /// Token digest -> (owner, expiry).
    sessions: HashMap<String, (UserId, DateTime<Utc>)>,
}

#[derive(Default)]
pub struct MemoryAuthStore {
    // A std mutex: every critical section is a few map operations and never spans an await,
    // and one lock over all tables makes "check email, then insert" a single atomic step.
    tables: Mutex<Tables>,
}

impl MemoryAuthStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic elsewhere cannot leave the maps half-updated: each method mutates last.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl AuthStore for MemoryAuthStore {
    async fn insert_user(&self, user: &User) -> Result<(), AuthError> {
        let mut t = self.lock();
        if t.by_email.contains_key(&user.email) {
            return Err(AuthError::EmailTaken);
        }
        if t.users.contains_key(&user.id) {
            return Err(AuthError::Internal(format!(
                "user id {} already exists",
                user.id
            )));
        }
        t.by_email.insert(user.email.clone(), user.id);
        t.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, AuthError> {
        let t = self.lock();
        Ok(t.by_email
            .get(email)
            .and_then(|id| t.users.get(id))
            .cloned())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, AuthError> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn update_user(&self, user: &User) -> Result<(), AuthError> {
        let mut t = self.lock();
        let Some(stored) = t.users.get_mut(&user.id) else {
            return Err(AuthError::Internal(format!("no user with id {}", user.id)));
        };
        stored.role = user.role;
        stored.name.clone_from(&user.name);
        stored.password_hash.clone_from(&user.password_hash);
        t.sessions.retain(|_, (owner, _)| *owner != user.id);
        Ok(())
    }

    async fn insert_session(
        &self,
        token_hash: &str,
        user_id: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let mut t = self.lock();
        if t.sessions.contains_key(token_hash) {
            // 256 random bits make this a bug, never a collision; don't hijack the old session.
            return Err(AuthError::Internal("session already exists".into()));
        }
        t.sessions
            .insert(token_hash.to_owned(), (user_id, expires_at));
        Ok(())
    }

    async fn session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(UserId, DateTime<Utc>)>, AuthError> {
        Ok(self.lock().sessions.get(token_hash).copied())
    }

    async fn delete_session(&self, token_hash: &str) -> Result<(), AuthError> {
        self.lock().sessions.remove(token_hash);
        Ok(())
    }

    async fn ping(&self) -> Result<(), AuthError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    /// The in-memory store honours the same contract as every other adapter.
    #[tokio::test]
    async fn memory_store_passes_the_auth_store_contract() {
        super::super::contract::run_all(&super::MemoryAuthStore::new()).await;
    }
}
