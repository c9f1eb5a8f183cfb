//! `/admin`: operator routes, admins only (the access table enforces it; the handlers check
//! again): the dead letter queue (`dlq.rs`) and the audit trail (`audit.rs`).

mod audit;
mod dlq;

use super::AppState;
use utoipa_axum::router::OpenApiRouter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(dlq::router())
        .merge(audit::router())
}
