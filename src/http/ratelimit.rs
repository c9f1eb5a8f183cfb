//! Rate limits at the HTTP edge (governor, GCRA on the real clock): a strict per-IP limit on
//! sign-up and login (brute force), a per-user limit on reservations and payments, and a
//! generous per-IP limit on everything else. Operations routes are never limited. Refusals are
//! 429 problem+json with `Retry-After` and are counted by scope. It never trusts
//! `X-Forwarded-For` unless `TRUST_PROXY` says a proxy sets it.

use super::error::ApiError;
use super::extract::VerifiedPrincipal;
use super::AppState;
use crate::config::RateLimits;
use crate::domain::UserId;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Paths that are never limited: probes and scrapers must always get through.
pub(crate) const OPERATIONS: [&str; 4] = ["/health", "/ready", "/metrics", "/openapi.json"];

/// Forget idle keys every this many checks, so the key maps stay bounded by recent clients.
const SWEEP_EVERY: u64 = 4096;

/// Which limit a request counts against; also the bounded `scope` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Auth,
    Writes,
    Reads,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Auth => "auth",
            Scope::Writes => "writes",
            Scope::Reads => "reads",
        }
    }
}

/// The three keyed limiters; cheap to share behind the `AppState`.
pub struct RateLimiter {
    auth: DefaultKeyedRateLimiter<IpAddr>,
    writes: DefaultKeyedRateLimiter<UserId>,
    reads: DefaultKeyedRateLimiter<IpAddr>,
    trust_proxy: bool,
    checks: AtomicU64,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimiter {
    pub fn new(limits: RateLimits, trust_proxy: bool) -> Self {
        RateLimiter {
            auth: DefaultKeyedRateLimiter::keyed(
                Quota::per_minute(non_zero(limits.auth_per_minute))
                    .allow_burst(non_zero(limits.auth_burst)),
            ),
            writes: DefaultKeyedRateLimiter::keyed(Quota::per_second(non_zero(
                limits.writes_per_second,
            ))),
            reads: DefaultKeyedRateLimiter::keyed(Quota::per_second(non_zero(
                limits.reads_per_second,
            ))),
            trust_proxy,
            checks: AtomicU64::new(0),
        }
    }

    /// The client's address: the socket peer, or, when a trusted proxy sets it, the last
    /// `X-Forwarded-For` entry: the address the proxy saw and appended. The entries before it
    /// are whatever the client sent, so a client could pick its own key with them. Without
    /// either (an in-process call) all such callers share one key.
    pub fn client_ip(&self, request: &Request) -> IpAddr {
        if self.trust_proxy {
            let forwarded = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|last| last.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ip;
            }
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
    }

    /// Whole seconds until a refused caller may try again, at least 1.
    fn retry_after(wait: Duration) -> u64 {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        secs.max(1)
    }

    fn sweep_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for limiter in [&self.auth, &self.reads] {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            self.writes.retain_recent();
            self.writes.shrink_to_fit();
        }
    }
}

/// Takes one cell of `key`'s quota, or says how long until one is free.
fn check<K>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Duration>
where
    K: Clone + Eq + Hash,
{
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
}

fn is_limited_write(method: &Method, path: &str) -> bool {
    method == Method::POST && matches!(path, "/api/reservations" | "/api/payments")
}

/// The middleware: picks the scope and key, and answers 429 when that key's quota is spent.
///
/// Reservations and payments are keyed by the user behind the bearer token; the verified
/// principal is left in the request so the handler does not look the token up again. Without
/// a valid token such a request falls back to the per-IP limit and the handler answers 401.
pub async fn limit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if OPERATIONS.contains(&path) {
        return next.run(request).await;
    }
    let limiter = &state.rate_limiter;
    limiter.sweep_now_and_then();
    let auth_route =
        request.method() == Method::POST && matches!(path, "/auth/login" | "/auth/register");
    let mut user = None;
    if is_limited_write(request.method(), path) {
        let token = super::extract::bearer(request.headers())
            .ok()
            .flatten()
            .map(str::to_owned);
        if let Some(token) = token {
            if let Ok(principal) = state.auth.authenticate(&token).await {
                user = Some(principal.user_id);
                request
                    .extensions_mut()
                    .insert(VerifiedPrincipal(principal));
            }
        }
    }
    let (scope, outcome) = match user {
        Some(user) => (Scope::Writes, check(&limiter.writes, &user)),
        None if auth_route => (
            Scope::Auth,
            check(&limiter.auth, &limiter.client_ip(&request)),
        ),
        None => (
            Scope::Reads,
            check(&limiter.reads, &limiter.client_ip(&request)),
        ),
    };
    match outcome {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            state
                .metrics
                .rate_limited
                .with_label_values(&[scope.label()])
                .inc();
            ApiError::TooManyRequests {
                retry_after: RateLimiter::retry_after(wait),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retry-After rounds up to whole seconds and is never 0.
    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(RateLimiter::retry_after(Duration::ZERO), 1);
        assert_eq!(RateLimiter::retry_after(Duration::from_millis(10)), 1);
        assert_eq!(RateLimiter::retry_after(Duration::from_millis(5_001)), 6);
        assert_eq!(RateLimiter::retry_after(Duration::from_secs(12)), 12);
    }
}
