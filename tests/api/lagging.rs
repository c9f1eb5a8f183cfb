//! Read models that lag behind the event log (a projector starved under overload): a client
//! that was just given its reservation (201) still sees it and can pay for it, and never sees
//! a hold this instance's timer ended as still pending. Blocking the
//! projector takes a database (a lock on its table), so this runs on `TEST_BACKEND=postgres`.

use crate::helpers::*;
use reqwest::StatusCode;
use sqlx::Connection;
use std::sync::{Arc, Mutex};

/// An app with an event on sale (10 seats) and a buyer, whose projector cannot apply: the
/// returned connection holds the reservations' view table locked until it commits.
async fn projector_blocked() -> (TestApp, uuid::Uuid, User, sqlx::PgConnection) {
    let url = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&url);
    let app = spawn_app_with(move |c| *seen.lock().unwrap() = c.database_url.clone()).await;
    let url = url.lock().unwrap().clone().expect("a database");
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;

    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE reservation_views IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    (app, event, buyer, locker)
}

/// While the reservations' view table is locked (the projector cannot apply, and a read of it
/// would wait), a hold placed here is shown to its owner and paid for from what the sale's
/// writer committed: 200 and 201, not a 404 for a reservation the client was just given nor a
/// 503. Once the lock goes, the read models catch up and show it confirmed.
#[tokio::test]
async fn a_hold_the_read_models_do_not_show_yet_can_be_read_and_paid() {
    if backend() != Backend::Postgres {
        return;
    }
    let (app, event, buyer, mut locker) = projector_blocked().await;

    let held = app.reserve(&buyer, event, 2).await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let reservation = held.id("reservation_id");
    let shown = app
        .get(
            &format!("/api/reservations/{reservation}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(
        shown.status,
        StatusCode::OK,
        "read-your-writes: {:?}",
        shown.body
    );
    assert_eq!(shown.body["status"], "pending");
    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.body);

    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let path = format!("/api/reservations/{reservation}");
    app.get_when(&path, Some(&buyer.token), |a| {
        a.body["status"] == "confirmed"
    })
    .await;
}

/// While the projector cannot apply (the reservations' view table locked), a hold placed here
/// is answered from what its writer committed; once its timer expired it here, a read of it
/// waits for the read models to show the expiry and answers `expired`, never the `pending` the
/// writer placed (a timer's commit is awaited by no request, so it must still raise what reads
/// wait for and forget the remembered hold).
#[tokio::test]
async fn a_hold_expired_here_is_never_read_back_as_pending() {
    if backend() != Backend::Postgres {
        return;
    }
    let (app, event, buyer, mut locker) = projector_blocked().await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    assert_eq!(app.reservation_status(&buyer, reservation).await, "pending");

    app.clock
        .advance(chrono::Duration::seconds(TTL_SECONDS + 1));
    eventually(
        "the hold's timer expires it",
        std::time::Duration::from_secs(10),
        || async {
            let done = [("command", "expire_reservation"), ("result", "ok")];
            app.metric("ticketing_commands_total", &done).await == 1.0
        },
    )
    .await;
    let read = app.reservation_status(&buyer, reservation);
    tokio::pin!(read);
    // Answered from memory, a read would be back at once; it waits for the projector instead.
    tokio::select! {
        status = &mut read => panic!("answered {status} while the expiry is not shown"),
        () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
    }
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    assert_eq!(read.await, "expired");
}

/// Every retry budget's refusal counter is exported at 0 before anything was refused, so
/// dashboards and alerts see the series from the first scrape.
#[tokio::test]
async fn retry_budget_counters_start_at_zero() {
    let app = spawn_app().await;
    let text = app.metrics_text().await;
    for dependency in ["event_store", "read_models"] {
        let series =
            format!("ticketing_retry_budget_exhausted_total{{dependency=\"{dependency}\"}} 0");
        assert!(text.lines().any(|l| l == series), "{series} missing");
    }
}
