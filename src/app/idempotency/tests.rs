//! The idempotency store's tests: replays, concurrent retries, and the look-ups the
//! PostgreSQL answers cost (on two instances sharing one database).

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

const THINGS: Scope = Scope { name: "things" };

/// A retry that arrives while the first request with its key still runs is refused with a
/// conflict at once (it does not wait); once the first answered, a retry replays it.
#[tokio::test]
async fn a_retry_while_the_first_still_runs_is_a_conflict() {
    let store = IdempotencyStore::default();
    let user = UserId::random();
    let body = serde_json::json!({"seats": 2});
    let created = answer(201, r#"{"id":1}"#);
    let (running, started) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = store.run(user, THINGS, Some("k".into()), &body, async {
        let _ = running.send(());
        let _ = released.await;
        created.clone()
    });
    let retry = async {
        started.await.unwrap();
        let refused = store
            .run(user, THINGS, Some("k".into()), &body, async {
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
        .run(user, THINGS, Some("k".into()), &body, async {
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
    IdempotencyStore::durable(pool, crate::db::PoolSettings::default().answer_limit())
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
        .run(user, THINGS, Some("k".into()), &body, work())
        .await
        .unwrap();
    assert_eq!(answer.answer, created);
    assert!(!answer.replayed);
    // The row is written after the answer: wait for it, bounded.
    rows_stored(&pool, 1).await;
    let replay = second
        .run(user, THINGS, Some("k".into()), &body, work())
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
        .run(user, THINGS, Some("k".into()), &other, work())
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
        first.run(user, THINGS, Some(format!("k{i}")), &body, async move {
            answer(i)
        })
    });
    for outcome in join_all(attempts).await {
        assert!(!outcome.unwrap().replayed);
    }
    rows_stored(&pool, 64).await;
    let retries = (0..64).map(|i| {
        second.run(user, THINGS, Some(format!("k{i}")), &body, async {
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
    for key in ["new", "refused"] {
        let made = first
            .run(user, THINGS, Some(key.into()), &body, async {
                answer(201, r#"{"made":1}"#)
            })
            .await
            .unwrap();
        assert!(!made.replayed);
    }
    rows_stored(&pool, 2).await;
    let loads_before = second.database_statements();
    let anew = second
        .run(user, THINGS, Some("new".into()), &body, async {
            answer(201, r#"{"made":2}"#)
        })
        .await
        .unwrap();
    assert_eq!(
        (anew.answer, anew.replayed),
        (answer(201, r#"{"made":2}"#), false)
    );
    let refused = second
        .run(user, THINGS, Some("refused".into()), &body, async {
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

/// A refusal stored by one instance, retried on another where running it again succeeds
/// (seats came back): the retry runs first and makes the hold (201), and its answer replaces
/// the stored refusal, so a third attempt that finds the hold made replays the success, never
/// a refusal of what exists. A refusal does not replace a stored success.
#[tokio::test]
async fn a_success_replaces_a_stored_refusal_and_never_the_reverse() {
    let (pool, first, second) = two_instances().await;
    let user = UserId::random();
    let body = serde_json::json!({"seats": 1});
    let sold_out = answer(409, r#"{"title":"sold out"}"#);
    let held = Answer {
        status: 201,
        body: r#"{"held":1}"#.into(),
        location: Some("/holds/1".into()),
    };
    let refused = first
        .run(user, THINGS, Some("k".into()), &body, async {
            sold_out.clone()
        })
        .await
        .unwrap();
    assert!(!refused.replayed);
    rows_stored(&pool, 1).await;
    let retry = second
        .run(user, THINGS, Some("k".into()), &body, async {
            held.clone()
        })
        .await
        .unwrap();
    assert_eq!((retry.answer, retry.replayed), (held.clone(), false));
    stored_status(&pool, 201).await;
    // A third instance (or a restart): the use case finds the hold made and is told its
    // answer, whatever it would have answered itself.
    let third = another_instance(&pool).await;
    let replay = third
        .run(user, THINGS, Some("k".into()), &body, async {
            seen_again();
            sold_out.clone()
        })
        .await
        .unwrap();
    assert_eq!((replay.answer, replay.replayed), (held.clone(), true));
    // A refusal saved for the key later (an instance that forgot the success) keeps nothing.
    let fourth = another_instance(&pool).await;
    fourth.save_later(
        &(user, THINGS.name, "k".into()),
        &Stored {
            fingerprint: [0; 32],
            answer: sold_out.clone(),
            at: Instant::now(),
        },
    );
    // Saves of one store run in order: a second key saved after it lands after it.
    let marker = (user, THINGS.name, "marker".to_owned());
    fourth.save_later(
        &marker,
        &Stored {
            fingerprint: [0; 32],
            answer: held.clone(),
            at: Instant::now(),
        },
    );
    rows_stored(&pool, 2).await;
    stored_status(&pool, 201).await;
}

/// An answer the event log records (`recorded_by`: the use case rebuilt it from the events
/// its key's request made, which carry that request's body fingerprint) costs no statement:
/// the instance that gives it first saves nothing, and another one that finds the events
/// looks nothing up, not even the refusal stored for the key by an instance that ran it
/// before the events existed. There a retry with the same body replays the answer, and one
/// with another body is a 422. No instance keeps it in memory.
#[tokio::test]
async fn an_answer_the_log_records_is_neither_saved_nor_looked_up() {
    let (pool, first, second) = two_instances().await;
    let user = UserId::random();
    let body = serde_json::json!({"seats": 1});
    let held = Answer {
        status: 201,
        body: r#"{"held":1}"#.into(),
        location: Some("/holds/1".into()),
    };
    let key = (user, THINGS.name, "k".to_owned());
    let refused_earlier = Stored {
        fingerprint: [0; 32],
        answer: answer(409, r#"{"title":"sold out"}"#),
        at: Instant::now(),
    };
    another_instance(&pool)
        .await
        .save_later(&key, &refused_earlier);
    stored_status(&pool, 409).await;
    assert_eq!(request_fingerprint(), None, "outside a keyed request");

    let mut recorded = None;
    let made = first
        .run(user, THINGS, Some("k".into()), &body, async {
            let fingerprint = request_fingerprint().expect("a keyed request");
            recorded_by_this_request();
            recorded = Some(fingerprint);
            held.clone()
        })
        .await
        .unwrap();
    assert_eq!((made.answer, made.replayed), (held.clone(), false));
    let recorded = recorded.unwrap();
    let digest = Sha256::digest(serde_json::to_vec(&body).unwrap());
    assert_eq!(recorded, hex::encode(digest));
    // Saves of one store run in order: a marker saved after the answer lands after it.
    let marker = Stored {
        answer: held.clone(),
        ..refused_earlier.clone()
    };
    first.save_later(&(user, THINGS.name, "marker".into()), &marker);
    rows_stored(&pool, 2).await;
    stored_status(&pool, 409).await;
    assert_eq!(first.database_statements(), 1, "the marker's save alone");

    let from_the_log = || async {
        seen_again();
        recorded_by(&recorded);
        held.clone()
    };
    // Nor is it kept in memory: a retry on the same instance runs again, and finds it.
    let ran = AtomicU32::new(0);
    let again = first
        .run(user, THINGS, Some("k".into()), &body, async {
            ran.fetch_add(1, Ordering::SeqCst);
            from_the_log().await
        })
        .await
        .unwrap();
    assert_eq!((again.answer, again.replayed), (held.clone(), true));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(first.slots.lock().unwrap().by_key.len(), 0);
    let replay = second
        .run(user, THINGS, Some("k".into()), &body, from_the_log())
        .await
        .unwrap();
    assert_eq!((replay.answer, replay.replayed), (held.clone(), true));
    let third = another_instance(&pool).await;
    let other_body = serde_json::json!({"seats": 2});
    let refused = third
        .run(user, THINGS, Some("k".into()), &other_body, from_the_log())
        .await;
    assert!(
        matches!(refused, Err(AppError::Validation(_))),
        "{refused:?}"
    );
    assert_eq!(
        (second.database_statements(), third.database_statements()),
        (0, 0)
    );
}

/// A retry that finds its key's answer in the log but cannot show it yet (the read models are
/// behind: 503) answers that, and never a refusal saved for the key before the log had the
/// answer (a hold refused as sold out on one instance, then made on another); another body is
/// still a 422. Nothing is looked up, and nothing kept.
#[tokio::test]
async fn a_recorded_answer_not_shown_yet_is_a_503_never_an_older_saved_refusal() {
    let (pool, first, second) = two_instances().await;
    let user = UserId::random();
    let body = serde_json::json!({"seats": 1});
    let refused_earlier = Stored {
        fingerprint: Sha256::digest(serde_json::to_vec(&body).unwrap()).into(),
        answer: answer(409, r#"{"title":"sold out"}"#),
        at: Instant::now(),
    };
    first.save_later(&(user, THINGS.name, "k".into()), &refused_earlier);
    stored_status(&pool, 409).await;
    let recorded = hex::encode(refused_earlier.fingerprint);
    let unavailable = answer(503, r#"{"title":"try again"}"#);
    let not_shown_yet = || async {
        seen_again();
        recorded_by(&recorded);
        unavailable.clone()
    };
    let retry = second
        .run(user, THINGS, Some("k".into()), &body, not_shown_yet())
        .await
        .unwrap();
    assert_eq!((retry.answer, retry.replayed), (unavailable.clone(), false));
    let other_body = serde_json::json!({"seats": 2});
    let refused = second
        .run(user, THINGS, Some("k".into()), &other_body, not_shown_yet())
        .await;
    assert!(
        matches!(refused, Err(AppError::Validation(_))),
        "{refused:?}"
    );
    assert_eq!(second.database_statements(), 0);
    assert_eq!(second.slots.lock().unwrap().by_key.len(), 0);
}

/// A refusal the log records (a declined card) is kept in memory as well, so a retry here
/// replays it without running again (it would ask the processor again).
#[tokio::test]
async fn a_recorded_refusal_is_kept_in_memory() {
    let store = IdempotencyStore::default();
    let user = UserId::random();
    let body = serde_json::json!({"card": "declined"});
    let declined = answer(402, r#"{"title":"declined"}"#);
    let first = store
        .run(user, THINGS, Some("k".into()), &body, async {
            recorded_by_this_request();
            declined.clone()
        })
        .await
        .unwrap();
    assert_eq!((first.answer, first.replayed), (declined.clone(), false));
    let replay = store
        .run(user, THINGS, Some("k".into()), &body, async {
            unreachable!("a kept refusal replays")
        })
        .await
        .unwrap();
    assert_eq!((replay.answer, replay.replayed), (declined, true));
}

/// A request dropped while it runs (the edge's time-out, a client gone) lets its key go: the
/// key is not refused as in use afterwards, and no slot is left behind.
#[tokio::test]
async fn a_dropped_request_leaves_no_slot() {
    let store = IdempotencyStore::default();
    let user = UserId::random();
    let body = serde_json::json!({"seats": 1});
    let never = store.run(user, THINGS, Some("k".into()), &body, async {
        std::future::pending::<Answer>().await
    });
    let dropped = tokio::time::timeout(Duration::from_millis(10), never).await;
    assert!(dropped.is_err(), "the work never ends");
    assert_eq!(store.slots.lock().unwrap().by_key.len(), 0);
    let created = answer(201, r#"{"id":1}"#);
    let again = store
        .run(user, THINGS, Some("k".into()), &body, async {
            created.clone()
        })
        .await
        .unwrap();
    assert_eq!((again.answer, again.replayed), (created, false));
}

/// Another instance on the database of `pool`.
async fn another_instance(pool: &sqlx::PgPool) -> IdempotencyStore {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    durable_store(&crate::db::testing::with_database(
        &crate::db::testing::admin_url(),
        &name,
    ))
    .await
}

/// Waits, bounded, until the answer stored for key "k" has `status`.
async fn stored_status(pool: &sqlx::PgPool, status: i16) {
    let sql = "SELECT (SELECT status FROM idempotency_keys WHERE key = 'k')";
    until_scalar(pool, sql, Some(status)).await;
}

/// Waits, bounded, until `expected` answers are in the table (they are written after the
/// answer is given).
async fn rows_stored(pool: &sqlx::PgPool, expected: i64) {
    until_scalar(pool, "SELECT COUNT(*) FROM idempotency_keys", expected).await;
}

/// Polls `sql` until it reads `expected`, for at most 10 seconds.
async fn until_scalar<T>(pool: &sqlx::PgPool, sql: &str, expected: T)
where
    T: PartialEq + std::fmt::Debug + Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let started = Instant::now();
    loop {
        let (read,): (T,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
        if read == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sql} reads {read:?}, not {expected:?}"
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

/// An answer without a `Location`.
fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.into(),
        location: None,
    }
}
