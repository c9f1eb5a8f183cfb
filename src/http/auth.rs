//! `/auth`: registration, login, logout and the current account.

use super::error::{ApiError, AppError};
use super::extract::{ApiJson, Authenticated, RequestContext};
use super::AppState;
use crate::audit::AuditResult;
use crate::auth::Role;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use validator::Validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct RegisterRequest {
    #[validate(email, length(max = 254))]
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[validate(length(max = 100))]
    #[schema(max_length = 100)]
    pub name: Option<String>,
    /// `customer` (default) or `organizer`; admins are not self-registered.
    #[schema(value_type = Option<RegisterRole>)]
    pub role: Option<String>,
}

/// The roles one may register with, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RegisterRole {
    Customer,
    Organizer,
}

#[derive(Debug, Deserialize, Serialize, Validate, ToSchema)]
pub struct LoginRequest {
    #[validate(length(min = 1, max = 254))]
    #[schema(min_length = 1, max_length = 254)]
    pub email: String,
    #[validate(length(min = 1, max = 128))]
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub user_id: Uuid,
    pub email: String,
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginView {
    pub token: String,
    pub user_id: Uuid,
    pub role: String,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = AccountView), (status = 409, body = super::error::Problem),
              (status = 422, body = super::error::Problem)))]
async fn register(
    State(s): State<AppState>,
    ctx: RequestContext,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let role = match body.role.as_deref() {
        None | Some("customer") => Role::Customer,
        Some("organizer") => Role::Organizer,
        Some(_) => return Err(ApiError::field("role", "must be customer or organizer")),
    };
    let name = body
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    let registered = s
        .auth
        .register(&body.email, &body.password, name, role)
        .await
        .map_err(ApiError::from);
    let mut record = ctx.audit(
        s.clock.now(),
        None,
        "auth.register",
        "user",
        match &registered {
            Ok(_) => AuditResult::Success,
            Err(_) => AuditResult::Failure,
        },
    );
    record = match &registered {
        Ok(user) => record
            .actor(Some(user.id.0), user.role.as_str())
            .resource_id(user.id.0),
        Err(e) => record
            .actor(None, attempted(&body.email))
            .details(serde_json::json!({"problem": e.to_problem().1["type"]})),
    };
    s.audit.record(record);
    let user = registered?;
    Ok((
        StatusCode::CREATED,
        Json(AccountView {
            user_id: user.id.0,
            email: user.email,
            role: user.role.as_str().to_owned(),
        }),
    ))
}

#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginView), (status = 401, body = super::error::Problem)))]
async fn login(
    State(s): State<AppState>,
    ctx: RequestContext,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<LoginView>, ApiError> {
    let login = s.auth.login(&body.email, &body.password).await;
    // The attempted email is kept for a failure (who is being guessed); never the password.
    let record = match &login {
        Ok(session) => ctx
            .audit(
                s.clock.now(),
                None,
                "auth.login",
                "user",
                AuditResult::Success,
            )
            .actor(Some(session.user.id.0), session.user.role.as_str())
            .resource_id(session.user.id.0),
        Err(e) => ctx
            .audit(
                s.clock.now(),
                None,
                "auth.login",
                "user",
                AuditResult::Failure,
            )
            .actor(None, attempted(&body.email))
            .details(serde_json::json!({"error": e.to_string()})),
    };
    s.audit.record(record);
    let session = login?;
    Ok(Json(LoginView {
        token: session.token,
        user_id: session.user.id.0,
        role: session.user.role.as_str().to_owned(),
        expires_at: session.expires_at,
    }))
}

#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "the token no longer works"), (status = 401, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn logout(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ctx: RequestContext,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let token = super::extract::bearer(&headers)?.ok_or(AppError::Unauthorized)?;
    let outcome = s.auth.logout(token).await.map_err(ApiError::from);
    s.audit(
        &ctx,
        Some(&caller),
        "auth.logout",
        ("user", Some(caller.user_id.0.to_string())),
        &outcome,
        serde_json::json!({}),
    );
    outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// The email of a failed attempt as the audit log keeps it: normalised and bounded.
fn attempted(email: &str) -> String {
    email.trim().to_lowercase().chars().take(254).collect()
}

#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses((status = 200, body = AccountView), (status = 401, body = super::error::Problem)),
    security(("bearer" = [])))]
async fn me(Authenticated(caller): Authenticated) -> Json<AccountView> {
    Json(AccountView {
        user_id: caller.user_id.0,
        email: caller.email,
        role: caller.role.as_str().to_owned(),
    })
}
