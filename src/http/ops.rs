//! Operations endpoints: liveness, readiness (every dependency checked in parallel with a
//! timeout), Prometheus metrics and the OpenAPI document. Never rate limited.

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the read-model projector may fail (every retry of its batch) before `/ready` warns.
const PROJECTOR_FAILING: Duration = Duration::from_secs(10);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: &'static str,
    /// `pass` or `fail`; `warn` when a check that does not decide readiness fails.
    pub status: &'static str,
    /// Which adapter answered (`memory`, `postgres`, ...).
    pub adapter: &'static str,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Whether a failure makes the instance not ready. The bus and the cache are not: while
    /// the broker is away the outbox keeps every event and sales go on; while the cache is
    /// away reads go to PostgreSQL.
    pub critical: bool,
}

impl Check {
    /// The same check, reported as `warn` rather than `fail` and not deciding readiness.
    fn non_critical(mut self) -> Check {
        self.critical = false;
        if self.error.is_some() {
            self.status = "warn";
        }
        self
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (a non-critical check failed; still 200), `not_ready`, or
    /// `draining` once shutdown began.
    pub status: &'static str,
    /// Every dependency check; empty while draining (none is run then).
    pub checks: Vec<Check>,
}

#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process serves")))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn check<E: std::fmt::Display>(
    name: &'static str,
    adapter: &'static str,
    probe: impl Future<Output = Result<(), E>>,
) -> Check {
    let started = Instant::now();
    let error = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    Check {
        name,
        status: if error.is_none() { "pass" } else { "fail" },
        adapter,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error,
        critical: true,
    }
}

/// A circuit breaker as a check: `pass` closed, `warn` half-open or open (with the failure
/// that opened it). Never decides readiness: the dependency's own check does.
fn breaker_check(b: crate::breaker::Snapshot) -> Check {
    let name = match b.name {
        "event_store" => "event_store_breaker",
        "payment_gateway" => "payment_gateway_breaker",
        "cache" => "cache_breaker",
        "bus" => "bus_breaker",
        _ => "circuit_breaker",
    };
    let error = match b.state {
        crate::breaker::BreakerState::Closed => None,
        state => Some(format!(
            "circuit breaker {}: {}{}",
            state.as_str(),
            b.reason.as_deref().unwrap_or("failing"),
            b.retry_after
                .map(|d| format!(" (probing in {} s)", d.as_secs()))
                .unwrap_or_default()
        )),
    };
    Check {
        name,
        status: "pass",
        adapter: "breaker",
        duration_ms: 0,
        error,
        critical: true,
    }
    .non_critical()
}

/// Every dependency checked in parallel: the event store, the read models and the accounts
/// decide readiness; the bus, the cache and the projector only warn. (The breakers, listed
/// after these on `/ready`, never decide it.)
async fn dependency_checks(s: &AppState) -> [Check; 6] {
    let store = s.app.event_store();
    let auth = s.auth.store();
    let cache = s.app.event_cache().cache();
    let (events, reads, accounts, bus, cached, projector) = tokio::join!(
        check("event_store", store.kind(), store.ping()),
        check(
            "projections",
            s.app.read_model().kind(),
            s.app.read_model().ping()
        ),
        check("auth", auth.kind(), auth.ping()),
        check("bus", s.bus.kind(), bus_ready(s)),
        check("cache", cache.kind(), cache.ping()),
        check("projector", "subscription", projector_ready(s)),
    );
    [
        events,
        reads,
        accounts,
        bus.non_critical(),
        cached.non_critical(),
        projector.non_critical(),
    ]
}

/// Whether `/ready` answers 200 with these checks: no critical one failed.
fn ready_by(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.error.is_none() || !c.critical)
}

/// The read-model projector works (a batch it keeps failing is shown here as `warn`; the read
/// models are shared, so another instance's projector may still keep them current).
async fn projector_ready(s: &AppState) -> Result<(), String> {
    match s.app.projector_failing() {
        Some((failing, error)) if failing >= PROJECTOR_FAILING => Err(format!(
            "the read-model projector has failed for {} s: {error}",
            failing.as_secs()
        )),
        _ => Ok(()),
    }
}

/// The broker answers, and no consumer is stalled (the reasons otherwise).
async fn bus_ready(s: &AppState) -> Result<(), String> {
    s.bus.ping().await.map_err(|e| e.to_string())?;
    match s.consumer_health.stalls() {
        stalls if stalls.is_empty() => Ok(()),
        stalls => Err(format!("stalled consumer: {}", stalls.join("; "))),
    }
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.draining.load(Ordering::SeqCst) {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "draining",
                checks: Vec::new(),
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return response;
    }
    let checks: Vec<Check> = dependency_checks(&s)
        .await
        .into_iter()
        .chain(s.breakers.snapshots().into_iter().map(breaker_check))
        .collect();
    let ok = ready_by(&checks);
    let degraded = checks.iter().any(|c| c.error.is_some());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (
        status,
        Json(Readiness {
            status: match (ok, degraded) {
                (false, _) => "not_ready",
                (true, true) => "degraded",
                (true, false) => "ready",
            },
            checks,
        }),
    )
        .into_response();
    if !ok {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    for (pool, connections, idle) in s.pools.sizes() {
        s.metrics.record_pool(pool, connections, idle);
    }
    // What `/ready` would answer now, so Prometheus alone can alert on an instance its load
    // balancer took out of rotation while `/metrics` still answers (`up` stays 1).
    let (checks, dead_letters) = tokio::join!(
        dependency_checks(&s),
        tokio::time::timeout(CHECK_TIMEOUT, s.app.dead_letters().store().stats()),
    );
    let draining = s.draining.load(Ordering::SeqCst);
    s.metrics
        .ready
        .set(i64::from(!draining && ready_by(&checks)));
    for c in &checks {
        s.metrics
            .ready_checks
            .with_label_values(&[c.name])
            .set(i64::from(c.error.is_none()));
    }
    if let Ok(Ok(stats)) = dead_letters {
        stats.record(&s.metrics);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
