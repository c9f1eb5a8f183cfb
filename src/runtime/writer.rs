//! One writer task per sale (event id). It keeps the sale's folded state in memory, decides
//! commands one after another, and appends the events of every command that queued up while
//! the previous append was in flight in one transaction (group commit). Callers are answered
//! only after that commit (invariant 3). On a version conflict (another instance wrote first)
//! it reloads the sale and re-decides the whole batch, a bounded number of times.

use super::expiry::ExpiryHandle;
use crate::domain::{Decision, DomainEvent, EventId, Outcome, SaleCommand, SaleError, SaleState};
use crate::eventstore::{codec, EventStore, Metadata, StoreError};
use crate::observability::tracecontext::{continue_trace, link_trace};
use crate::observability::Metrics;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How many times a batch is re-decided after conflicts before callers are told to retry.
const MAX_ATTEMPTS: usize = 5;

/// What a caller gets back once its command's events are committed.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Global position of the last event appended for the batch (0 when nothing was appended).
    pub position: u64,
    pub events: SmallVec<[DomainEvent; 4]>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] SaleError),
    #[error("too many concurrent writers for this event; retry")]
    Contended,
    #[error(transparent)]
    Store(StoreError),
    #[error("stored events cannot be read: {0}")]
    Corrupt(#[from] codec::CodecError),
    #[error("the service is shutting down")]
    ShuttingDown,
}

pub struct Envelope {
    pub command: SaleCommand,
    pub metadata: Metadata,
    pub reply: oneshot::Sender<Result<Committed, CommandError>>,
}

pub struct SaleWriter {
    pub sale_id: EventId,
    pub store: Arc<dyn EventStore>,
    pub expiry: ExpiryHandle,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    /// `None` until hydrated, and again after a failed append left tentative state behind.
    state: Option<SaleState>,
    /// Every event of this sale up to this position has been read into `state`.
    seen: u64,
    /// Positions of this writer's own appends since the last catch-up: already in `state`.
    own: Vec<(u64, u64)>,
}

impl SaleWriter {
    pub fn new(
        sale_id: EventId,
        store: Arc<dyn EventStore>,
        expiry: ExpiryHandle,
        metrics: Arc<Metrics>,
        max_batch: usize,
    ) -> Self {
        Self {
            sale_id,
            store,
            expiry,
            metrics,
            max_batch,
            state: None,
            seen: 0,
            own: Vec::new(),
        }
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<Envelope>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while inbox.recv_many(&mut batch, self.max_batch).await > 0 {
            self.process(std::mem::take(&mut batch)).await;
        }
    }

    /// Brings the state up to date with the store: hydrates it from scratch after a reset, or
    /// applies what other instances appended since the last look. Their events touched other
    /// streams than ours (else our append would have conflicted), so applying them after our
    /// own commutes.
    async fn catch_up(&mut self) -> Result<&mut SaleState, CommandError> {
        if self.state.is_none() {
            self.seen = 0;
            self.own.clear();
        }
        let mut state = self.state.take().unwrap_or_default();
        for recorded in self
            .store
            .read_sale(self.sale_id, self.seen)
            .await
            .map_err(CommandError::Store)?
        {
            let mine = self
                .own
                .iter()
                .any(|&(first, last)| (first..=last).contains(&recorded.position));
            if !mine {
                state.apply(&codec::decode(&recorded)?);
            }
            self.seen = recorded.position;
        }
        self.own.clear();
        Ok(self.state.insert(state))
    }

    #[tracing::instrument(skip_all, fields(sale_id = %self.sale_id, commands = batch.len()))]
    async fn process(&mut self, batch: Vec<Envelope>) {
        let store_kind = self.store.kind();
        self.metrics
            .batch_size
            .with_label_values(&[store_kind])
            .observe(batch.len() as f64);
        for _attempt in 0..MAX_ATTEMPTS {
            let sale_id = self.sale_id;
            let metrics = Arc::clone(&self.metrics);
            let state = match self.catch_up().await {
                Ok(state) => state,
                Err(e) => return reply_all(batch, &e),
            };
            let (decisions, rows) = match decide_batch(sale_id, state, &batch, &metrics) {
                Ok(decided) => decided,
                Err(e) => {
                    self.state = None;
                    return reply_all(batch, &e);
                }
            };
            if rows.is_empty() {
                return answer(batch, decisions, 0, &metrics);
            }
            let count = rows.len();
            let started = Instant::now();
            let result = self
                .store
                .append(sale_id, rows)
                .instrument(append_span(&batch, count, store_kind))
                .await;
            metrics
                .append_duration
                .with_label_values(&[store_kind])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(position) => {
                    tracing::debug!(position, events = count, "batch committed");
                    self.own.push((position + 1 - count as u64, position));
                    for e in decisions.iter().flatten().flat_map(|d| &d.events) {
                        record_business_metrics(&metrics, e);
                    }
                    self.run_effects(&decisions);
                    return answer(batch, decisions, position, &metrics);
                }
                Err(StoreError::Conflict { stream_id, .. }) => {
                    metrics.store_conflicts.inc();
                    tracing::info!(%stream_id, "version conflict; reloading and re-deciding");
                    self.state = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "append failed");
                    self.state = None;
                    return reply_all(batch, &CommandError::Store(e));
                }
            }
        }
        reply_all(batch, &CommandError::Contended)
    }

    fn run_effects(&self, decisions: &[Result<Decision, SaleError>]) {
        for effect in decisions.iter().flatten().flat_map(|d| &d.effects) {
            match effect {
                crate::domain::Effect::ArmExpiry { reservation_id, at } => {
                    self.metrics
                        .effects
                        .with_label_values(&["arm_expiry"])
                        .inc();
                    self.expiry.arm(*at, self.sale_id, *reservation_id)
                }
            }
        }
    }
}

/// The span of one group commit: a child of the first command's trace, linked to the others'.
/// A CLIENT span by the database semantic conventions ("INSERT events").
fn append_span(batch: &[Envelope], events: usize, store: &str) -> tracing::Span {
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
        db.operation.batch.size = events,
        commands = batch.len(),
        events,
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

type Decided = (
    Vec<Result<Decision, SaleError>>,
    Vec<crate::eventstore::NewEvent>,
);

/// Decides every command in turn against the evolving state and encodes the resulting rows.
fn decide_batch(
    sale_id: EventId,
    state: &mut SaleState,
    batch: &[Envelope],
    metrics: &Metrics,
) -> Result<Decided, CommandError> {
    let mut decisions = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    for envelope in batch {
        let name = command_name(&envelope.command);
        let span = tracing::info_span!("decide", command = name);
        continue_trace(&span, envelope.metadata.traceparent.as_deref());
        let _in_span = span.enter();
        let started = Instant::now();
        let decision = state.decide(sale_id, &envelope.command);
        metrics
            .decide_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        if let Ok(decision) = &decision {
            for event in &decision.events {
                let version = state.version(&event.stream()) + 1;
                rows.push(codec::encode(event, version, &envelope.metadata)?);
                state.apply(event);
            }
        }
        decisions.push(decision);
    }
    Ok((decisions, rows))
}

fn answer(
    batch: Vec<Envelope>,
    decisions: Vec<Result<Decision, SaleError>>,
    position: u64,
    metrics: &Metrics,
) {
    for (envelope, decision) in batch.into_iter().zip(decisions) {
        let result = match &decision {
            Ok(d) if matches!(d.outcome, Outcome::Done) => "ok",
            _ => "rejected",
        };
        metrics
            .commands
            .with_label_values(&[command_name(&envelope.command), result])
            .inc();
        let reply = decision
            .map(|d| Committed {
                position,
                events: d.events,
                outcome: d.outcome,
            })
            .map_err(CommandError::from);
        // A caller that gave up (dropped its receiver) does not undo the commit.
        let _ = envelope.reply.send(reply);
    }
}

fn reply_all(batch: Vec<Envelope>, error: &CommandError) {
    for envelope in batch {
        let _ = envelope.reply.send(Err(error.clone()));
    }
}

/// Counts one committed event: per aggregate, and the sales figures it moves.
fn record_business_metrics(metrics: &Metrics, event: &DomainEvent) {
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
