//! The waiting room across processes: two instances on one database share one queue at 60
//! admissions a minute. However often both ask, the admitted total stays within
//! `rate x elapsed + one burst`; every admission is counted once (the instances' counters add
//! up to the admitted tickets in SQL); both instances give every waiting user the same
//! position; and an instance killed -9 and started again keeps everyone's place and admits
//! nobody a second time.

use super::client::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use ticketing::db::testing::fresh_database;
use uuid::Uuid;

const SECRET: (&str, &str) = (
    "QUEUE_PASS_SECRET",
    "durable-test-queue-pass-secret-0123456789",
);
const POOLS: (&str, &str) = ("DB_MAX_CONNECTIONS", "4");
const RATE: u64 = 60;
/// `queue::admission::burst(60)`: five seconds' worth.
const BURST: u64 = 5;
const USERS: usize = 24;

async fn set_queue(service: &Service, organizer: &str, event: Uuid, enabled: bool) {
    let (status, body) = service
        .call(
            Method::PUT,
            &format!("/api/events/{event}/queue"),
            Some(organizer),
            Some(json!({"enabled": enabled, "admit_per_minute": RATE})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn mine(service: &Service, token: &str, event: Uuid) -> Value {
    let (status, body) = service
        .get(&format!("/api/events/{event}/queue/me"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// (status, position) of every user, as `service` answers.
async fn positions(service: &Service, users: &[String], event: Uuid) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for token in users {
        let me = mine(service, token, event).await;
        found.push((
            me["status"].as_str().unwrap().to_owned(),
            me["position"].as_u64().unwrap(),
        ));
    }
    found
}

async fn admitted_in_sql(pool: &sqlx::PgPool, event: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM queue_tickets WHERE event_id = $1 AND admitted_at IS NOT NULL), \
                admitted FROM waiting_rooms WHERE event_id = $1",
    )
    .bind(event)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Two instances, one queue: the rate holds over both, nobody is admitted twice, positions
/// agree, and a restarted instance keeps everyone's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_queue_at_its_rate() {
    let db = fresh_database().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let a = Service::start(&db, &[POOLS, SECRET]).await;
    let mut b = Service::start(&db, &[POOLS, SECRET]).await;
    let (_, organizer) = a.user("organizer").await;
    let event = a.event_on_sale(&organizer, 100).await;
    let mut users = Vec::new();
    for i in 0..USERS {
        let here = if i % 2 == 0 { &a } else { &b };
        users.push(here.user("customer").await.1);
    }
    let opened = Instant::now();
    set_queue(&a, &organizer, event, true).await;
    // One after the other, alternating instances: arrival order is the users' order.
    for (i, token) in users.iter().enumerate() {
        let here = if i % 2 == 0 { &a } else { &b };
        let (status, body) = here
            .post(
                &format!("/api/events/{event}/queue/join"),
                Some(token),
                json!({}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // Both instances ask as often as they can for a few seconds; the bound holds every time.
    let mut seen = 0;
    while seen < 10 {
        for (i, here) in [&a, &b].into_iter().enumerate() {
            let token = &users[(seen as usize + i) % USERS];
            mine(here, token, event).await;
            let (_, summary) = here.get(&format!("/api/events/{event}/queue"), None).await;
            let admitted = summary["admitted"].as_u64().unwrap();
            let bound = opened.elapsed().as_secs() * RATE / 60 + BURST;
            assert!(
                admitted <= bound,
                "{admitted} admitted after {:?}",
                opened.elapsed()
            );
            seen = seen.max(admitted);
        }
        assert!(
            opened.elapsed() < Duration::from_secs(60),
            "admission stalled at {seen}"
        );
    }

    // Stop admission, then compare what each instance says.
    set_queue(&a, &organizer, event, false).await;
    let (marked, counted) = admitted_in_sql(&pool, event).await;
    assert_eq!(marked, counted);
    let admitted = usize::try_from(marked).unwrap();
    // Each instance counts its admissions right after their commit: wait out that moment.
    eventually(
        "the instances' admission counters add up to the admitted tickets",
        Duration::from_secs(10),
        || async {
            let by_instances = a.metric("ticketing_queue_admitted_total", &[]).await
                + b.metric("ticketing_queue_admitted_total", &[]).await;
            assert!(by_instances <= marked as f64, "an admission counted twice");
            by_instances == marked as f64
        },
    )
    .await;
    let on_a = positions(&a, &users, event).await;
    assert_eq!(
        on_a,
        positions(&b, &users, event).await,
        "the instances disagree"
    );
    for (i, (status, position)) in on_a.iter().enumerate() {
        if i < admitted {
            assert_eq!((status.as_str(), *position), ("admitted", 0), "user {i}");
        } else {
            assert_eq!(
                (status.as_str(), *position),
                ("waiting", (i - admitted + 1) as u64),
                "user {i}"
            );
        }
    }

    // Kill one instance and start it again: every place is kept, nobody is admitted again.
    b.kill9().await;
    b = Service::start(&db, &[POOLS, SECRET]).await;
    assert_eq!(positions(&b, &users, event).await, on_a);
    set_queue(&b, &organizer, event, true).await;
    let next = &users[admitted];
    eventually(
        "the next in line is admitted",
        Duration::from_secs(30),
        || async { mine(&b, next, event).await["status"] == "admitted" },
    )
    .await;
    let (marked, counted) = admitted_in_sql(&pool, event).await;
    assert_eq!(marked, counted);
    let after = positions(&a, &users, event).await;
    for (i, ((before, _), (now, _))) in on_a.iter().zip(&after).enumerate() {
        if before == "admitted" {
            assert_eq!(now, "admitted", "user {i} lost admission");
        }
    }
    assert!(after[admitted].0 == "admitted");
    assert_eq!(
        after.iter().filter(|(s, _)| s == "admitted").count(),
        usize::try_from(marked).unwrap()
    );
}
