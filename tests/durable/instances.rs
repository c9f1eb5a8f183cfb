//! Invariant 1 across instances: several processes on one database never oversell.

use super::client::*;
use std::sync::Arc;
use ticketing::db::testing::fresh_database;
use tokio::task::JoinSet;

/// Three instances, one database, 300 buyers racing for 100 seats spread across all three:
/// exactly 100 sold, no 5xx, and invariants 1 and 2 hold in the database afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_sell_exactly_the_capacity() {
    let db = fresh_database().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Arc::new(Service::start(&db, &[]).await));
    }
    let (_, organizer) = instances[0].user("organizer").await;
    let event = instances[1].event_on_sale(&organizer, 100).await;

    let mut signups = JoinSet::new();
    for i in 0..300usize {
        let service = Arc::clone(&instances[i % 3]);
        signups.spawn(async move { (i, service.user("customer").await.1) });
    }
    let mut buyers = vec![String::new(); 300];
    while let Some(done) = signups.join_next().await {
        let (i, token) = done.unwrap();
        buyers[i] = token;
    }

    let mut race = JoinSet::new();
    for (i, token) in buyers.into_iter().enumerate() {
        let (here, there) = (
            Arc::clone(&instances[i % 3]),
            Arc::clone(&instances[(i + 1) % 3]),
        );
        race.spawn(async move {
            let (status, body) = here.reserve_retrying(&token, event, 1).await;
            if status != 201 {
                return (status.as_u16(), None, body);
            }
            // Pay through another instance than the one that took the hold.
            let (paid, payment) = there.pay(&token, uuid(&body, "reservation_id")).await;
            (status.as_u16(), Some(paid.as_u16()), payment)
        });
    }
    let (mut held, mut sold_out, mut paid) = (0, 0, 0);
    while let Some(done) = race.join_next().await {
        match done.unwrap() {
            (201, Some(201), _) => {
                held += 1;
                paid += 1;
            }
            (409, None, body) => {
                assert_eq!(body["type"], "urn:ticketing:problem:sold-out", "{body}");
                sold_out += 1;
            }
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert_eq!((held, paid, sold_out), (100, 100, 200));
    for service in &instances {
        assert_eq!(service.floor(event).await, (0, 0, 100));
    }
    assert_invariants_in_sql(&db, event).await;
}

/// Invariants 1 and 2 checked with SQL on the event store and the read models.
async fn assert_invariants_in_sql(db: &str, event: uuid::Uuid) {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let count = |event_type: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM events WHERE sale_id = $1 AND event_type = $2",
            )
            .bind(event)
            .bind(event_type)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        count("inventory.seats_held").await,
        100,
        "holds in the event store"
    );
    assert_eq!(
        count("inventory.held_seats_sold").await,
        100,
        "sales in the event store"
    );
    assert_eq!(
        count("payment.captured").await,
        100,
        "captures in the event store"
    );
    assert_eq!(
        count("payment.refunded").await,
        0,
        "nothing needed a refund"
    );
    // No stream version was taken twice: the unique key held under contention.
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT stream_id, version FROM events GROUP BY 1, 2 HAVING COUNT(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    super::rebuild::assert_read_model_invariants(&pool, event).await;
}
