//! `/api/events/{id}/queue`: an event's waiting room (API.md, "Fair on-sales"): its settings
//! (the organizer; audited as `queue.update`), its figures (anyone), joining it and one's own
//! place and pass (a user).

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, Authenticated, MaybeAuthenticated, RequestContext};
use super::AppState;
use crate::app::queue::{QueueSettingsInput, QueueSettingsView, QueueSummary, QueueTicketView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use validator::Validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_queue, get_queue))
        .routes(routes!(join_queue))
        .routes(routes!(my_ticket))
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct QueueSettingsRequest {
    pub enabled: bool,
    /// Admissions per minute over every instance together.
    #[validate(range(min = 1, max = 1_000_000))]
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    pub admit_per_minute: u32,
    /// How long a pass is valid after admission; 600 when omitted.
    #[validate(range(min = 60, max = 3600))]
    #[schema(minimum = 60, maximum = 3600)]
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub pass_ttl_seconds: Option<u32>,
    /// Joins before this moment are admitted in a random order (admission starts then);
    /// later joins in arrival order.
    pub shuffle_until: Option<DateTime<Utc>>,
}

#[utoipa::path(put, path = "/api/events/{id}/queue", tag = "queue", params(("id" = Uuid, Path)),
    request_body = QueueSettingsRequest,
    responses((status = 200, body = QueueSettingsView), (status = 404, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn put_queue(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<QueueSettingsRequest>,
) -> Result<Json<QueueSettingsView>, ApiError> {
    let details = serde_json::json!({"enabled": body.enabled,
        "admit_per_minute": body.admit_per_minute, "pass_ttl_seconds": body.pass_ttl_seconds,
        "shuffle_until": body.shuffle_until});
    let input = QueueSettingsInput {
        enabled: body.enabled,
        admit_per_minute: body.admit_per_minute,
        pass_ttl_seconds: body.pass_ttl_seconds,
        shuffle_until: body.shuffle_until,
    };
    let outcome = s
        .app
        .put_queue(&caller, id, input)
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "queue.update",
        ("event", Some(id.to_string())),
        &outcome,
        details,
    );
    Ok(Json(outcome?))
}

#[utoipa::path(get, path = "/api/events/{id}/queue", tag = "queue", params(("id" = Uuid, Path)),
    responses((status = 200, body = QueueSummary, description = "an event without a queue shows enabled: false"),
              (status = 404, body = Problem)))]
async fn get_queue(
    State(s): State<AppState>,
    MaybeAuthenticated(viewer): MaybeAuthenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<QueueSummary>, ApiError> {
    Ok(Json(s.app.queue_summary(viewer.as_ref(), id).await?))
}

#[utoipa::path(post, path = "/api/events/{id}/queue/join", tag = "queue", params(("id" = Uuid, Path)),
    responses((status = 201, body = QueueTicketView, description = "joined"),
              (status = 200, body = QueueTicketView, description = "already in line: the same ticket"),
              (status = 404, body = Problem),
              (status = 409, body = Problem, description = "no-queue: the event has no enabled waiting room")),
    security(("bearer" = [])))]
async fn join_queue(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let (ticket, created) = s.app.join_queue(&caller, id).await?;
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(ticket)).into_response())
}

#[utoipa::path(get, path = "/api/events/{id}/queue/me", tag = "queue", params(("id" = Uuid, Path)),
    responses((status = 200, body = QueueTicketView, description = "pass and pass_expires_at while admitted"),
              (status = 404, body = Problem, description = "not in this event's queue")),
    security(("bearer" = [])))]
async fn my_ticket(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<QueueTicketView>, ApiError> {
    Ok(Json(s.app.my_queue_ticket(&caller, id).await?))
}
