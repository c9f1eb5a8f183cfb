//! Operations endpoints and cross-cutting headers: liveness, readiness with each check,
//! Prometheus metrics labelled by route template, the OpenAPI document against API.md, and
//! request and correlation ids on every answer.

use super::access::API_ROUTES;
use super::helpers::*;
use reqwest::Method;
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;

/// API.md's Operations table, less `/openapi.json` (the document does not describe itself).
const OPERATIONS: &[(&str, &str)] = &[("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")];

/// Is `s` a hyphenated UUID (8-4-4-4-12 hex digits)?
fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn contains_uuid(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .find(|&i| is_uuid(&bytes[i..i + 36]))
        .map(|i| &text[i..i + 36])
}

/// `/health` answers 200 while the process lives.
#[tokio::test]
async fn health_answers_200() {
    let app = spawn_app().await;

    let answer = app.get("/health", None).await;

    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["status"], "ok");
}

/// `/ready` answers 200 with a passing, timed check for the event store, projections, auth
/// the bus and the cache.
#[tokio::test]
async fn ready_answers_200_with_each_dependency_check_passing() {
    let app = spawn_app().await;

    let answer = app.get("/ready", None).await;

    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["status"], "ready");
    let checks = answer.body["checks"].as_array().expect("a checks array");
    let mut names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "auth",
            "bus",
            "bus_breaker",
            "cache",
            "cache_breaker",
            "event_store",
            "event_store_breaker",
            "payment_gateway_breaker",
            "projections",
            "projector"
        ]
    );
    for check in checks {
        assert_eq!(check["status"], "pass", "{check}");
        assert!(check["duration_ms"].is_u64(), "{check}");
        assert!(check["duration_ms"].as_u64().unwrap() < 1000, "{check}");
    }
    // A scrape says the same: ready, and each dependency passing (breakers have their own).
    let text = app.metrics_text().await;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ticketing_ready"))
        .collect();
    assert_eq!(
        lines,
        [
            "ticketing_ready 1",
            "ticketing_ready_check{check=\"auth\"} 1",
            "ticketing_ready_check{check=\"bus\"} 1",
            "ticketing_ready_check{check=\"cache\"} 1",
            "ticketing_ready_check{check=\"event_store\"} 1",
            "ticketing_ready_check{check=\"projections\"} 1",
            "ticketing_ready_check{check=\"projector\"} 1",
        ]
    );
}

/// `/metrics` is Prometheus text counting requests by route template, with no raw id anywhere.
#[tokio::test]
async fn metrics_count_requests_by_route_template_without_raw_ids() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let token = Some(buyer.token.as_str());
    for path in [
        format!("/api/events/{event}"),
        format!("/api/events/{event}/availability"),
        format!("/api/events/{}", Uuid::new_v4()),
        format!("/api/reservations/{reservation}"),
        format!("/api/customers/{}/history", buyer.id),
        format!("/no/such/route/{}", Uuid::new_v4()),
    ] {
        app.get(&path, token).await;
    }
    // A method of the caller's own making is counted, but not by its name: no caller mints
    // label values.
    let odd = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    let answered = app
        .client
        .request(odd, format!("{}/api/events/{event}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 405);

    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();

    assert!(
        text.contains("# TYPE ticketing_http_requests_total counter"),
        "{text}"
    );
    let counted = |route: &str, status: u16| {
        text.lines().any(|line| {
            line.starts_with("ticketing_http_requests_total{")
                && line.contains(r#"method="GET""#)
                && line.contains(&format!(r#"route="{route}""#))
                && line.contains(&format!(r#"status="{status}""#))
        })
    };
    assert!(counted("/api/events/{id}", 200), "{text}");
    assert!(counted("/api/events/{id}", 404), "{text}");
    assert!(counted("/api/events/{id}/availability", 200), "{text}");
    assert!(counted("/api/reservations/{id}", 200), "{text}");
    assert!(counted("/api/customers/{id}/history", 200), "{text}");
    // Counted before routing: a path of no route too, under one label.
    assert!(counted("unmatched", 404), "{text}");
    assert!(
        text.contains(r#"method="_OTHER",route="/api/events/{id}",status="405""#),
        "{text}"
    );
    assert!(!text.contains("FROBNICATE"), "{text}");
    assert_eq!(
        contains_uuid(&text),
        None,
        "a raw id in the metrics:\n{text}"
    );
}

/// A payment's time shows its parts: the processor's charge, timed by operation, and the wait
/// for the read models to show the capture (both at 0 before, so a fresh scrape has them).
#[tokio::test]
async fn metrics_time_the_processor_and_the_read_your_writes_wait() {
    let app = spawn_app().await;
    let charges = [("operation", "charge")];
    let count = "ticketing_gateway_call_duration_seconds_count";
    let waits = "ticketing_read_your_writes_wait_seconds_count";
    assert_eq!(app.metric(count, &charges).await, 0.0);
    assert_eq!(app.metric(count, &[("operation", "refund")]).await, 0.0);
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");
    let waited = app.metric(waits, &[]).await;
    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);

    assert_eq!(app.metric(count, &charges).await, 1.0);
    assert_eq!(
        app.metric(waits, &[]).await,
        waited + 1.0,
        "the payment waited for the read models"
    );
}

/// `/openapi.json` is OpenAPI 3.1 and documents every route of API.md with its method.
#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route_of_the_contract() {
    let app = spawn_app().await;

    let answer = app.get("/openapi.json", None).await;

    assert_eq!(answer.status, 200, "{:#}", answer.body);
    let version = answer.body["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    let paths = answer.body["paths"].as_object().expect("paths");
    let missing: Vec<String> = OPERATIONS
        .iter()
        .chain(API_ROUTES)
        .filter(|(method, path)| {
            paths
                .get(*path)
                .and_then(|item| item.get(method.to_lowercase()))
                .is_none()
        })
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "API.md routes missing from /openapi.json: {missing:?}\ndocumented: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(
        answer.body["components"]["securitySchemes"]["bearer"].is_object(),
        "{:#}",
        answer.body["components"]
    );
}

/// Every answer carries a fresh `x-request-id` and echoes the caller's `x-correlation-id`.
#[tokio::test]
async fn every_answer_carries_a_request_id_and_echoes_the_correlation_id() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let token = Some(organizer.token.as_str());
    let mut request_ids = HashSet::new();

    for (i, (method, path, body)) in [
        (Method::GET, "/health", None),
        (Method::GET, "/ready", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/openapi.json", None),
        (Method::POST, "/api/events", Some(TestApp::event_body(5))),
        (Method::GET, "/api/events", None),
        (Method::POST, "/api/events", Some(json!({"name": ""}))),
        (Method::GET, "/api/events/not-a-uuid", None),
        (Method::GET, "/no/such/route", None),
        (Method::DELETE, "/health", None),
        (Method::POST, "/auth/logout", None),
        (Method::GET, "/auth/me", None),
    ]
    .into_iter()
    .enumerate()
    {
        let correlation = format!("corr-{i}-{}", Uuid::new_v4().simple());
        let answer = app
            .call_with(
                method.clone(),
                path,
                token,
                body,
                &[("x-correlation-id", &correlation)],
            )
            .await;
        let cell = format!("{method} {path} -> {}", answer.status);
        assert_eq!(
            answer.header("x-correlation-id"),
            Some(correlation.as_str()),
            "{cell}"
        );
        let request_id = answer
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {cell}"));
        assert!(!request_id.is_empty(), "{cell}");
        assert!(
            request_ids.insert(request_id.to_owned()),
            "reused id: {cell}"
        );
    }
}

/// A missing, over-long or spaced `x-correlation-id` is replaced by a newly made one.
#[tokio::test]
async fn a_missing_or_unusable_correlation_id_is_replaced_by_a_new_one() {
    let app = spawn_app().await;
    let too_long = "c".repeat(129);

    let none = app.get("/health", None).await;
    let long = app
        .call_with(
            Method::GET,
            "/health",
            None,
            None,
            &[("x-correlation-id", &too_long)],
        )
        .await;
    let spaced = app
        .call_with(
            Method::GET,
            "/health",
            None,
            None,
            &[("x-correlation-id", "has a space")],
        )
        .await;

    let made: Vec<&str> = [&none, &long, &spaced]
        .iter()
        .map(|a| a.header("x-correlation-id").expect("a correlation id"))
        .collect();
    for id in &made {
        assert!(id.parse::<Uuid>().is_ok(), "not a generated id: {id}");
    }
    assert_eq!(made.iter().collect::<HashSet<_>>().len(), 3, "{made:?}");
}

/// After a flash sale (and a poison message), `/metrics` passes `promtool check metrics`
/// without a word, and the HTTP, reducer, business, bus and DLQ series have moved.
#[tokio::test]
async fn metrics_after_a_flash_sale_pass_promtool_and_every_family_moved() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 5).await;
    for _ in 0..7 {
        let buyer = app.customer().await;
        let held = app.reserve(&buyer, event, 1).await;
        if held.status == 201 {
            let paid = app.pay(&buyer, held.id("reservation_id"), "tok_visa").await;
            assert_eq!(paid.status, 201, "{:#}", paid.body);
        }
    }
    app.bus
        .publish(vec![ticketing::bus::BusMessage {
            topic: "ticketing.reservations".into(),
            key: "reservation-x".into(),
            headers: vec![("event-type".into(), "reservation.placed".into())],
            payload: vec![1, 2, 3],
        }])
        .await
        .unwrap();
    let admin = app.admin().await;
    // One entry per consumer of the topic: insights and webhooks.
    app.get_when("/admin/dlq/stats", Some(&admin.token), |a| {
        a.body["pending"] == 2
    })
    .await;

    let text = metrics::scrape(&app.client, &app.base).await;
    for moved in [
        "ticketing_http_requests_total{method=\"POST\",route=\"/api/payments\",status=\"201\"} 5",
        "ticketing_reducer_duration_seconds_count{command=\"reserve\"} 7",
        "ticketing_effects_total{effect=\"arm_expiry\"} 5",
        "ticketing_tickets_sold_total 5",
        "ticketing_revenue_cents_total{currency=\"USD\"} 12500",
        "ticketing_payments_total{outcome=\"captured\"} 5",
        "ticketing_dlq_entries{status=\"pending\"} 2",
        "ticketing_consumer_events_total{consumer=\"insights\",outcome=\"dead_lettered\"} 1",
        "ticketing_consumer_events_total{consumer=\"webhooks\",outcome=\"dead_lettered\"} 1",
    ] {
        assert!(text.contains(moved), "no `{moved}` in:\n{text}");
    }
    assert!(text.contains("ticketing_bus_published_total{topic=\"ticketing.reservations\"}"));

    let mut promtool = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run promtool ({e}): install the Debian package `prometheus`, or run \
             ./scripts/services.sh"
        ),
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
