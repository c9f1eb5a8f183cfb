//! Text and times no store keeps: a NUL character (PostgreSQL refuses it in text) and years
//! outside 0001-9999 (PostgreSQL stores nothing before 4713 BC). Such input is a 4xx at the
//! edge and changes nothing: accepted, it would be in the event log but fail its read model's
//! projector on every attempt, and no later event would reach the read models (invariant 6).
//! Runs on both adapter sets (`TEST_BACKEND`); the harm was PostgreSQL's.

use super::errors::fields;
use super::helpers::*;
use serde_json::{json, Value};

/// An event named with a NUL, or starting in the year -5000, is refused naming what is wrong;
/// an event created after them is shown by the read models at once.
#[tokio::test]
async fn an_event_the_read_models_could_not_keep_is_refused() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut nul = TestApp::event_body(10);
    nul["name"] = json!("Gala\u{0}");
    let answer = app.post("/api/events", Some(&organizer.token), nul).await;
    assert_eq!(fields(&answer), ["body"]);
    let mut ancient = TestApp::event_body(10);
    ancient["starts_at"] = json!("-5000-01-01T20:00:00Z");
    ancient["ends_at"] = json!("-5000-01-01T23:00:00Z");
    let answer = app
        .post("/api/events", Some(&organizer.token), ancient)
        .await;
    assert_eq!(fields(&answer), ["ends_at", "starts_at"]);

    let event = app.draft_event(&organizer, 10).await;
    let read = app
        .get(&format!("/api/events/{event}"), Some(&organizer.token))
        .await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    let listed = app
        .get("/api/events?page_size=100", Some(&organizer.token))
        .await;
    assert_eq!(listed.body["total_count"], 1, "{:#}", listed.body);
}

/// A NUL in credentials or any other text field is a 422, not a 500 from the store; the text
/// backslash-u0000 (an escaped backslash) is ordinary text.
#[tokio::test]
async fn a_nul_anywhere_in_a_body_is_a_422() {
    let app = spawn_app().await;
    for (path, body) in [
        (
            "/auth/login",
            json!({"email": "a\u{0}@x.example", "password": PASSWORD}),
        ),
        (
            "/auth/register",
            json!({"email": "nul@x.example", "password": "pass\u{0}word-1", "role": "customer"}),
        ),
    ] {
        let answer = app.post(path, None, body).await;
        assert_eq!(fields(&answer), ["body"], "{path}");
    }
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let queue = json!({"enabled": true, "admit_per_minute": 60,
                       "shuffle_until": "+20000-01-01T00:00:00Z"});
    let answer = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/events/{event}/queue"),
            Some(&organizer.token),
            Some(queue),
        )
        .await;
    assert_eq!(fields(&answer), ["shuffle_until"]);

    let mut literal = TestApp::event_body(10);
    literal["name"] = Value::String("C:\\u0000 tour".into());
    let created = app
        .post("/api/events", Some(&organizer.token), literal)
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    assert_eq!(created.body["name"], "C:\\u0000 tour");
}

/// `%00` in a query string is a 400, not a store error.
#[tokio::test]
async fn a_nul_in_a_query_is_a_400() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let answer = app
        .get("/admin/audit?action=login%00", Some(&admin.token))
        .await;
    answer.assert_problem(400, "bad-request");
}
