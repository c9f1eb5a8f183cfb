//! The HTTP edge: one `router()` per resource, merged here with the middleware every request
//! passes (security headers, CORS, panic guard, request context and correlation ids, rate
//! limits, body limit, metrics by route template, request timeout, and the authorization
//! table of `access`, which admits callers by role). Handlers stay thin: check ownership with
//! `policy`, send a command through `Sales` or query the read models, and map
//! typed errors to problem+json through `ApiError`.

pub mod access;
pub mod admin;
pub mod analytics;
pub mod auth;
pub mod edge;
pub mod error;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod ops;
pub mod payments;
pub mod policy;
pub mod ratelimit;
pub mod reservations;

use crate::audit::{AuditLog, AuditResult};
use crate::auth::{AuthService, Principal};
use crate::config::Config;
use crate::domain::{EventId, PaymentId, ReservationId, SaleCommand};
use crate::eventstore::Metadata;
use crate::observability::Metrics;
use crate::payment::PaymentGateway;
use crate::projections::{EventView, PageRequest, PaymentView, ReadModel, ReservationView};
use crate::runtime::subscription::Progress;
use crate::runtime::{Clock, Committed, Sales};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error::ApiError;
use extract::RequestContext;
use idempotency::IdempotencyStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Attempts of `AppState::record` (backing off from 20 ms: about 5 s in all).
const RECORD_ATTEMPTS: u32 = 8;

/// How long a command handler waits for the read models to show its own write.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a handler may use; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub rate_limiter: Arc<ratelimit::RateLimiter>,
    pub sales: Sales,
    pub reads: Arc<dyn ReadModel>,
    pub read_progress: Progress,
    /// Sales analytics and purchase history, fed by the bus.
    pub insights: Arc<dyn crate::projections::insights::Insights>,
    pub bus: Arc<dyn crate::bus::EventBus>,
    pub dlq: crate::dlq::service::DlqService,
    pub auth: AuthService,
    pub gateway: Arc<dyn PaymentGateway>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub idempotency: Arc<IdempotencyStore>,
    /// The PostgreSQL pools by role, for the pool gauges on `/metrics` (empty in memory).
    pub pools: crate::db::NamedPools,
    /// Event views through the cache (in process, or Redis with `REDIS_URL`).
    pub cache: Arc<crate::cache::EventCache>,
    /// The audit trail: `record` never waits and never fails the request.
    pub audit: AuditLog,
    /// Set when shutdown begins: `/ready` answers 503 `draining` from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// When this instance was built, for the uptime on `/admin/dashboard/system`.
    pub started_at: Instant,
    /// Stalled bus consumers, for the bus check of `/ready`.
    pub consumer_health: Arc<crate::bus::consumer::ConsumerHealth>,
}

impl AppState {
    /// Runs a command and waits until the read models reflect it (read-your-writes).
    pub async fn command(
        &self,
        sale: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, ApiError> {
        let committed = self.sales.execute(sale, command, metadata).await?;
        Ok(self.visible(committed).await)
    }

    /// Like `command`, for a command that records what already happened outside (a capture
    /// at the gateway): when writers of several instances keep out-racing each other on the
    /// sale, try again for a while rather than answer 503 and leave the fact unrecorded.
    pub async fn record(
        &self,
        sale: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, ApiError> {
        let mut pause = Duration::from_millis(20);
        for _ in 1..RECORD_ATTEMPTS {
            match self
                .sales
                .execute(sale, command.clone(), metadata.clone())
                .await
            {
                Err(crate::runtime::CommandError::Contended) => {
                    tracing::info!(%sale, "writers contended; recording again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return Ok(self.visible(other?).await),
            }
        }
        self.command(sale, command, metadata).await
    }

    /// Waits until the read models show `committed` (read-your-writes), at most
    /// `READ_YOUR_WRITES_TIMEOUT`.
    async fn visible(&self, committed: Committed) -> Committed {
        if committed.position > 0
            && !self
                .read_progress
                .wait_for(committed.position, READ_YOUR_WRITES_TIMEOUT)
                .await
        {
            // The write is durable, so the client still gets its 2xx; only the read may lag.
            tracing::warn!(
                position = committed.position,
                "read models lag behind a committed write"
            );
        }
        committed
    }

    /// Records an audited action of `caller` (anonymous: `None`) on `resource` that ended with
    /// `outcome`: 401 and 403 are `denied`, other errors `failure` with their problem type.
    pub fn audit<T>(
        &self,
        ctx: &RequestContext,
        caller: Option<&Principal>,
        action: &str,
        resource: (&str, Option<String>),
        outcome: &Result<T, ApiError>,
        details: serde_json::Value,
    ) {
        let (result, details) = match outcome {
            Ok(_) => (AuditResult::Success, details),
            Err(e) => {
                let result = match e {
                    ApiError::Unauthorized | ApiError::Forbidden(_) => AuditResult::Denied,
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
        self.audit.record(record);
    }

    /// The event's view through the cache, for the public reads; `name` labels the metric.
    pub async fn cached_event_view(
        &self,
        id: EventId,
        name: crate::cache::CacheName,
    ) -> Result<EventView, ApiError> {
        self.cache
            .event(id, name)
            .await?
            .ok_or(ApiError::NotFound("event"))
    }

    pub async fn event_view(&self, id: EventId) -> Result<EventView, ApiError> {
        self.reads
            .event(id)
            .await?
            .ok_or(ApiError::NotFound("event"))
    }

    pub async fn reservation_view(&self, id: ReservationId) -> Result<ReservationView, ApiError> {
        self.reads
            .reservation(id)
            .await?
            .ok_or(ApiError::NotFound("reservation"))
    }

    pub async fn payment_view(&self, id: PaymentId) -> Result<PaymentView, ApiError> {
        self.reads
            .payment(id)
            .await?
            .ok_or(ApiError::NotFound("payment"))
    }
}

/// Rejects page 0 and page sizes outside 1..=100, naming each bad parameter.
pub fn valid_page(page: PageRequest) -> Result<PageRequest, ApiError> {
    let mut errors = Vec::new();
    if page.page < 1 {
        errors.push(error::FieldError::new("page", "must be at least 1"));
    }
    if !(1..=crate::projections::MAX_PAGE_SIZE).contains(&page.page_size) {
        errors.push(error::FieldError::new(
            "page_size",
            "must be between 1 and 100",
        ));
    }
    if errors.is_empty() {
        Ok(page)
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ticketing API", description = "Events, seat holds, payments and tickets."),
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

/// The OpenAPI document generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .merge(auth::router())
        .merge(events::router())
        .merge(reservations::router())
        .merge(payments::router())
        .merge(analytics::router())
        .merge(admin::router())
}

/// The whole application. Layers listed first run innermost: the timeout wraps only the
/// handler (so metrics record the timed-out answer), and the security headers wrap everything
/// (so 404s, 429s, CORS preflights and panics carry them too).
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api_routes().split_for_parts();
    let doc = Arc::new(doc);
    let routes = routes
        .route(
            "/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::enforce,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.config.request_timeout,
            edge::timeout,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .layer(middleware::from_fn(edge::header_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(edge::cors(&state.config));
    edge::security_headers(routes, state.config.app_env).with_state(state)
}

static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Takes `X-Correlation-ID` from the caller (or makes one), gives each request an
/// `X-Request-ID`, runs the request inside a span carrying both, and echoes both back.
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
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        correlation_id = %correlation_id,
        request_id = %request_id,
    );
    // A caller's W3C `traceparent` makes this request part of the caller's trace.
    crate::observability::tracecontext::continue_trace(
        &span,
        request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let client_ip = state.rate_limiter.client_ip(&request);
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect());
    request.extensions_mut().insert(RequestContext {
        correlation_id: correlation_id.clone(),
        request_id: request_id.clone(),
        client_ip: (!client_ip.is_unspecified()).then(|| client_ip.to_string()),
        user_agent,
    });
    let mut response = next.run(request).instrument(span).await;
    let headers = response.headers_mut();
    for (name, value) in [(&CORRELATION_ID, correlation_id), (&REQUEST_ID, request_id)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    response
}

/// Counts and times requests by method, route template and status.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}
