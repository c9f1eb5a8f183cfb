//! Sales analytics for the organizer and purchase history for the customer, read after real
//! purchases and refunds made over HTTP.

use super::helpers::*;
use super::invariants::gateway_settles_at;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// Creates an on-sale event named `name` with `floor` (25.00) and `balcony` (15.00) sections.
async fn two_section_event(app: &TestApp, organizer: &User, name: &str) -> Uuid {
    let mut body = TestApp::event_body(20);
    body["name"] = json!(name);
    body["sections"] = json!([
        {"name": "floor", "capacity": 20, "price_cents": 2500},
        {"name": "balcony", "capacity": 20, "price_cents": 1500}
    ]);
    let created = app.post("/api/events", Some(&organizer.token), body).await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    let id = created.id("id");
    for step in ["publish", "open-sales"] {
        let answer = app
            .post(
                &format!("/api/events/{id}/{step}"),
                Some(&organizer.token),
                json!({}),
            )
            .await;
        assert_eq!(answer.status, 200, "{step}: {:#}", answer.body);
    }
    id
}

/// Reserves and pays; returns `(reservation_id, payment_id)`.
async fn buy(
    app: &TestApp,
    user: &User,
    event: Uuid,
    section: &str,
    quantity: u32,
) -> (Uuid, Uuid) {
    let reserved = app
        .post(
            "/api/reservations",
            Some(&user.token),
            json!({"event_id": event, "section": section, "quantity": quantity}),
        )
        .await;
    assert_eq!(reserved.status, 201, "{:#}", reserved.body);
    let reservation = reserved.id("reservation_id");
    let paid = app.pay(user, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    (reservation, paid.id("payment_id"))
}

fn by_section(sales: &Value) -> Vec<(String, u64, i64)> {
    let mut rows: Vec<(String, u64, i64)> = sales["by_section"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["section"].as_str().unwrap().to_owned(),
                s["tickets_sold"].as_u64().unwrap(),
                s["revenue_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Event sales count tickets and revenue net of refunds, in total and per section.
#[tokio::test]
async fn event_sales_are_net_of_refunds_in_total_and_by_section() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = two_section_event(&app, &organizer, "Sales Night").await;
    let (alice, bob, carol) = (
        app.customer().await,
        app.customer().await,
        app.customer().await,
    );
    buy(&app, &alice, event, "floor", 2).await;
    buy(&app, &bob, event, "balcony", 1).await;
    let (_, refunded) = buy(&app, &carol, event, "floor", 1).await;
    // A hold that is never paid is not a sale.
    let unpaid = app
        .post(
            "/api/reservations",
            Some(&carol.token),
            json!({"event_id": event, "section": "balcony", "quantity": 4}),
        )
        .await;
    assert_eq!(unpaid.status, 201, "{:#}", unpaid.body);
    // Every purchase is counted before the refund: 4 tickets, 9 000 cents. From here on only
    // the refund can bring the figures down, so waiting for 3 below proves the netting.
    let before = app
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer.token),
            |a| a.body["tickets_sold"] == 4,
        )
        .await;
    assert_eq!(before.body["revenue_cents"], 2 * 2500 + 1500 + 2500);
    let refund = app
        .post(
            &format!("/api/payments/{refunded}/refund"),
            Some(&carol.token),
            json!({"reason": "changed plans"}),
        )
        .await;
    assert_eq!(refund.status, 200, "{:#}", refund.body);

    let sales = app
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer.token),
            |a| a.body["tickets_sold"] == 3,
        )
        .await;
    assert_eq!(sales.status, 200, "{:#}", sales.body);
    assert_eq!(sales.body["event_id"], event.to_string());
    assert_eq!(sales.body["tickets_sold"], 3);
    assert_eq!(sales.body["revenue_cents"], 2 * 2500 + 1500);
    assert_eq!(sales.body["currency"], "USD");
    assert_eq!(
        by_section(&sales.body),
        [
            ("balcony".to_owned(), 1, 1500),
            ("floor".to_owned(), 2, 5000)
        ]
    );
    // The analytics agree with the money the gateway kept.
    gateway_settles_at(&app, 6500).await;

    let admin = app.admin().await;
    let as_admin = app
        .get(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&admin.token),
        )
        .await;
    assert_eq!(as_admin.body, sales.body);
    let rival = app.organizer().await;
    for stranger in [&alice, &rival] {
        app.get(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&stranger.token),
        )
        .await
        .assert_problem(403, "forbidden");
    }
}

/// Purchase history lists only the customer's paid reservations, newest first, with event names.
#[tokio::test]
async fn purchase_history_lists_a_customers_purchases_newest_first_with_event_names() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let spring = two_section_event(&app, &organizer, "Spring Gala").await;
    let autumn = two_section_event(&app, &organizer, "Autumn Jazz").await;
    let buyer = app.customer().await;
    let other = app.customer().await;

    let (first, _) = buy(&app, &buyer, spring, "floor", 2).await;
    app.clock.advance(Duration::hours(1));
    buy(&app, &other, autumn, "floor", 1).await;
    let (second, _) = buy(&app, &buyer, autumn, "balcony", 3).await;
    app.clock.advance(Duration::hours(1));
    let (third, third_payment) = buy(&app, &buyer, spring, "balcony", 1).await;
    app.clock.advance(Duration::minutes(5));
    let unpaid = app
        .post(
            "/api/reservations",
            Some(&buyer.token),
            json!({"event_id": autumn, "section": "floor", "quantity": 1}),
        )
        .await;
    assert_eq!(unpaid.status, 201, "{:#}", unpaid.body);

    let history = app
        .get_when(
            &format!("/api/customers/{}/history", buyer.id),
            Some(&buyer.token),
            |a| a.body["total_count"] == 3,
        )
        .await;
    assert_eq!(history.status, 200, "{:#}", history.body);
    assert_eq!(history.body["total_count"], 3, "{:#}", history.body);
    assert_eq!(history.body["page"], 1);
    let items = history.body["items"].as_array().unwrap();
    let ids: Vec<Uuid> = items
        .iter()
        .map(|h| h["reservation_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, [third, second, first], "newest first");
    let names: Vec<&str> = items
        .iter()
        .map(|h| h["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Spring Gala", "Autumn Jazz", "Spring Gala"]);
    let times: Vec<DateTime<Utc>> = items
        .iter()
        .map(|h| h["purchased_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times[0] > times[1] && times[1] > times[2], "{times:?}");
    assert_eq!(items[0]["payment_id"], third_payment.to_string());
    assert_eq!(items[0]["total_cents"], 1500);
    assert_eq!(items[1]["quantity"], 3);
    assert_eq!(items[1]["total_cents"], 4500);
    assert_eq!(items[1]["section"], "balcony");
    assert_eq!(items[2]["event_id"], spring.to_string());
    assert!(items.iter().all(|h| h["status"] == "confirmed"));

    app.get(
        &format!("/api/customers/{}/history", buyer.id),
        Some(&other.token),
    )
    .await
    .assert_problem(403, "forbidden");
}
