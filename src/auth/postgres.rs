//! PostgreSQL `AuthStore` over the `users` and `sessions` tables of `migrations_auth/`. Email
//! uniqueness is the `users_email_key` constraint, so two racing registrations cannot both
//! win: the loser's insert fails and is reported as `EmailTaken`; there is never a
//! check-then-insert. Like every adapter it stores what it is given and never hashes,
//! normalises or logs a password, hash or token digest. Deleting a session and changing a
//! user also announce it on the revocation feed (`revocations.rs`), in the same statement, so
//! other instances' session caches hear of every committed change.

use super::revocations::{CHANNEL, SESSION, USER};
use super::store::{AuthError, AuthStore, Role, User};
use crate::db;
use crate::domain::UserId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

pub struct PostgresAuthStore {
    pool: PgPool,
}

impl PostgresAuthStore {
    /// A store over a database migrated with `db::auth_migrator()`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Runs a `SELECT` of every `users` column and decodes the row, if any.
    async fn fetch_user(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Option<User>, AuthError> {
        let row = query.fetch_optional(&self.pool).await.map_err(failed)?;
        row.as_ref().map(decode_user).transpose()
    }
}

/// SQLSTATE classes that mean the server or the connection is gone or overloaded rather than
/// that the statement is wrong: 08 connection exception, 53 insufficient resources (e.g. too
/// many connections), 57P operator intervention (shutdown, cannot connect now), 57014 a
/// statement cancelled past the pool's `statement_timeout`. sqlx gives these no typed kind,
/// so the class prefix is the only way to tell them apart.
const UNAVAILABLE_SQLSTATES: [&str; 4] = ["08", "53", "57P", "57014"];

/// Whether `error` says the database cannot be reached or used right now (worth a retry),
/// as opposed to a bug or corrupt data.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            UNAVAILABLE_SQLSTATES
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// Connection and pool failures are `Unavailable`; everything else is `Internal`.
fn failed(error: sqlx::Error) -> AuthError {
    if is_unavailable(&error) {
        AuthError::Unavailable(error.to_string())
    } else {
        AuthError::Internal(error.to_string())
    }
}

/// A `users` row. A role outside the CHECK constraint's list is corrupt data: `Internal`.
fn decode_user(row: &PgRow) -> Result<User, AuthError> {
    let role: String = row.try_get("role").map_err(failed)?;
    Ok(User {
        id: UserId(row.try_get("id").map_err(failed)?),
        email: row.try_get("email").map_err(failed)?,
        name: row.try_get("name").map_err(failed)?,
        role: role
            .parse::<Role>()
            .map_err(|e| AuthError::Internal(format!("stored user: {e}")))?,
        password_hash: row.try_get("password_hash").map_err(failed)?,
        created_at: row.try_get("created_at").map_err(failed)?,
    })
}

#[async_trait]
impl AuthStore for PostgresAuthStore {
    async fn insert_user(&self, user: &User) -> Result<(), AuthError> {
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, name, role, password_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.id.0)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.created_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if db::violates(&e, "users_email_key") => Err(AuthError::EmailTaken),
            // PostgreSQL checks the primary key first, so a reused id with a taken email lands
            // here too (the memory store says EmailTaken); either way a caller bug.
            Err(e) if db::violates(&e, "users_pkey") => Err(AuthError::Internal(format!(
                "user id {} already exists",
                user.id
            ))),
            Err(e) => Err(failed(e)),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, AuthError> {
        self.fetch_user(
            sqlx::query(
                "SELECT id, email, name, role, password_hash, created_at FROM users WHERE email = $1",
            )
            .bind(email),
        )
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, AuthError> {
        self.fetch_user(
            sqlx::query(
                "SELECT id, email, name, role, password_hash, created_at FROM users WHERE id = $1",
            )
            .bind(id.0),
        )
        .await
    }

    async fn update_user(&self, user: &User) -> Result<(), AuthError> {
        let updated = sqlx::query(
            "WITH changed AS (
                 UPDATE users SET role = $2, name = $3, password_hash = $4 WHERE id = $1
                 RETURNING id
             ), ended AS (
                 DELETE FROM sessions WHERE user_id = (SELECT id FROM changed)
             )
             SELECT pg_notify($5, $6 || id::text) FROM changed",
        )
        .bind(user.id.0)
        .bind(user.role.as_str())
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(CHANNEL)
        .bind(USER)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?;
        if updated.is_none() {
            return Err(AuthError::Internal(format!("no user with id {}", user.id)));
        }
        Ok(())
    }

    async fn insert_session(
        &self,
        token_hash: &str,
        user_id: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let inserted = sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(user_id.0)
        .bind(expires_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            // 256 random bits make this a bug, never a collision; the old session stays as is.
            Err(e) if db::violates(&e, "sessions_pkey") => {
                Err(AuthError::Internal("session already exists".into()))
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(UserId, DateTime<Utc>)>, AuthError> {
        let row = sqlx::query("SELECT user_id, expires_at FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed)?;
        row.map(|row| {
            Ok((
                UserId(row.try_get("user_id").map_err(failed)?),
                row.try_get("expires_at").map_err(failed)?,
            ))
        })
        .transpose()
    }

    async fn session_user(
        &self,
        token_hash: &str,
    ) -> Result<Option<(User, DateTime<Utc>)>, AuthError> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.name, u.role, u.password_hash, u.created_at, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?;
        row.map(|row| {
            Ok((
                decode_user(&row)?,
                row.try_get("expires_at").map_err(failed)?,
            ))
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &str) -> Result<(), AuthError> {
        // Announced even when there was no such session: harmless, and one statement.
        sqlx::query(
            "WITH gone AS (DELETE FROM sessions WHERE token_hash = $1)
             SELECT pg_notify($2, $3 || $1)",
        )
        .bind(token_hash)
        .bind(CHANNEL)
        .bind(SESSION)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(failed)
    }

    async fn ping(&self) -> Result<(), AuthError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(failed)
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::fresh_database;
    use chrono::TimeZone;
    use std::sync::Arc;

    async fn store() -> PostgresAuthStore {
        let url = fresh_database().await;
        let pool = db::connect(&url, &db::PoolSettings::default())
            .await
            .unwrap();
        db::auth_migrator().run(&pool).await.unwrap();
        PostgresAuthStore::new(pool)
    }

    fn user(email: &str) -> User {
        User {
            id: UserId::random(),
            email: email.to_owned(),
            name: None,
            role: Role::Customer,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        }
    }

    /// The PostgreSQL store honours the same contract as the in-memory one.
    #[tokio::test]
    async fn postgres_store_passes_the_auth_store_contract() {
        super::super::contract::run_all(&store().await).await;
    }

    /// Ten registrations of one email racing each other: exactly one wins, nine are told the
    /// email is taken, and the stored account is the winner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_registrations_of_one_email_admit_exactly_one() {
        let store = Arc::new(store().await);
        let email = format!("race-{}@example.com", UserId::random());
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (store, barrier, candidate) =
                (Arc::clone(&store), Arc::clone(&barrier), user(&email));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (candidate.id, store.insert_user(&candidate).await)
            }));
        }
        let mut winners = Vec::new();
        let mut taken = 0;
        for task in tasks {
            match task.await.unwrap() {
                (id, Ok(())) => winners.push(id),
                (_, Err(AuthError::EmailTaken)) => taken += 1,
                (_, Err(other)) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!((winners.len(), taken), (1, 9));
        let stored = store.user_by_email(&email).await.unwrap().unwrap();
        assert_eq!(stored.id, winners[0]);
    }

    /// A connection the pool cannot make is `Unavailable`, which callers may retry.
    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        let store = PostgresAuthStore::new(pool);
        let err = store.ping().await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    }
}
