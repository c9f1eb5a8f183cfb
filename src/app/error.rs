//! `AppError`: how a use case ends when it does not succeed, in the application's terms
//! (not found, forbidden, a conflict of a stable kind, a dependency unavailable, ...). Every
//! error of the layers below is translated here, once; the HTTP edge only renders these as
//! problem+json, and 5xx causes go to the log, never to the caller.

use crate::auth::AuthError;
use crate::domain::concert::EventError;
use crate::domain::inventory::InventoryError;
use crate::domain::payment::PaymentError;
use crate::domain::reservation::ReservationError;
use crate::domain::SaleError;
use crate::eventstore::StoreError;
use crate::projections::ReadError;
use crate::runtime::CommandError;
use serde::Serialize;

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

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No token, or one that is unknown, expired or revoked.
    #[error("authentication required")]
    Unauthorized,
    /// A login with a wrong email or password.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Authenticated but refused for a reason of its own stable problem type (`kind`), e.g. a
    /// missing or invalid queue pass.
    #[error("{detail}")]
    Denied { kind: &'static str, detail: String },
    /// Unknown id, or a resource the caller may not see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource's state forbids the request (sold out, wrong status, duplicate); `kind`
    /// is the stable problem type.
    #[error("{detail}")]
    Conflict { kind: &'static str, detail: String },
    /// Optimistic concurrency; the client should re-read and retry.
    #[error("version mismatch: expected {expected}, actual {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// The card was declined; the reservation stays pending.
    #[error("payment declined: {reason}")]
    PaymentDeclined {
        reason: String,
        payment_id: uuid::Uuid,
    },
    /// A dead letter's handler failed again; the entry is pending with the new error and one
    /// more retry.
    #[error("the retry failed: {error}")]
    RetryFailed {
        error: String,
        retry_count: u32,
        entry_id: i64,
    },
    /// Well-formed input with invalid fields; lists each one.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// A dependency is down or overloaded; retry after the given seconds.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after: u32 },
    /// A bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// One invalid field.
    pub fn field(field: &str, message: &str) -> Self {
        AppError::Validation(vec![FieldError::new(field, message)])
    }

    fn unavailable(what: &str, retry_after: u32) -> Self {
        AppError::Unavailable {
            detail: format!("the {what} is unavailable"),
            retry_after,
        }
    }
}

/// The problem type of a command for an event whose sales are not open.
pub const SALES_NOT_OPEN: &str = "sales-not-open";
/// The problem type of a hold for more seats than a section has left.
pub const SOLD_OUT: &str = "sold-out";
/// The problem type of a hold past the event's per-customer limit.
pub const CUSTOMER_LIMIT: &str = "customer-limit";
/// The problem type of a hold without the pass its event's waiting room requires.
pub const QUEUE_PASS_REQUIRED: &str = "queue-pass-required";
/// The problem type of a hold with a pass that is not valid for it.
pub const QUEUE_PASS_INVALID: &str = "queue-pass-invalid";

fn conflict(kind: &'static str, detail: impl ToString) -> AppError {
    AppError::Conflict {
        kind,
        detail: detail.to_string(),
    }
}

impl From<SaleError> for AppError {
    fn from(e: SaleError) -> Self {
        match e {
            SaleError::Event(e) => match e {
                EventError::NotFound => AppError::NotFound("event"),
                EventError::AlreadyExists => conflict("already-exists", &e),
                EventError::InvalidTransition { .. } => conflict("invalid-state", &e),
                EventError::SalesNotOpen { .. } => conflict(SALES_NOT_OPEN, &e),
                EventError::VersionConflict { expected, actual } => {
                    AppError::VersionMismatch { expected, actual }
                }
                EventError::Invalid(problems) => AppError::Validation(
                    problems
                        .into_iter()
                        .map(|p| FieldError::new(p.field, p.message))
                        .collect(),
                ),
            },
            SaleError::Inventory(e) => match e {
                InventoryError::UnknownSection(_) => AppError::field("section", &e.to_string()),
                InventoryError::SoldOut { .. } => conflict(SOLD_OUT, &e),
                InventoryError::CapacityBelowCommitted { .. } => {
                    conflict("capacity-below-committed", &e)
                }
            },
            SaleError::Reservation(e) => match e {
                ReservationError::NotFound => AppError::NotFound("reservation"),
                ReservationError::InvalidQuantity => AppError::field("quantity", &e.to_string()),
                ReservationError::TotalOverflow => AppError::field("quantity", &e.to_string()),
                ReservationError::HoldExpired { .. } => conflict("reservation-expired", &e),
                ReservationError::NotPending { .. } | ReservationError::NotCancellable { .. } => {
                    conflict("reservation-not-pending", &e)
                }
                ReservationError::AlreadyExists
                | ReservationError::NotYetExpired { .. }
                | ReservationError::AmountMismatch { .. } => conflict("conflict", &e),
            },
            SaleError::Payment(e) => match e {
                PaymentError::NotFound => AppError::NotFound("payment"),
                PaymentError::NotRefundable { .. } => conflict("payment-not-refundable", &e),
                PaymentError::AlreadyExists => conflict("conflict", &e),
            },
            SaleError::CustomerLimit { .. } => conflict(CUSTOMER_LIMIT, &e),
        }
    }
}

impl From<CommandError> for AppError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Contended | CommandError::Overloaded => AppError::Unavailable {
                detail: e.to_string(),
                retry_after: 1,
            },
            CommandError::Store(StoreError::Open(refused)) => AppError::Unavailable {
                detail: "the event store is unavailable; nothing was changed".into(),
                retry_after: refused.retry_after_secs(),
            },
            CommandError::Store(StoreError::Unavailable(_)) | CommandError::ShuttingDown => {
                tracing::warn!(error = %e, "command not executed");
                AppError::Unavailable {
                    detail: "the event store is unavailable; nothing was changed".into(),
                    retry_after: 2,
                }
            }
            other => AppError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<ReadError> for AppError {
    fn from(e: ReadError) -> Self {
        tracing::warn!(error = %e, "read failed");
        AppError::Unavailable {
            detail: "the read models are unavailable".into(),
            retry_after: 2,
        }
    }
}

impl From<crate::dlq::DlqError> for AppError {
    fn from(e: crate::dlq::DlqError) -> Self {
        use crate::dlq::DlqError;
        match e {
            DlqError::NotFound(_) => AppError::NotFound("dead letter"),
            DlqError::WrongStatus { .. } => conflict("dead-letter-not-pending", e),
            DlqError::Blocked { .. } => conflict("dead-letter-blocked", e),
            DlqError::Unavailable(_) => {
                tracing::warn!(error = %e, "dead letter queue failed");
                AppError::unavailable("dead letter queue", 2)
            }
        }
    }
}

impl From<super::dead_letters::RetryError> for AppError {
    fn from(e: super::dead_letters::RetryError) -> Self {
        use super::dead_letters::RetryError;
        match e {
            RetryError::Dlq(e) => e.into(),
            RetryError::Failed(entry) => AppError::RetryFailed {
                error: entry.error,
                retry_count: entry.retry_count,
                entry_id: entry.id,
            },
        }
    }
}

impl From<crate::projections::insights::InsightsError> for AppError {
    fn from(e: crate::projections::insights::InsightsError) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::EmailTaken => {
                conflict("email-taken", "an account with this email already exists")
            }
            AuthError::InvalidCredentials => AppError::InvalidCredentials,
            AuthError::InvalidToken => AppError::Unauthorized,
            AuthError::Unavailable(_) => {
                tracing::warn!(error = %e, "auth store unavailable");
                AppError::unavailable("account store", 2)
            }
            AuthError::Internal(_) => AppError::Internal(anyhow::Error::new(e)),
        }
    }
}

impl From<crate::audit::AuditError> for AppError {
    fn from(e: crate::audit::AuditError) -> Self {
        use crate::audit::AuditError;
        match e {
            AuditError::Unavailable(_) => {
                tracing::warn!(error = %e, "audit store unavailable");
                AppError::unavailable("audit log", 2)
            }
            AuditError::Internal(_) => AppError::Internal(anyhow::Error::new(e)),
        }
    }
}
