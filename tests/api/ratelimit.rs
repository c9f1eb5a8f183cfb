//! Rate limits: brute force on sign-in is cut off per client IP (and only that IP), writes are
//! limited per user, refusals are 429 problem+json with `Retry-After` and counted in
//! `/metrics`, and operations routes are never limited. Limits are small and explicit here;
//! governor runs on the real clock, so each test spends a burst instead of waiting.

use super::helpers::*;
use reqwest::Method;
use serde_json::json;
use ticketing::config::RateLimits;

/// Posts a login from the client address `ip` (honoured because the app trusts the proxy).
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> Answer {
    app.call_with(
        Method::POST,
        "/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
        &[("x-forwarded-for", ip)],
    )
    .await
}

/// After the login burst one IP gets 429 with Retry-After, counted in /metrics, while another IP still logs in.
#[tokio::test]
async fn hammering_login_from_one_ip_is_refused_after_the_burst_while_another_ip_still_logs_in() {
    let app = spawn_app_with(|c| {
        c.trust_proxy = true;
        c.rate_limits = RateLimits {
            auth_per_minute: 1,
            auth_burst: 3,
            ..RateLimits::default()
        };
    })
    .await;
    let email = unique_email("victim");
    let registered = app
        .call_with(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &[("x-forwarded-for", "192.0.2.1")],
        )
        .await;
    assert_eq!(registered.status, 201, "{:#}", registered.body);

    // The proxy appends the address it saw; what comes before is the client's own choice, and
    // a new forged entry each time does not make a new client.
    for attempt in 0..3 {
        let forged = format!("10.0.{attempt}.1, 198.51.100.7");
        let guess = login_from(&app, &forged, &email, "wrong-guess-1").await;
        assert_eq!(guess.status, 401, "attempt {attempt}: {:#}", guess.body);
    }
    let refused = login_from(&app, "10.0.9.1, 198.51.100.7", &email, PASSWORD).await;
    refused.assert_problem(429, "rate-limited");
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a whole-second Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));

    let other_ip = login_from(&app, "203.0.113.9", &email, PASSWORD).await;
    assert_eq!(other_ip.status, 200, "{:#}", other_ip.body);
    assert!(
        app.metrics_text()
            .await
            .contains("ticketing_rate_limited_total{scope=\"auth\"} 1"),
        "the refusal is counted under scope auth"
    );
}

/// Without TRUST_PROXY a forged X-Forwarded-For does not escape the limit of the socket's address.
#[tokio::test]
async fn a_forged_forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    let app = spawn_app_with(|c| {
        c.rate_limits = RateLimits {
            auth_per_minute: 1,
            auth_burst: 1,
            ..RateLimits::default()
        };
    })
    .await;
    let first = login_from(
        &app,
        "198.51.100.1",
        "nobody@tests.example",
        "wrong-guess-1",
    )
    .await;
    assert_eq!(first.status, 401, "{:#}", first.body);
    let second = login_from(
        &app,
        "198.51.100.2",
        "nobody@tests.example",
        "wrong-guess-1",
    )
    .await;
    second.assert_problem(429, "rate-limited");
}

/// Reservations are limited per user: a user past the limit gets 429 while another user from the same IP still reserves.
#[tokio::test]
async fn reservations_are_limited_per_user_not_per_address() {
    let app = spawn_app_with(|c| {
        c.rate_limits = RateLimits {
            writes_per_second: 1,
            ..UNREACHABLE_LIMITS
        };
    })
    .await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 100).await;
    let (eager, patient) = (app.customer().await, app.customer().await);

    assert_eq!(app.reserve(&eager, event, 1).await.status, 201);
    let refused = app.reserve(&eager, event, 1).await;
    refused.assert_problem(429, "rate-limited");
    assert!(refused.header("retry-after").is_some());

    let other_user = app.reserve(&patient, event, 1).await;
    assert_eq!(other_user.status, 201, "{:#}", other_user.body);
    let reads = app.get("/api/reservations", Some(&eager.token)).await;
    assert_eq!(reads.status, 200, "reads are not spent by writes");
    assert!(app
        .metrics_text()
        .await
        .contains("ticketing_rate_limited_total{scope=\"writes\"} 1"));
}

/// Operations routes answer however often they are called, while an API read past its limit gets 429.
#[tokio::test]
async fn health_and_other_operations_routes_are_never_limited() {
    let app = spawn_app_with(|c| {
        c.rate_limits = RateLimits {
            reads_per_second: 1,
            ..RateLimits::default()
        };
    })
    .await;
    for _ in 0..25 {
        for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
            assert_eq!(app.get(path, None).await.status, 200, "{path}");
        }
    }
    assert_eq!(app.get("/api/events", None).await.status, 200);
    app.get("/api/events", None)
        .await
        .assert_problem(429, "rate-limited");
}
