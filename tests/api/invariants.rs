//! Invariants 1 and 2 of DESIGN.md checked from the outside: the availability read, every
//! reservation and payment of the event (as the admin sees them), and the gateway's ledger.

use super::helpers::*;
use serde_json::Value;
use ticketing::domain::PaymentId;
use ticketing::payment::ChargeOutcome;
use uuid::Uuid;

/// Every item of a paginated list, page by page (100 per page).
pub async fn all_pages(app: &TestApp, path: &str, token: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for page in 1u64.. {
        let separator = if path.contains('?') { '&' } else { '?' };
        let answer = app
            .get(
                &format!("{path}{separator}page={page}&page_size=100"),
                Some(token),
            )
            .await;
        assert_eq!(answer.status, 200, "{path}: {:#}", answer.body);
        items.extend(answer.body["items"].as_array().unwrap().iter().cloned());
        if page >= answer.body["total_pages"].as_u64().unwrap() {
            break;
        }
    }
    items
}

/// Asserts, for section `floor` of `event` with `capacity` seats:
/// 1. `available + held + sold == capacity` (so `held + sold <= capacity`);
/// 2. `sold` is the sum of the confirmed reservations' quantities and `held` that of the pending
///    ones; each confirmed reservation has one captured payment of exactly its total, which the
///    gateway holds as captured and not refunded.
///
/// Returns the money the confirmed reservations paid, in cents, for a check against
/// `app.gateway.net_captured_cents()` (refunds settle asynchronously, so callers wait for it).
pub async fn assert_sale_balances(app: &TestApp, event: Uuid, capacity: u64) -> i64 {
    let admin = app.admin().await;
    let (available, held, sold) = app.floor(event).await;
    assert_eq!(
        available + held + sold,
        capacity,
        "invariant 1: available {available} + held {held} + sold {sold} != capacity {capacity}"
    );

    let reservations: Vec<Value> = all_pages(app, "/api/reservations", &admin.token)
        .await
        .into_iter()
        .filter(|r| r["event_id"] == event.to_string())
        .collect();
    let quantity_of = |status: &str| -> u64 {
        reservations
            .iter()
            .filter(|r| r["status"] == status)
            .map(|r| r["quantity"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(quantity_of("confirmed"), sold, "sold seats vs confirmed");
    assert_eq!(quantity_of("pending"), held, "held seats vs pending");

    let mut paid = 0;
    for r in reservations.iter().filter(|r| r["status"] == "confirmed") {
        let total = r["total_cents"].as_i64().unwrap();
        let payment_id: Uuid = r["payment_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("confirmed reservation without a payment: {r:#}"));
        let payment = app
            .get(&format!("/api/payments/{payment_id}"), Some(&admin.token))
            .await;
        assert_eq!(payment.status, 200, "{:#}", payment.body);
        assert_eq!(payment.body["status"], "captured", "{:#}", payment.body);
        assert_eq!(payment.body["amount_cents"], total, "{:#}", payment.body);
        assert_eq!(payment.body["reservation_id"], r["reservation_id"]);
        let charge = app
            .gateway
            .charge_of(PaymentId(payment_id))
            .await
            .unwrap()
            .expect("the gateway knows the payment");
        assert!(
            matches!(charge.outcome, ChargeOutcome::Captured { .. }) && !charge.refunded,
            "{charge:?}"
        );
        assert_eq!(charge.amount.amount_cents, total);
        paid += total;
    }
    paid
}

/// Waits until the gateway keeps exactly `cents` (refunds settle asynchronously).
pub async fn gateway_settles_at(app: &TestApp, cents: i64) {
    eventually(
        &format!("the gateway keeps {cents} cents"),
        std::time::Duration::from_secs(5),
        || async { app.gateway.net_captured_cents().await.unwrap() == cents },
    )
    .await;
}
