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

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: &'static str,
    /// `pass` or `fail`; `warn` for a check that does not decide readiness (the cache: when
    /// it fails, reads go to PostgreSQL).
    pub status: &'static str,
    /// Which adapter answered (`memory`, `postgres`, ...).
    pub adapter: &'static str,
    pub duration_ms: u64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `not_ready`, or `draining` once shutdown began.
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
    let store = s.sales.store();
    let auth = s.auth.store();
    let cache = s.cache.cache();
    let (events, reads, accounts, mut cached) = tokio::join!(
        check("event_store", store.kind(), store.ping()),
        check("projections", s.reads.kind(), s.reads.ping()),
        check("auth", auth.kind(), auth.ping()),
        check("cache", cache.kind(), cache.ping()),
    );
    let ok = [&events, &reads, &accounts]
        .iter()
        .all(|c| c.error.is_none());
    if cached.error.is_some() {
        cached.status = "warn";
    }
    let checks = vec![events, reads, accounts, cached];
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (
        status,
        Json(Readiness {
            status: if ok { "ready" } else { "not_ready" },
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
