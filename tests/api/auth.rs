//! Accounts and sessions: registration and its rules, login that does not reveal which
//! emails exist, `/auth/me`, logout that really ends the session, and the bootstrap admin.

use super::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};
use ticketing::clock::Clock;

async fn register(app: &TestApp, body: Value) -> Answer {
    app.post("/auth/register", None, body).await
}

async fn login(app: &TestApp, email: &str, password: &str) -> Answer {
    app.post(
        "/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

/// Registering answers 201 `{user_id, email, role}`, with `customer` as the default role.
#[tokio::test]
async fn registering_answers_201_with_the_account_and_defaults_to_customer() {
    let app = spawn_app().await;
    let email = unique_email("ada");

    let answer = register(
        &app,
        json!({"email": email, "password": PASSWORD, "name": "Ada"}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:#}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.id("user_id");
    assert_eq!(answer.body["email"], email);
    assert_eq!(answer.body["role"], "customer");
    assert!(
        answer.body.get("password").is_none() && answer.body.get("password_hash").is_none(),
        "{:#}",
        answer.body
    );
}

/// `role: "organizer"` is accepted and sticks through login and `/auth/me`.
#[tokio::test]
async fn an_organizer_may_register_as_such() {
    let app = spawn_app().await;
    let email = unique_email("org");

    let answer = register(
        &app,
        json!({"email": email, "password": PASSWORD, "role": "organizer"}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:#}", answer.body);
    assert_eq!(answer.body["role"], "organizer");
    let session = login(&app, &email, PASSWORD).await;
    assert_eq!(session.body["role"], "organizer");
    assert_eq!(session.body["user_id"], answer.body["user_id"]);
}

/// Nobody registers as `admin` (or any unknown role): 422 on `role`, and no account is made.
#[tokio::test]
async fn registering_as_admin_is_a_422_on_role() {
    let app = spawn_app().await;

    for role in ["admin", "superuser"] {
        let email = unique_email("sneaky");
        let answer = register(
            &app,
            json!({"email": email, "password": PASSWORD, "role": role}),
        )
        .await;

        answer.assert_problem(422, "validation-failed");
        assert_eq!(
            answer.body["errors"][0]["field"], "role",
            "{:#}",
            answer.body
        );
        assert_eq!(answer.body["errors"].as_array().unwrap().len(), 1);
        login(&app, &email, PASSWORD)
            .await
            .assert_problem(401, "invalid-credentials");
    }
}

/// The same email in another case is taken: 409 `email-taken`, and the first password stands.
#[tokio::test]
async fn a_duplicate_email_in_another_case_is_a_409_email_taken() {
    let app = spawn_app().await;
    let email = unique_email("dup");
    let first = register(&app, json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(first.status, 201, "{:#}", first.body);

    let second = register(
        &app,
        json!({"email": email.to_uppercase(), "password": "another-password-2"}),
    )
    .await;

    second.assert_problem(409, "email-taken");
    login(&app, &email, "another-password-2")
        .await
        .assert_problem(401, "invalid-credentials");
    let session = login(&app, &email.to_uppercase(), PASSWORD).await;
    assert_eq!(session.status, 200, "{:#}", session.body);
    assert_eq!(session.body["user_id"], first.body["user_id"]);
}

/// A password under 8 characters (or a bad email) is a 422 naming the field.
#[tokio::test]
async fn a_short_password_is_a_422_on_password() {
    let app = spawn_app().await;

    let short = register(
        &app,
        json!({"email": unique_email("short"), "password": "1234567"}),
    )
    .await;
    short.assert_problem(422, "validation-failed");
    assert_eq!(
        short.body["errors"][0]["field"], "password",
        "{:#}",
        short.body
    );

    let both = register(&app, json!({"email": "not-an-email", "password": "short"})).await;
    both.assert_problem(422, "validation-failed");
    let mut fields: Vec<&str> = both.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["email", "password"]);

    let eight = register(
        &app,
        json!({"email": unique_email("eight"), "password": "12345678"}),
    )
    .await;
    assert_eq!(eight.status, 201, "{:#}", eight.body);
}

/// Login answers 200 with a token, the account's id and role, and an expiry.
#[tokio::test]
async fn login_answers_a_token_with_the_account_and_an_expiry() {
    let app = spawn_app().await;
    let email = unique_email("login");
    let registered = register(&app, json!({"email": email, "password": PASSWORD})).await;

    let answer = login(&app, &email, PASSWORD).await;

    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert!(answer.body["token"].as_str().is_some_and(|t| t.len() >= 20));
    assert_eq!(answer.body["user_id"], registered.body["user_id"]);
    assert_eq!(answer.body["role"], "customer");
    let expires: chrono::DateTime<chrono::Utc> = answer.body["expires_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no RFC 3339 expires_at: {:#}", answer.body));
    assert_eq!(expires, app.clock.now() + chrono::Duration::hours(24));
}

/// A session ends at its `expires_at`: the same token is then a 401.
#[tokio::test]
async fn a_session_past_its_expiry_gets_401() {
    let app = spawn_app().await;
    let user = app.customer().await;
    assert_eq!(app.get("/auth/me", Some(&user.token)).await.status, 200);

    app.clock.advance(chrono::Duration::hours(24));

    app.get("/auth/me", Some(&user.token))
        .await
        .assert_problem(401, "unauthorized");
    let again = app.login(&user.email, PASSWORD).await;
    assert_eq!(app.get("/auth/me", Some(&again.token)).await.status, 200);
}

/// Wrong password and unknown email get the same 401 body, so login reveals no accounts.
#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_identical_401s() {
    let app = spawn_app().await;
    let user = app.customer().await;

    let wrong_password = login(&app, &user.email, "wrong-password-1").await;
    let unknown_email = login(&app, &unique_email("ghost"), PASSWORD).await;

    wrong_password.assert_problem(401, "invalid-credentials");
    unknown_email.assert_problem(401, "invalid-credentials");
    assert_eq!(wrong_password.body, unknown_email.body);
}

/// `/auth/me` answers the caller's own account.
#[tokio::test]
async fn me_answers_the_callers_own_account() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let organizer = app.organizer().await;

    for (user, role) in [(&customer, "customer"), (&organizer, "organizer")] {
        let me = app.get("/auth/me", Some(&user.token)).await;
        assert_eq!(me.status, 200, "{:#}", me.body);
        assert_eq!(me.body["user_id"], user.id.to_string());
        assert_eq!(me.body["email"], user.email);
        assert_eq!(me.body["role"], role);
    }
    app.get("/auth/me", None)
        .await
        .assert_problem(401, "unauthorized");
}

/// After logout (204) that token gets 401 everywhere, while other sessions keep working.
#[tokio::test]
async fn after_logout_the_token_gets_401_everywhere() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let other_session = app.login(&buyer.email, PASSWORD).await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");

    let out = app
        .call(Method::POST, "/auth/logout", Some(&buyer.token), None)
        .await;
    assert_eq!(out.status, 204, "{:#}", out.body);
    assert_eq!(out.body, Value::Null);

    for (method, path, body) in [
        (Method::GET, "/auth/me".to_owned(), None),
        (Method::POST, "/auth/logout".to_owned(), None),
        (Method::GET, "/api/events".to_owned(), None),
        (Method::GET, format!("/api/events/{event}"), None),
        (
            Method::GET,
            format!("/api/events/{event}/availability"),
            None,
        ),
        (
            Method::POST,
            "/api/reservations".to_owned(),
            Some(json!({"event_id": event, "section": "floor", "quantity": 1})),
        ),
        (Method::GET, "/api/reservations".to_owned(), None),
        (
            Method::GET,
            format!("/api/reservations/{reservation}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/reservations/{reservation}/cancel"),
            None,
        ),
        (
            Method::POST,
            "/api/payments".to_owned(),
            Some(
                json!({"reservation_id": reservation, "payment_method": {"type": "card", "token": "tok_visa"}}),
            ),
        ),
        (
            Method::GET,
            format!("/api/payments/user/{}", buyer.id),
            None,
        ),
        (
            Method::GET,
            format!("/api/customers/{}/history", buyer.id),
            None,
        ),
    ] {
        let answer = app
            .call(method.clone(), &path, Some(&buyer.token), body)
            .await;
        assert_eq!(answer.status, 401, "{method} {path}: {:#}", answer.body);
        answer.assert_problem(401, "unauthorized");
    }
    assert_eq!(app.floor(event).await, (9, 1, 0));
    let still = app.get("/auth/me", Some(&other_session.token)).await;
    assert_eq!(still.status, 200, "{:#}", still.body);
}

/// The bootstrap admin from `ADMIN_EMAIL`/`ADMIN_PASSWORD` logs in with role `admin`.
#[tokio::test]
async fn the_bootstrap_admin_logs_in_as_admin() {
    let app = spawn_app().await;

    let answer = login(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;

    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["role"], "admin");
    let token = answer.body["token"].as_str().unwrap();
    let me = app.get("/auth/me", Some(token)).await;
    assert_eq!(me.body["role"], "admin");
    assert_eq!(me.body["email"], ADMIN_EMAIL);
    login(&app, ADMIN_EMAIL, "not-the-admin-password")
        .await
        .assert_problem(401, "invalid-credentials");
}

/// A repeated authenticated request is answered from the session cache, not the session
/// table: `ticketing_cache_requests_total{cache="sessions",result="hit"}` counts it (on
/// PostgreSQL once the revocation feed is live; until then the cache is bypassed). Logout
/// still ends the token at once.
#[tokio::test]
async fn repeated_requests_with_a_token_are_session_cache_hits() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let hits = || async {
        app.metric(
            "ticketing_cache_requests_total",
            &[("cache", "sessions"), ("result", "hit")],
        )
        .await
    };
    let before = hits().await;
    eventually(
        "a repeated token to be a session cache hit",
        std::time::Duration::from_secs(10),
        || async {
            assert_eq!(app.get("/auth/me", Some(&user.token)).await.status, 200);
            hits().await > before
        },
    )
    .await;

    let out = app
        .call(Method::POST, "/auth/logout", Some(&user.token), None)
        .await;
    assert_eq!(out.status, 204, "{:#}", out.body);
    app.get("/auth/me", Some(&user.token))
        .await
        .assert_problem(401, "unauthorized");
}
