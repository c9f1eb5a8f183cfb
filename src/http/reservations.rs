//! `/api/reservations`: holding seats. A hold lasts `RESERVATION_TTL_SECONDS` unless paid.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, IdempotencyKey, RequestContext};
use super::replies::{idempotent, Reply};
use super::AppState;
use crate::app::checkout::HoldRequest;
use crate::app::idempotency;
use crate::domain::reservation::ReservationStatus;
use crate::paging::{Page, PageRequest};
use crate::projections::ReservationView;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use validator::Validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_reservation, list_reservations))
        .routes(routes!(get_reservation))
        .routes(routes!(cancel_reservation))
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct CreateReservationRequest {
    pub event_id: Uuid,
    #[validate(length(min = 1, max = 100))]
    #[schema(min_length = 1, max_length = 100)]
    pub section: String,
    #[validate(range(min = 1, max = 10))]
    #[schema(minimum = 1, maximum = 10)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    pub quantity: u32,
}

#[utoipa::path(post, path = "/api/reservations", tag = "reservations", request_body = CreateReservationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first answer"),
           ("Queue-Pass" = Option<String>, Header, description = "the pass of the event's waiting room, needed while it is enabled")),
    responses((status = 201, body = ReservationView), (status = 404, body = super::error::Problem),
              (status = 403, body = super::error::Problem, description = "queue-pass-required or queue-pass-invalid"),
              (status = 409, body = super::error::Problem, description = "sold out or sales not open"),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn create_reservation(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    IdempotencyKey(key): IdempotencyKey,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateReservationRequest>,
) -> Response {
    let hold = HoldRequest {
        event_id: body.event_id,
        section: body.section.clone(),
        quantity: body.quantity,
        queue_pass: queue_pass(&headers),
    };
    let work = async {
        let view = s
            .app
            .reserve(&caller, key.as_deref(), hold, ctx.metadata(&caller))
            .await?;
        Reply::created(format!("/api/reservations/{}", view.reservation_id), &view)
    };
    idempotent(
        &s,
        caller.user_id,
        idempotency::RESERVATIONS,
        key.clone(),
        &body,
        work,
    )
    .await
}

/// The `Queue-Pass` header, when present and readable.
fn queue_pass(headers: &HeaderMap) -> Option<String> {
    headers
        .get("queue-pass")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[utoipa::path(get, path = "/api/reservations", tag = "reservations", params(PageRequest),
    responses((status = 200, body = Page<ReservationView>)), security(("bearer" = [])))]
async fn list_reservations(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<ReservationView>>, ApiError> {
    Ok(Json(s.app.list_reservations(&caller, page).await?))
}

#[utoipa::path(get, path = "/api/reservations/{id}", tag = "reservations", params(("id" = Uuid, Path)),
    responses((status = 200, body = ReservationView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn get_reservation(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ReservationView>, ApiError> {
    Ok(Json(s.app.own_reservation(&caller, id).await?))
}

#[utoipa::path(post, path = "/api/reservations/{id}/cancel", tag = "reservations", params(("id" = Uuid, Path)),
    responses((status = 200, body = ReservationView, description = "cancelled (was pending) or refunded (was confirmed)"),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn cancel_reservation(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ReservationView>, ApiError> {
    let outcome = s.app.cancel(&caller, id, ctx.metadata(&caller)).await;
    // Cancelling a confirmed reservation refunds its payment: audited as a refund.
    let action = match &outcome {
        Ok(cancelled) if cancelled.was == ReservationStatus::Confirmed => "reservation.refund",
        _ => "reservation.cancel",
    };
    let outcome = outcome
        .map(|cancelled| cancelled.view)
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        action,
        ("reservation", Some(id.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    Ok(Json(outcome?))
}
