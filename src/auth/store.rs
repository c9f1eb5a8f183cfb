//! The `AuthStore` port and the records it keeps: users (with their password hash) and
//! sessions keyed by token digest. Adapters persist what they are given; they never hash,
//! normalise or check passwords, and never see a raw session token.

use crate::domain::UserId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an account may do. Stored and serialised as `customer`, `organizer`, `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Organizer,
    Admin,
}

impl Role {
    /// The stable lowercase name, as stored and as accepted by `FromStr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Organizer => "organizer",
            Role::Admin => "admin",
        }
    }
}

/// A role name that is not one of `customer`, `organizer`, `admin` (matching is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected customer, organizer or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "organizer" => Ok(Role::Organizer),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// A registered account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Normalised: trimmed and lowercased. Unique across users.
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    /// Argon2id PHC string (`$argon2id$v=19$...`), never the password itself.
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// Hand-written so that `{:?}` (in logs, panics, test output) never prints the password hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password_hash", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The authenticated caller, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub email: String,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Registration with an email that already has an account.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Wrong password or unknown email; deliberately indistinguishable.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// The session token is unknown, expired, logged out, or its user is gone.
    #[error("invalid or expired session token")]
    InvalidToken,
    /// The backing store cannot be reached or failed; the call may be retried.
    #[error("auth store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data (e.g. a malformed stored hash); not the caller's fault.
    #[error("internal auth error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Adds a new user. `EmailTaken` if a user with the same (normalised) email exists.
    async fn insert_user(&self, user: &User) -> Result<(), AuthError>;

    /// The user with this email; the caller has already normalised it.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, AuthError>;

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, AuthError>;

    /// Overwrites role, name and password hash of the user with `user.id`, and ends every
    /// session of theirs: new credentials or a new role start from a new sign-in (an account
    /// someone registered under an email before it was made the admin's keeps no token). The
    /// email and creation time are left as stored. An unknown id is `Internal` (a caller bug).
    async fn update_user(&self, user: &User) -> Result<(), AuthError>;

    /// Records a session under the digest of its token (see `token::digest`).
    async fn insert_session(
        &self,
        token_hash: &str,
        user_id: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<(), AuthError>;

    /// The owner and expiry of a session, whether or not it has expired yet.
    async fn session(&self, token_hash: &str)
        -> Result<Option<(UserId, DateTime<Utc>)>, AuthError>;

    /// The session's owner and expiry in one look-up (what every authenticated request needs).
    /// The default asks `session` then `user_by_id`; adapters may answer in one round trip.
    async fn session_user(
        &self,
        token_hash: &str,
    ) -> Result<Option<(User, DateTime<Utc>)>, AuthError> {
        let Some((user_id, expires_at)) = self.session(token_hash).await? else {
            return Ok(None);
        };
        Ok(self
            .user_by_id(user_id)
            .await?
            .map(|user| (user, expires_at)))
    }

    /// Forgets a session. Deleting an unknown session is not an error.
    async fn delete_session(&self, token_hash: &str) -> Result<(), AuthError>;

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), AuthError>;

    /// A short name for logs and `/ready` (`memory`, `postgres`).
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every role survives `as_str` then `from_str`, and parsing is case-sensitive.
    #[test]
    fn role_names_round_trip_and_are_case_sensitive() {
        for role in [Role::Customer, Role::Organizer, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
    }

    /// The credentials error reads the same whether or not the email exists.
    #[test]
    fn invalid_credentials_message_does_not_reveal_whether_the_email_exists() {
        let msg = AuthError::InvalidCredentials.to_string();
        assert_eq!(msg, "invalid email or password");
    }

    /// Debug output of a user never contains its password hash.
    #[test]
    fn user_debug_output_hides_the_password_hash() {
        let user = User {
            id: UserId::random(),
            email: "a@example.com".into(),
            name: None,
            role: Role::Customer,
            password_hash: "$argon2id$v=19$secret".into(),
            created_at: Utc::now(),
        };
        let shown = format!("{user:?}");
        assert!(!shown.contains("argon2id"), "{shown}");
        assert!(shown.contains("a@example.com"));
    }
}
