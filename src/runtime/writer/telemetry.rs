//! What a sale's writer tells about its turns: the span of each group commit, the business
//! metrics of what it committed, and the bounded command names both use as labels.

use super::Envelope;
use crate::domain::{DomainEvent, SaleCommand};
use crate::observability::tracecontext::{continue_trace, link_trace};
use crate::observability::Metrics;

/// The span of one group commit (the whole turn): a child of the first command's trace,
/// linked to the others'. A CLIENT span by the database semantic conventions ("INSERT
/// events"); the events count is recorded once the turn decided.
pub(super) fn append_span(batch: &[Envelope], store: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "append",
        otel.name = "INSERT events",
        otel.kind = "client",
        db.system.name = if store == "postgres" {
            "postgresql"
        } else {
            store
        },
        db.operation.name = "INSERT",
        db.collection.name = "events",
        db.operation.batch.size = tracing::field::Empty,
        commands = batch.len(),
        events = tracing::field::Empty,
    );
    let mut traces = batch
        .iter()
        .filter_map(|e| e.metadata.traceparent.as_deref());
    continue_trace(&span, traces.next());
    for other in traces {
        link_trace(&span, other);
    }
    span
}

/// Counts one committed event: per aggregate, and the sales figures it moves.
pub(super) fn record_business_metrics(metrics: &Metrics, event: &DomainEvent) {
    metrics
        .events_appended
        .with_label_values(&[event.stream().category()])
        .inc();
    match event {
        DomainEvent::HeldSeatsSold(e) => metrics.tickets_sold.inc_by(u64::from(e.quantity)),
        DomainEvent::PaymentCaptured(e) => metrics
            .revenue_cents
            .with_label_values(&[e.amount.currency.as_str()])
            .inc_by(u64::try_from(e.amount.amount_cents).unwrap_or(0)),
        _ => {}
    }
}

/// Bounded label for metrics and spans.
pub fn command_name(command: &SaleCommand) -> &'static str {
    match command {
        SaleCommand::CreateEvent { .. } => "create_event",
        SaleCommand::UpdateEvent { .. } => "update_event",
        SaleCommand::ChangeLifecycle { .. } => "change_lifecycle",
        SaleCommand::CancelEvent { .. } => "cancel_event",
        SaleCommand::Reserve { .. } => "reserve",
        SaleCommand::RecordCapture { .. } => "record_capture",
        SaleCommand::RecordDecline { .. } => "record_decline",
        SaleCommand::CancelReservation { .. } => "cancel_reservation",
        SaleCommand::ExpireReservation { .. } => "expire_reservation",
        SaleCommand::RefundPayment { .. } => "refund_payment",
    }
}
