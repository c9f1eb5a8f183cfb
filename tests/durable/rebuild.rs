//! Read models are disposable: rebuilt from the event store, they hold exactly the same rows.

use super::client::*;
use sqlx::PgPool;
use ticketing::db::testing::fresh_database;
use ticketing::eventstore::postgres::PostgresEventStore;
use ticketing::projections::insights::postgres::PostgresInsights;
use ticketing::projections::postgres::PostgresReadModel;

const VIEWS: [&str; 8] = [
    "event_views",
    "event_sections",
    "reservation_views",
    "payment_views",
    "insight_events",
    "insight_sections",
    "insight_purchases",
    "consumer_stream_versions",
];

/// Dropping the projections and replaying the event store from position 0 gives the same rows.
#[tokio::test]
async fn rebuilding_the_projections_from_the_event_store_gives_the_same_rows() {
    let db = fresh_database().await;
    let service = Service::start(&db, &[]).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 20).await;
    for round in 0..6 {
        let (_, buyer) = service.user("customer").await;
        let (status, body) = service.reserve(&buyer, event, 2).await;
        assert_eq!(status, 201, "{body}");
        let reservation = uuid(&body, "reservation_id");
        match round {
            0 => {} // stays pending
            1 => {
                let (status, _) = service
                    .post(
                        &format!("/api/reservations/{reservation}/cancel"),
                        Some(&buyer),
                        serde_json::json!({}),
                    )
                    .await;
                assert_eq!(status, 200);
            }
            _ => {
                let (status, body) = service.pay(&buyer, reservation).await;
                assert_eq!(status, 201, "{body}");
                if round == 2 {
                    let payment = uuid(&body, "payment_id");
                    let (status, _) = service
                        .post(
                            &format!("/api/payments/{payment}/refund"),
                            Some(&buyer),
                            serde_json::json!({"reason": "test"}),
                        )
                        .await;
                    assert_eq!(status, 200);
                }
            }
        }
    }
    let pool = PgPool::connect(&db).await.unwrap();
    insights_catch_up(&pool).await;
    service.kill9().await;

    let before = table_rows(&pool, &VIEWS).await;
    assert!(
        before["payment_views"].lines().count() >= 4,
        "the sale left too little to compare"
    );
    let store = PostgresEventStore::new(pool.clone()).await.unwrap();
    let reads = PostgresReadModel::new(pool.clone());
    let rebuilt = ticketing::projections::rebuild(&store, &reads)
        .await
        .unwrap();
    let position = rebuilt.position;
    assert!(position > 0);
    assert_eq!(rebuilt.undecodable, 0);
    let insights = PostgresInsights::new(pool.clone());
    assert_eq!(
        ticketing::projections::insights::rebuild(&store, &insights)
            .await
            .unwrap(),
        position
    );
    let after = table_rows(&pool, &VIEWS).await;
    for table in VIEWS {
        assert_eq!(
            before[table], after[table],
            "{table} differs after the rebuild"
        );
    }
    assert_read_model_invariants(&pool, event).await;
}

/// Invariant 1 (no oversell) and 2 (every sale balances), checked with SQL on the read models.
pub async fn assert_read_model_invariants(pool: &PgPool, event: uuid::Uuid) {
    let zero = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(event)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(n, 0, "violated: {sql}");
        }
    };
    zero("SELECT COUNT(*) FROM event_sections WHERE event_id = $1 AND held + sold > capacity")
        .await;
    // Invariant 2 (and the seat counts behind it), over the whole database.
    assert_sales_balance_in_sql(pool).await;
}
