//! The one HTTP error type. Every variant maps to an RFC 9457 `application/problem+json`
//! answer with a stable `type`; 5xx bodies stay generic while the cause goes to the log.

use crate::auth::AuthError;
use crate::domain::concert::EventError;
use crate::domain::inventory::InventoryError;
use crate::domain::payment::PaymentError;
use crate::domain::reservation::ReservationError;
use crate::domain::SaleError;
use crate::eventstore::StoreError;
use crate::projections::ReadError;
use crate::runtime::CommandError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the problem kind, `urn:ticketing:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Present on 422: every field that failed.
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a parameter is not of its type.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that is unknown, expired or revoked.
    #[error("authentication required")]
    Unauthorized,
    /// 401 at login.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404: unknown id, or a resource the caller may not see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the route exists but not with this method.
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    /// 409: the resource's state forbids the request (sold out, wrong status, duplicate).
    #[error("{detail}")]
    Conflict { kind: &'static str, detail: String },
    /// 409: optimistic concurrency; the client should re-read and retry.
    #[error("version mismatch: expected {expected}, actual {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// 402: the card was declined; the reservation stays pending.
    #[error("payment declined: {reason}")]
    PaymentDeclined {
        reason: String,
        payment_id: uuid::Uuid,
    },
    /// 422 `retry-failed`: a dead letter's handler failed again; the entry is pending with
    /// the new error and one more retry.
    #[error("the retry failed: {error}")]
    RetryFailed {
        error: String,
        retry_count: u32,
        entry_id: i64,
    },
    /// 413: the body is over the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 431: the request's headers together are over the limit.
    #[error("request headers too large: at most {limit} bytes in total")]
    HeadersTooLarge { limit: usize },
    /// 415: a JSON body without `Content-Type: application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: well-formed JSON with invalid fields; lists each one.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 429: the caller's rate limit is spent; retry after the given whole seconds (at least 1).
    #[error("too many requests; retry after {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// 503 `request-timeout`: the request ran past `REQUEST_TIMEOUT_SECONDS` and was abandoned.
    /// 503 rather than 408 because the server was slow (usually a dependency), not the client.
    #[error("the request took too long and was abandoned; it may not have been carried out")]
    RequestTimeout,
    /// 503: a dependency is down or overloaded; retry after the given seconds.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after: u32 },
    /// 500: a bug or an unexpected failure; the body says nothing more.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(field: &str, message: &str) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::VersionMismatch { .. } => StatusCode::CONFLICT,
            ApiError::PaymentDeclined { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) | ApiError::RetryFailed { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidCredentials => "invalid-credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::Conflict { kind, .. } => kind,
            ApiError::VersionMismatch { .. } => "version-mismatch",
            ApiError::PaymentDeclined { .. } => "payment-declined",
            ApiError::PayloadTooLarge => "payload-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::HeadersTooLarge { .. } => "headers-too-large",
            ApiError::Validation(_) => "validation-failed",
            ApiError::RetryFailed { .. } => "retry-failed",
            ApiError::TooManyRequests { .. } => "rate-limited",
            ApiError::RequestTimeout => "request-timeout",
            ApiError::Unavailable { .. } => "service-unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The status and problem body, also used to store idempotent replies.
    pub fn to_problem(&self) -> (StatusCode, Value) {
        let status = self.status_code();
        let detail = match self {
            ApiError::Internal(_) => "an unexpected error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("urn:ticketing:problem:{}", self.kind()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        match self {
            ApiError::Validation(errors) => body["errors"] = json!(errors),
            ApiError::VersionMismatch { expected, actual } => {
                body["expected_version"] = json!(expected);
                body["actual_version"] = json!(actual);
            }
            ApiError::PaymentDeclined { payment_id, .. } => body["payment_id"] = json!(payment_id),
            ApiError::RetryFailed {
                retry_count,
                entry_id,
                ..
            } => {
                body["retry_count"] = json!(retry_count);
                body["entry_id"] = json!(entry_id);
            }
            _ => {}
        }
        (status, body)
    }
}

/// Renders a problem body with its headers.
pub fn problem_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let (status, body) = self.to_problem();
        let mut response = problem_response(status, &body);
        let retry_after = match self {
            ApiError::Unavailable { retry_after, .. } => Some(u64::from(retry_after)),
            ApiError::TooManyRequests { retry_after } => Some(retry_after.max(1)),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn conflict(kind: &'static str, detail: impl ToString) -> ApiError {
    ApiError::Conflict {
        kind,
        detail: detail.to_string(),
    }
}

impl From<SaleError> for ApiError {
    fn from(e: SaleError) -> Self {
        match e {
            SaleError::Event(e) => match e {
                EventError::NotFound => ApiError::NotFound("event"),
                EventError::AlreadyExists => conflict("already-exists", &e),
                EventError::InvalidTransition { .. } => conflict("invalid-state", &e),
                EventError::SalesNotOpen { .. } => conflict("sales-not-open", &e),
                EventError::VersionConflict { expected, actual } => {
                    ApiError::VersionMismatch { expected, actual }
                }
                EventError::Invalid(problems) => ApiError::Validation(
                    problems
                        .into_iter()
                        .map(|p| FieldError::new(p.field, p.message))
                        .collect(),
                ),
            },
            SaleError::Inventory(e) => match e {
                InventoryError::UnknownSection(_) => ApiError::field("section", &e.to_string()),
                InventoryError::SoldOut { .. } => conflict("sold-out", &e),
                InventoryError::CapacityBelowCommitted { .. } => {
                    conflict("capacity-below-committed", &e)
                }
            },
            SaleError::Reservation(e) => match e {
                ReservationError::NotFound => ApiError::NotFound("reservation"),
                ReservationError::InvalidQuantity => ApiError::field("quantity", &e.to_string()),
                ReservationError::TotalOverflow => ApiError::field("quantity", &e.to_string()),
                ReservationError::HoldExpired { .. } => conflict("reservation-expired", &e),
                ReservationError::NotPending { .. } | ReservationError::NotCancellable { .. } => {
                    conflict("reservation-not-pending", &e)
                }
                ReservationError::AlreadyExists
                | ReservationError::NotYetExpired { .. }
                | ReservationError::AmountMismatch { .. } => conflict("conflict", &e),
            },
            SaleError::Payment(e) => match e {
                PaymentError::NotFound => ApiError::NotFound("payment"),
                PaymentError::NotRefundable { .. } => conflict("payment-not-refundable", &e),
                PaymentError::AlreadyExists => conflict("conflict", &e),
            },
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Contended => ApiError::Unavailable {
                detail: e.to_string(),
                retry_after: 1,
            },
            CommandError::Store(StoreError::Unavailable(_)) | CommandError::ShuttingDown => {
                tracing::warn!(error = %e, "command not executed");
                ApiError::Unavailable {
                    detail: "the event store is unavailable; nothing was changed".into(),
                    retry_after: 2,
                }
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        tracing::warn!(error = %e, "read failed");
        ApiError::Unavailable {
            detail: "the read models are unavailable".into(),
            retry_after: 2,
        }
    }
}

impl From<crate::dlq::DlqError> for ApiError {
    fn from(e: crate::dlq::DlqError) -> Self {
        use crate::dlq::DlqError;
        match e {
            DlqError::NotFound(_) => ApiError::NotFound("dead letter"),
            DlqError::WrongStatus { .. } => conflict("dead-letter-not-pending", e),
            DlqError::Blocked { .. } => conflict("dead-letter-blocked", e),
            DlqError::Unavailable(_) => {
                tracing::warn!(error = %e, "dead letter queue failed");
                ApiError::Unavailable {
                    detail: "the dead letter queue is unavailable".into(),
                    retry_after: 2,
                }
            }
        }
    }
}

impl From<crate::dlq::service::RetryError> for ApiError {
    fn from(e: crate::dlq::service::RetryError) -> Self {
        use crate::dlq::service::RetryError;
        match e {
            RetryError::Dlq(e) => e.into(),
            RetryError::Failed(entry) => ApiError::RetryFailed {
                error: entry.error,
                retry_count: entry.retry_count,
                entry_id: entry.id,
            },
        }
    }
}

impl From<crate::projections::insights::InsightsError> for ApiError {
    fn from(e: crate::projections::insights::InsightsError) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::EmailTaken => {
                conflict("email-taken", "an account with this email already exists")
            }
            AuthError::InvalidCredentials => ApiError::InvalidCredentials,
            AuthError::InvalidToken => ApiError::Unauthorized,
            AuthError::Unavailable(_) => {
                tracing::warn!(error = %e, "auth store unavailable");
                ApiError::Unavailable {
                    detail: "the account store is unavailable".into(),
                    retry_after: 2,
                }
            }
            AuthError::Internal(_) => ApiError::Internal(anyhow::Error::new(e)),
        }
    }
}
