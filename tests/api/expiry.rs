//! Holds end on time: the manual clock moves past the TTL and the expiry scheduler releases the
//! seats; a payment that comes too late keeps no money; a paid hold is not touched.

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use chrono::{DateTime, Duration, Utc};
use std::time::Duration as Wait;
use ticketing::clock::Clock;

/// How many `ExpireReservation` commands the writers have decided, from `/metrics`.
async fn expiries_decided(app: &TestApp) -> u64 {
    let text = metrics::scrape(&app.client, &app.base).await;
    text.lines()
        .filter(|l| l.starts_with("ticketing_commands_total{") && l.contains("expire_reservation"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn time(value: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Once the clock passes the TTL the hold expires on its own and its seats are released.
#[tokio::test]
async fn a_hold_expires_when_the_clock_passes_its_ttl() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 3).await.id("reservation_id");
    assert_eq!(app.floor(event).await, (7, 3, 0));

    app.clock.advance(Duration::seconds(TTL_SECONDS + 1));
    eventually("the hold expires", Wait::from_secs(5), || async {
        app.reservation_status(&buyer, reservation).await == "expired"
    })
    .await;
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
    app.post(
        &format!("/api/reservations/{reservation}/cancel"),
        Some(&buyer.token),
        serde_json::json!({}),
    )
    .await
    .assert_problem(409, "reservation-not-pending");
}

/// A payment sent after the hold ended is refused with 409 and the customer keeps their money.
#[tokio::test]
async fn paying_after_the_hold_ended_is_refused_and_keeps_no_money() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    app.clock.advance(Duration::seconds(TTL_SECONDS));
    let late = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(late.status, 409, "{:#}", late.body);
    // Whether the scheduler already expired the hold or not, the answer is a conflict.
    let kind = late.body["type"].as_str().unwrap();
    assert!(
        kind == "urn:ticketing:problem:reservation-expired"
            || kind == "urn:ticketing:problem:reservation-not-pending",
        "{:#}",
        late.body
    );

    gateway_settles_at(&app, 0).await;
    eventually("the hold expires", Wait::from_secs(5), || async {
        app.reservation_status(&buyer, reservation).await == "expired"
    })
    .await;
    assert_eq!(app.floor(event).await, (10, 0, 0));
    let payments = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&buyer.token),
        )
        .await;
    let refunded_or_none = payments.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["status"] == "refunded");
    assert!(refunded_or_none, "{:#}", payments.body);
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 0);
}

/// A hold paid before its TTL stays confirmed, with its seats sold, after its TTL: its timer
/// was disarmed when it was paid, so only the unpaid hold's timer fires and no hold is left
/// counted in `ticketing_active_holds`. (A stale timer, as another instance may still have, is
/// a no-op: the domain's tests.)
#[tokio::test]
async fn a_hold_paid_in_time_stays_confirmed_after_its_ttl() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let idler = app.customer().await;
    let paid = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let unpaid = app.reserve(&idler, event, 1).await.id("reservation_id");
    app.clock.advance(Duration::seconds(TTL_SECONDS - 1));
    let payment = app.pay(&buyer, paid, "tok_visa").await;
    assert_eq!(payment.status, 201, "{:#}", payment.body);
    assert_eq!(app.floor(event).await, (7, 1, 2));
    assert_eq!(expiries_decided(&app).await, 0);

    app.clock.advance(Duration::seconds(2));
    eventually(
        "the unpaid hold's timer fires",
        Wait::from_secs(5),
        || async { expiries_decided(&app).await == 1 },
    )
    .await;
    // Decided is not yet shown: the read models apply the expiry a moment later.
    eventually(
        "the unpaid hold shows expired",
        Wait::from_secs(5),
        || async { app.reservation_status(&idler, unpaid).await == "expired" },
    )
    .await;
    assert_eq!(app.reservation_status(&buyer, paid).await, "confirmed");
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(
        expiries_decided(&app).await,
        1,
        "the paid hold's timer is gone"
    );
    // The unpaid hold's timer goes once its attempt reported (one more task hop).
    eventually("no hold timer is left", Wait::from_secs(5), || async {
        app.metric("ticketing_active_holds", &[]).await == 0.0
    })
    .await;
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);
}

/// A 60 s `reservation_ttl` makes `expires_at` placing time + 60 s: payable at 59 s, gone at 60.
#[tokio::test]
async fn a_configured_ttl_of_sixty_seconds_sets_expires_at() {
    let app = spawn_app_with(|c| c.reservation_ttl = Duration::seconds(60)).await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let placed_at = app.clock.now();
    let kept = app.reserve(&buyer, event, 1).await;
    let dropped = app.reserve(&buyer, event, 1).await;
    assert_eq!(kept.status, 201, "{:#}", kept.body);
    assert_eq!(time(&kept.body["created_at"]), placed_at);
    assert_eq!(
        time(&kept.body["expires_at"]),
        placed_at + Duration::seconds(60)
    );
    assert_eq!(
        time(&dropped.body["expires_at"]),
        placed_at + Duration::seconds(60)
    );

    app.clock.advance(Duration::seconds(59));
    let payment = app.pay(&buyer, kept.id("reservation_id"), "tok_visa").await;
    assert_eq!(payment.status, 201, "{:#}", payment.body);

    app.clock.advance(Duration::seconds(1));
    let dropped = dropped.id("reservation_id");
    eventually(
        "the unpaid hold expires at 60 s",
        Wait::from_secs(5),
        || async { app.reservation_status(&buyer, dropped).await == "expired" },
    )
    .await;
    assert_eq!(app.floor(event).await, (9, 0, 1));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 2500);
}
