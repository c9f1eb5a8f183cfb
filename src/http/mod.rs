//! The HTTP edge: one `router()` per resource, merged here with the middleware every request
//! passes (security headers, CORS, panic guard, request context and correlation ids, rate
//! limits, body limit, metrics by route template, request timeout, and the authorization
//! table of `access`, which admits callers by role). Handlers stay thin: extract, call a use
//! case of `app`, and map its answer (or its typed error, through `ApiError`) to HTTP.

pub mod access;
pub mod admin;
pub mod analytics;
pub mod auth;
pub mod edge;
pub mod error;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod payments;
pub mod queue;
pub mod ratelimit;
pub mod replies;
pub mod reservations;
mod spans;
pub mod webhooks;

use crate::app::App;
use crate::audit::{AuditLog, AuditRecord, AuditResult};
use crate::auth::{AuthService, Principal};
use crate::clock::Clock;
use crate::config::Config;
use crate::observability::Metrics;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error::{ApiError, AppError};
use extract::RequestContext;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Everything a handler may use, shared behind one `Arc`: cloning it (once per middleware
/// layer and handler) costs one reference count, not a copy of every field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub rate_limiter: Arc<ratelimit::RateLimiter>,
    /// The use cases: every command and query goes through it.
    pub app: Arc<App>,
    pub bus: Arc<dyn crate::bus::EventBus>,
    pub auth: AuthService,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The PostgreSQL pools by role, for the pool gauges on `/metrics` (empty in memory).
    pub pools: crate::db::NamedPools,
    /// The audit trail: `record` never waits and never fails the request.
    pub audit: AuditLog,
    /// Set when shutdown begins: `/ready` answers 503 `draining` from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// When this instance was built, for the uptime on `/admin/dashboard/system`.
    pub started_at: Instant,
    /// Stalled bus consumers, for the bus check of `/ready`.
    pub consumer_health: Arc<crate::bus::consumer::ConsumerHealth>,
    /// Every circuit breaker, for `/ready` and `/admin/dashboard/system`.
    pub breakers: crate::breaker::Breakers,
}

impl Shared {
    /// Records an audited action of `caller` (anonymous: `None`) on `resource` that ended with
    /// `outcome` (see `audit_record`).
    pub fn audit<T>(
        &self,
        ctx: &RequestContext,
        caller: Option<&Principal>,
        action: &str,
        resource: (&str, Option<String>),
        outcome: &Result<T, ApiError>,
        details: serde_json::Value,
    ) {
        let error = outcome.as_ref().err();
        let record = self.audit_record(ctx, caller, action, resource, error, details);
        self.audit.record(record);
    }

    /// The audit record of an action of `caller` on `resource` that succeeded (`error` none)
    /// or was refused: 401 and 403 are `denied`, other errors `failure`, with their status and
    /// problem type added to `details`.
    pub fn audit_record(
        &self,
        ctx: &RequestContext,
        caller: Option<&Principal>,
        action: &str,
        resource: (&str, Option<String>),
        error: Option<&ApiError>,
        details: serde_json::Value,
    ) -> AuditRecord {
        let (result, details) = match error {
            None => (AuditResult::Success, details),
            Some(e) => {
                let result = match e {
                    ApiError::App(
                        AppError::Unauthorized | AppError::Forbidden(_) | AppError::Denied { .. },
                    ) => AuditResult::Denied,
                    _ => AuditResult::Failure,
                };
                let mut details = details;
                if let serde_json::Value::Object(map) = &mut details {
                    let (status, problem) = e.to_problem();
                    map.insert("status".into(), status.as_u16().into());
                    map.insert("problem".into(), problem["type"].clone());
                }
                (result, details)
            }
        };
        let (resource_type, resource_id) = resource;
        let mut record = ctx
            .audit(self.clock.now(), caller, action, resource_type, result)
            .details(details);
        record.resource_id = resource_id;
        record
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ticketing API", description = "Events, seat holds, payments and tickets. No string may hold the NUL character U+0000: a JSON body with a string holding `\\u0000` is refused with 422, a query holding `%00` with 400."),
    modifiers(&BearerAuth),
    components(schemas(error::Problem, error::FieldError))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document generated from the handlers' annotations alone.
pub fn raw_openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// The OpenAPI document served at `/openapi.json`: the annotations completed by
/// `openapi::complete` with what the edge does to every operation.
pub fn openapi() -> serde_json::Value {
    openapi::complete(&raw_openapi())
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .merge(auth::router())
        .merge(events::router())
        .merge(queue::router())
        .merge(reservations::router())
        .merge(payments::router())
        .merge(analytics::router())
        .merge(webhooks::router())
        .merge(admin::router())
}

/// The whole application. The routes' layers, listed first, run innermost and only for a
/// request that found its route: the timeout wraps only the handler (so metrics record the
/// timed-out answer). The edge's layers wrap the routing once, outermost first: the security
/// headers (so 404s, 429s, CORS preflights and panics carry them too), CORS, the panic guard,
/// the request's context, the header limit, the rate limits and the body limit. Applied to
/// the router, each of them would wrap every route, and every request would clone them all.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api_routes().split_for_parts();
    let doc = Arc::new(openapi::complete(&doc));
    let routes = routes
        .route(
            "/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        // The one layer that needs the route the router matched: who may call it. axum
        // applies a route layer to each route and clones that route's layered service for
        // every request, so every other layer wraps the routing once, below.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::enforce,
        ))
        .fallback(|| async { AppError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone());
    let edge = tower::ServiceBuilder::new()
        .layer(middleware::map_response_with_state(
            edge::hsts(state.config.app_env),
            edge::security_headers,
        ))
        .layer(edge::cors(&state.config))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .layer(middleware::from_fn(edge::header_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        // Inside the metrics: a panic's 500 is counted (the outer catch sees only the edge's).
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(
            state.config.request_timeout,
            edge::timeout,
        ))
        .service(routes);
    Router::new().fallback_service(edge)
}

/// A panic's answer: a 500 problem, as any internal error.
fn panicked(_: Box<dyn std::any::Any + Send>) -> Response {
    AppError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Takes `X-Correlation-ID` from the caller (or makes one), gives each request an
/// `X-Request-ID`, runs the request inside its spans (`spans`: the log's and the trace's, each
/// carrying both), and echoes both back.
async fn request_context(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let correlation_id = request
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request_id = uuid::Uuid::new_v4().to_string();
    let route = access::template_of(request.uri().path());
    request.extensions_mut().insert(RouteTemplate(route));
    let spans = spans::request_spans(&request, route, &request_id, &correlation_id);
    let client_ip = state.rate_limiter.client_ip(&request);
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect());
    request.extensions_mut().insert(RequestContext {
        correlation_id: correlation_id.clone(),
        request_id: request_id.clone(),
        client_ip: (!client_ip.is_unspecified()).then_some(client_ip),
        user_agent,
    });
    // The trace's span innermost (`spans::request_spans`).
    let span = spans.trace;
    let mut response = next
        .run(request)
        .instrument(span.clone())
        .instrument(spans.log)
        .await;
    // Status error on 5xx, as the semantic conventions have it.
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    let headers = response.headers_mut();
    for (name, value) in [(&CORRELATION_ID, correlation_id), (&REQUEST_ID, request_id)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    response
}

/// The route template of the request's path (`access::template_of`), found once before
/// routing by `request_context` for the spans and the metrics alike; `None` for a path of no
/// route.
#[derive(Clone, Copy)]
struct RouteTemplate(Option<&'static str>);

/// Counts and times requests by method, route template and status. It runs before routing,
/// so a path of no route is counted too, as `unmatched`, and a method no route has as
/// `_OTHER` (the OpenTelemetry convention): no caller can mint label values.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<RouteTemplate>() {
        Some(RouteTemplate(template)) => *template,
        None => access::template_of(request.uri().path()),
    }
    .unwrap_or("unmatched");
    let method = method_label(request.method());
    let m = &state.metrics;
    let _in_flight = crate::observability::Running::enter(m.http_in_flight.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    m.http_duration
        .with_label_values(&[method, route])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[method, route, response.status().as_str()])
        .inc();
    if let Some(error::ProblemKind(kind)) = response.extensions().get() {
        m.http_problems.with_label_values(&[route, kind]).inc();
    }
    response
}

/// A request method as a metric label: the standard methods by name, any other as `_OTHER`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}
