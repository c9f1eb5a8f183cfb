//! Cancelling a reservation (release or refund) and cancelling a whole event, which must end
//! every hold and refund every paid ticket in one step.

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use reqwest::Method;
use serde_json::json;
use ticketing::domain::PaymentId;

/// Cancelling a pending reservation answers `cancelled`, releases its held seats, and only once.
#[tokio::test]
async fn cancelling_a_pending_reservation_releases_its_held_seats_once() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 4).await.id("reservation_id");
    assert_eq!(app.floor(event).await, (6, 4, 0));

    let cancel = format!("/api/reservations/{reservation}/cancel");
    let cancelled = app.post(&cancel, Some(&buyer.token), json!({})).await;
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["reservation_id"], reservation.to_string());
    assert_eq!(app.floor(event).await, (10, 0, 0));

    app.post(&cancel, Some(&buyer.token), json!({}))
        .await
        .assert_problem(409, "reservation-not-pending");
    app.pay(&buyer, reservation, "tok_visa")
        .await
        .assert_problem(409, "reservation-not-pending");
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 0);
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
}

/// Cancelling a confirmed reservation refunds payment and money and releases the sold seats, once.
#[tokio::test]
async fn cancelling_a_confirmed_reservation_refunds_it_and_releases_the_sold_seats() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let keeper = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let payment = app
        .pay(&buyer, reservation, "tok_visa")
        .await
        .id("payment_id");
    let kept = app.reserve(&keeper, event, 1).await.id("reservation_id");
    assert_eq!(app.pay(&keeper, kept, "tok_visa").await.status, 201);
    assert_eq!(app.floor(event).await, (7, 0, 3));

    let cancel = format!("/api/reservations/{reservation}/cancel");
    let cancelled = app.post(&cancel, Some(&buyer.token), json!({})).await;
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);
    assert_eq!(cancelled.body["status"], "refunded");
    assert_eq!(app.floor(event).await, (9, 0, 1));
    let read = app
        .get(&format!("/api/payments/{payment}"), Some(&buyer.token))
        .await;
    assert_eq!(read.body["status"], "refunded", "{:#}", read.body);
    gateway_settles_at(&app, 2500).await;
    assert!(
        app.gateway
            .charge_of(PaymentId(payment))
            .await
            .unwrap()
            .unwrap()
            .refunded
    );

    app.post(&cancel, Some(&buyer.token), json!({}))
        .await
        .assert_problem(409, "reservation-not-pending");
    assert_eq!(app.floor(event).await, (9, 0, 1));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 2500);
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 2500);
}

/// Only the owner (or an admin) may cancel a reservation; a stranger gets 404 and nothing moves.
#[tokio::test]
async fn a_stranger_cannot_cancel_someone_elses_reservation() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let stranger = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    app.post(
        &format!("/api/reservations/{reservation}/cancel"),
        Some(&stranger.token),
        json!({}),
    )
    .await
    .assert_problem(404, "not-found");
    assert_eq!(app.floor(event).await, (8, 2, 0));

    let admin = app.admin().await;
    let by_admin = app.cancel(&admin, reservation).await;
    assert_eq!(by_admin.status, 200, "{:#}", by_admin.body);
    assert_eq!(by_admin.body["status"], "cancelled");
    assert_eq!(app.floor(event).await, (10, 0, 0));
}

/// Cancelling an event ends every hold, refunds every paid ticket and stops new reservations.
#[tokio::test]
async fn cancelling_an_event_releases_holds_refunds_paid_tickets_and_stops_sales() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let holder = app.customer().await;
    let payer = app.customer().await;
    let pending = app.reserve(&holder, event, 2).await.id("reservation_id");
    let paid = app.reserve(&payer, event, 3).await.id("reservation_id");
    let payment = app.pay(&payer, paid, "tok_visa").await.id("payment_id");
    assert_eq!(app.floor(event).await, (5, 2, 3));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 7500);

    // Another organizer may not cancel it, and trying changes nothing.
    let rival = app.organizer().await;
    app.call(
        Method::DELETE,
        &format!("/api/events/{event}"),
        Some(&rival.token),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    assert_eq!(app.floor(event).await, (5, 2, 3));

    let deleted = app
        .call(
            Method::DELETE,
            &format!("/api/events/{event}"),
            Some(&organizer.token),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{:#}", deleted.body);

    let read = app
        .get(&format!("/api/reservations/{pending}"), Some(&holder.token))
        .await;
    assert_eq!(read.body["status"], "cancelled", "{:#}", read.body);
    let read = app
        .get(&format!("/api/reservations/{paid}"), Some(&payer.token))
        .await;
    assert_eq!(read.body["status"], "refunded", "{:#}", read.body);
    let read = app
        .get(&format!("/api/payments/{payment}"), Some(&payer.token))
        .await;
    assert_eq!(read.body["status"], "refunded", "{:#}", read.body);
    gateway_settles_at(&app, 0).await;
    assert!(
        app.gateway
            .charge_of(PaymentId(payment))
            .await
            .unwrap()
            .unwrap()
            .refunded
    );

    assert_eq!(app.floor(event).await, (10, 0, 0));
    let shown = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(shown.body["status"], "cancelled", "{:#}", shown.body);
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);

    let latecomer = app.customer().await;
    app.reserve(&latecomer, event, 1)
        .await
        .assert_problem(409, "sales-not-open");
    app.pay(&holder, pending, "tok_visa")
        .await
        .assert_problem(409, "reservation-not-pending");
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 0);
    app.call(
        Method::DELETE,
        &format!("/api/events/{event}"),
        Some(&organizer.token),
        None,
    )
    .await
    .assert_problem(409, "invalid-state");
}
