//! Password hashing with Argon2id (the `argon2` crate's default parameters) and a random salt
//! per hash, stored as a PHC string. Hashing is deliberately slow, so it runs on tokio's
//! blocking pool, never on an async worker. Passwords are never logged or returned.

use super::store::AuthError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;

/// Hashes `password` into a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
/// Takes the password by value so it can move onto the blocking pool.
pub async fn hash(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| AuthError::Internal(format!("password hashing task failed: {e}")))?
}

/// Whether `password` matches the stored `phc` hash. A mismatch is `Ok(false)`; a stored hash
/// that cannot be parsed or used is `Internal` (corrupt data, not a wrong password).
/// The algorithm and parameters are read from `phc`, so older hashes keep verifying.
pub async fn verify(password: String, phc: String) -> Result<bool, AuthError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| AuthError::Internal(format!("malformed stored password hash: {e}")))?;
        match Argon2::default().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(AuthError::Internal(format!(
                "password verification failed: {e}"
            ))),
        }
    })
    .await
    .map_err(|e| AuthError::Internal(format!("password verification task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash verifies its own password and rejects any other.
    #[tokio::test]
    async fn a_hash_accepts_its_password_and_rejects_others() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify("correct horse".into(), phc.clone()).await.unwrap());
        assert!(!verify("correct horsf".into(), phc).await.unwrap());
    }

    /// Hashing the same password twice gives different strings: each has its own salt.
    #[tokio::test]
    async fn every_hash_gets_a_fresh_salt() {
        let a = hash("same".into()).await.unwrap();
        let b = hash("same".into()).await.unwrap();
        assert_ne!(a, b);
    }

    /// A stored hash that is not a PHC string is an internal error, not a wrong password.
    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_internal_error() {
        let err = verify("pw".into(), "not-a-phc-string".into())
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::Internal(_)), "{err:?}");
    }
}
