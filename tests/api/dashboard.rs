//! The operators' dashboard: admins see the instance's figures and the last 24 hours of
//! sales move with a purchase; everyone else is turned away.

use super::helpers::*;
use chrono::Duration;
use serde_json::{json, Value};

const SYSTEM: &str = "/admin/dashboard/system";
const SALES: &str = "/admin/dashboard/sales";

fn usd(body: &Value) -> i64 {
    body["revenue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["currency"] == "USD")
        .map_or(0, |r| r["amount_cents"].as_i64().unwrap())
}

/// The system dashboard names the version, the adapters and their figures, and the event
/// store's head moves with a write.
#[tokio::test]
async fn admins_see_the_system_figures() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let before = app.get(SYSTEM, Some(&admin.token)).await;
    assert_eq!(before.status, 200, "{:#}", before.body);
    let b = &before.body;
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert!(b["uptime_seconds"].is_u64(), "{b:#}");
    let (store, cache) = match backend() {
        Backend::Memory => ("memory", "memory"),
        Backend::Postgres => ("postgres", "redis"),
    };
    assert_eq!(b["event_store"]["kind"], store);
    assert_eq!(
        b["bus"],
        json!({"kind": "memory", "status": "pass", "error": null})
    );
    assert_eq!(
        b["dlq"],
        json!({"pending": 0, "processing": 0, "resolved": 0, "discarded": 0})
    );
    match backend() {
        Backend::Memory => assert_eq!(b["pools"], json!([]), "no PostgreSQL pools in memory"),
        Backend::Postgres => assert!(!b["pools"].as_array().expect("pools").is_empty(), "{b:#}"),
    }
    assert!(b["outbox"]["backlog"].is_i64(), "{b:#}");
    assert_eq!(b["cache"]["kind"], cache);
    assert_eq!(b["cache"]["status"], "pass");

    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    for _ in 0..2 {
        app.get(&format!("/api/events/{event}/availability"), None)
            .await;
    }
    let after = app.get(SYSTEM, Some(&admin.token)).await;
    assert!(
        after.body["cache"]["hits"].as_u64().unwrap() >= 1,
        "{:#}",
        after.body
    );
    assert!(
        after.body["cache"]["misses"].as_u64().unwrap() >= 1,
        "{:#}",
        after.body
    );
    let head = |a: &Answer| a.body["event_store"]["head_position"].as_u64().unwrap();
    assert!(head(&after) > head(&before), "{:#}", after.body);
    // Commands answer after the read models applied them (read-your-writes).
    assert_eq!(
        after.body["event_store"]["projection_position"],
        after.body["event_store"]["head_position"]
    );
    assert_eq!(after.body["event_store"]["projection_lag"], 0);
}

/// A hold counts as active until it is paid; the payment adds its tickets and revenue to the
/// last 24 hours, and they leave the window a day later.
#[tokio::test]
async fn the_sales_dashboard_follows_a_purchase() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let token = Some(admin.token.as_str());
    let start = app.get(SALES, token).await;
    assert_eq!(start.status, 200, "{:#}", start.body);
    assert_eq!(start.body["tickets_sold"], 0);
    assert_eq!(start.body["revenue"], json!([]));
    assert_eq!(start.body["active_holds"], 0);

    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let reserved = app.reserve(&buyer, event, 2).await;
    assert_eq!(reserved.status, 201, "{:#}", reserved.body);
    let held = app.get(SALES, token).await;
    assert_eq!(held.body["active_holds"], 1, "{:#}", held.body);
    assert_eq!(held.body["tickets_sold"], 0);

    let paid = app
        .pay(&buyer, reserved.id("reservation_id"), "tok_visa")
        .await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    let sold = app
        .get_when(SALES, token, |a| a.body["tickets_sold"] == 2)
        .await;
    assert_eq!(usd(&sold.body), 5000, "{:#}", sold.body);
    assert_eq!(sold.body["active_holds"], 0, "the hold became a sale");

    app.clock
        .advance(Duration::hours(24) + Duration::seconds(1));
    // A day later the session has expired too: sign in again.
    let admin = app.admin().await;
    let later = app.get(SALES, Some(&admin.token)).await;
    assert_eq!(later.body["tickets_sold"], 0, "{:#}", later.body);
    assert_eq!(later.body["revenue"], json!([]));
}

/// Both dashboards are for administrators: 401 without a token, 403 for customers and
/// organizers.
#[tokio::test]
async fn only_admins_see_the_dashboards() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let organizer = app.organizer().await;
    for path in [SYSTEM, SALES] {
        app.get(path, None)
            .await
            .assert_problem(401, "unauthorized");
        for user in [&customer, &organizer] {
            app.get(path, Some(&user.token))
                .await
                .assert_problem(403, "forbidden");
        }
    }
}
