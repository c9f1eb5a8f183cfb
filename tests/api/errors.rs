//! Error answers: every failure is `application/problem+json` with the status and problem kind
//! that API.md promises, validation names each bad field at once, and a refused request
//! changes nothing.

use super::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// Sends raw bytes, with or without a `Content-Type`, the way a careless client would.
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(token)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body read");
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// The `field` names of a 422 problem's `errors`, sorted.
#[track_caller]
pub fn fields(answer: &Answer) -> Vec<String> {
    answer.assert_problem(422, "validation-failed");
    let errors = answer.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {:#}", answer.body));
    let mut names: Vec<String> = errors
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            e["field"].as_str().expect("field is a string").to_owned()
        })
        .collect();
    names.sort();
    names
}

/// A body that is not JSON is a 400 `bad-request`, not a 422 or a 500.
#[tokio::test]
async fn malformed_json_is_a_400_bad_request_problem() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;

    let answer = raw(
        &app,
        Method::POST,
        "/api/events",
        &organizer.token,
        Some("application/json"),
        b"{bad".to_vec(),
    )
    .await;

    answer.assert_problem(400, "bad-request");
}

/// A JSON body sent without `Content-Type: application/json` is a 415 problem.
#[tokio::test]
async fn a_body_without_a_json_content_type_is_a_415_problem() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let body = serde_json::to_vec(&TestApp::event_body(10)).unwrap();

    let answer = raw(
        &app,
        Method::POST,
        "/api/events",
        &organizer.token,
        None,
        body,
    )
    .await;

    answer.assert_problem(415, "unsupported-media-type");
}

/// A 2 MiB JSON body is over the 1 MiB limit: 413 `payload-too-large`, and no event is made.
#[tokio::test]
async fn a_two_mebibyte_body_is_a_413_payload_too_large_problem() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut body = TestApp::event_body(10);
    body["description"] = json!("x".repeat(2 * 1024 * 1024));

    let answer = raw(
        &app,
        Method::POST,
        "/api/events",
        &organizer.token,
        Some("application/json"),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;

    answer.assert_problem(413, "payload-too-large");
    let mine = app.get("/api/events", Some(&organizer.token)).await;
    assert_eq!(mine.body["total_count"], 0, "{:#}", mine.body);
}

/// Headers over 16 KiB in total get 431 `headers-too-large` problem+json (with the security
/// headers) on any route, and change nothing; headers just under the limit pass.
#[tokio::test]
async fn headers_over_sixteen_kibibytes_are_a_431_problem() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let big = "x".repeat(17 * 1024);
    let fine = "x".repeat(12 * 1024);

    for path in ["/api/events", "/auth/me", "/no/such/route"] {
        let answer = app
            .call_with(
                Method::GET,
                path,
                Some(&organizer.token),
                None,
                &[("x-padding", &big)],
            )
            .await;
        answer.assert_problem(431, "headers-too-large");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    let refused = app
        .call_with(
            Method::POST,
            "/api/events",
            Some(&organizer.token),
            Some(TestApp::event_body(5)),
            &[("x-padding", &big)],
        )
        .await;
    refused.assert_problem(431, "headers-too-large");
    let mine = app.get("/api/events", Some(&organizer.token)).await;
    assert_eq!(mine.body["total_count"], 0, "{:#}", mine.body);

    let answer = app
        .call_with(
            Method::GET,
            "/auth/me",
            Some(&organizer.token),
            None,
            &[("x-padding", &fine)],
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
}

/// An event body with several bad fields gets one 422 that names every one of them.
#[tokio::test]
async fn event_validation_reports_every_bad_field_at_once() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut body = TestApp::event_body(10);
    body["name"] = json!("");
    body["sections"][0]["capacity"] = json!(0);
    body["venue"] = json!({"name": "Hall", "address": ""});

    let answer = app.post("/api/events", Some(&organizer.token), body).await;

    assert_eq!(
        fields(&answer),
        ["name", "sections[0].capacity", "venue.address"]
    );
}

/// Rules across fields (ends after starts, unique section names) are reported in the same
/// 422 as the per-field rules, not in a second round.
#[tokio::test]
async fn cross_field_and_field_errors_come_in_one_answer() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut body = TestApp::event_body(10);
    body["name"] = json!("");
    body["ends_at"] = json!("2030-06-01T19:00:00Z");
    body["sections"] = json!([
        {"name": "floor", "capacity": 10, "price_cents": 100},
        {"name": "floor", "capacity": 5, "price_cents": 100}
    ]);

    let answer = app.post("/api/events", Some(&organizer.token), body).await;

    answer.assert_problem(422, "validation-failed");
    assert_eq!(fields(&answer), ["ends_at", "name", "sections"]);
}

/// A reservation with quantity 11 and an empty section gets one 422 naming both fields.
#[tokio::test]
async fn reservation_validation_reports_quantity_and_section_together() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 20).await;
    let buyer = app.customer().await;

    let answer = app
        .post(
            "/api/reservations",
            Some(&buyer.token),
            json!({"event_id": event, "section": "", "quantity": 11}),
        )
        .await;

    assert_eq!(fields(&answer), ["quantity", "section"]);
}

/// An event that ends before it starts is a 422 on `ends_at`.
#[tokio::test]
async fn an_event_ending_before_it_starts_is_a_422_on_ends_at() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let mut body = TestApp::event_body(10);
    body["ends_at"] = json!("2030-06-01T19:00:00Z");

    let answer = app.post("/api/events", Some(&organizer.token), body).await;

    assert_eq!(fields(&answer), ["ends_at"]);
}

/// `page=0` and `page_size=101` are each named in one 422, on every paginated list.
#[tokio::test]
async fn out_of_range_pagination_is_a_422_naming_page_and_page_size() {
    let app = spawn_app().await;
    let buyer = app.customer().await;

    for path in [
        "/api/events?page=0&page_size=101".to_owned(),
        "/api/reservations?page=0&page_size=101".to_owned(),
        format!("/api/payments/user/{}?page=0&page_size=101", buyer.id),
        format!("/api/customers/{}/history?page=0&page_size=101", buyer.id),
    ] {
        let answer = app.get(&path, Some(&buyer.token)).await;
        assert_eq!(fields(&answer), ["page", "page_size"], "{path}");
    }
    let upper = app.get("/api/events?page_size=100", None).await;
    assert_eq!(upper.status, 200, "{:#}", upper.body);
    let zero = app.get("/api/events?page_size=0", None).await;
    assert_eq!(fields(&zero), ["page_size"]);
}

/// An id in the path that is not a UUID is a 400 `bad-request`, not a 404 or a 500.
#[tokio::test]
async fn a_path_id_that_is_not_a_uuid_is_a_400() {
    let app = spawn_app().await;
    let buyer = app.customer().await;

    for path in [
        "/api/events/not-a-uuid",
        "/api/events/not-a-uuid/availability",
        "/api/reservations/42",
        "/api/payments/nope",
        "/api/payments/user/nope",
        "/api/analytics/events/nope/sales",
        "/api/customers/nope/history",
    ] {
        let answer = app.get(path, Some(&buyer.token)).await;
        assert_eq!(answer.status, 400, "{path}: {:#}", answer.body);
        answer.assert_problem(400, "bad-request");
    }
}

/// Unknown routes and unknown ids of every resource are 404 `not-found` problems.
#[tokio::test]
async fn unknown_routes_and_unknown_ids_are_404_not_found_problems() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let nobody = Uuid::new_v4();

    for (method, path, body) in [
        (Method::GET, "/no/such/route".to_owned(), None),
        (Method::GET, "/api/no-such-resource".to_owned(), None),
        (Method::GET, format!("/api/events/{nobody}"), None),
        (
            Method::GET,
            format!("/api/events/{nobody}/availability"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/events/{nobody}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/api/events/{nobody}"), None),
        (Method::POST, format!("/api/events/{nobody}/publish"), None),
        (Method::GET, format!("/api/reservations/{nobody}"), None),
        (
            Method::POST,
            format!("/api/reservations/{nobody}/cancel"),
            None,
        ),
        (Method::GET, format!("/api/payments/{nobody}"), None),
        (
            Method::POST,
            format!("/api/payments/{nobody}/refund"),
            Some(json!({"reason": "x"})),
        ),
        (
            Method::GET,
            format!("/api/analytics/events/{nobody}/sales"),
            None,
        ),
        (
            Method::POST,
            "/api/reservations".to_owned(),
            Some(json!({"event_id": nobody, "section": "floor", "quantity": 1})),
        ),
        (
            Method::POST,
            "/api/payments".to_owned(),
            Some(
                json!({"reservation_id": nobody, "payment_method": {"type": "card", "token": "tok_visa"}}),
            ),
        ),
    ] {
        let answer = app
            .call(method.clone(), &path, Some(&admin.token), body)
            .await;
        assert_eq!(answer.status, 404, "{method} {path}: {:#}", answer.body);
        answer.assert_problem(404, "not-found");
    }
}

/// A known route with a method it does not take is a 405 `method-not-allowed` problem.
#[tokio::test]
async fn a_wrong_method_on_a_known_route_is_a_405_problem() {
    let app = spawn_app().await;

    for (method, path) in [
        (Method::DELETE, "/health"),
        (Method::POST, "/metrics"),
        (Method::PATCH, "/api/events"),
    ] {
        let answer = app.call(method.clone(), path, None, None).await;
        assert_eq!(answer.status, 405, "{method} {path}: {:#}", answer.body);
        answer.assert_problem(405, "method-not-allowed");
        let allow = answer.header("allow").unwrap_or_default();
        assert!(allow.contains("GET"), "{method} {path}: allow {allow:?}");
    }
}

/// Reserving more seats than are left is a 409 `sold-out`, and the seats stay as they were.
#[tokio::test]
async fn reserving_more_than_is_left_is_a_409_sold_out() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 3).await;
    let first = app.customer().await;
    let second = app.customer().await;
    assert_eq!(app.reserve(&first, event, 2).await.status, 201);

    let answer = app.reserve(&second, event, 2).await;

    answer.assert_problem(409, "sold-out");
    assert_eq!(app.floor(event).await, (1, 2, 0));
    assert_eq!(app.reserve(&second, event, 1).await.status, 201);
}

/// Reserving on a draft, published or closed event is a 409 `sales-not-open`.
#[tokio::test]
async fn reserving_before_sales_open_or_after_they_close_is_a_409_sales_not_open() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let admin = app.admin().await;
    let event = app.draft_event(&organizer, 10).await;

    for user in [&organizer, &admin] {
        app.reserve(user, event, 1)
            .await
            .assert_problem(409, "sales-not-open");
    }
    let step = |action: &'static str| {
        let app = &app;
        let token = organizer.token.clone();
        async move {
            let answer = app
                .call(
                    Method::POST,
                    &format!("/api/events/{event}/{action}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(answer.status, 200, "{action}: {:#}", answer.body);
        }
    };
    step("publish").await;
    app.reserve(&buyer, event, 1)
        .await
        .assert_problem(409, "sales-not-open");
    step("open-sales").await;
    step("close-sales").await;
    app.reserve(&buyer, event, 1)
        .await
        .assert_problem(409, "sales-not-open");
    assert_eq!(app.floor(event).await, (10, 0, 0));
}

/// Publishing twice (or closing sales never opened) is a 409 `invalid-state`.
#[tokio::test]
async fn publishing_twice_is_a_409_invalid_state() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.draft_event(&organizer, 10).await;
    let path = format!("/api/events/{event}/publish");
    let first = app
        .call(Method::POST, &path, Some(&organizer.token), None)
        .await;
    assert_eq!(first.status, 200, "{:#}", first.body);

    let second = app
        .call(Method::POST, &path, Some(&organizer.token), None)
        .await;

    second.assert_problem(409, "invalid-state");
    app.call(
        Method::POST,
        &format!("/api/events/{event}/close-sales"),
        Some(&organizer.token),
        None,
    )
    .await
    .assert_problem(409, "invalid-state");
    let read = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(read.body["status"], "published");
}

/// Refused reservations (422, 400, 415, unknown section) hold no seats and make no record.
#[tokio::test]
async fn a_refused_reservation_changes_nothing() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let before = app
        .get(&format!("/api/events/{event}/availability"), None)
        .await;

    let too_many = app
        .post(
            "/api/reservations",
            Some(&buyer.token),
            json!({"event_id": event, "section": "floor", "quantity": 11}),
        )
        .await;
    assert_eq!(fields(&too_many), ["quantity"]);
    let unknown_section = app
        .post(
            "/api/reservations",
            Some(&buyer.token),
            json!({"event_id": event, "section": "balcony", "quantity": 1}),
        )
        .await;
    assert_eq!(fields(&unknown_section), ["section"]);
    let malformed = raw(
        &app,
        Method::POST,
        "/api/reservations",
        &buyer.token,
        Some("application/json"),
        format!(r#"{{"event_id": "{event}", "section": "floor", "quantity": 2"#).into_bytes(),
    )
    .await;
    malformed.assert_problem(400, "bad-request");
    let untyped = raw(
        &app,
        Method::POST,
        "/api/reservations",
        &buyer.token,
        None,
        serde_json::to_vec(&json!({"event_id": event, "section": "floor", "quantity": 2})).unwrap(),
    )
    .await;
    untyped.assert_problem(415, "unsupported-media-type");

    let after = app
        .get(&format!("/api/events/{event}/availability"), None)
        .await;
    assert_eq!(after.body, before.body);
    assert_eq!(app.floor(event).await, (10, 0, 0));
    let mine = app.get("/api/reservations", Some(&buyer.token)).await;
    assert_eq!(mine.body["total_count"], 0, "{:#}", mine.body);
}

/// A request that runs past REQUEST_TIMEOUT is answered 503 request-timeout problem+json with Retry-After, not dropped.
#[tokio::test]
async fn a_request_past_the_timeout_gets_a_problem_answer_not_a_dropped_connection() {
    let app = spawn_app_with(|c| {
        c.request_timeout = std::time::Duration::from_secs(1);
        c.payment_latency = std::time::Duration::from_secs(30);
    })
    .await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let customer = app.customer().await;
    let reservation = app.reserve(&customer, event, 1).await.id("reservation_id");

    let slow = app.pay(&customer, reservation, "tok_visa").await;
    slow.assert_problem(503, "request-timeout");
    assert_eq!(slow.header("retry-after"), Some("1"));
    assert_eq!(slow.header("x-content-type-options"), Some("nosniff"));
}
