//! `/admin/dlq`: the dead letter queue. Every action records who took it and when, on the
//! entry itself (`resolved_by`, `resolved_at`, `notes`) and in the audit trail.

use crate::app::policy;
use crate::dlq::{DeadLetter, DlqStats, DlqStatus};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, RequestContext};
use crate::http::AppState;
use crate::paging::{Page, PageRequest};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use validator::Validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(dead_letter_stats))
        .routes(routes!(get_dead_letter))
        .routes(routes!(retry_dead_letter))
        .routes(routes!(resolve_dead_letter))
        .routes(routes!(discard_dead_letter))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqFilter {
    /// pending, processing, resolved or discarded.
    pub status: Option<DlqStatus>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct ResolveRequest {
    #[validate(length(max = 2000))]
    #[schema(max_length = 2000)]
    pub notes: Option<String>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct DiscardRequest {
    #[validate(length(min = 1, max = 2000))]
    #[schema(min_length = 1, max_length = 2000)]
    pub reason: String,
}

#[utoipa::path(get, path = "/admin/dlq", tag = "admin", params(DlqFilter, PageRequest),
    responses((status = 200, body = Page<DeadLetter>), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
async fn list_dead_letters(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(filter): ApiQuery<DlqFilter>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<DeadLetter>>, ApiError> {
    policy::admin_only(&caller)?;
    let page = crate::app::queries::valid_page(page)?;
    Ok(Json(
        s.app
            .dead_letters()
            .store()
            .list(filter.status, page)
            .await?,
    ))
}

#[utoipa::path(get, path = "/admin/dlq/stats", tag = "admin",
    responses((status = 200, body = DlqStats), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
async fn dead_letter_stats(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<DlqStats>, ApiError> {
    policy::admin_only(&caller)?;
    Ok(Json(s.app.dead_letters().store().stats().await?))
}

#[utoipa::path(get, path = "/admin/dlq/{id}", tag = "admin", params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = DeadLetter), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
async fn get_dead_letter(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    policy::admin_only(&caller)?;
    Ok(Json(s.app.dead_letters().store().get(id).await?))
}

#[utoipa::path(post, path = "/admin/dlq/{id}/retry", tag = "admin", params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = DeadLetter, description = "applied and resolved"),
              (status = 409, body = crate::http::error::Problem, description = "not pending, or an earlier entry of the stream is open"),
              (status = 422, body = crate::http::error::Problem, description = "failed again; retry_count grew")),
    security(("bearer" = [])))]
async fn retry_dead_letter(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    policy::admin_only(&caller)?;
    let outcome = s
        .app
        .dead_letters()
        .retry(id, caller.user_id)
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "dlq.retry",
        ("dlq_entry", Some(id.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    Ok(Json(outcome?))
}

#[utoipa::path(post, path = "/admin/dlq/{id}/resolve", tag = "admin", params(("id" = i64, Path, minimum = 1)),
    request_body = ResolveRequest,
    responses((status = 200, body = DeadLetter), (status = 409, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
async fn resolve_dead_letter(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ResolveRequest>,
) -> Result<Json<DeadLetter>, ApiError> {
    policy::admin_only(&caller)?;
    let notes = body
        .notes
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    let details = serde_json::json!({ "notes": notes });
    let outcome = s
        .app
        .dead_letters()
        .resolve(id, caller.user_id, notes)
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "dlq.resolve",
        ("dlq_entry", Some(id.to_string())),
        &outcome,
        details,
    );
    Ok(Json(outcome?))
}

#[utoipa::path(post, path = "/admin/dlq/{id}/discard", tag = "admin", params(("id" = i64, Path, minimum = 1)),
    request_body = DiscardRequest,
    responses((status = 200, body = DeadLetter), (status = 409, body = crate::http::error::Problem),
              (status = 422, body = crate::http::error::Problem, description = "no reason given")),
    security(("bearer" = [])))]
async fn discard_dead_letter(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<DiscardRequest>,
) -> Result<Json<DeadLetter>, ApiError> {
    policy::admin_only(&caller)?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::field("reason", "must not be blank"));
    }
    let details = serde_json::json!({ "reason": reason });
    let outcome = s
        .app
        .dead_letters()
        .discard(id, caller.user_id, reason)
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "dlq.discard",
        ("dlq_entry", Some(id.to_string())),
        &outcome,
        details,
    );
    Ok(Json(outcome?))
}
