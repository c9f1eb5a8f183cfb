//! Password hashing with Argon2id (the `argon2` crate's default parameters) and a random salt
//! per hash, stored as a PHC string. Hashing is deliberately slow and memory-hard (~19 MiB
//! each), so it runs on tokio's blocking pool, never on an async worker, and at most one hash
//! per core runs at a time: a burst of logins queues instead of exhausting memory.
//! Passwords are never logged or returned.

use super::store::AuthError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

/// Process-wide bound on concurrent hashes and verifications: one per available core (at
/// least one), since more cannot finish sooner and each holds ~19 MiB while it runs.
static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    Arc::new(Semaphore::new(cores))
});

/// Runs `work` on the blocking pool once a `HASHING` permit is free. The permit moves into the
/// blocking task, so it is released when the work ends, not when the caller stops waiting: a
/// cancelled request (client gone) cannot let more hashes run than the bound.
async fn bounded<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let permit = Arc::clone(&HASHING)
        .acquire_owned()
        .await
        .map_err(|e| AuthError::Internal(format!("{what} limiter closed: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
    .map_err(|e| AuthError::Internal(format!("{what} task failed: {e}")))?
}

/// Hashes `password` into a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
/// Takes the password by value so it can move onto the blocking pool.
pub async fn hash(password: String) -> Result<String, AuthError> {
    bounded("password hashing", move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Internal(format!("password hashing failed: {e}")))
    })
    .await
}

/// Whether `password` matches the stored `phc` hash. A mismatch is `Ok(false)`; a stored hash
/// that cannot be parsed or used is `Internal` (corrupt data, not a wrong password).
/// The algorithm and parameters are read from `phc`, so older hashes keep verifying.
pub async fn verify(password: String, phc: String) -> Result<bool, AuthError> {
    bounded("password verification", move || {
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

    /// A burst far above the bound queues rather than fails: 64 concurrent hashes all finish,
    /// each with its own salt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_concurrent_hashes_all_complete() {
        let tasks: Vec<_> = (0..64)
            .map(|i| tokio::spawn(hash(format!("password {i}"))))
            .collect();
        let mut hashes = std::collections::HashSet::new();
        for task in tasks {
            let phc = task.await.unwrap().unwrap();
            assert!(phc.starts_with("$argon2id$"), "{phc}");
            hashes.insert(phc);
        }
        assert_eq!(hashes.len(), 64);
    }

    /// At most one hash per core runs at once, however many are asked for: probes through
    /// `bounded` hold their slot until the test lets them go, one at a time, and record how
    /// many ran together. Without the bound all of them would start at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_the_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let bound = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let probes = 3 * bound + 2;
        let tasks: Vec<_> = (0..probes)
            .map(|_| {
                let (running, most, finished, gate) = (
                    Arc::clone(&running),
                    Arc::clone(&most),
                    Arc::clone(&finished),
                    Arc::clone(&gate),
                );
                tokio::spawn(bounded("probe", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    gate.lock().unwrap().recv().unwrap();
                    running.fetch_sub(1, Ordering::SeqCst);
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }))
            })
            .collect();
        let started = std::time::Instant::now();
        for done in 1..=probes {
            release.send(()).unwrap();
            while finished.load(Ordering::SeqCst) < done {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "probe {done} never finished"
                );
                tokio::task::yield_now().await;
            }
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=bound).contains(&most),
            "{most} ran at once, the bound is {bound}"
        );
    }
}
