//! The contract both ledgers of the simulated processor keep: a charge is made once per
//! payment id (a retry gets the first answer), refunds are idempotent and refused for what was
//! not captured, and "captures since" lists captures with what they paid for, oldest first.

use super::SimulatedGateway;
use crate::clock::{Clock, ManualClock};
use crate::domain::{Currency, EventId, Money, PaymentId, ReservationId};
use crate::payment::{ChargeFor, ChargeOutcome, GatewayError, PaymentGateway};
use chrono::Duration;

fn cents(n: i64) -> Money {
    Money::new(n, Currency::USD)
}

fn paid_for() -> ChargeFor {
    ChargeFor {
        reservation_id: ReservationId::random(),
        event_id: EventId::random(),
    }
}

pub async fn run(gateway: &SimulatedGateway, clock: &ManualClock) {
    let started = clock.now();
    let (ok, declined, later) = (
        PaymentId::random(),
        PaymentId::random(),
        PaymentId::random(),
    );
    let ok_for = paid_for();
    assert!(matches!(
        gateway.charge(ok, cents(500), "tok_visa", ok_for).await,
        Ok(ChargeOutcome::Captured { .. })
    ));
    // A retry with another token (or another purpose) gets the first answer.
    assert!(matches!(
        gateway
            .charge(ok, cents(500), "tok_chargeDeclined", paid_for())
            .await,
        Ok(ChargeOutcome::Captured { .. })
    ));
    assert!(matches!(
        gateway
            .charge(declined, cents(700), "tok_chargeDeclined", paid_for())
            .await,
        Ok(ChargeOutcome::Declined { reason }) if reason == "card_declined"
    ));
    clock.advance(Duration::seconds(10));
    gateway
        .charge(later, cents(300), "tok_amex", paid_for())
        .await
        .unwrap();
    assert_eq!(gateway.net_captured_cents().await.unwrap(), 800);

    // Captures since: declines left out, metadata kept, oldest first, a bound honoured.
    let captures = gateway.captures_since(started).await.unwrap();
    let ids: Vec<PaymentId> = captures.iter().map(|c| c.payment_id).collect();
    assert_eq!(ids, vec![ok, later]);
    assert_eq!(captures[0].paid_for, ok_for);
    assert_eq!(captures[0].amount, cents(500));
    assert_eq!(captures[0].captured_at, started);
    assert_eq!(captures[0].charge_id, format!("ch_{}", ok.0.simple()));
    assert!(!captures[0].refunded);
    let recent = gateway
        .captures_since(started + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(
        recent.iter().map(|c| c.payment_id).collect::<Vec<_>>(),
        vec![later]
    );

    // Refunds: idempotent; refused for a decline and an unknown payment.
    gateway.refund(ok).await.unwrap();
    gateway.refund(ok).await.unwrap();
    assert_eq!(gateway.net_captured_cents().await.unwrap(), 300);
    assert!(gateway.charge_of(ok).await.unwrap().unwrap().refunded);
    assert!(matches!(
        gateway.refund(declined).await,
        Err(GatewayError::RefundRefused(_))
    ));
    assert!(matches!(
        gateway.refund(PaymentId::random()).await,
        Err(GatewayError::RefundRefused(_))
    ));
    assert!(gateway
        .charge_of(PaymentId::random())
        .await
        .unwrap()
        .is_none());
    let listed = gateway.captures_since(started).await.unwrap();
    assert!(listed[0].refunded && !listed[1].refunded);

    // An unavailable processor charges nothing and lists nothing.
    gateway.set_failure_rate(1.0);
    let down = PaymentId::random();
    assert!(matches!(
        gateway
            .charge(down, cents(100), "tok_visa", paid_for())
            .await,
        Err(GatewayError::Unavailable(_))
    ));
    assert!(gateway.captures_since(started).await.is_err());
    gateway.set_failure_rate(0.0);
    assert!(gateway.charge_of(down).await.unwrap().is_none());

    // Charges made at once (batched by the PostgreSQL ledger): a double click's two first
    // attempts get one answer and one charge, a retry of an earlier payment its first answer,
    // and a new payment beside them its own.
    let (twice, twice_for, beside) = (PaymentId::random(), paid_for(), PaymentId::random());
    let (first, second, retried, new) = tokio::join!(
        gateway.charge(twice, cents(40), "tok_visa", twice_for),
        gateway.charge(twice, cents(40), "tok_chargeDeclined", twice_for),
        gateway.charge(later, cents(1), "tok_chargeDeclined", paid_for()),
        gateway.charge(beside, cents(2), "tok_chargeDeclined", paid_for()),
    );
    assert_eq!(first.unwrap(), second.unwrap());
    assert!(matches!(retried, Ok(ChargeOutcome::Captured { .. })));
    assert!(matches!(new, Ok(ChargeOutcome::Declined { .. })));
    assert_eq!(gateway.net_captured_cents().await.unwrap(), 340);
    assert_eq!(
        gateway.charge_of(twice).await.unwrap().unwrap().paid_for,
        twice_for
    );
}
