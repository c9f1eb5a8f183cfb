//! Every capture is recorded or refunded (invariant 2) also when the process dies between the
//! gateway's capture and the append: instances started with `FAULT_CRASH_AFTER_CAPTURE=1`
//! abort right there, the simulated processor's ledger (its own table) outlives them, and
//! another instance's reconciliation records the capture whose hold is still valid and refunds
//! the one whose hold ended, within a bound; and a capture whose append the event store
//! refused is recorded once the store accepts appends again.

use super::client::*;
use sqlx::PgPool;
use std::time::Duration;
use ticketing::db::testing::fresh_database;
use uuid::Uuid;

const ADMIN: [(&str, &str); 2] = [
    ("ADMIN_EMAIL", "admin@durable.example"),
    ("ADMIN_PASSWORD", "admin-password-1"),
];

/// Reserves one seat on `service` and pays for it there; the service aborts after the capture,
/// so the payment gets no answer. Returns the reservation.
async fn pay_and_crash(service: &Service, token: &str, event: Uuid) -> Uuid {
    let (status, body) = service.reserve(token, event, 1).await;
    assert_eq!(status, 201, "{body}");
    let reservation = uuid(&body, "reservation_id");
    let (status, _) = service.pay(token, reservation).await;
    assert_eq!(
        status, 599,
        "the payment got an answer: the hook did not fire"
    );
    let exit = service.exit_status(Duration::from_secs(10)).await;
    assert!(!exit.success(), "the process exited cleanly: {exit:?}");
    reservation
}

/// The processor's capture for `reservation`: (payment id, refunded).
async fn capture_of(pool: &PgPool, reservation: Uuid) -> (Uuid, bool) {
    sqlx::query_as(
        "SELECT payment_id, refunded FROM simulated_processor_charges
          WHERE reservation_id = $1 AND outcome = 'captured'",
    )
    .bind(reservation)
    .fetch_one(pool)
    .await
    .expect("the processor kept the capture")
}

/// A process killed between capture and append: the capture is recorded (hold valid: the
/// reservation confirms) or refunded (hold ended) by reconciliation on another instance, and
/// the SQL checks find every capture recorded or refunded and the sales balanced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_of_a_process_killed_before_the_append_are_recorded_or_refunded() {
    let db = fresh_database().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let crashing = [("FAULT_CRASH_AFTER_CAPTURE", "1"), ADMIN[0], ADMIN[1]];

    // A long hold: still valid when reconciliation finds its capture.
    let first = Service::start(&db, &crashing).await;
    let (_, organizer) = first.user("organizer").await;
    let event = first.event_on_sale(&organizer, 10).await;
    let (_, buyer) = first.user("customer").await;
    let valid = pay_and_crash(&first, &buyer, event).await;

    // A 3 s hold: over before the capture is older than the reconciler's grace (4 s).
    let mut short = crashing.to_vec();
    short.push(("RESERVATION_TTL_SECONDS", "3"));
    let second = Service::start(&db, &short).await;
    let lapsed = pay_and_crash(&second, &buyer, event).await;
    let (valid_payment, refunded) = capture_of(&pool, valid).await;
    assert!(!refunded);
    let (lapsed_payment, _) = capture_of(&pool, lapsed).await;
    let (status, _) = second.get("/health", None).await;
    assert_eq!(status, 599, "the crashed instance still answers");

    let reconciling = [
        ("RECONCILE_INTERVAL_SECONDS", "1"),
        ("REQUEST_TIMEOUT_SECONDS", "2"),
        ADMIN[0],
        ADMIN[1],
    ];
    let service = Service::start(&db, &reconciling).await;
    eventually(
        "reconciliation confirms the valid hold and refunds the lapsed one",
        Duration::from_secs(30),
        || async {
            let (_, r) = service
                .get(&format!("/api/reservations/{valid}"), Some(&buyer))
                .await;
            r["status"] == "confirmed" && capture_of(&pool, lapsed).await.1
        },
    )
    .await;
    let (status, payment) = service
        .get(&format!("/api/payments/{valid_payment}"), Some(&buyer))
        .await;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(payment["status"], "captured");
    let (_, payment) = service
        .get(&format!("/api/payments/{lapsed_payment}"), Some(&buyer))
        .await;
    assert_eq!(payment["status"], "refunded", "{payment}");
    let (_, lapsed_view) = service
        .get(&format!("/api/reservations/{lapsed}"), Some(&buyer))
        .await;
    assert_eq!(lapsed_view["status"], "expired", "{lapsed_view}");
    assert_eq!(service.floor(event).await, (9, 0, 1));
    for (outcome, count) in [("recorded", 1.0), ("refunded", 1.0), ("failed", 0.0)] {
        assert_eq!(
            service
                .metric(
                    "ticketing_reconciled_captures_total",
                    &[("outcome", outcome)]
                )
                .await,
            count,
            "{outcome}"
        );
    }

    // Every capture at the processor is recorded (and kept) or refunded (at both ends).
    let unreconciled = unreconciled_captures(&pool).await;
    assert_eq!(
        unreconciled,
        Vec::<String>::new(),
        "captures not reconciled"
    );
    assert_eq!(assert_sales_balance_in_sql(&pool).await, 2500);
    let kept: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount_cents), 0)::BIGINT FROM simulated_processor_charges
          WHERE outcome = 'captured' AND NOT refunded",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 2500, "the processor keeps the price of the seat sold");
}

/// An event store that fails right after the capture (a trigger refuses `payment.captured`
/// rows): the payment answers 503 with the card charged and nothing recorded; once the store
/// accepts appends again, reconciliation records the capture and the reservation confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_whose_append_failed_is_recorded_once_the_store_is_back() {
    let db = fresh_database().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let service = Service::start(
        &db,
        &[
            ("RECONCILE_INTERVAL_SECONDS", "1"),
            ("REQUEST_TIMEOUT_SECONDS", "2"),
            ADMIN[0],
            ADMIN[1],
        ],
    )
    .await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    let (_, buyer) = service.user("customer").await;
    let (status, body) = service.reserve(&buyer, event, 1).await;
    assert_eq!(status, 201, "{body}");
    let reservation = uuid(&body, "reservation_id");

    sqlx::raw_sql(
        "CREATE FUNCTION refuse_captures() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.event_type = 'payment.captured' THEN
                 RAISE EXCEPTION 'simulated event store failure';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_captures BEFORE INSERT ON events
             FOR EACH ROW EXECUTE FUNCTION refuse_captures();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (status, body) = service.pay(&buyer, reservation).await;
    assert_eq!(status, 503, "{body}");
    let (payment, refunded) = capture_of(&pool, reservation).await;
    assert!(!refunded);
    let (status, _) = service
        .get(&format!("/api/payments/{payment}"), Some(&buyer))
        .await;
    assert_eq!(status, 404, "recorded although the store refused");

    sqlx::raw_sql("DROP TRIGGER refuse_captures ON events; DROP FUNCTION refuse_captures();")
        .execute(&pool)
        .await
        .unwrap();
    eventually(
        "reconciliation records the capture",
        Duration::from_secs(30),
        || async {
            let (_, r) = service
                .get(&format!("/api/reservations/{reservation}"), Some(&buyer))
                .await;
            r["status"] == "confirmed" && r["payment_id"] == payment.to_string()
        },
    )
    .await;
    assert_eq!(
        service
            .metric(
                "ticketing_reconciled_captures_total",
                &[("outcome", "recorded")]
            )
            .await,
        1.0
    );
    assert_eq!(assert_sales_balance_in_sql(&pool).await, 2500);
}
