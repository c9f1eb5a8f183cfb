//! The purchase path end to end: the shortest proof that the pieces fit.

use super::helpers::*;

/// A customer reserves seats, pays with tok_visa, and the seats show as sold.
#[tokio::test]
async fn a_full_purchase_confirms_the_reservation_and_sells_the_seats() {
    let app = spawn_app().await;
    let organizer = app.organizer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    let buyer = app.customer().await;

    let reservation = app.reserve(&buyer, event, 2).await;
    assert_eq!(reservation.status, 201, "{:#}", reservation.body);
    assert_eq!(reservation.body["status"], "pending");
    assert_eq!(reservation.body["total_cents"], 5000);
    let reservation_id = reservation.id("reservation_id");
    assert_eq!(
        reservation.header("location"),
        Some(format!("/api/reservations/{reservation_id}").as_str())
    );
    assert_eq!(app.floor(event).await, (8, 2, 0));

    let payment = app.pay(&buyer, reservation_id, "tok_visa").await;
    assert_eq!(payment.status, 201, "{:#}", payment.body);
    assert_eq!(payment.body["status"], "captured");
    assert_eq!(payment.body["amount_cents"], 5000);

    let read = app
        .get(
            &format!("/api/reservations/{reservation_id}"),
            Some(&buyer.token),
        )
        .await;
    assert_eq!(read.body["status"], "confirmed");
    assert_eq!(app.floor(event).await, (8, 0, 2));
    assert_eq!(app.gateway.net_captured_cents().await.unwrap(), 5000);
}
