//! `GET /admin/audit`: the audit trail, filtered and paginated. Admins only.

use crate::app::policy;
use crate::audit::{AuditFilter, AuditRecord};
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, Authenticated};
use crate::http::AppState;
use crate::paging::{Page, PageRequest};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit_log))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only actions of this user id (the actor).
    pub user: Option<Uuid>,
    /// Only this action, e.g. `auth.login`, `payment.refund`, `dlq.retry`.
    #[param(max_length = 200)]
    pub action: Option<String>,
    /// Only this resource type, e.g. `user`, `event`, `payment`, `reservation`, `dlq_entry`.
    #[param(max_length = 200)]
    pub resource: Option<String>,
    /// Only this resource id (with or without `resource`).
    #[param(max_length = 200)]
    pub resource_id: Option<String>,
}

/// Bounds a free-text filter so a query cannot carry an arbitrarily long string. Counted in
/// characters, as the schema's `maxLength` counts them (not bytes: 200 `Ω` are 400 bytes).
fn bounded(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > 200 => {
            Err(ApiError::field(field, "length must be at most 200"))
        }
        other => Ok(other.filter(|v| !v.is_empty())),
    }
}

#[utoipa::path(get, path = "/admin/audit", tag = "admin", params(AuditQuery, PageRequest),
    responses((status = 200, body = Page<AuditRecord>), (status = 401, body = crate::http::error::Problem),
              (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
async fn audit_log(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<AuditQuery>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<AuditRecord>>, ApiError> {
    policy::admin_only(&caller)?;
    let filter = AuditFilter {
        actor_id: query.user,
        action: bounded("action", query.action)?,
        resource_type: bounded("resource", query.resource)?,
        resource_id: bounded("resource_id", query.resource_id)?,
    };
    Ok(Json(
        s.audit
            .list(&filter, crate::app::queries::valid_page(page)?)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::bounded;

    /// The bound is the schema's: 200 characters, whatever their size in bytes.
    #[test]
    fn filters_are_bounded_in_characters_like_the_schema() {
        let most = "Ω".repeat(200);
        assert_eq!(bounded("action", Some(most.clone())).ok(), Some(Some(most)));
        assert!(bounded("action", Some("Ω".repeat(201))).is_err());
        assert_eq!(bounded("action", Some(String::new())).ok(), Some(None));
    }
}
