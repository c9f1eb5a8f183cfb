//! `/api/payments`: paying a held reservation through the gateway, and refunds.
//! The charge happens before anything is recorded; a capture that can no longer confirm its
//! reservation (it expired meanwhile) is refunded in the same commit, so money and seats
//! always balance.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, IdempotencyKey, RequestContext};
use super::idempotency::{derived_id, Reply};
use super::{policy, AppState};
use crate::domain::payment::PaymentStatus;
use crate::domain::reservation::ReservationStatus;
use crate::domain::{
    Currency, DomainEvent, EventId, Money, Outcome, PaymentId, ReservationId, SaleCommand,
};
use crate::payment::{ChargeOutcome, GatewayError};
use crate::projections::{Page, PageRequest, PaymentView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use validator::{Validate, ValidationError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_payment))
        .routes(routes!(get_payment))
        .routes(routes!(payments_of_user))
        .routes(routes!(refund_payment))
}

fn card_only(kind: &str) -> Result<(), ValidationError> {
    if kind == "card" {
        Ok(())
    } else {
        Err(ValidationError::new("unsupported").with_message("only \"card\" is supported".into()))
    }
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct PaymentMethod {
    /// Always `card`.
    #[serde(rename = "type")]
    #[validate(custom(function = "card_only"))]
    pub kind: String,
    /// A test token: `tok_visa` succeeds, `tok_chargeDeclined` is declined.
    #[validate(length(min = 1, max = 200))]
    pub token: String,
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct CreatePaymentRequest {
    pub reservation_id: Uuid,
    #[validate(nested)]
    pub payment_method: PaymentMethod,
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct RefundRequest {
    #[validate(length(min = 1, max = 500))]
    pub reason: String,
}

#[utoipa::path(post, path = "/api/payments", tag = "payments", request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key never charge twice")),
    responses((status = 201, body = PaymentView), (status = 402, body = super::error::Problem, description = "declined; the hold stays"),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "reservation not pending"),
              (status = 503, body = super::error::Problem, description = "gateway down; nothing charged")),
    security(("bearer" = [])))]
async fn create_payment(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreatePaymentRequest>,
) -> Response {
    let payment_id = PaymentId(derived_id(caller.user_id, "payment", key.as_deref()));
    // With a key, the payment id is derived from it: a retry can find the first attempt.
    let retried = key.is_some();
    let work = async {
        let reservation = s
            .reservation_view(ReservationId(body.reservation_id))
            .await?;
        policy::pay_for(&caller, reservation.user_id)?;
        let refusal = if reservation.status != ReservationStatus::Pending {
            Some(ApiError::Conflict {
                kind: "reservation-not-pending",
                detail: format!(
                    "the reservation is {}, not pending",
                    reservation.status.as_str()
                ),
            })
        } else if s.clock.now() >= reservation.expires_at {
            Some(ApiError::Conflict {
                kind: "reservation-expired",
                detail: format!("the hold expired at {}", reservation.expires_at),
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return replay_or(&s, retried.then_some(payment_id), refusal).await;
        }
        let currency = Currency::parse(&reservation.currency).map_err(anyhow::Error::from)?;
        let amount = Money::new(reservation.total_cents, currency);
        let outcome = s
            .gateway
            .charge(payment_id, amount, &body.payment_method.token)
            .await
            .map_err(|e| match e {
                GatewayError::Unavailable(_) | GatewayError::RefundRefused(_) => {
                    s.metrics
                        .payments
                        .with_label_values(&["gateway_error"])
                        .inc();
                    ApiError::Unavailable {
                        detail: "the payment gateway is unavailable; you were not charged".into(),
                        retry_after: 2,
                    }
                }
            })?;
        let now = s.clock.now();
        let reservation_id = ReservationId(reservation.reservation_id);
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
        let committed = match s
            .record(
                EventId(reservation.event_id),
                command,
                ctx.metadata(&caller),
            )
            .await
        {
            Ok(committed) => committed,
            Err(e @ ApiError::Conflict { .. }) => {
                return replay_or(&s, retried.then_some(payment_id), e).await
            }
            Err(e) => return Err(e),
        };
        let counted = match (&outcome, &committed.outcome) {
            (_, Outcome::Compensated(_)) => "captured_then_refunded",
            (ChargeOutcome::Captured { .. }, _) => "captured",
            (ChargeOutcome::Declined { .. }, _) => "declined",
        };
        s.metrics.payments.with_label_values(&[counted]).inc();
        if let Outcome::Compensated(cause) = committed.outcome {
            return Err(ApiError::Conflict {
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
            Some(view) => payment_reply(view),
            None => payment_reply(s.payment_view(payment_id).await?),
        }
    };
    s.idempotency
        .run(caller.user_id, "payments", key, &body, work)
        .await
}

/// A retry whose first attempt already recorded its payment gets that payment's answer
/// again; anything else gets `refusal`. Asked only when a request is refused, so the happy
/// path costs no extra query.
async fn replay_or(
    s: &AppState,
    payment_id: Option<PaymentId>,
    refusal: ApiError,
) -> Result<Reply, ApiError> {
    if let Some(payment_id) = payment_id {
        if let Some(done) = s.reads.payment(payment_id).await? {
            return payment_reply(done);
        }
    }
    Err(refusal)
}

/// 201 for a captured payment, 402 for a declined one.
fn payment_reply(view: PaymentView) -> Result<Reply, ApiError> {
    match view.status {
        PaymentStatus::Failed => Err(ApiError::PaymentDeclined {
            reason: view.reason.unwrap_or_default(),
            payment_id: view.payment_id,
        }),
        _ => Ok(Reply {
            status: StatusCode::CREATED,
            location: Some(format!("/api/payments/{}", view.payment_id)),
            body: serde_json::to_value(view).map_err(anyhow::Error::from)?,
        }),
    }
}

#[utoipa::path(get, path = "/api/payments/{id}", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = PaymentView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn get_payment(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<PaymentView>, ApiError> {
    let view = s.payment_view(PaymentId(id)).await?;
    policy::own_record(&caller, view.user_id, "payment")?;
    Ok(Json(view))
}

#[utoipa::path(get, path = "/api/payments/user/{user_id}", tag = "payments",
    params(("user_id" = Uuid, Path), PageRequest),
    responses((status = 200, body = Page<PaymentView>), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn payments_of_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<PaymentView>>, ApiError> {
    policy::user_collection(&caller, user_id)?;
    Ok(Json(
        s.reads
            .payments_of(user_id.into(), super::valid_page(page)?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/payments/{id}/refund", tag = "payments", params(("id" = Uuid, Path)),
    request_body = RefundRequest,
    responses((status = 200, body = PaymentView), (status = 404, body = super::error::Problem),
              (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn refund_payment(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RefundRequest>,
) -> Result<Json<PaymentView>, ApiError> {
    let id = PaymentId(id);
    let reason = body.reason.trim().to_owned();
    let outcome = async {
        let view = s.payment_view(id).await?;
        policy::own_record(&caller, view.user_id, "payment")?;
        let command = SaleCommand::RefundPayment {
            payment_id: id,
            reason: reason.clone(),
            now: s.clock.now(),
        };
        s.command(EventId(view.event_id), command, ctx.metadata(&caller))
            .await?;
        s.metrics.payments.with_label_values(&["refunded"]).inc();
        s.payment_view(id).await
    }
    .await;
    let details = match &outcome {
        Ok(view) => serde_json::json!({
            "reason": reason,
            "amount_cents": view.amount_cents,
            "currency": view.currency,
            "reservation_id": view.reservation_id,
        }),
        Err(_) => serde_json::json!({ "reason": reason }),
    };
    s.audit(
        &ctx,
        Some(&caller),
        "payment.refund",
        ("payment", Some(id.0.to_string())),
        &outcome,
        details,
    );
    Ok(Json(outcome?))
}
