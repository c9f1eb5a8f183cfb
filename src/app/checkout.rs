//! Checkout: holding seats, paying for a hold, cancelling and refunding. The charge happens
//! before anything is recorded; a capture that can no longer confirm its reservation (it
//! expired meanwhile) is refunded in the same commit, so money and seats always balance.
//! Ids derive from the caller's `Idempotency-Key` when there is one, so a retry (even on
//! another instance) finds what its first attempt made instead of making it twice.

use super::error::{CUSTOMER_LIMIT, SALES_NOT_OPEN, SOLD_OUT};
use super::idempotency::{self, derived_id};
use super::replays::{paid, refunded_at_once};
use super::{policy, App, AppError};
use crate::auth::Principal;
use crate::domain::reservation::{ensure_payable, ReservationStatus};
use crate::domain::{
    Currency, DomainEvent, EventId, Money, Outcome, PaymentId, ReservationId, SaleCommand,
    SaleError,
};
use crate::eventstore::Metadata;
use crate::payment::{ChargeFor, ChargeOutcome, GatewayError};
use crate::projections::{PaymentView, ReservationView};
use uuid::Uuid;

/// What a customer asks to hold.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub event_id: Uuid,
    pub section: String,
    pub quantity: u32,
    /// The `Queue-Pass` header, needed while the event's waiting room is enabled.
    pub queue_pass: Option<String>,
}

/// What a customer pays with: a reservation and a card token.
#[derive(Debug, Clone)]
pub struct PayRequest {
    pub reservation_id: Uuid,
    pub card_token: String,
}

/// A cancelled reservation, and what it was before (a confirmed one was refunded).
pub struct Cancelled {
    pub view: ReservationView,
    pub was: ReservationStatus,
}

/// The refusals of a reserve that the sale's writer decides after finding the reservation id
/// unused in the sale (`domain::sale`, `a_repeat_is_a_duplicate_even_when_sold_out_or_ended`).
const REFUSED_AFTER_THE_ID_CHECK: [&str; 2] = [SOLD_OUT, CUSTOMER_LIMIT];

impl App {
    /// Holds seats for `caller`; the hold lasts `RESERVATION_TTL_SECONDS` unless paid. With a
    /// key, the answer is recorded in the log with the hold (`idempotency`): a refusal that
    /// does not prove the key's hold absent looks for it there first.
    pub async fn reserve(
        &self,
        caller: &Principal,
        key: Option<&str>,
        hold: HoldRequest,
        mut metadata: Metadata,
    ) -> Result<ReservationView, AppError> {
        let id = ReservationId(derived_id(
            caller.user_id,
            "reservation",
            hold.event_id,
            key,
        ));
        metadata.request_fingerprint = idempotency::request_fingerprint();
        match self.hold_seats(caller, id, hold, metadata).await {
            Ok(view) => {
                idempotency::recorded_by_this_request();
                Ok(view)
            }
            // The writer checks the id before the seats and the customer's limit, so those
            // refusals prove the first attempt placed nothing (a sold-out flood of retries
            // costs no look-up each); an unavailable store or read model proves nothing either
            // way, and the client retries.
            Err(e @ (AppError::Unavailable { .. } | AppError::Internal(_))) => Err(e),
            Err(e @ AppError::Conflict { kind, .. })
                if REFUSED_AFTER_THE_ID_CHECK.contains(&kind) =>
            {
                Err(e)
            }
            // Refused for another reason (the writer found the id used: a retry after a lost
            // answer, maybe of an attempt on another instance a moment ago; or the sale closed
            // since, or a queue pass expired): placed before, or not.
            Err(refusal) if key.is_some() => self.placed_with_this_key(id, refusal).await,
            Err(e) => Err(e),
        }
    }

    async fn hold_seats(
        &self,
        caller: &Principal,
        id: ReservationId,
        hold: HoldRequest,
        metadata: Metadata,
    ) -> Result<ReservationView, AppError> {
        let event_id = EventId(hold.event_id);
        // A sale whose writer runs here is known to it: the writer refuses a sale that is not
        // open itself, so the read models are asked only before a sale's first command here
        // (which also keeps unknown ids from starting writers) or to answer a refusal below.
        let looked_up = !self.sales.is_running(event_id);
        if looked_up {
            policy::see_event(Some(caller), self.event_view(event_id).await?)?;
        }
        self.check_queue_pass(caller, hold.event_id, hold.queue_pass.as_deref())
            .await?;
        let command = SaleCommand::Reserve {
            reservation_id: id,
            user_id: caller.user_id,
            section: hold.section.trim().to_owned(),
            quantity: hold.quantity,
            hold_for: self.hold_for,
            now: self.clock.now(),
        };
        let committed = match self.create(event_id, command, metadata).await {
            Ok(committed) => committed,
            // A draft is hidden from all but its organizer and admins: 404, as reads answer.
            Err(
                e @ AppError::Conflict {
                    kind: SALES_NOT_OPEN,
                    ..
                },
            ) if !looked_up => {
                policy::see_event(Some(caller), self.event_view(event_id).await?)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // The answer comes from the committed event, as the read models will show it. Until
        // they do, the payment that follows (and the client's read of it) is answered from
        // memory (`Reads::unseen`) without waiting for them.
        let placed = committed.events.iter().find_map(|e| match e {
            DomainEvent::ReservationPlaced(placed) => Some(ReservationView::from(placed)),
            _ => None,
        });
        match placed {
            Some(view) => Ok(view),
            None => self.reservation_view(id).await,
        }
    }

    /// Charges the card for a pending hold of the caller and records the gateway's answer:
    /// a capture confirms the reservation, a decline is `PaymentDeclined` and the hold stays.
    pub async fn pay(
        &self,
        caller: &Principal,
        key: Option<&str>,
        order: PayRequest,
        mut metadata: Metadata,
    ) -> Result<PaymentView, AppError> {
        let payment_id = PaymentId(derived_id(
            caller.user_id,
            "payment",
            order.reservation_id,
            key,
        ));
        // With a key, the payment id is derived from it: a retry can find the first attempt.
        let retried = key.is_some().then_some(payment_id);
        let reservation = self
            .reservation_by_id(ReservationId(order.reservation_id))
            .await?;
        policy::pay_for(caller, reservation.user_id)?;
        // The writer decides again when the capture is recorded (a capture that lost the
        // race is refunded); asking first spares the card a charge refunded at once.
        if let Err(refusal) =
            ensure_payable(reservation.status, reservation.expires_at, self.clock.now())
        {
            let refusal = AppError::from(SaleError::from(refusal));
            return self.replay_or(retried, refusal).await;
        }
        let currency = Currency::parse(&reservation.currency).map_err(anyhow::Error::from)?;
        let amount = Money::new(reservation.total_cents, currency);
        let reservation_id = ReservationId(reservation.reservation_id);
        let paid_for = ChargeFor {
            reservation_id,
            event_id: EventId(reservation.event_id),
        };
        let outcome = self
            .gateway
            .charge(payment_id, amount, &order.card_token, paid_for)
            .await
            .map_err(|e| self.gateway_failed(e))?;
        if self.crash_after_capture && matches!(outcome, ChargeOutcome::Captured { .. }) {
            // The fault reconciliation exists for: money taken, nothing recorded.
            tracing::error!(%payment_id, "FAULT_CRASH_AFTER_CAPTURE: aborting before the append");
            std::process::abort();
        }
        let now = self.clock.now();
        let command = match &outcome {
            ChargeOutcome::Captured { charge_id } => SaleCommand::RecordCapture {
                payment_id,
                reservation_id,
                amount,
                charge_id: charge_id.clone(),
                now,
            },
            ChargeOutcome::Declined { reason } => SaleCommand::RecordDecline {
                payment_id,
                reservation_id,
                amount,
                reason: reason.clone(),
                now,
            },
        };
        // The gateway has answered: record it, also through contention between instances. With
        // a key, the payment's first event records the answer (`replays`).
        metadata.request_fingerprint = idempotency::request_fingerprint();
        let committed = match self
            .record(EventId(reservation.event_id), command, metadata)
            .await
        {
            Ok(committed) => committed,
            // Already recorded: by a first attempt with the same key, or by reconciliation
            // (this request outlived its grace); either way the payment has its answer.
            Err(e @ AppError::Conflict { .. }) => return self.replay_or(Some(payment_id), e).await,
            Err(e) => return Err(e),
        };
        let counted = match (&outcome, &committed.outcome) {
            (_, Outcome::Compensated(_)) => "captured_then_refunded",
            (ChargeOutcome::Captured { .. }, _) => "captured",
            (ChargeOutcome::Declined { .. }, _) => "declined",
        };
        self.metrics.payments.with_label_values(&[counted]).inc();
        if let Outcome::Compensated(cause) = committed.outcome {
            // The refund after the capture records this answer (`replays`).
            idempotency::recorded_by_this_request();
            return Err(refunded_at_once(cause));
        }
        // The answer comes from the committed event, as the read models will show it.
        let recorded = committed.events.iter().find_map(|e| match e {
            DomainEvent::PaymentCaptured(captured) => Some(PaymentView::from(captured)),
            DomainEvent::PaymentDeclined(declined) => Some(PaymentView::from(declined)),
            _ => None,
        });
        match recorded {
            Some(view) => {
                idempotency::recorded_by_this_request();
                paid(view)
            }
            None => paid(self.payment_view(payment_id).await?),
        }
    }

    /// Cancels the caller's reservation: a pending hold is released, a confirmed one refunded.
    pub async fn cancel(
        &self,
        caller: &Principal,
        id: Uuid,
        metadata: Metadata,
    ) -> Result<Cancelled, AppError> {
        let id = ReservationId(id);
        // Found as a read by id finds it: a hold placed on another instance a moment ago is
        // there, not a 404.
        let view = self.reservation_by_id(id).await?;
        policy::own_record(caller, view.user_id, "reservation")?;
        let command = SaleCommand::CancelReservation {
            reservation_id: id,
            now: self.clock.now(),
        };
        self.command(EventId(view.event_id), command, metadata)
            .await?;
        Ok(Cancelled {
            view: self.reservation_view(id).await?,
            was: view.status,
        })
    }

    /// Refunds the caller's captured payment; the seats go back on sale.
    pub async fn refund(
        &self,
        caller: &Principal,
        id: Uuid,
        reason: &str,
        metadata: Metadata,
    ) -> Result<PaymentView, AppError> {
        let id = PaymentId(id);
        let view = self.payment_view(id).await?;
        policy::own_record(caller, view.user_id, "payment")?;
        let command = SaleCommand::RefundPayment {
            payment_id: id,
            reason: reason.to_owned(),
            now: self.clock.now(),
        };
        self.command(EventId(view.event_id), command, metadata)
            .await?;
        self.metrics.payments.with_label_values(&["refunded"]).inc();
        self.payment_view(id).await
    }

    fn gateway_failed(&self, e: GatewayError) -> AppError {
        self.metrics
            .payments
            .with_label_values(&["gateway_error"])
            .inc();
        // About this attempt only: an earlier one that timed out may have charged (a breaker
        // opened by time-outs refuses the retries that follow them).
        let not_charged = "the payment gateway is unavailable; this attempt did not charge you";
        let (detail, retry_after) = match &e {
            GatewayError::Unavailable(_) | GatewayError::RefundRefused(_) => (not_charged, 2),
            // The processor may have charged: say so, and what becomes of such a charge.
            GatewayError::NoAnswer(_) => (
                "the payment gateway did not answer in time; if it charged you, the charge is \
                 either recorded (the reservation then shows as confirmed) or refunded \
                 automatically within minutes",
                2,
            ),
            // Refused at once by the breaker: retry once its cool-down is over.
            GatewayError::Open(refused) => (not_charged, refused.retry_after_secs()),
        };
        AppError::Unavailable {
            detail: detail.into(),
            retry_after,
        }
    }
}
