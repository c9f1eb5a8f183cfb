//! Checkout: holding seats, paying for a hold, cancelling and refunding. The charge happens
//! before anything is recorded; a capture that can no longer confirm its reservation (it
//! expired meanwhile) is refunded in the same commit, so money and seats always balance.
//! Ids derive from the caller's `Idempotency-Key` when there is one, so a retry (even on
//! another instance) finds what its first attempt made instead of making it twice.

use super::error::{CUSTOMER_LIMIT, SALES_NOT_OPEN, SOLD_OUT};
use super::idempotency::{self, derived_id};
use super::{policy, App, AppError};
use crate::auth::Principal;
use crate::domain::events::StreamId;
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::{ensure_payable, ReservationStatus};
use crate::domain::{
    Currency, DomainEvent, EventId, Money, Outcome, PaymentId, ReservationId, SaleCommand,
    SaleError,
};
use crate::eventstore::{codec, Metadata};
use crate::payment::{ChargeFor, ChargeOutcome, GatewayError};
use crate::projections::{PaymentView, ReservationView};
use crate::runtime::CommandError;
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
        let recorded_by = metadata.request_fingerprint.clone();
        match self.hold_seats(caller, id, hold, metadata).await {
            Ok(view) => {
                if let Some(fingerprint) = recorded_by.as_deref() {
                    idempotency::recorded_by(fingerprint);
                }
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

    /// The answer of the hold the key made, rebuilt from the event that placed it, as its
    /// first attempt answered (`refusal` if the log holds none): the log's copy of the key's
    /// answer. The read models here are caught up with it first, so that a read of the
    /// reservation that follows finds it.
    async fn placed_with_this_key(
        &self,
        id: ReservationId,
        refusal: AppError,
    ) -> Result<ReservationView, AppError> {
        let stream = StreamId::Reservation(id).to_string();
        let first = match self.sales.store().first_of_stream(&stream).await {
            Ok(Some(first)) => first,
            Ok(None) => return Err(refusal),
            Err(e) => return Err(CommandError::Store(e).into()),
        };
        let DomainEvent::ReservationPlaced(placed) =
            codec::decode(&first).map_err(anyhow::Error::from)?
        else {
            return Err(refusal);
        };
        idempotency::seen_again();
        self.placed_earlier(id).await?;
        // Without a fingerprint (placed before they were recorded), the answer saved for the
        // key is read instead of this one.
        if let Some(fingerprint) = first.metadata.request_fingerprint.as_deref() {
            idempotency::recorded_by(fingerprint);
        }
        Ok(ReservationView::from(&placed))
    }

    /// Charges the card for a pending hold of the caller and records the gateway's answer:
    /// a capture confirms the reservation, a decline is `PaymentDeclined` and the hold stays.
    pub async fn pay(
        &self,
        caller: &Principal,
        key: Option<&str>,
        order: PayRequest,
        metadata: Metadata,
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
        // The gateway has answered: record it, also through contention between instances.
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
            return Err(AppError::Conflict {
                kind: "reservation-not-pending",
                detail: format!("{cause}; the charge was refunded"),
            });
        }
        // The answer comes from the committed event, as the read models will show it.
        let recorded = committed.events.iter().find_map(|e| match e {
            DomainEvent::PaymentCaptured(captured) => Some(PaymentView::from(captured)),
            DomainEvent::PaymentDeclined(declined) => Some(PaymentView::from(declined)),
            _ => None,
        });
        match recorded {
            Some(view) => paid(view),
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

    /// A reservation the sale's writer knows (an earlier attempt with the same key placed it,
    /// maybe on another instance a moment ago), as a read by id finds it: the read models are
    /// caught up with the log first. Should they still not show it, the answer is 503 (try
    /// again), never a 404 for a reservation that exists.
    async fn placed_earlier(&self, id: ReservationId) -> Result<ReservationView, AppError> {
        match self.reservation_by_id(id).await {
            Err(AppError::NotFound(_)) => Err(AppError::Unavailable {
                detail: "the reservation was placed but cannot be shown yet".into(),
                retry_after: 1,
            }),
            found => found,
        }
    }

    /// A retry whose first attempt already recorded its payment gets that payment's answer
    /// again; anything else gets `refusal`. Asked only when a request is refused, so the
    /// happy path costs no extra query. The first attempt may have been recorded on another
    /// instance a moment ago (its answer lost, or its instance killed): on a miss the read
    /// models catch up with the log's head before `refusal` is answered (it is kept for 24 h
    /// as the key's answer), and if they cannot, the answer is 503 (try again).
    async fn replay_or(
        &self,
        payment_id: Option<PaymentId>,
        refusal: AppError,
    ) -> Result<PaymentView, AppError> {
        let Some(payment_id) = payment_id else {
            return Err(refusal);
        };
        if let Some(done) = self.reads.fresh().await.payment(payment_id).await? {
            idempotency::seen_again();
            return paid(done);
        }
        if !self.caught_up_with_log().await {
            return Err(AppError::Unavailable {
                detail: "the read models are behind the event log; try again".into(),
                retry_after: 1,
            });
        }
        match self.reads.applied().payment(payment_id).await? {
            Some(done) => {
                idempotency::seen_again();
                paid(done)
            }
            None => Err(refusal),
        }
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

/// A declined payment is `PaymentDeclined`; a refunded one (its capture lost the race with the
/// hold's end and was refunded in the same append, maybe by reconciliation, or the customer
/// has asked for the refund since) is a conflict: a 201 would tell the customer they hold
/// tickets they do not. A captured payment is its view.
fn paid(view: PaymentView) -> Result<PaymentView, AppError> {
    match view.status {
        PaymentStatus::Failed => Err(AppError::PaymentDeclined {
            reason: view.reason.unwrap_or_default(),
            payment_id: view.payment_id,
        }),
        PaymentStatus::Refunded => Err(AppError::Conflict {
            kind: "reservation-not-pending",
            detail: "the payment was refunded; the reservation is not held".into(),
        }),
        PaymentStatus::Captured => Ok(view),
    }
}
