//! `Idempotency-Key` support, independent of HTTP, as the IETF draft
//! (`draft-ietf-httpapi-idempotency-key-header`) has it: the first request with a key runs; a
//! retry with the same key and body gets the stored answer; a retry while the first is still
//! running on this instance is refused at once (409 `idempotency-key-in-use`: retry later);
//! the same key with a different body is a 422. Answers under 500 (but 403) are kept for
//! 24 hours, in process memory and, with PostgreSQL, in `idempotency_keys` (read and written
//! in batches, `durable`) so that a retry reaching another instance or coming after a restart
//! is still answered the same; a 5xx is not kept, so the client may retry it.
//!
//! Handlers derive ids from the key, so a retry after a lost answer (or racing on another
//! instance) finds what the first attempt created instead of creating it twice. That is also
//! how a retry is told from a first attempt without asking the database: a key this instance
//! does not hold an answer for runs at once, and its stored answer is read only when the use
//! case finds the derived id used already (`seen_again`: the sale's writer or the processor
//! knows it) or refuses the request. The price: a key used again on another instance for
//! something else (another event's hold, another reservation's payment) derives new ids and
//! is a new request there, not a 422, as it is anywhere once the first answer is forgotten.

mod durable;

use super::AppError;
use crate::domain::UserId;
use durable::DurableAnswers;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// An answer as the edge gives it to the client (a status code, a JSON body and where the
/// created resource lives), success or refusal alike: a retry gets exactly this again.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The body as JSON text, serialized once: what is kept for 24 hours per key is these
    /// bytes (a few hundred), not a tree of JSON values, and a replay shares them.
    pub body: Arc<str>,
    pub location: Option<String>,
}

impl Answer {
    /// A 5xx is not kept: the client may retry it. Nor is a 403: who may do what depends on
    /// what the fingerprint (the body) leaves out, a `Queue-Pass` header or the token's role,
    /// and the refusal changed nothing, so a retry is decided again.
    fn worth_keeping(&self) -> bool {
        self.status < 500 && self.status != 403
    }
}

/// What `IdempotencyStore::run` gives back: the answer, and whether it is a replay of an
/// earlier request's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub answer: Answer,
    pub replayed: bool,
}

#[derive(Clone)]
struct Stored {
    fingerprint: [u8; 32],
    answer: Answer,
    at: Instant,
}

impl Stored {
    /// This answer again, for a request with the same key and the body `fingerprint`: a
    /// replay, or a 422 when the body is another.
    fn replayed_for(&self, fingerprint: [u8; 32]) -> Result<Outcome, AppError> {
        if self.fingerprint != fingerprint {
            return Err(AppError::field(
                "Idempotency-Key",
                "was already used with a different request body",
            ));
        }
        Ok(Outcome {
            answer: self.answer.clone(),
            replayed: true,
        })
    }
}

tokio::task_local! {
    /// Whether the keyed request running in this task found the id its key derives used
    /// already (`seen_again`).
    static SEEN_AGAIN: Cell<bool>;
}

/// Tells the `Idempotency-Key` wrapper around this request, if there is one, that the id its
/// key derives was used already: an earlier attempt with the key ran (on this instance or
/// another, maybe before a restart), so that attempt's stored answer is this one's. The use
/// cases call it where the sale's writer (or the processor) finds the id known.
pub fn seen_again() {
    // Outside a keyed request (no wrapper) there is nothing to tell.
    let _ = SEEN_AGAIN.try_with(|seen| seen.set(true));
}

type Slot = Arc<tokio::sync::Mutex<Option<Stored>>>;
type Key = (UserId, &'static str, String);

/// `by_key` is a B-tree: a hash map's growth rehashes every key at once, under the lock each
/// keyed request takes.
#[derive(Default)]
struct Slots {
    by_key: BTreeMap<Key, Slot>,
    /// Keys in the order they were first used, so expiry pops from the front in O(1).
    by_age: VecDeque<(Instant, Key)>,
}

#[derive(Default)]
pub struct IdempotencyStore {
    slots: Mutex<Slots>,
    /// Where answers outlive this process, when running on PostgreSQL.
    durable: Option<DurableAnswers>,
}

impl IdempotencyStore {
    /// A store that also keeps answers in the `idempotency_keys` table of `pool`, read and
    /// written in batches by a task of its own (so it must be made inside the runtime).
    pub fn durable(pool: sqlx::PgPool) -> Self {
        Self {
            slots: Mutex::default(),
            durable: Some(DurableAnswers::start(pool)),
        }
    }

    async fn load(&self, key: &Key) -> Option<Stored> {
        self.durable.as_ref()?.load(key).await
    }

    fn save_later(&self, key: &Key, stored: &Stored) {
        if let Some(durable) = &self.durable {
            durable.save_later(key, stored);
        }
    }

    #[cfg(test)]
    fn database_statements(&self) -> u64 {
        self.durable.as_ref().map_or(0, DurableAnswers::statements)
    }

    /// Deletes answers older than 24 hours from the database.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        match &self.durable {
            Some(durable) => durable.purge_expired().await,
            None => Ok(0),
        }
    }

    fn slot(&self, key: Key) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((first_used, _)) = slots.by_age.front() {
            if first_used.elapsed() < KEEP_FOR {
                break;
            }
            if let Some((_, old)) = slots.by_age.pop_front() {
                // A request still holding the slot keeps its own Arc; only the index forgets it.
                slots.by_key.remove(&old);
            }
        }
        if let Some(slot) = slots.by_key.get(&key) {
            return Arc::clone(slot);
        }
        let slot = Slot::default();
        slots.by_age.push_back((Instant::now(), key.clone()));
        slots.by_key.insert(key, Arc::clone(&slot));
        slot
    }

    /// Runs `work` at most once per (user, scope, key) and body. The same key with another
    /// body is refused (422 `validation-failed` on `Idempotency-Key`); the same key while its
    /// first request still runs, too (409 `idempotency-key-in-use`), without waiting for it.
    pub async fn run<F>(
        &self,
        user: UserId,
        scope: &'static str,
        key: Option<String>,
        body: &impl serde::Serialize,
        work: F,
    ) -> Result<Outcome, AppError>
    where
        F: std::future::Future<Output = Answer>,
    {
        let Some(key) = key else {
            return Ok(Outcome {
                answer: work.await,
                replayed: false,
            });
        };
        let fingerprint: [u8; 32] =
            Sha256::digest(serde_json::to_vec(body).unwrap_or_default()).into();
        let key = (user, scope, key);
        let slot = self.slot(key.clone());
        let Ok(mut stored) = slot.try_lock() else {
            return Err(AppError::Conflict {
                kind: "idempotency-key-in-use",
                detail: "a request with this Idempotency-Key is still being processed; \
                         retry it later to get its answer"
                    .into(),
            });
        };
        if let Some(previous) = stored.as_ref().filter(|s| s.at.elapsed() < KEEP_FOR) {
            return previous.replayed_for(fingerprint);
        }
        let (answer, seen_again) = SEEN_AGAIN
            .scope(Cell::new(false), async {
                let answer = work.await;
                (answer, SEEN_AGAIN.with(Cell::get))
            })
            .await;
        // A first attempt costs no look-up: the stored answer (of an earlier attempt on another
        // instance, or before a restart) is read only when this attempt found its id used
        // already or was refused, and is then the answer.
        if seen_again || answer.status >= 400 {
            if let Some(previous) = self.load(&key).await {
                let outcome = previous.replayed_for(fingerprint);
                *stored = Some(previous);
                return outcome;
            }
        }
        if answer.worth_keeping() {
            let kept = Stored {
                fingerprint,
                // Shares the body with the answer given now.
                answer: answer.clone(),
                at: Instant::now(),
            };
            self.save_later(&key, &kept);
            *stored = Some(kept);
        }
        Ok(Outcome {
            answer,
            replayed: false,
        })
    }
}

/// A stable id derived from the caller, what the request is about (`within`: the event a hold
/// is taken in, the reservation a payment pays for) and their idempotency key, or a random one
/// without a key. `within` keeps a key used again for something else (another event's hold,
/// once its first answer is no longer kept, or at once on another instance before that answer
/// was saved) from naming what the first request made: that id would clash in the log with a
/// stream of another sale, failing the whole group commit it lands in.
pub fn derived_id(user: UserId, scope: &str, within: uuid::Uuid, key: Option<&str>) -> uuid::Uuid {
    match key {
        Some(key) => uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{scope}:{user}:{within}:{key}").as_bytes(),
        ),
        None => uuid::Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A retry that arrives while the first request with its key still runs is refused with a
    /// conflict at once (it does not wait); once the first answered, a retry replays it.
    #[tokio::test]
    async fn a_retry_while_the_first_still_runs_is_a_conflict() {
        let store = IdempotencyStore::default();
        let user = UserId::random();
        let body = serde_json::json!({"seats": 2});
        let created = Answer {
            status: 201,
            body: r#"{"id":1}"#.into(),
            location: None,
        };
        let (running, started) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = store.run(user, "things", Some("k".into()), &body, async {
            let _ = running.send(());
            let _ = released.await;
            created.clone()
        });
        let retry = async {
            started.await.unwrap();
            let refused = store
                .run(user, "things", Some("k".into()), &body, async {
                    unreachable!("the retry must not run the work")
                })
                .await;
            release.send(()).unwrap();
            refused
        };
        let (first, retry) = tokio::join!(first, retry);
        assert_eq!(first.unwrap().answer, created);
        assert!(
            matches!(
                retry,
                Err(AppError::Conflict {
                    kind: "idempotency-key-in-use",
                    ..
                })
            ),
            "{retry:?}"
        );
        let replay = store
            .run(user, "things", Some("k".into()), &body, async {
                unreachable!("a finished key replays")
            })
            .await
            .unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.answer, created);
    }

    async fn durable_store(url: &str) -> IdempotencyStore {
        let pool = crate::db::connect(url, &crate::db::PoolSettings::default())
            .await
            .unwrap();
        IdempotencyStore::durable(pool)
    }

    /// A fresh accounts database, and two stores on it (two instances).
    async fn two_instances() -> (sqlx::PgPool, IdempotencyStore, IdempotencyStore) {
        let url = crate::db::testing::fresh_database().await;
        let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
            .await
            .unwrap();
        crate::db::auth_migrator().run(&pool).await.unwrap();
        (pool, durable_store(&url).await, durable_store(&url).await)
    }

    /// An answer given by one instance is replayed by another (or after a restart) from the
    /// database, without running the handler again; a different body is refused there too.
    #[tokio::test]
    async fn a_stored_answer_is_replayed_by_another_instance() {
        let (pool, first, second) = two_instances().await;
        let runs = AtomicU32::new(0);
        let user = UserId::random();
        let created = Answer {
            status: 201,
            body: r#"{"id":1}"#.into(),
            location: Some("/things/1".into()),
        };
        // As a use case does: the first run makes the thing, a later one finds its id used.
        let work = || async {
            if runs.fetch_add(1, Ordering::SeqCst) > 0 {
                seen_again();
            }
            created.clone()
        };
        let body = serde_json::json!({"seats": 2});
        let answer = first
            .run(user, "things", Some("k".into()), &body, work())
            .await
            .unwrap();
        assert_eq!(answer.answer, created);
        assert!(!answer.replayed);
        // The row is written after the answer: wait for it, bounded.
        rows_stored(&pool, 1).await;
        let replay = second
            .run(user, "things", Some("k".into()), &body, work())
            .await
            .unwrap();
        assert_eq!(replay.answer, created);
        assert!(replay.replayed);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the retry ran up to its id check"
        );
        let other = serde_json::json!({"seats": 3});
        let refused = second
            .run(user, "things", Some("k".into()), &other, work())
            .await;
        assert!(matches!(refused, Err(AppError::Validation(_))));
    }

    /// Concurrent keyed requests share their round trips: 64 first attempts and then their 64
    /// retries on another instance cost a handful of statements, not one look-up and one
    /// insert each, and every retry still gets its own answer.
    #[tokio::test]
    async fn concurrent_keys_are_read_and_written_in_batches() {
        let (pool, first, second) = two_instances().await;
        let user = UserId::random();
        let body = serde_json::json!({"seats": 1});
        let answer = |i: usize| Answer {
            status: 201,
            body: format!(r#"{{"id":{i}}}"#).into(),
            location: None,
        };
        let attempts = (0..64).map(|i| {
            first.run(user, "things", Some(format!("k{i}")), &body, async move {
                answer(i)
            })
        });
        for outcome in join_all(attempts).await {
            assert!(!outcome.unwrap().replayed);
        }
        rows_stored(&pool, 64).await;
        let retries = (0..64).map(|i| {
            second.run(user, "things", Some(format!("k{i}")), &body, async {
                seen_again();
                answer(1000)
            })
        });
        for (i, outcome) in join_all(retries).await.into_iter().enumerate() {
            let outcome = outcome.unwrap();
            assert!(outcome.replayed);
            assert_eq!(outcome.answer, answer(i));
        }
        let statements = first.database_statements() + second.database_statements();
        assert!(
            statements <= 12,
            "{statements} statements for 128 keyed requests"
        );
    }

    /// A first attempt reads nothing: a key whose stored answer was given by another instance
    /// runs as a new request when it finds nothing of the first attempt (a key used again for
    /// something else), and gets the stored answer when it is refused.
    #[tokio::test]
    async fn the_stored_answer_is_read_only_for_a_repeat_or_a_refusal() {
        let (pool, first, second) = two_instances().await;
        let user = UserId::random();
        let body = serde_json::json!({"seats": 1});
        let answer = |status: u16, body: &str| Answer {
            status,
            body: body.into(),
            location: None,
        };
        for key in ["new", "refused"] {
            let made = first
                .run(user, "things", Some(key.into()), &body, async {
                    answer(201, r#"{"made":1}"#)
                })
                .await
                .unwrap();
            assert!(!made.replayed);
        }
        rows_stored(&pool, 2).await;
        let loads_before = second.database_statements();
        let anew = second
            .run(user, "things", Some("new".into()), &body, async {
                answer(201, r#"{"made":2}"#)
            })
            .await
            .unwrap();
        assert_eq!(
            (anew.answer, anew.replayed),
            (answer(201, r#"{"made":2}"#), false)
        );
        let refused = second
            .run(user, "things", Some("refused".into()), &body, async {
                answer(409, r#"{"title":"sold out"}"#)
            })
            .await
            .unwrap();
        assert_eq!(
            (refused.answer, refused.replayed),
            (answer(201, r#"{"made":1}"#), true)
        );
        // One look-up (the refusal's) and one save (the new answer's, kept in memory: the
        // table keeps the first), which lands after the answer.
        let started = Instant::now();
        while second.database_statements() - loads_before < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the save never ran"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(second.database_statements() - loads_before, 2);
    }

    /// Waits, bounded, until `expected` answers are in the table (they are written after the
    /// answer is given).
    async fn rows_stored(pool: &sqlx::PgPool, expected: i64) {
        let started = Instant::now();
        loop {
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            if rows == expected {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{rows} of {expected} answers stored"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Polls every future until all are done, in order (the test runtime has one thread, so
    /// all of them reach the batching task before it runs).
    async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for future in futures {
            set.push(Box::pin(future));
        }
        let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
                if output.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(done) => *output = Some(done),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }
}
