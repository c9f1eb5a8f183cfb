//! Sales analytics for organizers and purchase history for customers, read from the
//! asynchronous `insights` projection: they follow purchases within moments, not at once.

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Authenticated};
use super::{policy, AppState};
use crate::domain::EventId;
use crate::projections::{HistoryEntry, Page, PageRequest, SalesView};
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
    let id = EventId(id);
    let event = s.event_view(id).await?;
    policy::manage_event(&caller, event.clone())?;
    // Before the consumer has seen the event, nothing has been sold that it could show.
    let sales = s.insights.sales(id).await?.unwrap_or_else(|| SalesView {
        event_id: id.0,
        tickets_sold: 0,
        revenue_cents: 0,
        currency: event.currency,
        by_section: Vec::new(),
    });
    Ok(Json(sales))
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
    policy::user_collection(&caller, id)?;
    Ok(Json(
        s.insights
            .history(id.into(), super::valid_page(page)?)
            .await?,
    ))
}
