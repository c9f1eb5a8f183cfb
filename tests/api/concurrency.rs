//! The acceptance race: many customers at once over HTTP for few seats. Exactly the capacity is
//! sold, everyone else is told `sold-out`, nothing fails with a 5xx, and the money balances.

use super::helpers::*;
use super::invariants::{assert_sale_balances, gateway_settles_at};
use std::sync::Arc;
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Sign-ups in flight at once. Each Argon2id hash takes 19 MiB; 200 at once on the blocking
/// pool thrash memory (measured: 23 s instead of 9 s for 200 sign-ups on 2 cores).
const SIGNUPS_IN_FLIGHT: usize = 8;

/// A gateway that takes 50 ms per call, so that racing requests are all inside the charge at
/// once and reach the writer after the hold has changed (the compensating refund path).
fn slow_gateway(config: &mut ticketing::config::Config) {
    config.payment_latency = std::time::Duration::from_millis(50);
}

/// Registers and logs in `n` customers concurrently, `SIGNUPS_IN_FLIGHT` at a time.
async fn customers(app: &Arc<TestApp>, n: usize) -> Vec<User> {
    let gate = Arc::new(Semaphore::new(SIGNUPS_IN_FLIGHT));
    let mut signups = JoinSet::new();
    for _ in 0..n {
        let (app, gate) = (Arc::clone(app), Arc::clone(&gate));
        signups.spawn(async move {
            let _turn = gate.acquire().await.expect("semaphore open");
            app.customer().await
        });
    }
    signups.join_all().await
}

/// Every customer asks for `quantity` seats at the same moment; the answers in any order.
async fn race(
    app: &Arc<TestApp>,
    buyers: &[User],
    event: Uuid,
    quantity: u32,
) -> Vec<(User, Answer)> {
    let start = Arc::new(Barrier::new(buyers.len()));
    let mut requests = JoinSet::new();
    for buyer in buyers.iter().cloned() {
        let (app, start) = (Arc::clone(app), Arc::clone(&start));
        requests.spawn(async move {
            start.wait().await;
            let answer = app.reserve(&buyer, event, quantity).await;
            (buyer, answer)
        });
    }
    requests.join_all().await
}

/// Splits race answers into winners (201) and asserts every loser got a 409 `sold-out`.
fn winners(answers: Vec<(User, Answer)>) -> Vec<(User, Uuid)> {
    let server_errors = answers
        .iter()
        .filter(|(_, a)| a.status.is_server_error())
        .count();
    assert_eq!(server_errors, 0, "no request may fail with a 5xx");
    let mut won = Vec::new();
    for (buyer, answer) in answers {
        if answer.status == 201 {
            won.push((buyer, answer.id("reservation_id")));
        } else {
            answer.assert_problem(409, "sold-out");
        }
    }
    won
}

/// 200 customers racing for 50 seats: 50 holds, 150 `sold-out`, no 5xx, 50 paid seats, money even.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_customers_racing_for_fifty_seats_buy_exactly_fifty() {
    let app = Arc::new(spawn_app().await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 50).await;
    let buyers = customers(&app, 200).await;
    assert_eq!(buyers.len(), 200);

    let answers = race(&app, &buyers, event, 1).await;
    assert_eq!(answers.len(), 200);
    let sold_out = answers
        .iter()
        .filter(|(_, a)| a.status == 409 && a.body["type"] == "urn:ticketing:problem:sold-out")
        .count();
    assert_eq!(sold_out, 150, "everyone else is told sold-out");
    let won = winners(answers);
    assert_eq!(won.len(), 50, "exactly the capacity is held");
    assert_eq!(app.floor(event).await, (0, 50, 0));

    let mut payments = JoinSet::new();
    for (buyer, reservation) in won {
        let app = Arc::clone(&app);
        payments.spawn(async move { app.pay(&buyer, reservation, "tok_visa").await });
    }
    let paid = payments.join_all().await;
    assert_eq!(paid.len(), 50);
    for answer in &paid {
        assert_eq!(answer.status, 201, "{:#}", answer.body);
        assert_eq!(answer.body["status"], "captured");
        assert_eq!(answer.body["amount_cents"], 2500);
    }

    assert_eq!(app.floor(event).await, (0, 0, 50));
    assert_eq!(assert_sale_balances(&app, event, 50).await, 50 * 2500);
    gateway_settles_at(&app, 50 * 2500).await;
    let sales = app
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer.token),
            |a| a.body["tickets_sold"] == 50,
        )
        .await;
    assert_eq!(sales.body["revenue_cents"], 50 * 2500);
}

/// Concurrent buyers of 3 seats never oversell 10: exactly 3 holds fit, the rest are `sold-out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buyers_of_three_seats_never_oversell_ten() {
    let app = Arc::new(spawn_app().await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyers = customers(&app, 20).await;

    let won = winners(race(&app, &buyers, event, 3).await);
    assert!(won.len() * 3 <= 10);
    assert_eq!(
        won.len(),
        3,
        "three holds of 3 fit in 10 seats, a fourth does not"
    );
    let (available, held, sold) = app.floor(event).await;
    assert!(sold + held <= 10);
    assert_eq!((available, held, sold), (1, 9, 0));

    let mut payments = JoinSet::new();
    for (buyer, reservation) in won {
        let app = Arc::clone(&app);
        payments.spawn(async move { app.pay(&buyer, reservation, "tok_visa").await });
    }
    assert!(payments.join_all().await.iter().all(|a| a.status == 201));
    assert_eq!(app.floor(event).await, (1, 0, 9));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 9 * 2500);
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 9 * 2500);

    // The one seat left is still sellable, and then the section is truly sold out.
    let last = app.reserve(&buyers[0], event, 1).await;
    assert_eq!(last.status, 201, "{:#}", last.body);
    app.reserve(&buyers[1], event, 1)
        .await
        .assert_problem(409, "sold-out");
    assert_eq!(app.floor(event).await, (0, 1, 9));
}

/// Several payments racing for one hold confirm it once; every other charge is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_racing_for_one_hold_confirm_it_once_and_keep_one_charge() {
    let app = Arc::new(spawn_app_with(slow_gateway).await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    let start = Arc::new(Barrier::new(5));
    let mut payments = JoinSet::new();
    for _ in 0..5 {
        let (app, buyer, start) = (Arc::clone(&app), buyer.clone(), Arc::clone(&start));
        payments.spawn(async move {
            start.wait().await;
            app.pay(&buyer, reservation, "tok_visa").await
        });
    }
    let answers = payments.join_all().await;
    let captured = answers.iter().filter(|a| a.status == 201).count();
    assert_eq!(captured, 1, "one payment confirms the hold");
    for answer in answers.iter().filter(|a| a.status != 201) {
        answer.assert_problem(409, "reservation-not-pending");
    }

    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 5000);
    gateway_settles_at(&app, 5000).await;
}

/// A cancel racing a payment ends with the seats back and no money kept, whichever wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_payment_keeps_no_money_whichever_wins() {
    let app = Arc::new(spawn_app_with(slow_gateway).await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");

    let start = Arc::new(Barrier::new(2));
    let pay = {
        let (app, buyer, start) = (Arc::clone(&app), buyer.clone(), Arc::clone(&start));
        tokio::spawn(async move {
            start.wait().await;
            app.pay(&buyer, reservation, "tok_visa").await
        })
    };
    let cancel = {
        let (app, buyer, start) = (Arc::clone(&app), buyer.clone(), Arc::clone(&start));
        tokio::spawn(async move {
            start.wait().await;
            app.post(
                &format!("/api/reservations/{reservation}/cancel"),
                Some(&buyer.token),
                serde_json::json!({}),
            )
            .await
        })
    };
    let (paid, cancelled) = (pay.await.unwrap(), cancel.await.unwrap());
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);
    match paid.status.as_u16() {
        201 => assert_eq!(cancelled.body["status"], "refunded"),
        _ => {
            paid.assert_problem(409, "reservation-not-pending");
            assert_eq!(cancelled.body["status"], "cancelled");
        }
    }

    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(assert_sale_balances(&app, event, 10).await, 0);
    gateway_settles_at(&app, 0).await;
}

/// Payments racing an event cancellation keep no money and leave no seat held or sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_racing_an_event_cancellation_keep_no_money() {
    let app = Arc::new(spawn_app_with(slow_gateway).await);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 20).await;
    let buyers = customers(&app, 10).await;
    let mut holds = Vec::new();
    for buyer in buyers {
        let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
        holds.push((buyer, reservation));
    }

    let start = Arc::new(Barrier::new(holds.len() + 1));
    let mut payments = JoinSet::new();
    for (buyer, reservation) in holds {
        let (app, start) = (Arc::clone(&app), Arc::clone(&start));
        payments.spawn(async move {
            start.wait().await;
            app.pay(&buyer, reservation, "tok_visa").await
        });
    }
    start.wait().await;
    let deleted = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/events/{event}"),
            Some(&organizer.token),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{:#}", deleted.body);
    for answer in payments.join_all().await {
        if answer.status != 201 {
            answer.assert_problem(409, "reservation-not-pending");
        }
    }

    assert_eq!(app.floor(event).await, (20, 0, 0));
    assert_eq!(assert_sale_balances(&app, event, 20).await, 0);
    gateway_settles_at(&app, 0).await;
}
