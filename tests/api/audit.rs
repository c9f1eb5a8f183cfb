//! The audit trail over HTTP: sensitive actions show up in `GET /admin/audit` with the right
//! actor and result, filters select them, and only admins may read it. Records are written in
//! the background, so the reads poll with a deadline.

use super::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The entries `GET /admin/audit?<query>` returns once `ready` holds for them: polled, with
/// a deadline, because the trail is written in the background.
async fn audit_entries(
    app: &TestApp,
    admin: &User,
    query: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let answer = app
            .get(&format!("/admin/audit?{query}"), Some(&admin.token))
            .await;
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        let found = answer.body["items"].as_array().cloned().unwrap_or_default();
        if ready(&found) {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for audit entries of {query}: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logins that succeed and fail, and a refund, are recorded with who did them.
#[tokio::test]
async fn logins_and_refunds_show_up_with_the_right_actor() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;

    let wrong = app
        .call_with(
            reqwest::Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": buyer.email, "password": "not-the-password"})),
            &[
                ("user-agent", "audit-test/1"),
                ("x-correlation-id", "audit-corr-1"),
            ],
        )
        .await;
    wrong.assert_problem(401, "invalid-credentials");

    let event = app.event_on_sale(&organizer, 10).await;
    let held = app.reserve(&buyer, event, 2).await;
    let paid = app.pay(&buyer, held.id("reservation_id"), "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);
    let payment = paid.id("payment_id");
    let refunded = app
        .post(
            &format!("/api/payments/{payment}/refund"),
            Some(&buyer.token),
            json!({"reason": "cannot come"}),
        )
        .await;
    assert_eq!(refunded.status, 200, "{:#}", refunded.body);

    // The buyer's own successful login (made by `customer()`), by actor.
    let mine = audit_entries(
        &app,
        &admin,
        &format!("user={}&action=auth.login", buyer.id),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(mine[0]["result"], "success");
    assert_eq!(mine[0]["actor_label"], "customer");
    assert_eq!(mine[0]["resource_id"], buyer.id.to_string());

    // The failed one: no actor, the attempted email, the request's context, no password.
    let failed = audit_entries(&app, &admin, "action=auth.login", |e| {
        e.iter().any(|r| r["result"] == "failure")
    })
    .await;
    let failure = failed
        .iter()
        .find(|r| r["result"] == "failure")
        .expect("a failed login");
    assert_eq!(failure["actor_id"], Value::Null);
    assert_eq!(failure["actor_label"], buyer.email.as_str());
    assert_eq!(failure["user_agent"], "audit-test/1");
    assert_eq!(failure["correlation_id"], "audit-corr-1");
    assert_eq!(failure["client_ip"], "127.0.0.1");
    assert!(!failure.to_string().contains("not-the-password"));

    // The refund: the buyer did it, on that payment, with the reason and amount.
    let refunds = audit_entries(
        &app,
        &admin,
        &format!("resource=payment&resource_id={payment}"),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(refunds.len(), 1, "{refunds:#?}");
    let refund = &refunds[0];
    assert_eq!(refund["action"], "payment.refund");
    assert_eq!(refund["actor_id"], buyer.id.to_string());
    assert_eq!(refund["result"], "success");
    assert_eq!(refund["details"]["reason"], "cannot come");
    assert_eq!(refund["details"]["amount_cents"], 5000);

    // The organizer's event changes, newest first.
    let changes = audit_entries(
        &app,
        &admin,
        &format!("resource=event&resource_id={event}"),
        |e| e.len() >= 3,
    )
    .await;
    let actions: Vec<&str> = changes
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["event.open_sales", "event.publish", "event.create"]
    );
    assert!(changes
        .iter()
        .all(|r| r["actor_id"] == organizer.id.to_string()));
}

/// Cancelling a confirmed reservation is a refund in the trail; a refused refund is `denied`
/// or `failure` with the caller as actor.
#[tokio::test]
async fn refunds_by_cancellation_and_refused_refunds_are_recorded() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let stranger = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let held = app.reserve(&buyer, event, 1).await;
    let reservation = held.id("reservation_id");
    let paid = app.pay(&buyer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);

    let refused = app
        .post(
            &format!("/api/payments/{}/refund", paid.id("payment_id")),
            Some(&stranger.token),
            json!({"reason": "not mine"}),
        )
        .await;
    assert_eq!(refused.status, 404, "{:#}", refused.body);
    let cancelled = app.cancel(&buyer, reservation).await;
    assert_eq!(cancelled.status, 200, "{:#}", cancelled.body);
    assert_eq!(cancelled.body["status"], "refunded");

    let by_cancel = audit_entries(
        &app,
        &admin,
        &format!("action=reservation.refund&resource_id={reservation}"),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(by_cancel[0]["actor_id"], buyer.id.to_string());
    assert_eq!(by_cancel[0]["result"], "success");

    let attempts = audit_entries(
        &app,
        &admin,
        &format!("user={}&action=payment.refund", stranger.id),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(attempts[0]["result"], "failure");
    assert_eq!(attempts[0]["details"]["status"], 404);
}

/// Only admins read the trail; filters are validated and pages work like every list.
#[tokio::test]
async fn only_admins_read_the_audit_log_and_it_pages_like_other_lists() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let organizer = app.organizer().await;

    app.get("/admin/audit", None)
        .await
        .assert_problem(401, "unauthorized");
    app.get("/admin/audit", Some(&customer.token))
        .await
        .assert_problem(403, "forbidden");
    app.get("/admin/audit", Some(&organizer.token))
        .await
        .assert_problem(403, "forbidden");
    app.get("/admin/audit?page_size=101", Some(&admin.token))
        .await
        .assert_problem(422, "validation-failed");
    app.get("/admin/audit?user=not-a-uuid", Some(&admin.token))
        .await
        .assert_problem(400, "bad-request");

    // The two registrations and three logins (the admin's own included), and the two refusals
    // by role: 7 entries once all are written; page 2 of size 2 holds the third and fourth
    // newest.
    let all = audit_entries(&app, &admin, "page_size=100", |e| e.len() >= 7).await;
    let page = app
        .get("/admin/audit?page=2&page_size=2", Some(&admin.token))
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["page"], 2);
    assert_eq!(page.body["page_size"], 2);
    assert!(page.body["total_count"].as_u64().unwrap() >= 7);
    let ids: Vec<&Value> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&all[2]["id"], &all[3]["id"]]);
    let registered = audit_entries(
        &app,
        &admin,
        &format!("action=auth.register&user={}", customer.id),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(registered[0]["resource_id"], customer.id.to_string());
}

/// A signed-in caller refused by role is in the trail as `access.denied` on the route, with
/// who they are and the request's context; an anonymous 401 is not recorded.
#[tokio::test]
async fn refusals_by_role_show_up_as_access_denied() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let organizer = app.organizer().await;

    let probe = app
        .call_with(
            reqwest::Method::GET,
            "/admin/dlq",
            Some(&customer.token),
            None,
            &[
                ("user-agent", "probe/1"),
                ("x-correlation-id", "denied-corr-1"),
            ],
        )
        .await;
    probe.assert_problem(403, "forbidden");
    app.post(
        "/api/events",
        Some(&customer.token),
        json!({"name": "not mine to make"}),
    )
    .await
    .assert_problem(403, "forbidden");
    app.get("/admin/dlq", None)
        .await
        .assert_problem(401, "unauthorized");
    // Last: the trail is written in order, so once this shows, the 401's entry would too.
    app.get("/admin/audit", Some(&organizer.token))
        .await
        .assert_problem(403, "forbidden");

    let by_customer = audit_entries(
        &app,
        &admin,
        &format!("action=access.denied&user={}", customer.id),
        |e| e.len() >= 2,
    )
    .await;
    let routes: Vec<&str> = by_customer
        .iter()
        .filter_map(|r| r["resource_id"].as_str())
        .collect();
    assert_eq!(routes, ["POST /api/events", "GET /admin/dlq"]);
    let probe = &by_customer[1];
    assert_eq!(probe["result"], "denied");
    assert_eq!(probe["resource_type"], "route");
    assert_eq!(probe["actor_label"], "customer");
    assert_eq!(probe["user_agent"], "probe/1");
    assert_eq!(probe["correlation_id"], "denied-corr-1");
    assert_eq!(probe["details"]["status"], 403);

    let by_organizer = audit_entries(
        &app,
        &admin,
        &format!("action=access.denied&user={}", organizer.id),
        |e| !e.is_empty(),
    )
    .await;
    assert_eq!(by_organizer.len(), 1, "{by_organizer:#?}");
    assert_eq!(by_organizer[0]["resource_id"], "GET /admin/audit");
    // Only the three refusals: the anonymous 401 left no entry.
    let denied = audit_entries(&app, &admin, "action=access.denied", |_| true).await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
}
