//! `/api/payments`: paying a held reservation through the gateway (`app::checkout` charges,
//! then records), reading payments, and refunds.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, IdempotencyKey, RequestContext};
use super::replies::{idempotent, Reply};
use super::AppState;
use crate::app::checkout::PayRequest;
use crate::app::idempotency;
use crate::paging::{Page, PageRequest};
use crate::projections::PaymentView;
use axum::extract::State;
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
    #[schema(value_type = String, pattern = "^card$")]
    pub kind: String,
    /// A test token: `tok_visa` succeeds, `tok_chargeDeclined` is declined.
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
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
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

#[utoipa::path(post, path = "/api/payments", tag = "payments", request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key never charge twice")),
    responses((status = 201, body = PaymentView), (status = 402, body = super::error::Problem, description = "declined; the hold stays"),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "reservation not pending"),
              (status = 503, body = super::error::Problem, description = "gateway down (this attempt charged nothing), the gateway gave no answer in time (see `detail`), or the read models lag behind the reservation's write")),
    security(("bearer" = [])))]
async fn create_payment(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreatePaymentRequest>,
) -> Response {
    let order = PayRequest {
        reservation_id: body.reservation_id,
        card_token: body.payment_method.token.clone(),
    };
    let work = async {
        let view = s
            .app
            .pay(&caller, key.as_deref(), order, ctx.metadata(&caller))
            .await?;
        Reply::created(format!("/api/payments/{}", view.payment_id), &view)
    };
    idempotent(
        &s,
        caller.user_id,
        idempotency::PAYMENTS,
        key.clone(),
        &body,
        work,
    )
    .await
}

#[utoipa::path(get, path = "/api/payments/{id}", tag = "payments", params(("id" = Uuid, Path)),
    responses((status = 200, body = PaymentView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn get_payment(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<PaymentView>, ApiError> {
    Ok(Json(s.app.own_payment(&caller, id).await?))
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
    Ok(Json(s.app.payments_of(&caller, user_id, page).await?))
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
    let reason = body.reason.trim().to_owned();
    let outcome = s
        .app
        .refund(&caller, id, &reason, ctx.metadata(&caller))
        .await
        .map_err(ApiError::from);
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
        ("payment", Some(id.to_string())),
        &outcome,
        details,
    );
    Ok(Json(outcome?))
}
