//! `/api/events`: organizers create and run events; anyone reads published ones.

use super::error::ApiError;
use super::extract::{
    ApiJson, ApiPath, ApiQuery, Authenticated, MaybeAuthenticated, RequestContext,
};
use super::AppState;
use crate::cache::CacheName;
use crate::domain::concert::EventStatus;
use crate::domain::events::{EventDetails, SectionSpec, Venue};
use crate::domain::sale::{EventPatch, Lifecycle};
use crate::domain::EventId;
use crate::paging::{Page, PageRequest};
use crate::projections::{AvailabilityView, EventQuery, EventView};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use validator::{Validate, ValidationError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_event, list_events))
        .routes(routes!(get_event, update_event, cancel_event))
        .routes(routes!(publish))
        .routes(routes!(open_sales))
        .routes(routes!(close_sales))
        .routes(routes!(availability))
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct VenueInput {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[validate(length(min = 1, max = 500))]
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    pub address: String,
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct SectionInput {
    #[validate(length(min = 1, max = 100))]
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    #[validate(range(min = 1, max = 1_000_000))]
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    pub capacity: u32,
    #[validate(range(min = 0, max = 100_000_000))]
    #[schema(minimum = 0, maximum = 100_000_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    pub price_cents: i64,
}

/// Rules across fields, checked together with the per-field rules so that one answer lists
/// every bad field (the domain checks them again before anything is recorded).
fn dates_in_order(e: &CreateEventRequest) -> Result<(), ValidationError> {
    if e.ends_at <= e.starts_at {
        return Err(super::extract::field_rule(
            "ends_at",
            "must be after starts_at",
        ));
    }
    Ok(())
}

fn unique_sections(sections: &[SectionInput]) -> Result<(), ValidationError> {
    let mut names = std::collections::HashSet::new();
    match sections.iter().find(|s| !names.insert(s.name.trim())) {
        Some(repeated) => Err(ValidationError::new("unique").with_message(
            format!(
                "section names must be unique; {:?} repeats",
                repeated.name.trim()
            )
            .into(),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
#[validate(schema(function = "dates_in_order", skip_on_field_errors = false))]
pub struct CreateEventRequest {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[validate(length(max = 5000))]
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    #[validate(nested)]
    pub venue: VenueInput,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// ISO 4217 code; USD when omitted.
    #[validate(length(equal = 3))]
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Section names are unique within the event.
    #[validate(
        length(min = 1, max = 100),
        nested,
        custom(function = "unique_sections")
    )]
    #[schema(min_items = 1, max_items = 100)]
    pub sections: Vec<SectionInput>,
    /// The most tickets (pending + confirmed) one customer may hold; absent or null = no limit.
    #[validate(range(min = 1, max = 100))]
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub max_tickets_per_customer: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct UpdateEventRequest {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    #[validate(length(max = 5000))]
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    #[validate(nested)]
    pub venue: Option<VenueInput>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    #[validate(length(min = 1, max = 100), nested)]
    #[schema(min_items = 1, max_items = 100)]
    pub sections: Option<Vec<SectionInput>>,
    /// Absent keeps the limit, null removes it; lowering it keeps the tickets already held.
    #[validate(range(min = 1, max = 100))]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "limit_patch")]
    pub max_tickets_per_customer: Option<Option<u32>>,
    /// Alternative to `If-Match`: the version the client last read.
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub expected_version: Option<u64>,
}

/// A present field (`null` included) is `Some`, so that `null` can remove the limit.
fn limit_patch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    super::extract::optional_whole_number(d).map(Some)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilters {
    /// draft, published, on_sale, sales_closed or cancelled.
    #[param(value_type = Option<EventStatusName>, inline)]
    pub status: Option<EventStatus>,
    pub owner_id: Option<Uuid>,
}

/// An event's status as the API spells it (`domain::EventStatus`), for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EventStatusName {
    Draft,
    Published,
    OnSale,
    SalesClosed,
    Cancelled,
}

fn venue(v: VenueInput) -> Venue {
    Venue {
        name: v.name.trim().to_owned(),
        address: v.address.trim().to_owned(),
    }
}

fn sections(list: Vec<SectionInput>) -> Vec<SectionSpec> {
    list.into_iter()
        .map(|s| SectionSpec {
            name: s.name.trim().to_owned(),
            capacity: s.capacity,
            price_cents: s.price_cents,
        })
        .collect()
}

/// The event with its `ETag` (the stream version).
fn with_etag(status: StatusCode, view: EventView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version)).ok();
    let location = HeaderValue::from_str(&format!("/api/events/{}", view.id)).ok();
    let mut response = (status, Json(view)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if let (StatusCode::CREATED, Some(location)) = (status, location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Parses `If-Match: "7"` (also `W/"7"`); `*` means any version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    // An empty value states no precondition, like an absent header.
    if text.is_empty() || text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::field("If-Match", "must be an ETag of this event, such as \"3\""))
}

#[utoipa::path(post, path = "/api/events", tag = "events", request_body = CreateEventRequest,
    responses((status = 201, body = EventView), (status = 401, body = super::error::Problem),
              (status = 403, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn create_event(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiJson(body): ApiJson<CreateEventRequest>,
) -> Result<Response, ApiError> {
    let id = EventId::random();
    let name = body.name.trim().to_owned();
    let details = EventDetails {
        name: name.clone(),
        description: body.description.map(|d| d.trim().to_owned()),
        venue: venue(body.venue),
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        sections: sections(body.sections),
        max_tickets_per_customer: body.max_tickets_per_customer,
    };
    let outcome = s
        .app
        .create_event(
            &caller,
            id,
            body.currency.as_deref(),
            details,
            ctx.metadata(&caller),
        )
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "event.create",
        ("event", Some(id.0.to_string())),
        &outcome,
        serde_json::json!({ "name": name }),
    );
    Ok(with_etag(StatusCode::CREATED, outcome?))
}

#[utoipa::path(get, path = "/api/events", tag = "events", params(EventFilters, PageRequest),
    responses((status = 200, body = Page<EventView>)))]
async fn list_events(
    State(s): State<AppState>,
    MaybeAuthenticated(caller): MaybeAuthenticated,
    ApiQuery(filters): ApiQuery<EventFilters>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<EventView>>, ApiError> {
    let query = EventQuery {
        status: filters.status,
        owner_id: filters.owner_id.map(Into::into),
        ..EventQuery::default()
    };
    Ok(Json(s.app.list_events(caller.as_ref(), query, page).await?))
}

#[utoipa::path(get, path = "/api/events/{id}", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventView), (status = 404, body = super::error::Problem)))]
async fn get_event(
    State(s): State<AppState>,
    MaybeAuthenticated(caller): MaybeAuthenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let view = s
        .app
        .visible_event(caller.as_ref(), id, CacheName::Events)
        .await?;
    Ok(with_etag(StatusCode::OK, view))
}

#[utoipa::path(put, path = "/api/events/{id}", tag = "events", params(("id" = Uuid, Path)),
    request_body = UpdateEventRequest,
    responses((status = 200, body = EventView), (status = 409, body = super::error::Problem),
              (status = 403, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn update_event(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateEventRequest>,
) -> Result<Response, ApiError> {
    let id = EventId(id);
    let outcome = async {
        let expected_version = if_match(&headers)?.or(body.expected_version);
        let patch = EventPatch {
            name: body.name.map(|n| n.trim().to_owned()),
            description: body.description.map(|d| Some(d.trim().to_owned())),
            venue: body.venue.map(venue),
            starts_at: body.starts_at,
            ends_at: body.ends_at,
            sections: body.sections.map(sections),
            max_tickets_per_customer: body.max_tickets_per_customer,
        };
        let metadata = ctx.metadata(&caller);
        Ok(s.app
            .update_event(&caller, id, expected_version, patch, metadata)
            .await?)
    }
    .await;
    s.audit(
        &ctx,
        Some(&caller),
        "event.update",
        ("event", Some(id.0.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    Ok(with_etag(StatusCode::OK, outcome?))
}

#[utoipa::path(delete, path = "/api/events/{id}", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 204, description = "cancelled: holds released, paid tickets refunded"),
              (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn cancel_event(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let id = EventId(id);
    let outcome = s
        .app
        .cancel_event(&caller, id, ctx.metadata(&caller))
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "event.cancel",
        ("event", Some(id.0.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    outcome?;
    Ok(StatusCode::NO_CONTENT)
}

async fn lifecycle(
    s: AppState,
    caller: crate::auth::Principal,
    ctx: RequestContext,
    id: Uuid,
    action: Lifecycle,
) -> Result<Response, ApiError> {
    let id = EventId(id);
    let name = match action {
        Lifecycle::Publish => "event.publish",
        Lifecycle::OpenSales => "event.open_sales",
        Lifecycle::CloseSales => "event.close_sales",
    };
    let outcome = s
        .app
        .change_lifecycle(&caller, id, action, ctx.metadata(&caller))
        .await
        .map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        name,
        ("event", Some(id.0.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    Ok(with_etag(StatusCode::OK, outcome?))
}

#[utoipa::path(post, path = "/api/events/{id}/publish", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventView), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn publish(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    lifecycle(s, caller, ctx, id, Lifecycle::Publish).await
}

#[utoipa::path(post, path = "/api/events/{id}/open-sales", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventView), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn open_sales(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    lifecycle(s, caller, ctx, id, Lifecycle::OpenSales).await
}

#[utoipa::path(post, path = "/api/events/{id}/close-sales", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventView), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn close_sales(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    lifecycle(s, caller, ctx, id, Lifecycle::CloseSales).await
}

#[utoipa::path(get, path = "/api/events/{id}/availability", tag = "events", params(("id" = Uuid, Path)),
    responses((status = 200, body = AvailabilityView), (status = 404, body = super::error::Problem)))]
async fn availability(
    State(s): State<AppState>,
    MaybeAuthenticated(caller): MaybeAuthenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<AvailabilityView>, ApiError> {
    let view = s
        .app
        .visible_event(caller.as_ref(), id, CacheName::Availability)
        .await?;
    Ok(Json(AvailabilityView::from(&view)))
}
