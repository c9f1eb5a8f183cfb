//! Response hardening seen from a client: security headers on every answer (errors included),
//! HSTS only in production, no `Server` header, and CORS per `APP_ENV`.

use super::helpers::*;
use reqwest::Method;
use serde_json::json;
use ticketing::config::AppEnv;

const EXPECTED: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "permissions-policy",
        "geolocation=(), camera=(), microphone=(), payment=(), usb=()",
    ),
];

#[track_caller]
fn assert_hardened(answer: &Answer, what: &str) {
    for (name, value) in EXPECTED {
        assert_eq!(answer.header(name), Some(value), "{name} on {what}");
    }
    assert!(answer.header("server").is_none(), "no Server on {what}");
}

/// A 200, a 404, a 401, a 422 and a 405 all carry every security header, and no HSTS outside production.
#[tokio::test]
async fn security_headers_are_on_successes_and_errors_alike() {
    let app = spawn_app().await;
    let ok = app.get("/health", None).await;
    assert_eq!(ok.status, 200);
    let missing = app.get("/no/such/route", None).await;
    missing.assert_problem(404, "not-found");
    let anonymous = app.get("/auth/me", None).await;
    anonymous.assert_problem(401, "unauthorized");
    let invalid = app
        .post(
            "/auth/register",
            None,
            json!({"email": "not-an-email", "password": PASSWORD}),
        )
        .await;
    invalid.assert_problem(422, "validation-failed");
    let wrong_method = app.call(Method::DELETE, "/health", None, None).await;
    assert_eq!(wrong_method.status, 405);
    for (answer, what) in [
        (&ok, "200"),
        (&missing, "404"),
        (&anonymous, "401"),
        (&invalid, "422"),
        (&wrong_method, "405"),
    ] {
        assert_hardened(answer, what);
        assert!(
            answer.header("strict-transport-security").is_none(),
            "no HSTS in development ({what})"
        );
    }
}

/// In production every answer, errors included, also carries Strict-Transport-Security.
#[tokio::test]
async fn hsts_is_sent_only_in_production() {
    let app = spawn_app_with(|c| c.app_env = AppEnv::Production).await;
    for path in ["/health", "/no/such/route", "/auth/me"] {
        let answer = app.get(path, None).await;
        assert_hardened(&answer, path);
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=63072000; includeSubDomains"),
            "{path}"
        );
    }
}

/// In production a listed origin is allowed (simple request and preflight) and an unlisted one gets no Allow-Origin.
#[tokio::test]
async fn production_cors_allows_listed_origins_and_ignores_others() {
    let app = spawn_app_with(|c| {
        c.app_env = AppEnv::Production;
        c.cors_allowed_origins = vec!["https://tickets.example".into()];
    })
    .await;
    let listed = app
        .call_with(
            Method::GET,
            "/api/events",
            None,
            None,
            &[("origin", "https://tickets.example")],
        )
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://tickets.example")
    );

    let preflight = app
        .call_with(
            Method::OPTIONS,
            "/api/reservations",
            None,
            None,
            &[
                ("origin", "https://tickets.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
        )
        .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://tickets.example")
    );
    assert_hardened(&preflight, "a preflight");

    let unlisted = app
        .call_with(
            Method::GET,
            "/api/events",
            None,
            None,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert!(unlisted.header("access-control-allow-origin").is_none());
}

/// In development any origin is allowed.
#[tokio::test]
async fn development_cors_allows_any_origin() {
    let app = spawn_app().await;
    let answer = app
        .call_with(
            Method::GET,
            "/api/events",
            None,
            None,
            &[("origin", "http://localhost:5173")],
        )
        .await;
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
}
