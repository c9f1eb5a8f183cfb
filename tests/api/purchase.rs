//! Paying for a hold and getting the money back: declines, double payment, refunds, and the
//! customer's payment list.

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use chrono::Duration;
use serde_json::json;
use ticketing::domain::PaymentId;
use ticketing::payment::ChargeOutcome;
use uuid::Uuid;

/// A declined card answers 402 with the failed payment's id, keeps the hold, and a later card pays.
#[tokio::test]
async fn a_declined_card_keeps_the_hold_and_a_second_card_can_still_pay() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    let declined = app.pay(&buyer, reservation, "tok_chargeDeclined").await;
    declined.assert_problem(402, "payment-declined");
    let declined_id = declined.id("payment_id");
    let read = app
        .get(
            &format!("/api/reservations/{reservation}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(read.body["status"], "pending", "{:#}", read.body);
    assert_eq!(read.body["payment_id"], json!(null));
    assert_eq!(app.floor(event).await, (8, 2, 0));
    let failed = app
        .get(&format!("/api/payments/{declined_id}"), Some(&buyer.token))
        .await;
    assert_eq!(failed.status, 200, "{:#}", failed.body);
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(failed.body["reservation_id"], reservation.to_string());
    assert_eq!(failed.body["amount_cents"], 5000);
    assert_eq!(failed.body["reason"], "card_declined");
    assert!(matches!(
        app.gateway
            .charge_of(PaymentId(declined_id))
            .await
            .unwrap()
            .unwrap()
            .outcome,
        ChargeOutcome::Declined { .. }
    ));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 0);

    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    assert_eq!(paid.body["status"], "captured");
    assert_eq!(paid.body["amount_cents"], 5000);
    let paid_id = paid.id("payment_id");
    assert_ne!(paid_id, declined_id);
    let read = app
        .get(
            &format!("/api/reservations/{reservation}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(read.body["status"], "confirmed");
    assert_eq!(read.body["payment_id"], paid_id.to_string());
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);
}

/// Paying a confirmed reservation again is a 409 and the card is not charged a second time.
#[tokio::test]
async fn paying_a_confirmed_reservation_again_is_a_conflict_and_charges_nothing() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let first = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(first.status, 201, "{:#}", first.body);

    let again = app.pay(&buyer, reservation, "tok_visa").await;
    again.assert_problem(409, "reservation-not-pending");

    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);
    let payments = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(payments.body["total_count"], 1, "{:#}", payments.body);
    assert_eq!(
        payments.body["items"][0]["payment_id"],
        first.body["payment_id"]
    );
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
}

/// A hold cancelled or paid a moment ago is refused before the card is charged, not charged
/// and refunded at once: those commands answer once the read models show them, so the
/// payment's look-up of its hold sees them.
#[tokio::test]
async fn a_hold_cancelled_or_paid_a_moment_ago_is_refused_before_any_charge() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let cancelled = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let paid = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let cancel = app.cancel(&buyer, cancelled).await;
    assert_eq!(cancel.status, 200, "{:#}", cancel.body);
    let first = app.pay(&buyer, paid, "tok_visa").await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    let charges = app.gateway.calls();

    app.pay(&buyer, cancelled, "tok_visa")
        .await
        .assert_problem(409, "reservation-not-pending");
    app.pay(&buyer, paid, "tok_visa")
        .await
        .assert_problem(409, "reservation-not-pending");
    assert_eq!(
        app.gateway.calls(),
        charges,
        "no card was charged for an ended hold"
    );
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
}

/// A refund puts the seats back on sale and the money back at the gateway, and only once.
#[tokio::test]
async fn a_refund_returns_seats_and_money_and_cannot_be_repeated() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 3).await.id("reservation_id");
    let payment = app
        .pay(&buyer, reservation, "tok_visa")
        .await
        .id("payment_id");
    assert_eq!(app.floor(event).await, (7, 0, 3));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 7500);

    let refund = app
        .post(
            &format!("/api/payments/{payment}/refund"),
            Some(&buyer.token),
            json!({"reason": "cannot attend"}),
        )
        .await;
    assert_eq!(refund.status, 200, "{:#}", refund.body);
    assert_eq!(refund.body["status"], "refunded");
    assert_eq!(refund.body["payment_id"], payment.to_string());
    assert_eq!(refund.body["amount_cents"], 7500);
    assert_eq!(refund.body["reason"], "cannot attend");

    let read = app
        .get(
            &format!("/api/reservations/{reservation}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(read.body["status"], "refunded");
    assert_eq!(app.floor(event).await, (10, 0, 0));
    gateway_settles_at(&app, 0).await;
    assert!(
        app.gateway
            .charge_of(PaymentId(payment))
            .await
            .unwrap()
            .unwrap()
            .refunded
    );
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);

    let twice = app
        .post(
            &format!("/api/payments/{payment}/refund"),
            Some(&buyer.token),
            json!({"reason": "once more"}),
        )
        .await;
    twice.assert_problem(409, "payment-not-refundable");
    let read = app
        .get(&format!("/api/payments/{payment}"), Some(&buyer.token))
        .await;
    assert_eq!(read.body["reason"], "cannot attend");
    assert_eq!(app.floor(event).await, (10, 0, 0));

    // The returned seats are really on sale again.
    let next = app.customer().await;
    let again = app.reserve(&next, event, 10).await;
    assert_eq!(again.status, 201, "{:#}", again.body);
}

/// Another customer can neither read nor refund someone else's payment.
#[tokio::test]
async fn a_stranger_cannot_see_or_refund_someone_elses_payment() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let stranger = app.customer().await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let payment = app
        .pay(&buyer, reservation, "tok_visa")
        .await
        .id("payment_id");

    app.get(&format!("/api/payments/{payment}"), Some(&stranger.token))
        .await
        .assert_problem(404, "not-found");
    app.post(
        &format!("/api/payments/{payment}/refund"),
        Some(&stranger.token),
        json!({"reason": "mine now"}),
    )
    .await
    .assert_problem(404, "not-found");
    app.get(
        &format!("/api/payments/user/{}", buyer.id),
        Some(&stranger.token),
    )
    .await
    .assert_problem(403, "forbidden");

    assert_eq!(app.floor(event).await, (9, 0, 1));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 2500);
}

/// `GET /api/payments/user/{id}` pages through exactly that user's payments, newest first.
#[tokio::test]
async fn a_customer_lists_their_own_payments_page_by_page_newest_first() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let other = app.customer().await;
    let other_reservation = app.reserve(&other, event, 1).await.id("reservation_id");
    assert_eq!(
        app.pay(&other, other_reservation, "tok_visa").await.status,
        201
    );

    // Three payments, a minute apart: declined, then captured, then captured.
    let first = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let second = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let mut made: Vec<Uuid> = Vec::new();
    for (reservation, card) in [
        (first, "tok_chargeDeclined"),
        (first, "tok_visa"),
        (second, "tok_visa"),
    ] {
        app.clock.advance(Duration::minutes(1));
        let answer = app.pay(&buyer, reservation, card).await;
        made.push(answer.id("payment_id"));
    }
    made.reverse();

    let page1 = app
        .get(
            &format!("/api/payments/user/{}?page=1&page_size=2", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(page1.status, 200, "{:#}", page1.body);
    assert_eq!(page1.body["page"], 1);
    assert_eq!(page1.body["page_size"], 2);
    assert_eq!(page1.body["total_count"], 3);
    assert_eq!(page1.body["total_pages"], 2);
    let page2 = app
        .get(
            &format!("/api/payments/user/{}?page=2&page_size=2", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(page2.body["page"], 2);
    assert_eq!(page2.body["total_count"], 3);

    let listed: Vec<&serde_json::Value> = page1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2.body["items"].as_array().unwrap())
        .collect();
    let ids: Vec<Uuid> = listed
        .iter()
        .map(|p| p["payment_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, made, "newest first, each payment once");
    assert!(listed.iter().all(|p| p["user_id"] == buyer.id.to_string()));
    let statuses: Vec<&str> = listed
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["captured", "captured", "failed"]);

    // The admin may read the list too; page_size outside 1..=100 is refused.
    let admin = app.admin().await;
    let as_admin = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&admin.token),
        )
        .await;
    assert_eq!(as_admin.body["total_count"], 3);
    assert_eq!(as_admin.body["page_size"], 20);
    app.get(
        &format!("/api/payments/user/{}?page_size=101", buyer.id),
        Some(&buyer.token),
    )
    .await
    .assert_problem(422, "validation-failed");
}

/// The card processor does not answer within `PAYMENT_TIMEOUT_MS`: paying answers 503 with
/// `Retry-After`, and does not claim the customer was not charged (the processor may have
/// charged all the same); it says what becomes of such a charge and where to see it.
#[tokio::test]
async fn a_gateway_that_does_not_answer_in_time_does_not_claim_nothing_was_charged() {
    let app = spawn_app_with(|config| {
        config.payment_latency = std::time::Duration::from_secs(5);
        config.payment_timeout = std::time::Duration::from_millis(100);
    })
    .await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");

    let answer = app.pay(&buyer, reservation, "tok_visa").await;
    answer.assert_problem(503, "service-unavailable");
    assert!(
        answer.header("retry-after").is_some(),
        "{:?}",
        answer.headers
    );
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(!detail.contains("did not charge"), "{detail}");
    assert!(detail.contains("did not answer in time"), "{detail}");
    assert!(detail.contains("refunded automatically"), "{detail}");
}

/// The card processor is down: paying answers 503 problem+json with `Retry-After`, says the
/// customer was not charged, and nothing is charged or recorded: the gateway keeps nothing,
/// no payment is listed, the hold stays pending with its seats held, and the attempt is
/// counted as a gateway error. Both payment paths (with and without `Idempotency-Key`).
#[tokio::test]
async fn a_gateway_outage_answers_503_with_retry_after_and_charges_nothing() {
    let app = spawn_app_with(|config| config.payment_failure_rate = 1.0).await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let held = app.reserve(&buyer, event, 2).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    let reservation = held.id("reservation_id");
    let body = json!({"reservation_id": reservation,
        "payment_method": {"type": "card", "token": "tok_visa"}});

    let plain = app
        .post("/api/payments", Some(&buyer.token), body.clone())
        .await;
    let keyed = app
        .call_with(
            reqwest::Method::POST,
            "/api/payments",
            Some(&buyer.token),
            Some(body),
            &[("idempotency-key", "gateway-outage-1")],
        )
        .await;
    for answer in [&plain, &keyed] {
        answer.assert_problem(503, "service-unavailable");
        let retry_after: u64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("503 without Retry-After: {:?}", answer.headers));
        assert!(retry_after >= 1);
        assert!(
            answer.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("did not charge you")),
            "{:#}",
            answer.body
        );
    }

    assert_eq!(
        app.gateway.net_captured_cents().await.unwrap(),
        0,
        "money was taken"
    );
    let payments = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(payments.status, 200, "{:#}", payments.body);
    assert_eq!(payments.body["total_count"], 0, "{:#}", payments.body);
    let after = app
        .get(
            &format!("/api/reservations/{reservation}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(after.body["status"], "pending", "{:#}", after.body);
    assert_eq!(after.body["payment_id"], serde_json::Value::Null);
    assert_eq!(app.floor(event).await, (8, 2, 0));
    assert_eq!(
        app.metric("ticketing_payments_total", &[("outcome", "gateway_error")])
            .await,
        2.0
    );
    assert_eq!(
        app.metric("ticketing_payments_total", &[("outcome", "captured")])
            .await,
        0.0
    );
}

/// The processor comes back: a retry with the same `Idempotency-Key` then pays (201), once,
/// and the hold is confirmed; nothing from the failed attempt is left behind.
#[tokio::test]
async fn a_payment_retried_with_its_key_after_a_gateway_outage_pays_once() {
    let app = spawn_app_with(|config| config.payment_failure_rate = 1.0).await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let body = json!({"reservation_id": reservation,
        "payment_method": {"type": "card", "token": "tok_visa"}});
    let pay = || {
        app.call_with(
            reqwest::Method::POST,
            "/api/payments",
            Some(&buyer.token),
            Some(body.clone()),
            &[("idempotency-key", "after-the-outage")],
        )
    };
    pay().await.assert_problem(503, "service-unavailable");

    app.gateway.set_failure_rate(0.0);
    let paid = pay().await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    assert_eq!(paid.body["status"], "captured", "{:#}", paid.body);
    let again = pay().await;
    assert_eq!(again.status, 201, "{:#}", again.body);
    assert_eq!(again.body["payment_id"], paid.body["payment_id"]);
    assert_eq!(
        app.gateway.net_captured_cents().await.unwrap(),
        5000,
        "charged once"
    );
    assert_eq!(app.floor(event).await, (8, 0, 2));
}

/// A refund while the processor is down is recorded at once (200, `refunded`, the seats go
/// back on sale); the money goes back at the processor once it answers again, without anyone
/// asking twice.
#[tokio::test]
async fn a_refund_during_a_gateway_outage_is_settled_when_it_comes_back() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    let payment = paid.id("payment_id");
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);

    app.gateway.set_failure_rate(1.0);
    let refunded = app
        .post(
            &format!("/api/payments/{payment}/refund"),
            Some(&buyer.token),
            json!({"reason": "cannot come"}),
        )
        .await;
    assert_eq!(refunded.status, 200, "{:#}", refunded.body);
    assert_eq!(refunded.body["status"], "refunded", "{:#}", refunded.body);
    assert_eq!(app.floor(event).await, (10, 0, 0));
    // The settlement cannot reach the processor yet: the money is still there.
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);

    app.gateway.set_failure_rate(0.0);
    gateway_settles_at(&app, 0).await;
    assert!(
        app.gateway
            .charge_of(PaymentId(payment))
            .await
            .unwrap()
            .unwrap()
            .refunded
    );
}
