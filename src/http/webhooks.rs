//! `/api/webhooks`: organizers' webhook endpoints (API.md, "Webhooks"). Creating, deleting
//! and rotating a secret are audited (`webhook.create`, `webhook.delete`,
//! `webhook.rotate_secret` on `webhook_endpoint`), never with the secret.

use crate::app::webhooks::{NewEndpoint, WithSecret};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, RequestContext};
use crate::http::replies::Reply;
use crate::http::AppState;
use crate::paging::{Page, PageRequest};
use crate::webhooks::{DeliveryView, EndpointView};
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
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed (http or https).
    #[validate(length(min = 1, max = 2000))]
    pub url: String,
    /// Event types (`reservation.confirmed`, `payment.captured`, ...) or `["*"]`.
    #[validate(length(min = 1, max = 50))]
    pub event_types: Vec<String>,
    /// Only this event's deliveries (it must be the caller's).
    pub event_id: Option<Uuid>,
    #[validate(length(max = 500))]
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    pub secret: String,
}

#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, body = WithSecret, description = "the secret is shown only here"),
              (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_webhook(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    let details = serde_json::json!({"url": body.url, "event_types": body.event_types,
        "event_id": body.event_id});
    let new = NewEndpoint {
        url: body.url,
        event_types: body.event_types,
        event_id: body.event_id,
        description: body.description,
    };
    let outcome = s
        .app
        .create_webhook(&caller, new)
        .await
        .map_err(ApiError::from);
    let id = outcome.as_ref().ok().map(|c| c.endpoint.id.to_string());
    s.audit(
        &ctx,
        Some(&caller),
        "webhook.create",
        ("webhook_endpoint", id),
        &outcome,
        details,
    );
    let created = outcome?;
    Ok(Reply::created(format!("/api/webhooks/{}", created.endpoint.id), &created)?.into_response())
}

#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks", params(PageRequest),
    responses((status = 200, body = Page<EndpointView>), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn list_webhooks(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<EndpointView>>, ApiError> {
    Ok(Json(s.app.webhooks(&caller, page).await?))
}

#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn get_webhook(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EndpointView>, ApiError> {
    Ok(Json(s.app.webhook(&caller, id).await?))
}

#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn delete_webhook(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let outcome = s
        .app
        .delete_webhook(&caller, id)
        .await
        .map_err(ApiError::from);
    let resource = ("webhook_endpoint", Some(id.to_string()));
    s.audit(
        &ctx,
        Some(&caller),
        "webhook.delete",
        resource,
        &outcome,
        serde_json::json!({}),
    );
    outcome?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = SecretView, description = "the old secret signs for 24 more hours"),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn rotate_secret(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<SecretView>, ApiError> {
    let outcome = s
        .app
        .rotate_webhook_secret(&caller, id)
        .await
        .map_err(ApiError::from);
    let resource = ("webhook_endpoint", Some(id.to_string()));
    s.audit(
        &ctx,
        Some(&caller),
        "webhook.rotate_secret",
        resource,
        &outcome,
        serde_json::json!({}),
    );
    Ok(Json(SecretView { secret: outcome? }))
}

#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), PageRequest),
    responses((status = 200, body = Page<DeliveryView>, description = "newest first"),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn list_deliveries(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    Ok(Json(s.app.webhook_deliveries(&caller, id, page).await?))
}

#[utoipa::path(post, path = "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks", params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, description = "queued again, with the same webhook-id"),
              (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn redeliver(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((id, delivery)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    s.app.redeliver_webhook(&caller, id, delivery).await?;
    Ok(StatusCode::ACCEPTED)
}
