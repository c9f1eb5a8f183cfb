//! An `Idempotency-Key` used again for something else, on an instance that never saw it: a
//! new request. The ids a key derives name what the request is about (the event of a hold, the
//! reservation of a payment), so the key cannot name the first request's reservation or payment
//! again. And a key retried on another instance: answered from the log when the writer finds
//! what the key derives made already (a hold's and a payment's answers are recorded with their
//! events), or from the answer saved for it (a refusal).

use super::client::*;
use serde_json::json;
use sqlx::PgPool;
use ticketing::db::testing::fresh_database;
use uuid::Uuid;

/// A hold on another event and a payment of another reservation, with the keys of a first
/// purchase, on an instance that never saw them: both are made anew (201), the second
/// reservation is the one confirmed, and the first purchase is untouched. Before the ids named
/// the event, the hold's stream clashed in the log with the first event's, and the sale
/// writer's whole group commit failed (503 for every buyer in it); the payment was taken for
/// the first one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_used_again_for_something_else_make_it_anew() {
    let db = fresh_database().await;
    let first = Service::start(&db, &[]).await;
    let (_, organizer) = first.user("organizer").await;
    let (one, two) = (
        first.event_on_sale(&organizer, 10).await,
        first.event_on_sale(&organizer, 10).await,
    );
    let (_, buyer) = first.user("customer").await;
    let hold = |event| json!({"event_id": event, "section": "floor", "quantity": 1});
    let pay = |reservation| {
        json!({"reservation_id": reservation,
               "payment_method": {"type": "card", "token": "tok_visa"}})
    };
    let (status, body) = first
        .post_keyed("/api/reservations", &buyer, "hold-key", hold(one))
        .await;
    assert_eq!(status, 201, "{body}");
    let held_first = uuid(&body, "reservation_id");
    let (status, body) = first
        .post_keyed("/api/payments", &buyer, "pay-key", pay(held_first))
        .await;
    assert_eq!(status, 201, "{body}");
    let paid_first = uuid(&body, "payment_id");

    // Both answers are in the log, with the first hold and payment, and kept for as long as
    // they are; the second instance never saw the keys.
    let second = Service::start(&db, &[]).await;

    let (status, body) = second
        .post_keyed("/api/reservations", &buyer, "hold-key", hold(two))
        .await;
    assert_eq!(status, 201, "a hold on another event: {body}");
    let held_second = uuid(&body, "reservation_id");
    assert_ne!(held_second, held_first);
    assert_eq!(body["event_id"], json!(two));
    let (status, body) = second
        .post_keyed("/api/payments", &buyer, "pay-key", pay(held_second))
        .await;
    assert_eq!(status, 201, "a payment of another reservation: {body}");
    assert_ne!(uuid(&body, "payment_id"), paid_first);
    assert_eq!(body["reservation_id"], json!(held_second));
    for (held, event) in [(held_first, one), (held_second, two)] {
        let path = format!("/api/reservations/{held}");
        let (status, body) = second.get(&path, Some(&buyer)).await;
        assert_eq!(
            (status.as_u16(), &body["status"]),
            (200, &json!("confirmed"))
        );
        assert_eq!(second.floor(event).await, (9, 0, 1));
    }
}

/// A payment retried with its key on another instance while the read models do not show the
/// first attempt's capture yet (their payments table is locked against writes, not reads; the
/// first attempt's answer is not saved yet): the retry's writer finds the payment recorded, and
/// the retry answers it (201, the same payment) once the read models caught up with the log,
/// not a 409 that would be kept as the key's answer for 24 hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_retried_elsewhere_before_the_read_models_show_it_answers_it() {
    let db = fresh_database().await;
    let (first, second) = (
        Service::start(&db, &[]).await,
        Service::start(&db, &[]).await,
    );
    let (_, organizer) = first.user("organizer").await;
    let event = first.event_on_sale(&organizer, 10).await;
    let (_, buyer) = first.user("customer").await;
    let (status, body) = first.reserve(&buyer, event, 1).await;
    assert_eq!(status, 201, "{body}");
    let held = uuid(&body, "reservation_id");
    second
        .get_when(&format!("/api/reservations/{held}"), Some(&buyer), |b| {
            b["status"] == "pending"
        })
        .await;

    let mut locker = lock_against_writes(&db, "payment_views").await;
    let pay = json!({"reservation_id": held,
                     "payment_method": {"type": "card", "token": "tok_visa"}});
    // The first attempt commits, then waits for the read models; its client gives up.
    let attempt = first.post_keyed("/api/payments", &buyer, "pay-key", pay.clone());
    // The read models are let go once the retry's writer refused it as recorded already (then
    // it waits for them, for up to 5 s), or once it answered.
    let refused = || async {
        let labels = [("command", "record_capture"), ("result", "rejected")];
        second.metric("ticketing_commands_total", &labels).await >= 1.0
    };
    let retry = async {
        until_captured(&db).await;
        once_reached(
            second.post_keyed("/api/payments", &buyer, "pay-key", pay.clone()),
            refused,
            async {
                sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
            },
        )
        .await
    };
    let (_, (status, body)) = tokio::join!(attempt, retry);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "captured");
    assert_eq!(body["reservation_id"], json!(held));
    assert_eq!(second.floor(event).await, (9, 0, 1));
}

/// Waits until the log holds one payment capture.
async fn until_captured(db: &str) {
    let pool = PgPool::connect(db).await.unwrap();
    let sql = "SELECT count(*) FROM events WHERE event_type = 'payment.captured'";
    until_reads(&pool, sql, 1_i64).await;
}

/// Waits, bounded, until the answer stored for the key `key` has `status` (answers are saved
/// in batches after they are given). Keys here are the tests' own literals.
async fn stored_status(pool: &PgPool, key: &str, status: i16) {
    let sql = format!("SELECT (SELECT status FROM idempotency_keys WHERE key = '{key}')");
    until_reads(pool, &sql, Some(status)).await;
}

/// Polls `sql` (one row of one column) until it reads `expected`, for at most 10 seconds.
async fn until_reads<T>(pool: &PgPool, sql: &str, expected: T)
where
    T: PartialEq + std::fmt::Debug + Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (read,): (T,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
        if read == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} reads {read:?}, not {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A hold's key costs no look-up before the hold runs, and its answer is recorded in the log
/// with the hold (no row of `idempotency_keys`): another instance whose sale writer finds the
/// reservation the key derives placed already rebuilds the answer from the event that placed
/// it, whose metadata holds the first request's body fingerprint. So a retry there with
/// another body is a 422, and with the same body the first reservation. A hold refused as sold
/// out and retried elsewhere once the seat came back is decided again and gets it; a third
/// instance then replays the hold from the log, not the refusal still stored for the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_retried_elsewhere_reads_its_answer_when_its_reservation_exists() {
    let db = fresh_database().await;
    let first = Service::start(&db, &[]).await;
    let (_, organizer) = first.user("organizer").await;
    let event = first.event_on_sale(&organizer, 1).await;
    let (_, holder) = first.user("customer").await;
    let (_, latecomer) = first.user("customer").await;
    let hold = |quantity: u32| json!({"event_id": event, "section": "floor", "quantity": quantity});
    let (status, body) = first
        .post_keyed("/api/reservations", &holder, "held", hold(1))
        .await;
    assert_eq!(status, 201, "{body}");
    let held = uuid(&body, "reservation_id");
    let (status, body) = first
        .post_keyed("/api/reservations", &latecomer, "late", hold(1))
        .await;
    assert_eq!(status, 409, "sold out: {body}");
    let pool = PgPool::connect(&db).await.unwrap();
    // Saves of one instance run in order: once the later refusal's is in, a save of the hold's
    // answer would be too.
    stored_status(&pool, "late", 409).await;
    let held_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'held'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(held_rows, 0, "the hold's answer is in the log");
    let fingerprint: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'request_fingerprint' FROM events WHERE stream_id = $1",
    )
    .bind(format!("reservation-{held}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(fingerprint.map(|f| f.len()), Some(64), "a SHA-256, hex");

    let second = Service::start(&db, &[]).await;
    let (status, body) = second
        .post_keyed("/api/reservations", &holder, "held", hold(2))
        .await;
    assert_eq!(
        status, 422,
        "the key's stored answer had another body: {body}"
    );
    let (status, body) = second
        .post_keyed("/api/reservations", &holder, "held", hold(1))
        .await;
    assert_eq!(
        (status.as_u16(), uuid(&body, "reservation_id")),
        (201, held)
    );

    let cancel = format!("/api/reservations/{held}/cancel");
    let (status, body) = second.post(&cancel, Some(&holder), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = second
        .post_keyed("/api/reservations", &latecomer, "late", hold(1))
        .await;
    assert_eq!(status, 201, "decided again once the seat came back: {body}");
    let late = uuid(&body, "reservation_id");

    let third = Service::start(&db, &[]).await;
    let (status, body) = third
        .post_keyed("/api/reservations", &latecomer, "late", hold(1))
        .await;
    assert_eq!(
        (status.as_u16(), uuid(&body, "reservation_id")),
        (201, late)
    );
    assert_eq!(second.floor(event).await, (0, 1, 0), "one seat, held once");
}

/// A payment's answer is recorded in the log with its capture or decline, as a hold's is (no
/// row of `idempotency_keys`): a retry on another instance gets it again from the payment's
/// first event, and another body with the key is a 422. A capture refunded in its own commit
/// (its hold expired while the processor charged) answered 409: the refund after it tells the
/// cause, and a retry elsewhere gets that 409 again, not a 201 nor another detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_retried_elsewhere_gets_the_answer_its_log_records() {
    let db = fresh_database().await;
    let first = Service::start(&db, &[]).await;
    let (_, organizer) = first.user("organizer").await;
    let event = first.event_on_sale(&organizer, 10).await;
    let (_, buyer) = first.user("customer").await;
    let hold = json!({"event_id": event, "section": "floor", "quantity": 1});
    let pay = |reservation: Uuid, card: &str| {
        json!({"reservation_id": reservation,
               "payment_method": {"type": "card", "token": card}})
    };
    let mut first_answers = Vec::new();
    for (n, card) in [(1, "tok_visa"), (2, "tok_chargeDeclined")] {
        let (status, body) = first
            .post_keyed("/api/reservations", &buyer, &format!("h{n}"), hold.clone())
            .await;
        assert_eq!(status, 201, "{body}");
        let held = uuid(&body, "reservation_id");
        let (status, body) = first
            .post_keyed("/api/payments", &buyer, &format!("p{n}"), pay(held, card))
            .await;
        first_answers.push((held, card, status, body));
    }
    assert_eq!(first_answers[0].2, 201, "{}", first_answers[0].3);
    assert_eq!(first_answers[1].2, 402, "{}", first_answers[1].3);
    // Its hold lasts 1 s and the processor takes 1.5 s: the capture comes too late.
    let late = [
        ("RESERVATION_TTL_SECONDS", "1"),
        ("PAYMENT_LATENCY_MS", "1500"),
    ];
    let slow = Service::start(&db, &late).await;
    let (status, body) = slow
        .post_keyed("/api/reservations", &buyer, "h3", hold.clone())
        .await;
    assert_eq!(status, 201, "{body}");
    let held = uuid(&body, "reservation_id");
    let (status, body) = slow
        .post_keyed("/api/payments", &buyer, "p3", pay(held, "tok_visa"))
        .await;
    assert_eq!(status, 409, "refunded in its commit: {body}");
    first_answers.push((held, "tok_visa", status, body));

    // Saves of one instance run in order: once a later refusal's is in, a save of the
    // payments' answers would be too.
    let pool = PgPool::connect(&db).await.unwrap();
    for (instance, marker) in [(&first, "marker"), (&slow, "slow-marker")] {
        let (status, _) = instance
            .post_keyed(
                "/api/payments",
                &buyer,
                marker,
                pay(Uuid::new_v4(), "tok_visa"),
            )
            .await;
        assert_eq!(status, 404);
        stored_status(&pool, marker, 404).await;
    }
    let saved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE key IN ('h1', 'p1', 'h2', 'p2', 'h3', 'p3')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(saved, 0, "those answers are in the log");

    // Each retry on an instance that never saw the key: another body on one, then the same
    // body on another (the first would answer it from memory; an answer saved by an instance
    // that did not find it in the log would make the other body a 422 too, so those come
    // first).
    let (second, third) = (
        Service::start(&db, &[]).await,
        Service::start(&db, &[]).await,
    );
    for (n, (held, _, _, _)) in first_answers.iter().enumerate() {
        let key = format!("p{}", n + 1);
        let (other, refused) = second
            .post_keyed("/api/payments", &buyer, &key, pay(*held, "tok_amex"))
            .await;
        assert_eq!(other, 422, "{key}, another body: {refused}");
    }
    for (n, (held, card, status, body)) in first_answers.iter().enumerate() {
        let key = format!("p{}", n + 1);
        let (again, replayed) = third
            .post_keyed("/api/payments", &buyer, &key, pay(*held, card))
            .await;
        assert_eq!(again, *status, "{key}: {replayed}");
        for field in [
            "payment_id",
            "status",
            "amount_cents",
            "created_at",
            "type",
            "detail",
        ] {
            assert_eq!(replayed[field], body[field], "{key}: {field}");
        }
    }
}
