//! The waiting room (API.md, "Fair on-sales"): settings, joining, positions, admission at the
//! configured rate, passes, the shuffle window, and every refusal of the reservation path
//! (`queue-pass-required`, `queue-pass-invalid` for a forged, expired, another user's or
//! another event's pass), on either backend. Time is the test's `ManualClock`.

use super::helpers::*;
use chrono::Duration;
use reqwest::Method;
use serde_json::{json, Value};
use ticketing::clock::Clock;
use uuid::Uuid;

async fn put_queue(app: &TestApp, organizer: &User, event: Uuid, body: Value) -> Answer {
    app.call(
        Method::PUT,
        &format!("/api/events/{event}/queue"),
        Some(&organizer.token),
        Some(body),
    )
    .await
}

async fn join(app: &TestApp, user: &User, event: Uuid) -> Answer {
    app.post(
        &format!("/api/events/{event}/queue/join"),
        Some(&user.token),
        json!({}),
    )
    .await
}

async fn me(app: &TestApp, user: &User, event: Uuid) -> Answer {
    app.get(&format!("/api/events/{event}/queue/me"), Some(&user.token))
        .await
}

async fn reserve_with(app: &TestApp, user: &User, event: Uuid, pass: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = pass.map(|p| ("queue-pass", p)).into_iter().collect();
    app.call_with(
        Method::POST,
        "/api/reservations",
        Some(&user.token),
        Some(json!({"event_id": event, "section": "floor", "quantity": 1})),
        &headers,
    )
    .await
}

/// Joins and waits one second of the test clock: at a high rate the user is admitted; the pass.
async fn admitted_pass(app: &TestApp, user: &User, event: Uuid) -> String {
    let joined = join(app, user, event).await;
    assert!(
        joined.status == 201 || joined.status == 200,
        "{:#}",
        joined.body
    );
    app.clock.advance(Duration::seconds(1));
    let mine = me(app, user, event).await;
    assert_eq!(mine.status, 200, "{:#}", mine.body);
    assert_eq!(mine.body["status"], "admitted", "{:#}", mine.body);
    mine.body["pass"].as_str().expect("a pass").to_owned()
}

/// A keyed reserve refused for want of a pass is decided again when retried with the same key
/// and a pass: the refusal depends on a header the key's fingerprint (the body) leaves out, so
/// it is not kept as the key's answer (no 403 is).
#[tokio::test]
async fn a_keyed_reserve_refused_without_a_pass_succeeds_when_retried_with_one() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let on = json!({"enabled": true, "admit_per_minute": 1000000});
    assert_eq!(put_queue(&app, &organizer, event, on).await.status, 200);
    let buyer = app.customer().await;
    let keyed = |pass: Option<String>| {
        let mut headers = vec![("idempotency-key", "hold-once".to_owned())];
        headers.extend(pass.map(|p| ("queue-pass", p)));
        let (app, buyer) = (&app, &buyer);
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let hold = json!({"event_id": event, "section": "floor", "quantity": 1});
            app.call_with(
                Method::POST,
                "/api/reservations",
                Some(&buyer.token),
                Some(hold),
                &headers,
            )
            .await
        }
    };
    keyed(None).await.assert_problem(403, "queue-pass-required");
    let pass = admitted_pass(&app, &buyer, event).await;
    let held = keyed(Some(pass)).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    assert_eq!(held.header("idempotent-replayed"), None);
}

/// The organizer sets the queue (pass lifetime 600 s by default), anyone reads its figures, an
/// event without a queue reads as disabled, out-of-range settings are refused field by field,
/// and every change (refused ones too) is audited as `queue.update`.
#[tokio::test]
async fn organizers_set_a_queue_and_anyone_reads_it() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let none = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(none.status, 200);
    assert_eq!(none.body["enabled"], false);
    let set = put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": true, "admit_per_minute": 120}),
    )
    .await;
    assert_eq!(set.status, 200, "{:#}", set.body);
    assert_eq!(set.body["pass_ttl_seconds"], 600);
    assert_eq!(set.body["admit_per_minute"], 120);
    let read = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.body,
        json!({"enabled": true, "waiting": 0, "admitted": 0, "admit_per_minute": 120,
               "estimated_wait_seconds": 0})
    );
    let bad = put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": true, "admit_per_minute": 0, "pass_ttl_seconds": 30}),
    )
    .await;
    bad.assert_problem(422, "validation-failed");
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"admit_per_minute") && fields.contains(&"pass_ttl_seconds"));
    let missing = put_queue(
        &app,
        &organizer,
        Uuid::new_v4(),
        json!({"enabled": true, "admit_per_minute": 1}),
    )
    .await;
    missing.assert_problem(404, "not-found");
    // Nothing changed by the refusals.
    let again = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(again.body["admit_per_minute"], 120);
    // Every change that reaches the handler is audited, refusals too (the unknown event); the
    // audit is written in the background: polled.
    let admin = app.admin().await;
    let started = std::time::Instant::now();
    loop {
        let audit = app
            .get("/admin/audit?action=queue.update", Some(&admin.token))
            .await;
        let results: Vec<&str> = audit.body["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["result"].as_str()).collect())
            .unwrap_or_default();
        if results.len() >= 2 {
            assert!(
                results.contains(&"success") && results.contains(&"failure"),
                "{results:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{results:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One ticket per user: joining again gives the same ticket (200, not 201); positions count
/// those waiting ahead from 1 and the estimated wait is position / rate; an event without an
/// enabled queue cannot be joined (409), and someone not in line has no ticket (404).
#[tokio::test]
async fn joining_gives_one_ticket_and_an_honest_position() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let no_queue = join(&app, &app.customer().await, event).await;
    no_queue.assert_problem(409, "no-queue");
    put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": true, "admit_per_minute": 30}),
    )
    .await;
    let mut users = Vec::new();
    for expected in 1..=3u64 {
        let user = app.customer().await;
        let joined = join(&app, &user, event).await;
        assert_eq!(joined.status, 201, "{:#}", joined.body);
        assert_eq!(joined.body["status"], "waiting");
        assert_eq!(joined.body["position"], expected);
        assert_eq!(joined.body["estimated_wait_seconds"], expected * 2);
        users.push((user, joined.id("ticket_id")));
    }
    let (second, ticket) = &users[1];
    let again = join(&app, second, event).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(again.id("ticket_id"), *ticket);
    let mine = me(&app, second, event).await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.body["position"], 2);
    assert!(mine.body.get("pass").is_none(), "{:#}", mine.body);
    me(&app, &app.customer().await, event)
        .await
        .assert_problem(404, "not-found");
    let summary = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(summary.body["waiting"], 3);
    assert_eq!(summary.body["estimated_wait_seconds"], 6);
    // Disabled: no more joins.
    put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": false, "admit_per_minute": 30}),
    )
    .await;
    join(&app, &app.customer().await, event)
        .await
        .assert_problem(409, "no-queue");
}

/// Admission follows the rate: 60 a minute admits the first two of the line after two
/// seconds, in order; the admitted get a pass valid for `pass_ttl_seconds`, the others move up.
#[tokio::test]
async fn admission_follows_the_rate_in_order_and_hands_out_passes() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": true, "admit_per_minute": 60, "pass_ttl_seconds": 120}),
    )
    .await;
    let mut users = Vec::new();
    for _ in 0..3 {
        let user = app.customer().await;
        assert_eq!(join(&app, &user, event).await.status, 201);
        users.push(user);
    }
    let before = app.metric("ticketing_queue_admitted_total", &[]).await;
    let now = app.clock.now();
    app.clock.advance(Duration::milliseconds(2500));
    let first = me(&app, &users[0], event).await;
    assert_eq!(first.body["status"], "admitted", "{:#}", first.body);
    assert_eq!(first.body["position"], 0);
    assert!(first.body["pass"].as_str().unwrap().starts_with("v1."));
    let expires =
        chrono::DateTime::parse_from_rfc3339(first.body["pass_expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(expires.timestamp(), now.timestamp() + 2 + 120);
    assert_eq!(me(&app, &users[1], event).await.body["status"], "admitted");
    let third = me(&app, &users[2], event).await;
    assert_eq!(third.body["status"], "waiting");
    assert_eq!(third.body["position"], 1);
    let summary = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(
        (
            summary.body["waiting"].as_u64(),
            summary.body["admitted"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let after = app.metric("ticketing_queue_admitted_total", &[]).await;
    assert_eq!(after - before, 2.0);
    // After its lifetime the pass is gone and the ticket says so.
    app.clock.advance(Duration::seconds(121));
    let expired = me(&app, &users[0], event).await;
    assert_eq!(expired.body["status"], "expired", "{:#}", expired.body);
    assert!(expired.body.get("pass").is_none());
}

/// While the queue is enabled a reservation needs the caller's own, unexpired pass for this
/// event: none is `queue-pass-required`; a forged one, another user's, another event's and an
/// expired one are `queue-pass-invalid`; refusals hold no seat. Disabling the queue lifts it.
#[tokio::test]
async fn reservations_need_the_callers_own_valid_pass_while_the_queue_is_enabled() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let other_event = app.event_on_sale(&organizer, 10).await;
    for e in [event, other_event] {
        let set = put_queue(
            &app,
            &organizer,
            e,
            json!({"enabled": true, "admit_per_minute": 1000000, "pass_ttl_seconds": 60}),
        )
        .await;
        assert_eq!(set.status, 200, "{:#}", set.body);
    }
    let (alice, bob) = (app.customer().await, app.customer().await);
    let pass = admitted_pass(&app, &alice, event).await;
    let bobs = admitted_pass(&app, &bob, event).await;
    let elsewhere = admitted_pass(&app, &alice, other_event).await;

    reserve_with(&app, &alice, event, None)
        .await
        .assert_problem(403, "queue-pass-required");
    let mut forged = pass.clone();
    forged.replace_range(
        forged.len() - 2..,
        if forged.ends_with("AA") { "BB" } else { "AA" },
    );
    for (name, bad) in [
        ("forged", forged.as_str()),
        ("garbage", "hello"),
        ("bob's", &bobs),
        ("another event's", &elsewhere),
    ] {
        let refused = reserve_with(&app, &alice, event, Some(bad)).await;
        assert_eq!(refused.status, 403, "{name}: {:#}", refused.body);
        refused.assert_problem(403, "queue-pass-invalid");
    }
    assert_eq!(app.floor(event).await, (10, 0, 0), "a refusal held seats");
    let held = reserve_with(&app, &alice, event, Some(&pass)).await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    // The pass expires 60 s after admission.
    app.clock.advance(Duration::seconds(61));
    reserve_with(&app, &alice, event, Some(&pass))
        .await
        .assert_problem(403, "queue-pass-invalid");
    assert_eq!(app.floor(event).await, (9, 1, 0));
    // Opening the floodgates: no queue, no pass needed.
    put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": false, "admit_per_minute": 1}),
    )
    .await;
    assert_eq!(reserve_with(&app, &bob, event, None).await.status, 201);
}

/// Joins before `shuffle_until` are ordered among themselves at random and admission waits for
/// the window's end; later joins queue behind them in arrival order.
#[tokio::test]
async fn joins_in_the_shuffle_window_are_shuffled_and_later_ones_follow_in_order() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let opens = app.clock.now() + Duration::seconds(60);
    put_queue(
        &app,
        &organizer,
        event,
        json!({"enabled": true, "admit_per_minute": 60, "shuffle_until": opens}),
    )
    .await;
    let mut early = Vec::new();
    for _ in 0..12 {
        let user = app.customer().await;
        let joined = join(&app, &user, event).await;
        assert_eq!(joined.status, 201, "{:#}", joined.body);
        // Honest: the wait includes the rest of the window.
        assert!(joined.body["estimated_wait_seconds"].as_u64().unwrap() >= 60);
        early.push(user);
    }
    app.clock.advance(Duration::seconds(30));
    let summary = app.get(&format!("/api/events/{event}/queue"), None).await;
    assert_eq!(
        summary.body["admitted"], 0,
        "admitted inside the shuffle window"
    );
    app.clock.advance(Duration::seconds(30));
    let mut late = Vec::new();
    for expected in 13..=15u64 {
        let user = app.customer().await;
        let joined = join(&app, &user, event).await;
        assert_eq!(joined.body["position"], expected, "{:#}", joined.body);
        late.push(user);
    }
    let mut positions = Vec::new();
    for user in &early {
        positions.push(
            me(&app, user, event).await.body["position"]
                .as_u64()
                .unwrap(),
        );
    }
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=12).collect::<Vec<u64>>());
    assert_ne!(
        positions, sorted,
        "the window's joins kept their arrival order"
    );
}

/// Measurement behind BENCHMARKS.md, not a check: the reservation path with a pass (queue
/// enabled: settings copy + pass verification) against the same path without a queue, the
/// two interleaved one by one so that the machine's noise hits both alike.
/// Run: `TEST_BACKEND=memory|postgres cargo test --release --test api queue::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_the_reservation_path_with_and_without_a_pass() {
    const BUYERS: usize = 40;
    const ROUNDS: usize = 10;
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let queued = app.event_on_sale(&organizer, 1000).await;
    let open = app.event_on_sale(&organizer, 1000).await;
    let set = put_queue(
        &app,
        &organizer,
        queued,
        json!({"enabled": true, "admit_per_minute": 1000000}),
    )
    .await;
    assert_eq!(set.status, 200);
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        let buyer = app.customer().await;
        join(&app, &buyer, queued).await;
        buyers.push(buyer);
    }
    app.clock.advance(Duration::seconds(1));
    let mut passes = Vec::new();
    for buyer in &buyers {
        let mine = me(&app, buyer, queued).await;
        passes.push(mine.body["pass"].as_str().expect("admitted").to_owned());
    }
    let (mut with, mut without) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for round in 0..ROUNDS {
        for (i, (buyer, pass)) in buyers.iter().zip(&passes).enumerate() {
            // Which of the pair goes first alternates, so neither pays for going first.
            for with_pass in [true, false] {
                let with_pass = with_pass == ((round + i) % 2 == 0);
                let started = std::time::Instant::now();
                let (event, pass) = match with_pass {
                    true => (queued, Some(pass.as_str())),
                    false => (open, None),
                };
                assert_eq!(reserve_with(&app, buyer, event, pass).await.status, 201);
                match with_pass {
                    true => with += started.elapsed(),
                    false => without += started.elapsed(),
                }
            }
        }
    }
    let n = u32::try_from(BUYERS * ROUNDS).unwrap();
    println!(
        "{:?}: {n} reservations each: with a pass {:.2?} per request, without a queue {:.2?} \
         (ratio {:.3})",
        backend(),
        with / n,
        without / n,
        with.as_secs_f64() / without.as_secs_f64()
    );
}
