//! `Idempotency-Key`: a retry gets the first answer and never holds seats or charges twice,
//! even when the retries race; a key belongs to one user and one request body.

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::task::JoinSet;
use uuid::Uuid;

async fn reserve_with_key(app: &TestApp, user: &User, key: &str, body: Value) -> Answer {
    app.call_with(
        Method::POST,
        "/api/reservations",
        Some(&user.token),
        Some(body),
        &[("Idempotency-Key", key)],
    )
    .await
}

async fn pay_with_key(app: &TestApp, user: &User, key: &str, reservation: Uuid) -> Answer {
    app.call_with(
        Method::POST,
        "/api/payments",
        Some(&user.token),
        Some(json!({
            "reservation_id": reservation,
            "payment_method": {"type": "card", "token": "tok_visa"}
        })),
        &[("Idempotency-Key", key)],
    )
    .await
}

fn seats(event: Uuid, quantity: u32) -> Value {
    json!({"event_id": event, "section": "floor", "quantity": quantity})
}

/// The same key and body twice give one reservation, the second answer a marked replay.
#[tokio::test]
async fn the_same_key_and_body_replay_one_reservation_and_hold_seats_once() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;

    let first = reserve_with_key(&app, &buyer, "order-1", seats(event, 3)).await;
    let second = reserve_with_key(&app, &buyer, "order-1", seats(event, 3)).await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(second.status, 201, "{:#}", second.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        second.id("reservation_id"),
        first.id("reservation_id"),
        "same reservation"
    );
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("location"), first.header("location"));

    assert_eq!(app.floor(event).await, (7, 3, 0));
    let mine = app.get("/api/reservations", Some(&buyer.token)).await;
    assert_eq!(mine.body["total_count"], 1, "{:#}", mine.body);
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
}

/// Reusing a key with a different body is a 422 that changes nothing.
#[tokio::test]
async fn the_same_key_with_a_different_body_is_rejected_and_changes_nothing() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;

    let first = reserve_with_key(&app, &buyer, "order-1", seats(event, 2)).await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    let changed = reserve_with_key(&app, &buyer, "order-1", seats(event, 5)).await;
    changed.assert_problem(422, "validation-failed");
    assert_eq!(changed.body["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(changed.header("idempotent-replayed"), None);

    assert_eq!(app.floor(event).await, (8, 2, 0));
    let mine = app.get("/api/reservations", Some(&buyer.token)).await;
    assert_eq!(mine.body["total_count"], 1, "{:#}", mine.body);
}

/// Ten concurrent requests with one key make one reservation and hold its seats once: one runs,
/// the others get its stored answer, or 409 `idempotency-key-in-use` while it still runs (the
/// IETF draft's answer to a concurrent retry); a retry afterwards replays the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_requests_with_one_key_make_one_reservation() {
    let app = Arc::new(spawn_app().await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 20).await;
    let buyer = app.customer().await;

    let mut requests = JoinSet::new();
    for _ in 0..10 {
        let (app, buyer) = (Arc::clone(&app), buyer.clone());
        requests.spawn(async move {
            reserve_with_key(&app, &buyer, "burst-key", seats(event, 4)).await
        });
    }
    let answers: Vec<Answer> = requests.join_all().await;

    let (done, in_use) = one_ran_others_replayed_or_in_use(&answers);
    let retry = reserve_with_key(&app, &buyer, "burst-key", seats(event, 4)).await;
    assert_eq!(retry.status, 201, "{:#}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, done.body);
    assert!(in_use <= 9);

    assert_eq!(app.floor(event).await, (16, 4, 0));
    let mine = app.get("/api/reservations", Some(&buyer.token)).await;
    assert_eq!(mine.body["total_count"], 1, "{:#}", mine.body);
    assert_eq!(
        mine.body["items"][0]["reservation_id"],
        done.body["reservation_id"]
    );
    assert_eq!(assert_sale_balances(&app, event, 20).await, 0);
}

/// A key is scoped to its user: two users sending the same key get two reservations.
#[tokio::test]
async fn the_same_key_from_two_users_makes_two_reservations() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let alice = app.customer().await;
    let bob = app.customer().await;

    let a = reserve_with_key(&app, &alice, "shared-key", seats(event, 2)).await;
    let b = reserve_with_key(&app, &bob, "shared-key", seats(event, 2)).await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    assert_eq!(b.status, 201, "{:#}", b.body);
    assert_eq!(b.header("idempotent-replayed"), None);
    assert_ne!(a.id("reservation_id"), b.id("reservation_id"));
    assert_eq!(a.body["user_id"], alice.id.to_string());
    assert_eq!(b.body["user_id"], bob.id.to_string());
    assert_eq!(app.floor(event).await, (6, 4, 0));
}

/// A payment retried with its key answers the same payment and charges the card once.
#[tokio::test]
async fn a_payment_retried_with_the_same_key_charges_once() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    let first = pay_with_key(&app, &buyer, "pay-1", reservation).await;
    let retry = pay_with_key(&app, &buyer, "pay-1", reservation).await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    assert_eq!(retry.status, 201, "{:#}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.id("payment_id"), first.id("payment_id"));
    assert_eq!(retry.body, first.body);

    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);
    let payments = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(payments.body["total_count"], 1, "{:#}", payments.body);
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
}

/// Payment retries that race each other with one key still charge once and all see one payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payment_retries_with_one_key_charge_once() {
    let app = Arc::new(spawn_app().await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 4).await.id("reservation_id");

    let mut retries = JoinSet::new();
    for _ in 0..8 {
        let (app, buyer) = (Arc::clone(&app), buyer.clone());
        retries.spawn(async move { pay_with_key(&app, &buyer, "pay-burst", reservation).await });
    }
    let answers = retries.join_all().await;
    let (done, _) = one_ran_others_replayed_or_in_use(&answers);
    let retry = pay_with_key(&app, &buyer, "pay-burst", reservation).await;
    assert_eq!(retry.status, 201, "{:#}", retry.body);
    assert_eq!(retry.id("payment_id"), done.id("payment_id"));

    gateway_settles_at(&app, 10_000).await;
    let payments = app
        .get(
            &format!("/api/payments/user/{}", buyer.id),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(payments.body["total_count"], 1, "{:#}", payments.body);
    assert_eq!(app.floor(event).await, (6, 0, 4));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 10_000);
}

/// Checks answers to concurrent requests with one key: exactly one ran (a 201 that is not a
/// replay), every other is a replay of the same answer or a 409 `idempotency-key-in-use`.
/// Returns the one that ran and how many were refused as in use.
fn one_ran_others_replayed_or_in_use(answers: &[Answer]) -> (&Answer, usize) {
    let ran: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 201 && a.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(ran.len(), 1, "exactly one request does the work");
    let mut in_use = 0;
    for a in answers {
        match a.status.as_u16() {
            201 => assert_eq!(a.body, ran[0].body),
            409 => {
                assert_eq!(
                    a.body["type"], "urn:ticketing:problem:idempotency-key-in-use",
                    "{:#}",
                    a.body
                );
                in_use += 1;
            }
            other => panic!("unexpected {other}: {:#}", a.body),
        }
    }
    (ran[0], in_use)
}
