//! Payment reconciliation: a capture the gateway made that the service never recorded (the
//! store failed right after the capture, or the process died) is found by the background job
//! once its request's time is up, and recorded: the reservation confirms while its hold is
//! valid, and the capture is refunded when the hold ended first. The tests make the capture at
//! the gateway themselves, which leaves exactly the state a failed append leaves. Runs on
//! both adapter sets (`TEST_BACKEND`).

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use chrono::Duration;
use std::time::Duration as StdDuration;
use ticketing::app::idempotency::derived_id;
use ticketing::clock::Clock;
use ticketing::domain::{Currency, EventId, Money, PaymentId, ReservationId, UserId};
use ticketing::payment::{ChargeFor, ChargeOutcome, PaymentGateway};
use uuid::Uuid;

/// Past the request timeout (30 s) and its slack: the capture's own request is over.
const PAST_GRACE: Duration = Duration::seconds(40);

async fn reconciling_app() -> TestApp {
    spawn_app_with(|c| c.reconcile_interval = StdDuration::from_millis(20)).await
}

/// Charges the card at the gateway for `reservation` (5000 cents) without recording anything.
async fn capture_behind_the_services_back(app: &TestApp, event: Uuid, reservation: Uuid) -> Uuid {
    capture_as(app, PaymentId::random(), event, reservation).await
}

/// Charges the card at the gateway as payment `payment`, recording nothing.
async fn capture_as(app: &TestApp, payment: PaymentId, event: Uuid, reservation: Uuid) -> Uuid {
    let outcome = app
        .gateway
        .charge(
            payment,
            Money::new(5000, Currency::USD),
            "tok_visa",
            ChargeFor {
                reservation_id: ReservationId(reservation),
                event_id: EventId(event),
            },
        )
        .await
        .unwrap();
    assert!(matches!(outcome, ChargeOutcome::Captured { .. }));
    payment.0
}

/// Waits until a reconciliation pass completes at the clock's current time (its gauge shows
/// that time), so what the pass would have done is done.
async fn a_pass_completes(app: &TestApp) {
    let now = app.clock.now().timestamp() as f64;
    eventually(
        "a reconciliation pass at the current time",
        StdDuration::from_secs(10),
        || async {
            app.metric("ticketing_reconciliation_last_run_timestamp_seconds", &[])
                .await
                >= now
        },
    )
    .await;
}

/// An unrecorded capture of a valid hold is recorded: the reservation confirms with that
/// payment, the sale balances, and the capture counts as `recorded`.
#[tokio::test]
async fn an_unrecorded_capture_of_a_valid_hold_confirms_the_reservation() {
    let app = reconciling_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let payment = capture_behind_the_services_back(&app, event, reservation).await;

    app.clock.advance(PAST_GRACE);
    eventually(
        "reconciliation confirms the reservation",
        StdDuration::from_secs(10),
        || async { app.reservation_status(&buyer, reservation).await == "confirmed" },
    )
    .await;
    let read = app
        .get(&format!("/api/payments/{payment}"), Some(&buyer.token))
        .await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.body["status"], "captured");
    assert_eq!(read.body["reservation_id"], reservation.to_string());
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
    gateway_settles_at(&app, 5000).await;
    let recorded = [("outcome", "recorded")];
    assert_eq!(
        app.metric("ticketing_reconciled_captures_total", &recorded)
            .await,
        1.0
    );
    // Later passes leave it alone: counted once.
    app.clock.advance(PAST_GRACE);
    a_pass_completes(&app).await;
    assert_eq!(
        app.metric("ticketing_reconciled_captures_total", &recorded)
            .await,
        1.0
    );
}

/// An unrecorded capture whose hold expired first is recorded with its refund: the money goes
/// back at the gateway, the seats stay free, and the capture counts as `refunded`.
#[tokio::test]
async fn an_unrecorded_capture_of_an_expired_hold_is_refunded() {
    let app = reconciling_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let payment = capture_behind_the_services_back(&app, event, reservation).await;

    app.clock.advance(Duration::seconds(TTL_SECONDS + 1));
    eventually(
        "the capture is refunded at the gateway",
        StdDuration::from_secs(10),
        || async {
            app.gateway
                .charge_of(PaymentId(payment))
                .await
                .unwrap()
                .is_some_and(|c| c.refunded)
        },
    )
    .await;
    assert_eq!(app.reservation_status(&buyer, reservation).await, "expired");
    let read = app
        .get(&format!("/api/payments/{payment}"), Some(&buyer.token))
        .await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.body["status"], "refunded");
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
    gateway_settles_at(&app, 0).await;
    assert_eq!(
        app.metric(
            "ticketing_reconciled_captures_total",
            &[("outcome", "refunded")]
        )
        .await,
        1.0
    );
}

/// A keyed payment whose capture the service never recorded (its request answered 503, or its
/// instance died), refunded by reconciliation once the hold expired: the client's retry with
/// the same key answers 409, as the first attempt would have had it recorded the same thing
/// itself, not 201 (which says the reservation is confirmed).
#[tokio::test]
async fn a_retry_of_a_payment_reconciliation_refunded_is_a_conflict() {
    let app = reconciling_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let key = "pay-once";
    let payment = PaymentId(derived_id(
        UserId(buyer.id),
        "payment",
        reservation,
        Some(key),
    ));
    capture_as(&app, payment, event, reservation).await;

    app.clock.advance(Duration::seconds(TTL_SECONDS + 1));
    app.get_when(
        &format!("/api/payments/{}", payment.0),
        Some(&buyer.token),
        |a| a.body["status"] == "refunded",
    )
    .await;
    let retried = app
        .call_with(
            reqwest::Method::POST,
            "/api/payments",
            Some(&buyer.token),
            Some(serde_json::json!({"reservation_id": reservation,
                "payment_method": {"type": "card", "token": "tok_visa"}})),
            &[("Idempotency-Key", key)],
        )
        .await;
    retried.assert_problem(409, "reservation-not-pending");
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
    gateway_settles_at(&app, 0).await;
}

/// A capture recorded by its own request is never touched by reconciliation: the pass finds
/// it in the read models (one question for all its captures) and never asks the sale's
/// writer to record it again.
#[tokio::test]
async fn a_recorded_capture_is_left_alone() {
    let app = reconciling_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    app.clock.advance(PAST_GRACE);
    a_pass_completes(&app).await;
    let record = |result| [("command", "record_capture"), ("result", result)];
    assert_eq!(
        app.metric("ticketing_commands_total", &record("ok")).await,
        1.0
    );
    assert_eq!(
        app.metric("ticketing_commands_total", &record("rejected"))
            .await,
        0.0,
        "the writer was asked to record it again"
    );
    for outcome in ["recorded", "refunded", "failed"] {
        assert_eq!(
            app.metric(
                "ticketing_reconciled_captures_total",
                &[("outcome", outcome)]
            )
            .await,
            0.0,
            "{outcome}"
        );
    }
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
}
