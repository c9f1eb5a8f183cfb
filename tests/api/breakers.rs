//! Circuit breakers seen from outside: a failing payment gateway opens its breaker, payments
//! are then refused at once with 503 + `Retry-After` without reaching the gateway, and once
//! the gateway is back a probe after the cool-down closes the breaker again. The state shows
//! on `/metrics`, `/ready` and the system dashboard.

use super::helpers::*;
use serde_json::Value;
use std::time::Duration;

const GATEWAY: (&str, &str) = ("dependency", "payment_gateway");

fn breaker<'a>(body: &'a Value, check: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .unwrap_or_else(|| panic!("no {check} check in {body:#}"))
}

#[tokio::test]
async fn a_failing_gateway_opens_its_breaker_and_a_probe_closes_it() {
    let app = spawn_app_with(|config| {
        config.breaker.consecutive = 3;
        config.breaker.window = 0;
        config.breaker.cool_down = Duration::from_secs(1);
    })
    .await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let admin = app.admin().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let reservation = app.reserve(&buyer, event, 2).await.id("reservation_id");
    let ready = app.get("/ready", None).await;
    assert_eq!(
        breaker(&ready.body, "payment_gateway_breaker")["status"],
        "pass"
    );

    app.gateway.set_failure_rate(1.0);
    for _ in 0..3 {
        let failed = app.pay(&buyer, reservation, "tok_visa").await;
        failed.assert_problem(503, "service-unavailable");
    }
    assert_eq!(
        app.metric("ticketing_circuit_breaker_state", &[GATEWAY])
            .await,
        2.0
    );

    // Open: refused at once, nothing sent to the gateway.
    let calls = app.gateway.calls();
    for _ in 0..5 {
        let refused = app.pay(&buyer, reservation, "tok_visa").await;
        refused.assert_problem(503, "service-unavailable");
        let retry_after: u64 = refused
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert_eq!(retry_after, 1, "the cool-down left, rounded up");
    }
    assert_eq!(app.gateway.calls(), calls, "an open breaker sends nothing");
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, 200, "{:#}", ready.body);
    assert_eq!(ready.body["status"], "degraded");
    let check = breaker(&ready.body, "payment_gateway_breaker");
    assert_eq!(check["status"], "warn", "{check:#}");
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("simulated processor timeout"),
        "{check:#}"
    );
    let dashboard = app.get("/admin/dashboard/system", Some(&admin.token)).await;
    let figures = dashboard.body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["dependency"] == "payment_gateway")
        .cloned()
        .unwrap();
    assert_eq!(figures["state"], "open", "{figures:#}");

    // Back: after the cool-down one probe goes through and closes the breaker.
    app.gateway.set_failure_rate(0.0);
    let started = std::time::Instant::now();
    let paid = loop {
        let answer = app.pay(&buyer, reservation, "tok_visa").await;
        if answer.status == 201 {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the breaker never let a probe through: {:#}",
            answer.body
        );
        answer.assert_problem(503, "service-unavailable");
        // Polling interval, bounded by the deadline above.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(paid.body["status"], "captured");
    assert_eq!(
        app.metric("ticketing_circuit_breaker_state", &[GATEWAY])
            .await,
        0.0
    );
    for (to, at_least) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        let moved = app
            .metric(
                "ticketing_circuit_breaker_transitions_total",
                &[GATEWAY, ("to", to)],
            )
            .await;
        assert!(moved >= at_least, "{to}: {moved}");
    }
    let ready = app.get("/ready", None).await;
    assert_eq!(
        breaker(&ready.body, "payment_gateway_breaker")["status"],
        "pass"
    );
    assert_eq!(
        app.gateway.net_captured_cents().await.unwrap(),
        5000,
        "charged once"
    );
}
