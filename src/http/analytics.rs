//! Sales analytics for organizers and purchase history for customers, read from the
//! asynchronous `insights` projection: they follow purchases within moments, not at once.

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Authenticated};
use super::AppState;
use crate::paging::{Page, PageRequest};
use crate::projections::{HistoryEntry, SalesView};
use axum::extract::State;
use axum::Json;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(event_sales))
        .routes(routes!(customer_history))
}

#[utoipa::path(get, path = "/api/analytics/events/{id}/sales", tag = "analytics", params(("id" = Uuid, Path)),
    responses((status = 200, body = SalesView), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn event_sales(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<SalesView>, ApiError> {
    Ok(Json(s.app.event_sales(&caller, id).await?))
}

#[utoipa::path(get, path = "/api/customers/{id}/history", tag = "analytics",
    params(("id" = Uuid, Path), PageRequest),
    responses((status = 200, body = Page<HistoryEntry>), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn customer_history(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<HistoryEntry>>, ApiError> {
    Ok(Json(s.app.purchase_history(&caller, id, page).await?))
}
