//! The one HTTP error type: the edge's own refusals (malformed requests, limits, timeouts)
//! and every `AppError` of the use cases. Each maps to an RFC 9457
//! `application/problem+json` answer with a stable `type`; 5xx bodies stay generic while the
//! cause goes to the log.

pub use crate::app::{AppError, FieldError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

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
    /// What a use case answered; see `AppError` for each variant's meaning.
    #[error(transparent)]
    App(#[from] AppError),
    /// 400: the body is not JSON, or a parameter is not of its type.
    #[error("{0}")]
    BadRequest(String),
    /// 405: the route exists but not with this method.
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    /// 413: the body is over the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 431: the request's headers together are over the limit.
    #[error("request headers too large: at most {limit} bytes in total")]
    HeadersTooLarge { limit: usize },
    /// 415: a JSON body without `Content-Type: application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 429: the caller's rate limit is spent; retry after the given whole seconds (at least 1).
    #[error("too many requests; retry after {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// 503 `request-timeout`: the request ran past `REQUEST_TIMEOUT_SECONDS` and was abandoned.
    /// 503 rather than 408 because the server was slow (usually a dependency), not the client.
    #[error("the request took too long and was abandoned; it may not have been carried out")]
    RequestTimeout,
}

/// Status and stable problem kind of a use case's error.
fn app_status(e: &AppError) -> (StatusCode, &'static str) {
    match e {
        AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        AppError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid-credentials"),
        AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        AppError::Denied { kind, .. } => (StatusCode::FORBIDDEN, kind),
        AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        AppError::Conflict { kind, .. } => (StatusCode::CONFLICT, kind),
        AppError::VersionMismatch { .. } => (StatusCode::CONFLICT, "version-mismatch"),
        AppError::PaymentDeclined { .. } => (StatusCode::PAYMENT_REQUIRED, "payment-declined"),
        AppError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
        AppError::RetryFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "retry-failed"),
        AppError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable"),
        AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    /// One invalid field (422).
    pub fn field(field: &str, message: &str) -> Self {
        AppError::field(field, message).into()
    }

    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::App(e) => app_status(e),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
            ),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::RequestTimeout => (StatusCode::SERVICE_UNAVAILABLE, "request-timeout"),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        self.status_and_kind().0
    }

    /// The status and problem body, also used to store idempotent replies.
    pub fn to_problem(&self) -> (StatusCode, Value) {
        let (status, kind) = self.status_and_kind();
        let detail = match self {
            ApiError::App(AppError::Internal(_)) => {
                "an unexpected error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("urn:ticketing:problem:{kind}"),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        match self {
            ApiError::App(AppError::Validation(errors)) => body["errors"] = json!(errors),
            ApiError::App(AppError::VersionMismatch { expected, actual }) => {
                body["expected_version"] = json!(expected);
                body["actual_version"] = json!(actual);
            }
            ApiError::App(AppError::PaymentDeclined { payment_id, .. }) => {
                body["payment_id"] = json!(payment_id)
            }
            ApiError::App(AppError::RetryFailed {
                retry_count,
                entry_id,
                ..
            }) => {
                body["retry_count"] = json!(retry_count);
                body["entry_id"] = json!(entry_id);
            }
            _ => {}
        }
        (status, body)
    }
}

/// Renders a problem body (JSON text) with its headers.
pub fn problem_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
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

/// The problem kind of an answer, for the metrics middleware (`http_problems_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemKind(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::App(AppError::Internal(e)) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let (status, body) = self.to_problem();
        let mut response = problem_response(status, body.to_string());
        response
            .extensions_mut()
            .insert(ProblemKind(self.status_and_kind().1));
        let retry_after = match self {
            ApiError::App(AppError::Unavailable { retry_after, .. }) => {
                Some(u64::from(retry_after))
            }
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Everything that converts into an `AppError` converts into an `ApiError`, so handlers can
/// use `?` on the layers below directly.
macro_rules! via_app_error {
    ($($from:ty),* $(,)?) => {$(
        impl From<$from> for ApiError {
            fn from(e: $from) -> Self {
                ApiError::App(e.into())
            }
        }
    )*};
}

via_app_error!(
    crate::domain::SaleError,
    crate::runtime::CommandError,
    crate::projections::ReadError,
    crate::dlq::DlqError,
    crate::app::dead_letters::RetryError,
    crate::projections::insights::InsightsError,
    crate::auth::AuthError,
    crate::audit::AuditError,
    anyhow::Error,
);

#[cfg(test)]
mod tests {
    use crate::app::error::{
        CUSTOMER_LIMIT, QUEUE_PASS_INVALID, QUEUE_PASS_REQUIRED, SALES_NOT_OPEN, SOLD_OUT,
    };
    use crate::observability::metrics::RESERVATION_REFUSALS;

    /// The refusal kinds whose series exist from start-up are the ones the use cases answer.
    #[test]
    fn the_series_of_reservation_refusals_are_the_use_cases_kinds() {
        let kinds = [
            SOLD_OUT,
            CUSTOMER_LIMIT,
            SALES_NOT_OPEN,
            QUEUE_PASS_REQUIRED,
            QUEUE_PASS_INVALID,
        ];
        assert_eq!(RESERVATION_REFUSALS, kinds);
    }
}
