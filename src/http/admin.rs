//! `/admin`: operator routes, admins only (the access table enforces it; the handlers check
//! again): the dead letter queue (`dlq.rs`), the audit trail (`audit.rs`) and the operators'
//! dashboard (`dashboard.rs`).

mod audit;
mod dashboard;
mod dlq;

use super::AppState;
use utoipa_axum::router::OpenApiRouter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(dlq::router())
        .merge(audit::router())
        .merge(dashboard::router())
}
