//! The answers of retries: what a key's earlier attempt made, found in the event log. A keyed
//! request derives its ids from the key, so a retry whose id is used already (the sale's
//! writer says so, or the request is refused for a reason that does not prove it unused)
//! reads the first event of the stream the id names. That event carries the first request's
//! body fingerprint (`Metadata::request_fingerprint`), and the answer is rebuilt from it as
//! the first attempt gave it (`idempotency::recorded_by`): the log is where a hold's and a
//! payment's answers are kept, in the append that made them. The read models here are caught
//! up with the event before the answer, so that a read that follows it finds what it shows.
//!
//! A capture refunded in its own commit (it came too late for its hold) answered 409: the
//! refund the domain appended right after it tells the cause, and the 409 is rebuilt from both.

use super::idempotency;
use super::{App, AppError};
use crate::domain::events::StreamId;
use crate::domain::payment::{PaymentStatus, AUTOMATIC_REFUND};
use crate::domain::{DomainEvent, PaymentId, ReservationId};
use crate::eventstore::{codec, RecordedEvent};
use crate::projections::{PaymentView, ReservationView};
use crate::runtime::CommandError;
use std::sync::Arc;

impl App {
    /// The answer of the hold the key made, rebuilt from the event that placed it, or
    /// `refusal` if the log holds none.
    pub(super) async fn placed_with_this_key(
        &self,
        id: ReservationId,
        refusal: AppError,
    ) -> Result<ReservationView, AppError> {
        let Some(first) = self.first_event(StreamId::Reservation(id)).await? else {
            return Err(refusal);
        };
        let DomainEvent::ReservationPlaced(placed) = decoded(&first)? else {
            return Err(refusal);
        };
        idempotency::seen_again();
        // Told before the wait: a 503 from it must not let an older saved refusal answer.
        tell_recorded(&first);
        self.placed_earlier(id).await?;
        Ok(ReservationView::from(&placed))
    }

    /// A reservation the log holds (an earlier attempt with the same key placed it, maybe on
    /// another instance a moment ago), as a read by id finds it: the read models are caught
    /// up with the log first. Should they still not show it, the answer is 503 (try again),
    /// never a 404 for a reservation that exists.
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
    /// again; anything else gets `refusal` (it is kept for 24 h as the key's answer). Asked
    /// only when a request is refused, so the happy path costs no extra query.
    pub(super) async fn replay_or(
        &self,
        payment_id: Option<PaymentId>,
        refusal: AppError,
    ) -> Result<PaymentView, AppError> {
        let Some(payment_id) = payment_id else {
            return Err(refusal);
        };
        let Some(first) = self.first_event(StreamId::Payment(payment_id)).await? else {
            return Err(refusal);
        };
        let recorded = match decoded(&first)? {
            DomainEvent::PaymentCaptured(captured) => PaymentView::from(&captured),
            DomainEvent::PaymentDeclined(declined) => PaymentView::from(&declined),
            _ => return Err(refusal),
        };
        idempotency::seen_again();
        // Told before the wait: a 503 from it must not let an older saved refusal answer.
        tell_recorded(&first);
        // As the first attempt's, the answer waits for the read models here, so that a read
        // that follows it finds what it says (for a refund: the reservation no longer held).
        if let Some(cause) = self.refunded_in_its_commit(&first).await? {
            if !self.caught_up_with_log().await {
                return Err(behind());
            }
            return Err(refunded_at_once(cause));
        }
        self.payment_shown(payment_id).await?;
        paid(recorded)
    }

    /// The payment as the read models here show it, once they caught up with the log (503 if
    /// they cannot: it is recorded).
    async fn payment_shown(&self, id: PaymentId) -> Result<PaymentView, AppError> {
        if let Some(shown) = self.reads.fresh().await.payment(id).await? {
            return Ok(shown);
        }
        if !self.caught_up_with_log().await {
            return Err(behind());
        }
        self.reads.applied().payment(id).await?.ok_or_else(behind)
    }

    /// The cause, if the capture `first` was refunded in the commit that recorded it: the
    /// domain appends that refund right after it (`domain::sale::checkout`), and nothing else
    /// puts the payment's second event there.
    async fn refunded_in_its_commit(
        &self,
        first: &RecordedEvent,
    ) -> Result<Option<String>, AppError> {
        let next = self
            .sales
            .store()
            .read_all(first.position, 1)
            .await
            .map_err(CommandError::Store)?;
        let Some(refund) = next
            .first()
            .filter(|e| e.stream_id == first.stream_id && e.version == 2)
        else {
            return Ok(None);
        };
        let DomainEvent::PaymentRefunded(refunded) = decoded(refund)? else {
            return Ok(None);
        };
        Ok(Some(match refunded.reason.strip_prefix(AUTOMATIC_REFUND) {
            Some(cause) => cause.to_owned(),
            None => refunded.reason,
        }))
    }

    async fn first_event(&self, stream: StreamId) -> Result<Option<Arc<RecordedEvent>>, AppError> {
        let stream = stream.to_string();
        Ok(self
            .sales
            .store()
            .first_of_stream(&stream)
            .await
            .map_err(CommandError::Store)?)
    }
}

/// A recorded answer the read models here cannot show yet: the client retries.
fn behind() -> AppError {
    AppError::Unavailable {
        detail: "the read models are behind the event log; try again".into(),
        retry_after: 1,
    }
}

fn decoded(event: &RecordedEvent) -> Result<DomainEvent, AppError> {
    Ok(codec::decode(event).map_err(anyhow::Error::from)?)
}

/// Tells the `Idempotency-Key` wrapper that the answer is the one `first` records. Without a
/// fingerprint (an event of a build before them, or of reconciliation), the answer saved for
/// the key, if any, is read instead.
fn tell_recorded(first: &RecordedEvent) {
    if let Some(fingerprint) = first.metadata.request_fingerprint.as_deref() {
        idempotency::recorded_by(fingerprint);
    }
}

/// The answer of a capture that came too late for its hold (`cause`) and was refunded in the
/// commit that recorded it: the customer holds no tickets, and has their money back.
pub(super) fn refunded_at_once(cause: impl std::fmt::Display) -> AppError {
    AppError::Conflict {
        kind: "reservation-not-pending",
        detail: format!("{cause}; the charge was refunded"),
    }
}

/// A declined payment is `PaymentDeclined`; a refunded one is a conflict (a 201 would tell the
/// customer they hold tickets they do not); a captured one is its view.
pub(super) fn paid(view: PaymentView) -> Result<PaymentView, AppError> {
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
