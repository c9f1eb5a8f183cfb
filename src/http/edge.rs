//! Response hardening every answer gets, errors included: security headers (HSTS only in
//! production), CORS per `APP_ENV`, the request-header size limit (431 problem+json), and the
//! request timeout that answers problem+json rather than dropping the connection. It never adds a `Server` header or any version string.

use super::error::ApiError;
use crate::config::{AppEnv, Config};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The API serves JSON only: nothing may be framed, embedded, sniffed or given powerful features.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "permissions-policy",
        "geolocation=(), camera=(), microphone=(), payment=(), usb=()",
    ),
];

const HSTS: &str = "max-age=63072000; includeSubDomains";

/// The `Strict-Transport-Security` value `security_headers` sets: in production only.
pub fn hsts(app_env: AppEnv) -> Option<HeaderValue> {
    (app_env == AppEnv::Production).then(|| HeaderValue::from_static(HSTS))
}

/// Sets the security headers on every response, overriding any a handler set; `hsts` is
/// what `edge::hsts` gives for this environment.
pub async fn security_headers<B>(
    State(hsts): State<Option<HeaderValue>>,
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    if let Some(hsts) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// Any origin in development; in staging and production only `CORS_ALLOWED_ORIGINS` (an
/// unlisted origin gets no `Access-Control-Allow-Origin`, so browsers refuse the answer).
pub fn cors(config: &Config) -> CorsLayer {
    if config.app_env == AppEnv::Development {
        return CorsLayer::permissive();
    }
    let origins = config
        .cors_allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok());
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("idempotency-key"),
            // A browser sends the waiting room's pass with its reservation.
            HeaderName::from_static("queue-pass"),
            HeaderName::from_static("x-correlation-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Answers 503 `request-timeout` (with `Retry-After`) when the handler runs past `timeout`.
/// The handler's future is dropped at that point, so work not yet committed does not happen;
/// a client retrying a write should send the same `Idempotency-Key`. A connection it held
/// mid-statement is checked with a bound as it goes back to its pool (`db::abandoned`).
pub async fn timeout(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let answer = async { Ok::<_, ()>(next.run(request).await) };
    crate::db::within(timeout, answer, || {
        tracing::warn!(%method, %path, timeout_ms = timeout.as_millis(), "request timed out");
    })
    .await
    .unwrap_or_else(|()| ApiError::RequestTimeout.into_response())
}

/// Most bytes all request headers together may take (names, values and `": "` + CRLF each).
/// Bearer tokens, cookies and forwarding headers fit many times over; beyond this a request is
/// abuse or a bug. (hyper itself refuses more than 100 headers, or ~400 KB, with a bare 431.)
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Answers 431 `headers-too-large` problem+json when the request's headers exceed
/// `MAX_HEADER_BYTES`, before any other work (rate limit, token look-up) is spent on it.
pub async fn header_limit(request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        tracing::warn!(size, limit = MAX_HEADER_BYTES, "request headers too large");
        return ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}
