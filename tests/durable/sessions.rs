//! Sessions across instances: each instance answers repeated tokens from its own cache, and a
//! logout or role change made elsewhere reaches it within the documented bound (README,
//! "Sessions": 1 s), over the accounts database's revocation feed.

use super::client::*;
use serde_json::json;
use std::time::{Duration, Instant};
use ticketing::db::testing::fresh_database;
use uuid::Uuid;

/// README's bound for a revocation to reach every other instance.
const BOUND: Duration = Duration::from_secs(1);

/// Session-cache hits `service` counted so far.
async fn hits(service: &Service) -> f64 {
    service
        .metric(
            "ticketing_cache_requests_total",
            &[("cache", "sessions"), ("result", "hit")],
        )
        .await
}

/// GETs `path` with `token` on `service` until the answer came from its session cache (the
/// feed is live once the instance is ready, but a heartbeat may be due); returns the status.
async fn cached(service: &Service, path: &str, token: &str) -> u16 {
    let started = Instant::now();
    loop {
        let before = hits(service).await;
        let (status, _) = service.get(path, Some(token)).await;
        if hits(service).await > before {
            return status.as_u16();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} never answered from the session cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `path` with `token` on `service` until it answers `expected`, for at most `BOUND`.
async fn within_bound(service: &Service, path: &str, token: &str, expected: u16) {
    let started = Instant::now();
    loop {
        let (status, body) = service.get(path, Some(token)).await;
        if status.as_u16() == expected {
            return;
        }
        assert!(
            started.elapsed() < BOUND,
            "{path} still answers {status} {body} after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Log in, use the token on B (from B's cache), log out on A: B refuses the token within the
/// bound; A refuses it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_ends_the_token_on_another_within_the_bound() {
    let db = fresh_database().await;
    let a = Service::start(&db, &[]).await;
    let b = Service::start(&db, &[]).await;
    let (_, token) = a.user("customer").await;
    assert_eq!(cached(&b, "/auth/me", &token).await, 200);

    let (status, body) = a.post("/auth/logout", Some(&token), json!({})).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(a.get("/auth/me", Some(&token)).await.0, 401);

    within_bound(&b, "/auth/me", &token, 401).await;
}

/// A customer's token cached on B is refused an admin route; `ticketing-admin users
/// create-admin` (another process) promotes the account, which ends its sessions: B refuses
/// the same token within the bound (401), and admits a new sign-in to the admin route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_reaches_a_running_instance_within_the_bound() {
    let db = fresh_database().await;
    let b = Service::start(&db, &[]).await;
    let email = format!("ops-{}@durable.example", Uuid::new_v4().simple());
    let (status, body) = b
        .post(
            "/auth/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = b.login(&email, PASSWORD).await;
    assert_eq!(cached(&b, "/admin/dlq", &token).await, 403);

    let promoted = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketing-admin"))
        .args([
            "users",
            "create-admin",
            "--email",
            &email,
            "--password",
            PASSWORD,
        ])
        .env("DATABASE_URL", &db)
        .env_remove("AUTH_DATABASE_URL")
        .output()
        .await
        .expect("ticketing-admin runs");
    assert!(promoted.status.success(), "{promoted:?}");

    within_bound(&b, "/admin/dlq", &token, 401).await;
    let admin = b.login(&email, PASSWORD).await;
    assert_eq!(b.get("/admin/dlq", Some(&admin)).await.0, 200);
}
