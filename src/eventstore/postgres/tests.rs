//! The PostgreSQL store's own tests: the store contract, a tailing reader under concurrent
//! appends, and the in-memory tail answering exactly as the table does.

use super::*;
use crate::db::testing::fresh_database;

async fn store() -> PostgresEventStore {
    store_at(&fresh_database().await).await
}

use crate::eventstore::testing::seats_held;

async fn store_at(url: &str) -> PostgresEventStore {
    let pool = db::connect(url, &db::PoolSettings::default())
        .await
        .unwrap();
    db::events_migrator().run(&pool).await.unwrap();
    PostgresEventStore::new(pool).await.unwrap()
}

/// The PostgreSQL store honours the same contract as the in-memory one.
#[tokio::test]
async fn postgres_store_passes_the_event_store_contract() {
    super::super::contract::run_all(&store().await).await;
}

/// What the tail serves is what the table holds: a second store on the same database (an
/// instance that appended nothing, so it reads every event from PostgreSQL) reads the same
/// events, `recorded_at` and metadata included; and the appending store answers its own
/// tail without a query (it still does once its pool is closed).
#[tokio::test]
async fn the_tail_serves_exactly_what_the_table_holds() {
    let store = store().await;
    let sale = EventId::random();
    let stream = format!("inventory-{sale}");
    let metadata = Metadata {
        correlation_id: Some("c-1".into()),
        user_id: Some(crate::domain::UserId(uuid::Uuid::new_v4())),
        ..Metadata::default()
    };
    for version in [1u64, 3] {
        let events = (version..version + 2)
            .map(|v| NewEvent {
                stream_id: stream.clone(),
                version: v,
                event_type: "inventory.seats_held",
                event_version: 1,
                payload: vec![1, 2, u8::try_from(v).unwrap()],
                metadata: metadata.clone(),
            })
            .collect();
        store.append(sale, events).await.unwrap();
    }
    let other = PostgresEventStore::new(store.pool().clone()).await.unwrap();
    let from_table = other.read_all(0, 10).await.unwrap();
    assert_eq!(from_table.len(), 4);
    store.pool().close().await;
    assert_eq!(store.read_all(0, 10).await.unwrap(), from_table);
    assert_eq!(store.read_all(1, 2).await.unwrap(), from_table[1..3]);
    assert!(
        store.read_all(4, 10).await.unwrap().is_empty(),
        "at the head"
    );
    assert!(
        store.read_all(5, 10).await.is_err(),
        "past the head: asks the (closed) database"
    );
}

/// Under concurrent appends to many sales, a reader tailing the log sees every position
/// exactly once and in order: no event that commits late is ever skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_never_skips_events_that_commit_late() {
    let store = Arc::new(store().await);
    let writers = 8u64;
    let per_writer = 25u64;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let sale = EventId::random();
            let stream = format!("inventory-{sale}");
            for version in 1..=per_writer {
                store
                    .append(sale, vec![seats_held(&stream, version)])
                    .await
                    .unwrap();
            }
        }));
    }
    let total = writers * per_writer;
    let mut seen = Vec::new();
    let mut head = store.subscribe_head();
    while (seen.len() as u64) < total {
        let after = seen.last().copied().unwrap_or(0);
        let batch = store.read_all(after, 7).await.unwrap();
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), head.changed()).await;
        }
        seen.extend(batch.iter().map(|e| e.position));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

/// A locked turn writes its batch as literals (`append::inlined`): whatever an event carries,
/// quotes, backslashes, placeholders, SQL, control characters, every byte value, is stored
/// exactly as the bound statement of a plain append stores it, and read back the same.
#[tokio::test]
async fn a_locked_turn_stores_hostile_text_and_bytes_exactly() {
    let store = store().await;
    let sale = EventId::random();
    let hostile = "it's \\ $1 $11 E'\\x41' '); DROP TABLE events; -- \n\t\u{7f} ünï ✓";
    let stream = format!("inventory-{sale}");
    let event = |version: u64| NewEvent {
        payload: (0..=255u8).collect(),
        metadata: Metadata {
            correlation_id: Some(hostile.into()),
            causation_id: Some("\\\\'\"".into()),
            ..Metadata::default()
        },
        ..seats_held(&stream, version)
    };
    store.append(sale, vec![event(1)]).await.unwrap();
    let turned = store
        .take_turn(sale, Known::default(), TurnMode::Locked, &mut |fresh| {
            assert_eq!(fresh.len(), 1, "a hydrating turn reads the sale");
            vec![event(2)]
        })
        .await
        .unwrap();
    assert!(
        matches!(turned, Turned::Done { last: Some(2), .. }),
        "{turned:?}"
    );
    let other = PostgresEventStore::new(store.pool().clone()).await.unwrap();
    let stored = other.read_all(0, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].payload, stored[0].payload);
    assert_eq!(stored[1].metadata, stored[0].metadata);
    assert_eq!(stored[1].metadata.correlation_id.as_deref(), Some(hostile));
    assert_eq!(stored[1].version, 2);
}

/// A locked turn whose append fails (here a version another writer took), or that is dropped
/// while it waits for the sale, leaves neither an open transaction in the pool nor the sale
/// locked: the sale can be locked from outside, and the next turn goes through.
#[tokio::test]
async fn a_failed_or_abandoned_locked_turn_leaves_no_lock_behind() {
    use sqlx::Connection;
    let url = fresh_database().await;
    let store = store_at(&url).await;
    let sale = EventId::random();
    let stream = format!("inventory-{sale}");
    let event = |version: u64| seats_held(&stream, version);
    store.append(sale, vec![event(1)]).await.unwrap();
    let known = Known {
        position: 1,
        events: 1,
    };
    let taken = store
        .take_turn(sale, known, TurnMode::Locked, &mut |_| vec![event(1)])
        .await;
    assert!(
        matches!(taken, Err(StoreError::Conflict { .. })),
        "{taken:?}"
    );
    let lock = format!(
        "SELECT events FROM sale_heads WHERE sale_id = '{}' FOR UPDATE",
        sale.0
    );
    let mut outside = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("SET lock_timeout = '10s'")
        .execute(&mut outside)
        .await
        .unwrap();
    // Abandoned while it waits for the sale another transaction holds.
    sqlx::raw_sql(&format!("BEGIN; {lock}"))
        .execute(&mut outside)
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        store.take_turn(sale, known, TurnMode::Locked, &mut |_| vec![event(2)]),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the turn waited for the sale: {abandoned:?}"
    );
    sqlx::raw_sql("COMMIT").execute(&mut outside).await.unwrap();
    sqlx::raw_sql(&format!("BEGIN; {lock}"))
        .execute(&mut outside)
        .await
        .expect("nobody holds the sale");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut outside)
        .await
        .unwrap();
    let next = store
        .take_turn(sale, known, TurnMode::Locked, &mut |fresh| {
            assert!(fresh.is_empty(), "nothing was written meanwhile: {fresh:?}");
            vec![event(2)]
        })
        .await;
    assert!(
        matches!(next, Ok(Turned::Done { last: Some(2), .. })),
        "{next:?}"
    );
}

/// Events other instances committed, once read here (by a reader of the log or by a locked
/// turn), are served again from the tail: the instance's next reader woken by the same commits
/// does not query them, and a run that stops short of the head is completed by a query of what
/// follows it, together exactly what the table holds.
#[tokio::test]
async fn events_read_here_are_served_again_without_a_query() {
    let url = fresh_database().await;
    let writer = store_at(&url).await;
    let sale = EventId::random();
    let stream = format!("inventory-{sale}");
    let events = |versions: std::ops::RangeInclusive<u64>| {
        versions.map(|v| seats_held(&stream, v)).collect::<Vec<_>>()
    };
    writer.append(sale, events(1..=3)).await.unwrap();
    let reader = store_at(&url).await;
    assert_eq!(reader.read_all(0, 10).await.unwrap().len(), 3);
    writer.append(sale, events(4..=5)).await.unwrap();
    let mut head = reader.subscribe_head();
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= 5))
        .await
        .expect("the reader hears of the append")
        .unwrap();
    let all = reader.read_all(0, 10).await.unwrap();
    assert_eq!(all, writer.read_all(0, 10).await.unwrap());
    assert_eq!(all.len(), 5);
    reader.pool().close().await;
    assert_eq!(reader.read_all(0, 10).await.unwrap(), all, "from the tail");
    assert_eq!(reader.read_all(3, 1).await.unwrap(), all[3..4]);

    let turner = store_at(&url).await;
    let turned = turner
        .take_turn(sale, Known::default(), TurnMode::Locked, &mut |fresh| {
            assert_eq!(fresh.len(), 5, "a hydrating turn reads the sale");
            Vec::new()
        })
        .await
        .unwrap();
    assert!(
        matches!(turned, Turned::Done { last: None, .. }),
        "{turned:?}"
    );
    turner.pool().close().await;
    assert_eq!(turner.read_all(0, 10).await.unwrap(), all, "from the tail");
}

/// A store whose notification connection is cut (an idle-session timeout, a proxy, an
/// operator's `pg_terminate_backend`) reads the log's head again once it listens anew: an
/// append made elsewhere while it was not listening still wakes its subscriptions, though no
/// later notification comes to announce a higher position.
#[tokio::test]
async fn a_lost_notification_connection_reads_the_head_again() {
    let url = fresh_database().await;
    let writer = store_at(&url).await;
    let reader = store_at(&url).await;
    let sale = EventId::random();
    let stream = format!("inventory-{sale}");
    let mut head = reader.subscribe_head();
    writer
        .append(sale, vec![seats_held(&stream, 1)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= 1))
        .await
        .expect("the reader hears of the first append")
        .unwrap();

    let cut: Vec<i32> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(writer.pool())
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the stores' listeners were found");
    // While the reader reconnects: no notification of it reaches the reader.
    writer
        .append(sale, vec![seats_held(&stream, 2)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= 2))
        .await
        .expect("the reader reads the head again after its reconnect")
        .unwrap();
}
