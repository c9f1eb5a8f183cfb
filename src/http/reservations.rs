//! `/api/reservations`: holding seats. A hold lasts `RESERVATION_TTL_SECONDS` unless paid.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, IdempotencyKey, RequestContext};
use super::idempotency::{derived_id, Reply};
use super::{policy, AppState};
use crate::domain::reservation::ReservationStatus;
use crate::domain::{DomainEvent, EventId, ReservationId, SaleCommand};
use crate::projections::{Page, PageRequest, ReservationView};
use axum::extract::State;
use axum::http::StatusCode;
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
    pub section: String,
    #[validate(range(min = 1, max = 10))]
    pub quantity: u32,
}

#[utoipa::path(post, path = "/api/reservations", tag = "reservations", request_body = CreateReservationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first answer")),
    responses((status = 201, body = ReservationView), (status = 404, body = super::error::Problem),
              (status = 409, body = super::error::Problem, description = "sold out or sales not open"),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn create_reservation(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateReservationRequest>,
) -> Response {
    let id = ReservationId(derived_id(caller.user_id, "reservation", key.as_deref()));
    let work = async {
        let event_id = EventId(body.event_id);
        policy::see_event(Some(&caller), s.event_view(event_id).await?)?;
        let command = SaleCommand::Reserve {
            reservation_id: id,
            user_id: caller.user_id,
            section: body.section.trim().to_owned(),
            quantity: body.quantity,
            hold_for: s.config.reservation_ttl,
            now: s.clock.now(),
        };
        let committed = match s.command(event_id, command, ctx.metadata(&caller)).await {
            Ok(committed) => Some(committed),
            // A retry after a lost answer: the first attempt already placed it.
            Err(ApiError::Conflict { .. }) if s.reads.reservation(id).await?.is_some() => None,
            Err(e) => return Err(e),
        };
        // The answer comes from the committed event; a retry reads what the first attempt made.
        let placed = committed
            .iter()
            .flat_map(|c| &c.events)
            .find_map(|e| match e {
                DomainEvent::ReservationPlaced(placed) => Some(ReservationView::from(placed)),
                _ => None,
            });
        let view = match placed {
            Some(view) => view,
            None => s.reservation_view(id).await?,
        };
        Ok(Reply {
            status: StatusCode::CREATED,
            location: Some(format!("/api/reservations/{id}")),
            body: serde_json::to_value(view).map_err(anyhow::Error::from)?,
        })
    };
    s.idempotency
        .run(caller.user_id, "reservations", key, &body, work)
        .await
}

#[utoipa::path(get, path = "/api/reservations", tag = "reservations", params(PageRequest),
    responses((status = 200, body = Page<ReservationView>)), security(("bearer" = [])))]
async fn list_reservations(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<ReservationView>>, ApiError> {
    let user = (!caller.is_admin()).then_some(caller.user_id);
    Ok(Json(
        s.reads.reservations(user, super::valid_page(page)?).await?,
    ))
}

#[utoipa::path(get, path = "/api/reservations/{id}", tag = "reservations", params(("id" = Uuid, Path)),
    responses((status = 200, body = ReservationView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn get_reservation(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ReservationView>, ApiError> {
    let view = s.reservation_view(ReservationId(id)).await?;
    policy::own_record(&caller, view.user_id, "reservation")?;
    Ok(Json(view))
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
    let id = ReservationId(id);
    let mut was = None;
    let outcome = async {
        let view = s.reservation_view(id).await?;
        policy::own_record(&caller, view.user_id, "reservation")?;
        was = Some(view.status);
        let command = SaleCommand::CancelReservation {
            reservation_id: id,
            now: s.clock.now(),
        };
        s.command(EventId(view.event_id), command, ctx.metadata(&caller))
            .await?;
        s.reservation_view(id).await
    }
    .await;
    // Cancelling a confirmed reservation refunds its payment: audited as a refund.
    let action = match was {
        Some(ReservationStatus::Confirmed) => "reservation.refund",
        _ => "reservation.cancel",
    };
    s.audit(
        &ctx,
        Some(&caller),
        action,
        ("reservation", Some(id.0.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    Ok(Json(outcome?))
}
