//! Per-customer limits (`max_tickets_per_customer`, API.md "Fair on-sales"): shown on the
//! event, enforced on reservations with `409 customer-limit`, given back by cancellation and
//! refund, changeable by the owner, validated as 1..=100, and never counted twice by a retry.

use super::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// Creates an event on sale with a `floor` of `capacity` seats and the given limit.
async fn limited_event(app: &TestApp, organizer: &User, capacity: u32, limit: Value) -> Uuid {
    let mut body = TestApp::event_body(capacity);
    body["max_tickets_per_customer"] = limit.clone();
    let created = app.post("/api/events", Some(&organizer.token), body).await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    assert_eq!(created.body["max_tickets_per_customer"], limit);
    let id = created.id("id");
    for step in ["publish", "open-sales"] {
        let path = format!("/api/events/{id}/{step}");
        let answer = app.post(&path, Some(&organizer.token), json!({})).await;
        assert_eq!(answer.status, 200, "{step}: {:#}", answer.body);
    }
    id
}

async fn set_limit(app: &TestApp, organizer: &User, event: Uuid, limit: Value) -> Answer {
    app.call(
        Method::PUT,
        &format!("/api/events/{event}"),
        Some(&organizer.token),
        Some(json!({"max_tickets_per_customer": limit})),
    )
    .await
}

async fn reserve_with_key(app: &TestApp, user: &User, event: Uuid, n: u32, key: &str) -> Answer {
    app.call_with(
        Method::POST,
        "/api/reservations",
        Some(&user.token),
        Some(json!({"event_id": event, "section": "floor", "quantity": n})),
        &[("Idempotency-Key", key)],
    )
    .await
}

fn held(answer: &Answer) -> Uuid {
    assert_eq!(answer.status, 201, "{:#}", answer.body);
    answer.id("reservation_id")
}

/// The event shows its limit; a customer reaches it over two holds, one more ticket is a 409
/// `customer-limit` that holds nothing, and another customer is not affected. The refusals
/// are counted by kind (`ticketing_http_problems_total`), apart from sold-out.
#[tokio::test]
async fn a_hold_past_the_limit_is_refused_with_customer_limit() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = limited_event(&app, &organizer, 50, json!(3)).await;
    let shown = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(shown.body["max_tickets_per_customer"], 3);
    let (ann, bob) = (app.customer().await, app.customer().await);

    held(&app.reserve(&ann, event, 2).await);
    let refused = app.reserve(&ann, event, 2).await;
    refused.assert_problem(409, "customer-limit");
    held(&app.reserve(&ann, event, 1).await);
    app.reserve(&ann, event, 1)
        .await
        .assert_problem(409, "customer-limit");
    held(&app.reserve(&bob, event, 3).await);
    assert_eq!(app.floor(event).await, (44, 6, 0), "refusals hold nothing");
    for (kind, count) in [("customer-limit", 2.0), ("sold-out", 0.0)] {
        let refusals = [("route", "/api/reservations"), ("kind", kind)];
        let counted = app.metric("ticketing_http_problems_total", &refusals).await;
        assert_eq!(counted, count, "{kind}");
    }
}

/// Cancelling a hold and refunding a purchase give the allowance back; paying keeps it used.
#[tokio::test]
async fn cancellation_and_refund_give_the_allowance_back() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = limited_event(&app, &organizer, 50, json!(2)).await;
    let ann = app.customer().await;

    let first = held(&app.reserve(&ann, event, 2).await);
    app.reserve(&ann, event, 1)
        .await
        .assert_problem(409, "customer-limit");
    let cancel = format!("/api/reservations/{first}/cancel");
    let cancelled = app.post(&cancel, Some(&ann.token), json!({})).await;
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);

    let second = held(&app.reserve(&ann, event, 2).await);
    let paid = app.pay(&ann, second, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    app.reserve(&ann, event, 1)
        .await
        .assert_problem(409, "customer-limit");
    let refund = format!("/api/payments/{}/refund", paid.id("payment_id"));
    let refunded = app
        .post(&refund, Some(&ann.token), json!({"reason": "cannot come"}))
        .await;
    assert_eq!(refunded.status, 200, "{:#}", refunded.body);

    held(&app.reserve(&ann, event, 2).await);
    assert_eq!(app.floor(event).await, (48, 2, 0));
}

/// Lowering the limit below what a customer holds keeps their hold and refuses new ones; an
/// update without the field keeps the limit, `null` removes it.
#[tokio::test]
async fn the_owner_changes_the_limit_and_held_tickets_stay() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = limited_event(&app, &organizer, 50, json!(5)).await;
    let ann = app.customer().await;
    let kept = held(&app.reserve(&ann, event, 4).await);

    let lowered = set_limit(&app, &organizer, event, json!(2)).await;
    assert_eq!(lowered.status, 200, "{:#}", lowered.body);
    assert_eq!(lowered.body["max_tickets_per_customer"], 2);
    let mine = app
        .get(&format!("/api/reservations/{kept}"), Some(&ann.token))
        .await;
    assert_eq!(mine.body["status"], "pending");
    app.reserve(&ann, event, 1)
        .await
        .assert_problem(409, "customer-limit");

    let renamed = app
        .call(
            Method::PUT,
            &format!("/api/events/{event}"),
            Some(&organizer.token),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{:#}", renamed.body);
    assert_eq!(renamed.body["max_tickets_per_customer"], 2, "kept");

    let removed = set_limit(&app, &organizer, event, Value::Null).await;
    assert_eq!(removed.status, 200, "{:#}", removed.body);
    assert_eq!(removed.body["max_tickets_per_customer"], Value::Null);
    held(&app.reserve(&ann, event, 10).await);
    let shown = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(shown.body["max_tickets_per_customer"], Value::Null);
}

/// 0, 101, fractions, strings and negatives are 422 naming the field, on creation and update;
/// a refused update changes nothing. Without the field an event has no limit.
#[tokio::test]
async fn limits_outside_one_to_a_hundred_or_not_whole_are_422() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    for bad in [json!(0), json!(101), json!(2.5), json!("3"), json!(-1)] {
        let mut body = TestApp::event_body(10);
        body["max_tickets_per_customer"] = bad.clone();
        let refused = app.post("/api/events", Some(&organizer.token), body).await;
        refused.assert_problem(422, "validation-failed");
        assert_eq!(
            refused.body["errors"][0]["field"], "max_tickets_per_customer",
            "{bad}: {:#}",
            refused.body
        );
    }
    let event = app.draft_event(&organizer, 10).await;
    let shown = app
        .get(&format!("/api/events/{event}"), Some(&organizer.token))
        .await;
    assert_eq!(shown.body["max_tickets_per_customer"], Value::Null);
    assert_eq!(
        set_limit(&app, &organizer, event, json!(100)).await.status,
        200
    );
    for bad in [json!(0), json!(101), json!(1.5)] {
        let refused = set_limit(&app, &organizer, event, bad.clone()).await;
        refused.assert_problem(422, "validation-failed");
        assert_eq!(
            refused.body["errors"][0]["field"], "max_tickets_per_customer",
            "{bad}: {:#}",
            refused.body
        );
    }
    let shown = app
        .get(&format!("/api/events/{event}"), Some(&organizer.token))
        .await;
    assert_eq!(shown.body["max_tickets_per_customer"], 100);
}

/// A retry with the same `Idempotency-Key` gets the first answer and is not counted again, also
/// after the hold was cancelled; a refusal is replayed as the same refusal.
#[tokio::test]
async fn an_idempotent_retry_is_not_counted_twice() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = limited_event(&app, &organizer, 50, json!(3)).await;
    let ann = app.customer().await;

    let first = held(&reserve_with_key(&app, &ann, event, 3, "order-1").await);
    let retry = reserve_with_key(&app, &ann, event, 3, "order-1").await;
    assert_eq!(held(&retry), first, "the same reservation");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.floor(event).await, (47, 3, 0), "held once");

    let over = reserve_with_key(&app, &ann, event, 1, "order-2").await;
    over.assert_problem(409, "customer-limit");
    let cancel = format!("/api/reservations/{first}/cancel");
    let cancelled = app.post(&cancel, Some(&ann.token), json!({})).await;
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);
    let replayed = reserve_with_key(&app, &ann, event, 1, "order-2").await;
    replayed.assert_problem(409, "customer-limit");
    let again = reserve_with_key(&app, &ann, event, 3, "order-1").await;
    assert_eq!(held(&again), first, "a replay, not a new hold");
    assert_eq!(app.floor(event).await, (50, 0, 0));

    held(&reserve_with_key(&app, &ann, event, 3, "order-3").await);
}

/// The OpenAPI document describes the field as a nullable whole number in 1..=100, on
/// creation, update and the event view, so generated clients and schemathesis know it.
#[tokio::test]
async fn the_openapi_document_describes_the_limit() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json", None).await.body;
    for schema in ["CreateEventRequest", "UpdateEventRequest", "EventView"] {
        let field = &doc["components"]["schemas"][schema]["properties"]["max_tickets_per_customer"];
        // `{"anyOf": [{"type": "null"}, {"type": "integer", ...}]}` or one schema whose type
        // lists both.
        let branches: Vec<&Value> = match field["anyOf"].as_array() {
            Some(list) => list.iter().collect(),
            None => vec![field],
        };
        let types = |b: &Value| -> Vec<String> {
            match &b["type"] {
                Value::Array(list) => list.iter().map(|t| t.to_string()).collect(),
                other => vec![other.to_string()],
            }
        };
        let integer = branches
            .iter()
            .find(|b| types(b).contains(&"\"integer\"".to_owned()))
            .unwrap_or_else(|| panic!("{schema}: no integer in {field}"));
        assert_eq!(
            (&integer["minimum"], &integer["maximum"]),
            (&json!(1), &json!(100)),
            "{schema}: {field}"
        );
        assert!(
            branches
                .iter()
                .any(|b| types(b).contains(&"\"null\"".to_owned())),
            "{schema}: not nullable: {field}"
        );
    }
}
