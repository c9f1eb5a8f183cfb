//! The purchase path through HTTP with every adapter on PostgreSQL: what the API tests prove on
//! the in-memory default also holds when the answers come from the PostgreSQL read models.

use super::client::*;
use serde_json::json;
use ticketing::db::testing::fresh_database;

/// Purchase, decline, refund, analytics, history and pagination answer the same on PostgreSQL.
#[tokio::test]
async fn the_purchase_path_reads_back_from_the_postgres_read_models() {
    let db = fresh_database().await;
    let service = Service::start(&db, &[]).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    let (buyer_id, buyer) = service.user("customer").await;

    let mut payments = Vec::new();
    for _ in 0..3 {
        let (status, body) = service.reserve(&buyer, event, 2).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            (body["status"].as_str(), body["total_cents"].as_i64()),
            (Some("pending"), Some(5000))
        );
        let reservation = uuid(&body, "reservation_id");
        let (status, read) = service
            .get(&format!("/api/reservations/{reservation}"), Some(&buyer))
            .await;
        assert_eq!(
            (status.as_u16(), &read),
            (200, &body),
            "the read differs from the answer"
        );
        let (status, paid) = service.pay(&buyer, reservation).await;
        assert_eq!(status, 201, "{paid}");
        payments.push(uuid(&paid, "payment_id"));
    }
    // A declined card leaves the hold in place and a failed payment on record.
    let (_, held) = service.reserve(&buyer, event, 1).await;
    let declined = service
        .post(
            "/api/payments",
            Some(&buyer),
            json!({"reservation_id": uuid(&held, "reservation_id"), "payment_method": {"type": "card", "token": "tok_chargeDeclined"}}),
        )
        .await;
    assert_eq!(declined.0, 402, "{}", declined.1);
    assert_eq!(service.floor(event).await, (3, 1, 6));

    // Every purchase is counted before the refund (6 tickets); from here on only the refund
    // can bring the figures down to 4, so waiting for 4 below proves the netting.
    let before = service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |s| s["tickets_sold"] == 6,
        )
        .await;
    assert_eq!(before["revenue_cents"], 15_000, "{before}");
    let (status, refunded) = service
        .post(
            &format!("/api/payments/{}/refund", payments[0]),
            Some(&buyer),
            json!({"reason": "cannot come"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), refunded["status"].as_str()),
        (200, Some("refunded"))
    );
    assert_eq!(service.floor(event).await, (5, 1, 4));

    let sales = service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |s| s["tickets_sold"] == 4,
        )
        .await;
    assert_eq!(
        (
            sales["tickets_sold"].as_u64(),
            sales["revenue_cents"].as_i64()
        ),
        (Some(4), Some(10_000)),
        "{sales}"
    );
    let history = service
        .get_when(
            &format!("/api/customers/{buyer_id}/history"),
            Some(&buyer),
            |h| h["total_count"] == 3,
        )
        .await;
    assert_eq!(history["total_count"], 3, "{history}");
    assert_eq!(history["items"][0]["event_name"], "Durable Fest");
    let (_, page) = service
        .get(
            &format!("/api/payments/user/{buyer_id}?page=2&page_size=3"),
            Some(&buyer),
        )
        .await;
    assert_eq!(
        (page["total_count"].as_u64(), page["total_pages"].as_u64()),
        (Some(4), Some(2)),
        "{page}"
    );
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    // A refunded and a declined payment on record, and the sale still balances in SQL.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(assert_sales_balance_in_sql(&pool).await, 10_000);
}
