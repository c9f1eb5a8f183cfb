//! The dead letter queue over HTTP, on the in-process bus: a poison message produced straight
//! onto a topic shows up in `/admin/dlq` with a useful error while the partition keeps
//! flowing; stats count it; discard (with a reason) and resolve close entries and record who,
//! on the entry and in the audit trail; only admins get in.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;
use ticketing::bus::BusMessage;

/// A message on the reservations topic that no consumer can decode.
fn poison(stream: &str, version: &str) -> BusMessage {
    let headers = [
        ("event-type", "reservation.placed"),
        ("event-version", version),
        ("stream-id", stream),
        ("stream-version", "1"),
        ("position", "1"),
        ("sale-id", "00000000-0000-0000-0000-000000000001"),
        ("recorded-at", "2030-01-01T09:00:00Z"),
        ("correlation-id", "poison-test"),
    ];
    BusMessage {
        topic: "ticketing.reservations".into(),
        key: stream.into(),
        headers: headers
            .iter()
            .map(|&(k, v)| (k.into(), v.to_string()))
            .collect(),
        payload: vec![0xde, 0xad, 0xbe, 0xef],
    }
}

/// The pending entries of `consumer`. Every consumer of the topic (`insights`, `webhooks`)
/// dead-letters the poison it cannot read, each under its own name.
async fn pending_entries(app: &TestApp, admin: &User, consumer: &str) -> Vec<Value> {
    let list = app
        .get("/admin/dlq?status=pending", Some(&admin.token))
        .await;
    assert_eq!(list.status, 200, "{:#}", list.body);
    let items = list.body["items"].as_array().unwrap();
    items
        .iter()
        .filter(|e| e["consumer"] == consumer)
        .cloned()
        .collect()
}

/// Poison lands in the DLQ with its reason, the consumer goes on, and admins close entries.
#[tokio::test]
async fn poison_messages_are_dead_lettered_and_admins_work_through_them() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.bus
        .publish(vec![
            poison("reservation-poison-a", "2"),
            poison("reservation-poison-b", "99"),
        ])
        .await
        .unwrap();

    eventually(
        "two dead letters per consumer",
        Duration::from_secs(10),
        || async {
            pending_entries(&app, &admin, "insights").await.len() == 2
                && pending_entries(&app, &admin, "webhooks").await.len() == 2
        },
    )
    .await;
    let entries = pending_entries(&app, &admin, "insights").await;
    let by_stream = |s: &str| {
        entries
            .iter()
            .find(|e| e["stream_id"] == s)
            .unwrap_or_else(|| panic!("no entry for {s}: {entries:#?}"))
            .clone()
    };
    let garbage = by_stream("reservation-poison-a");
    let future = by_stream("reservation-poison-b");
    assert!(
        garbage["error"]
            .as_str()
            .unwrap()
            .contains("malformed payload"),
        "{garbage:#}"
    );
    assert!(
        future["error"]
            .as_str()
            .unwrap()
            .contains("unknown event reservation.placed version 99"),
        "{future:#}"
    );
    assert_eq!(garbage["consumer"], "insights");
    assert_eq!(garbage["metadata"]["correlation-id"], "poison-test");
    assert_eq!(garbage["retry_count"], 0);

    // The partition keeps flowing: a purchase made now still reaches the insights.
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 5).await;
    let buyer = app.customer().await;
    let reservation = app.reserve(&buyer, event, 1).await.id("reservation_id");
    assert_eq!(app.pay(&buyer, reservation, "tok_visa").await.status, 201);
    app.get_when(
        &format!("/api/analytics/events/{event}/sales"),
        Some(&organizer.token),
        |a| a.body["tickets_sold"] == 1,
    )
    .await;

    let stats = app.get("/admin/dlq/stats", Some(&admin.token)).await;
    assert_eq!(
        stats.body,
        json!({"pending": 4, "processing": 0, "resolved": 0, "discarded": 0})
    );

    // Retrying poison fails again: 422 with the new error, one more retry.
    let id = garbage["id"].as_i64().unwrap();
    let retried = app
        .post(
            &format!("/admin/dlq/{id}/retry"),
            Some(&admin.token),
            json!({}),
        )
        .await;
    retried.assert_problem(422, "retry-failed");
    assert_eq!(retried.body["retry_count"], 1);
    let one = app
        .get(&format!("/admin/dlq/{id}"), Some(&admin.token))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(
        (one.body["status"].clone(), one.body["retry_count"].clone()),
        (json!("pending"), json!(1))
    );

    // Discarding needs a reason; resolving does not.
    app.post(
        &format!("/admin/dlq/{id}/discard"),
        Some(&admin.token),
        json!({"reason": "   "}),
    )
    .await
    .assert_problem(422, "validation-failed");
    let discarded = app
        .post(
            &format!("/admin/dlq/{id}/discard"),
            Some(&admin.token),
            json!({"reason": "test garbage"}),
        )
        .await;
    assert_eq!(discarded.status, 200, "{:#}", discarded.body);
    assert_eq!(discarded.body["status"], "discarded");
    assert_eq!(discarded.body["notes"], "test garbage");
    assert_eq!(discarded.body["resolved_by"], admin.id.to_string());
    app.post(
        &format!("/admin/dlq/{id}/resolve"),
        Some(&admin.token),
        json!({}),
    )
    .await
    .assert_problem(409, "dead-letter-not-pending");

    let other = future["id"].as_i64().unwrap();
    let resolved = app
        .post(
            &format!("/admin/dlq/{other}/resolve"),
            Some(&admin.token),
            json!({"notes": "replayed by hand"}),
        )
        .await;
    assert_eq!(resolved.status, 200, "{:#}", resolved.body);
    assert_eq!(resolved.body["status"], "resolved");
    let stats = app.get("/admin/dlq/stats", Some(&admin.token)).await;
    assert_eq!(
        stats.body,
        json!({"pending": 2, "processing": 0, "resolved": 1, "discarded": 1}),
        "the webhooks consumer's two entries are still pending"
    );
    let resolved_list = app
        .get("/admin/dlq?status=resolved", Some(&admin.token))
        .await;
    assert_eq!(resolved_list.body["total_count"], 1);
    app.get("/admin/dlq/999999", Some(&admin.token))
        .await
        .assert_problem(404, "not-found");
    app.get("/admin/dlq?status=lost", Some(&admin.token))
        .await
        .assert_problem(400, "bad-request");

    // Every action is in the audit trail with its actor and result.
    for (action, entry, result) in [
        ("dlq.retry", id, "failure"),
        ("dlq.discard", id, "success"),
        ("dlq.resolve", other, "success"),
    ] {
        let query = format!("/admin/audit?action={action}&resource_id={entry}");
        let trail = app
            .get_when(&query, Some(&admin.token), |a| {
                a.body["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|r| r["result"] == result))
            })
            .await;
        let record = trail.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["result"] == result)
            .unwrap()
            .clone();
        assert_eq!(record["actor_id"], admin.id.to_string(), "{record:#}");
        assert_eq!(record["resource_type"], "dlq_entry", "{record:#}");
    }

    // The DLQ series moved on /metrics.
    let metrics = metrics::scrape(&app.client, &app.base).await;
    assert!(
        metrics.contains("ticketing_dlq_entries{status=\"discarded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "ticketing_consumer_events_total{consumer=\"insights\",outcome=\"dead_lettered\"} 2"
    ));
}

/// Every DLQ route: anonymous callers get 401, customers and organizers 403.
#[tokio::test]
async fn only_admins_reach_the_dead_letter_queue() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let organizer = app.organizer().await;
    let admin = app.admin().await;
    let routes = [
        ("GET", "/admin/dlq", 200),
        ("GET", "/admin/dlq/stats", 200),
        ("GET", "/admin/dlq/1", 404),
        ("POST", "/admin/dlq/1/retry", 404),
        ("POST", "/admin/dlq/1/resolve", 404),
        ("POST", "/admin/dlq/1/discard", 404),
    ];
    for (method, path, as_admin) in routes {
        let body = Some(json!({"reason": "x"}));
        let call = |token: Option<String>| {
            let body = body.clone();
            let app = &app;
            async move {
                app.call(method.parse().unwrap(), path, token.as_deref(), body)
                    .await
            }
        };
        call(None).await.assert_problem(401, "unauthorized");
        for user in [&customer, &organizer] {
            call(Some(user.token.clone()))
                .await
                .assert_problem(403, "forbidden");
        }
        let answer = call(Some(admin.token.clone())).await;
        assert_eq!(
            answer.status, as_admin,
            "{method} {path}: {:#}",
            answer.body
        );
    }
}
