//! The operators' dashboard (`/admin/dashboard/system`, `/admin/dashboard/sales`): one JSON
//! answer each, assembled from what the instance already knows (its adapters, pools, metrics
//! gauges and read models). Admins only. It reads and never changes anything; a dependency
//! that does not answer is reported in the body, not turned into an error.

use crate::app::policy;
use crate::dlq::DlqStats;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Authenticated;
use crate::http::AppState;
use crate::projections::insights::Revenue;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long the bus or the cache may take to answer a ping, as on `/ready`.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The window of the sales figures.
const SALES_WINDOW_HOURS: i64 = 24;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(system))
        .routes(routes!(sales))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemDashboard {
    /// The crate version of the running binary.
    pub version: &'static str,
    /// Seconds since this instance was built (start-up included).
    pub uptime_seconds: u64,
    pub event_store: EventStoreFigures,
    pub outbox: OutboxFigures,
    /// The PostgreSQL pools by role; empty on the in-memory adapters.
    pub pools: Vec<PoolFigures>,
    pub bus: DependencyStatus,
    pub cache: CacheFigures,
    pub dlq: DlqStats,
    /// The circuit breaker of each dependency.
    pub breakers: Vec<BreakerFigures>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerFigures {
    /// `event_store`, `payment_gateway`, `cache` or `bus`.
    pub dependency: &'static str,
    /// `closed`, `half_open` (one probe goes through) or `open` (calls refused with 503).
    pub state: &'static str,
    /// The failure that opened it last; none while closed.
    pub reason: Option<String>,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// While open: seconds until a probe may go through.
    pub retry_after_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStoreFigures {
    /// `memory` or `postgres`.
    pub kind: &'static str,
    /// Position of the newest committed event.
    pub head_position: u64,
    /// Position the read models have applied up to.
    pub projection_position: u64,
    /// `head_position - projection_position`.
    pub projection_lag: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxFigures {
    /// Committed events the relay has not published yet.
    pub backlog: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolFigures {
    pub name: &'static str,
    pub connections: u32,
    pub idle: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyStatus {
    /// The adapter: `memory` or `kafka` for the bus, `memory` or `redis` for the cache.
    pub kind: &'static str,
    /// `pass` or `fail`: whether it answered a ping within a second.
    pub status: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CacheFigures {
    #[serde(flatten)]
    pub status: DependencyStatus,
    /// Look-ups of event details and availability since start-up, by result.
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

fn dependency<E: std::fmt::Display>(
    kind: &'static str,
    ping: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> DependencyStatus {
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", PING_TIMEOUT.as_millis())),
    };
    DependencyStatus {
        kind,
        status: if error.is_none() { "pass" } else { "fail" },
        error,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SalesDashboard {
    /// Start of the window: 24 hours before now.
    pub since: DateTime<Utc>,
    /// Tickets of purchases confirmed within the window and not refunded since.
    pub tickets_sold: u64,
    /// Their revenue, one total per currency. Follows purchases within moments (the
    /// insights are fed by the bus).
    pub revenue: Vec<Revenue>,
    /// Reservations holding seats right now (pending, not yet expired or paid).
    pub active_holds: u64,
}

#[utoipa::path(get, path = "/admin/dashboard/system", tag = "admin",
    responses((status = 200, body = SystemDashboard), (status = 401, body = Problem),
              (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn system(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<SystemDashboard>, ApiError> {
    policy::admin_only(&caller)?;
    let store = s.app.event_store();
    let head_position = *store.subscribe_head().borrow();
    let projection_position = s.app.read_position();
    let cache = s.app.event_cache().cache();
    let (bus_ping, cache_ping, dlq) = tokio::join!(
        tokio::time::timeout(PING_TIMEOUT, s.bus.ping()),
        tokio::time::timeout(PING_TIMEOUT, cache.ping()),
        s.app.dead_letters().store().stats()
    );
    let looked_up = |result: &str| {
        ["events", "availability"]
            .iter()
            .map(|c| {
                s.metrics
                    .cache_requests
                    .with_label_values(&[c, result])
                    .get()
            })
            .sum()
    };
    Ok(Json(SystemDashboard {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: s.started_at.elapsed().as_secs(),
        event_store: EventStoreFigures {
            kind: store.kind(),
            head_position,
            projection_position,
            projection_lag: head_position.saturating_sub(projection_position),
        },
        outbox: OutboxFigures {
            backlog: s.metrics.outbox_backlog.get(),
        },
        pools: s
            .pools
            .sizes()
            .map(|(name, connections, idle)| PoolFigures {
                name,
                connections,
                idle,
            })
            .collect(),
        bus: dependency(s.bus.kind(), bus_ping),
        cache: CacheFigures {
            status: dependency(cache.kind(), cache_ping),
            hits: looked_up("hit"),
            misses: looked_up("miss"),
            errors: looked_up("error"),
        },
        dlq: dlq?,
        breakers: s
            .breakers
            .snapshots()
            .into_iter()
            .map(|b| BreakerFigures {
                dependency: b.name,
                state: b.state.as_str(),
                reason: b.reason,
                since: b.since,
                retry_after_seconds: b.retry_after.map(|d| d.as_secs()),
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/admin/dashboard/sales", tag = "admin",
    responses((status = 200, body = SalesDashboard), (status = 401, body = Problem),
              (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn sales(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<SalesDashboard>, ApiError> {
    policy::admin_only(&caller)?;
    let since = s.clock.now() - chrono::Duration::hours(SALES_WINDOW_HOURS);
    let (recent, holds) = s.app.sales_overview(since).await?;
    Ok(Json(SalesDashboard {
        since,
        tickets_sold: recent.tickets_sold,
        revenue: recent.revenue,
        active_holds: u64::try_from(holds).unwrap_or(u64::MAX),
    }))
}
