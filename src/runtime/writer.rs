//! One writer task per sale (event id). It keeps the sale's folded state in memory, decides
//! commands one after another, and appends the events of every command that queued up while
//! the previous append was in flight in one transaction (group commit). Callers are answered
//! only after that commit (invariant 3). Each batch is one turn on the sale
//! (`EventStore::take_turn`). While the writer has the sale to itself its turns are optimistic
//! (decide, then append only if nobody wrote the sale meanwhile: one statement on PostgreSQL);
//! once another instance wrote, it takes back the batch's tentative events (`domain::sale::Undo`)
//! and takes locked turns (writers of the same sale on other instances wait for it, and it
//! first applies what they appended) until `LOCKED_TURNS` turns in a row found nothing
//! foreign. Either way it decides on the whole truth. A version conflict can then only come
//! from a writer that does not take turns; it reloads the sale (`hydration`, outside any turn)
//! and re-decides the batch, a bounded number of times. Reads that can be long (a load, or
//! what other instances appended while this writer took no turn for a second or more) are
//! paged and happen outside any turn.

mod hydration;
mod telemetry;

pub use telemetry::command_name;
use telemetry::{append_span, record_business_metrics};

use super::expiry::ExpiryHandle;
use crate::domain::events::{HeldSeatsReleased, HeldSeatsSold};
use crate::domain::sale::Undo;
use crate::domain::{Decision, DomainEvent, EventId, Outcome, SaleCommand, SaleError, SaleState};
use crate::eventstore::{codec, EventStore, Known, Metadata, StoreError, TurnMode, Turned};
use crate::observability::tracecontext::{continue_trace, link_trace};
use crate::observability::{Metrics, Running};
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How many times a batch is re-decided after conflicts before callers are told to retry.
const MAX_ATTEMPTS: usize = 5;

/// How long a sale's writer waits for a command before it stops and lets the sale's state go
/// (`SaleWriter::run`): a sale nobody commands costs no memory, and one commanded again is
/// hydrated from the store again.
pub const IDLE_FOR: Duration = Duration::from_secs(600);

/// Locked turns in a row that must find no other writer's events before the writer goes
/// back to optimistic turns.
const LOCKED_TURNS: u32 = 8;

/// Told of every batch a sale's writer committed, before any command of it is answered: the
/// rest of the instance learns of commits nobody awaits (a hold's timer, a sweep) the same
/// way as of a request's. Called on the writer's task: it must not block.
pub trait CommitWatch: Send + Sync {
    /// `events` were committed here, the last of them at log `position`.
    fn committed(&self, position: u64, events: &mut dyn Iterator<Item = &DomainEvent>);
}

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
    /// The sale's mailbox is full (a bulkhead): nothing was queued.
    #[error("too many commands are waiting for this event; retry")]
    Overloaded,
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
    pub watch: Arc<dyn CommitWatch>,
    /// `None` until hydrated, and again after a failed append left tentative state behind.
    state: Option<SaleState>,
    /// What `state` holds of the sale (its own appends included).
    known: Known,
    /// Locked turns still to take before trying optimistic ones again.
    locked_turns: u32,
    /// When the writer last took a turn on the sale, or loaded it (`hydration::CATCH_UP_AFTER`).
    last_look: tokio::time::Instant,
}

impl SaleWriter {
    pub fn new(
        sale_id: EventId,
        store: Arc<dyn EventStore>,
        expiry: ExpiryHandle,
        metrics: Arc<Metrics>,
        max_batch: usize,
        watch: Arc<dyn CommitWatch>,
    ) -> Self {
        Self {
            sale_id,
            store,
            expiry,
            metrics,
            max_batch,
            watch,
            state: None,
            known: Known::default(),
            locked_turns: 0,
            last_look: tokio::time::Instant::now(),
        }
    }

    /// Decides what arrives in `inbox` until every sender is gone, or until nothing arrived
    /// for `idle_for`: then the inbox refuses new commands (their senders start a fresh
    /// writer, which hydrates from the store), what was already queued is decided, and the
    /// writer stops, letting its sale's state go.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Envelope>, idle_for: Duration) {
        let _running = Running::enter(self.metrics.sale_writers.clone());
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let received = inbox.recv_many(&mut batch, self.max_batch);
            match tokio::time::timeout(idle_for, received).await {
                Ok(0) => return,
                Ok(_) => self.process(std::mem::take(&mut batch), &mut inbox).await,
                Err(_idle) => break,
            }
        }
        inbox.close();
        while inbox.recv_many(&mut batch, self.max_batch).await > 0 {
            self.process(std::mem::take(&mut batch), &mut inbox).await;
        }
        tracing::debug!(sale_id = %self.sale_id, "idle sale writer stopped");
    }

    /// Decides and appends `batch` in one turn, together with whatever else arrived in
    /// `inbox` by the time the turn began (up to `max_batch`): with writers of other
    /// instances ahead in the queue for the sale, that is most of what waited meanwhile.
    #[tracing::instrument(skip_all, fields(sale_id = %self.sale_id, commands = tracing::field::Empty))]
    async fn process(&mut self, mut batch: Vec<Envelope>, inbox: &mut mpsc::Receiver<Envelope>) {
        let store_kind = self.store.kind();
        for _attempt in 0..MAX_ATTEMPTS {
            let started = Instant::now();
            let span = append_span(&batch, store_kind);
            let turn = self.turn(&mut batch, inbox).instrument(span).await;
            self.last_look = tokio::time::Instant::now();
            self.metrics
                .append_duration
                .with_label_values(&[store_kind])
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .batch_size
                .with_label_values(&[store_kind])
                .observe(batch.len() as f64);
            tracing::Span::current().record("commands", batch.len());
            match turn {
                Ok((decisions, None)) => return answer(batch, decisions, 0, &self.metrics),
                Ok((decisions, Some((position, count)))) => {
                    tracing::debug!(position, events = count, "batch committed");
                    for e in decisions.iter().flatten().flat_map(|d| &d.events) {
                        record_business_metrics(&self.metrics, e);
                    }
                    self.run_effects(&decisions);
                    let mut events = decisions.iter().flatten().flat_map(|d| &d.events);
                    self.watch.committed(position, &mut events);
                    return answer(batch, decisions, position, &self.metrics);
                }
                Err(Failed::Stale) => {
                    tracing::debug!(
                        "another writer wrote the sale; batch undone, catching up in locked turns"
                    );
                }
                Err(Failed::Store(StoreError::Conflict { stream_id, .. })) => {
                    self.metrics.store_conflicts.inc();
                    tracing::warn!(%stream_id, "version conflict inside a turn; reloading and re-deciding");
                }
                Err(Failed::Store(e)) => {
                    tracing::warn!(error = %e, "append failed");
                    return reply_all(batch, &CommandError::Store(e));
                }
                Err(Failed::Command(e)) => return reply_all(batch, &e),
            }
        }
        reply_all(batch, &CommandError::Contended)
    }

    /// One turn on the sale: apply what other instances appended since the last look (after
    /// a hydration when the writer has no state; read in pages before the turn when the last
    /// look is a while ago, `hydration::state_for_turn`), decide the batch against it,
    /// append. Returns the decisions and, when something was appended, (last position,
    /// events appended). When an optimistic turn was stale, its tentative events are undone
    /// and the next turn is locked (it hands the writer what the other writer appended); on
    /// any error the state is dropped (it may hold tentative events, or miss an append that
    /// did commit) and the next turn hydrates again.
    async fn turn(
        &mut self,
        batch: &mut Vec<Envelope>,
        inbox: &mut mpsc::Receiver<Envelope>,
    ) -> Result<TurnResult, Failed> {
        let (mut state, mode) = self.state_for_turn().await?;
        // An optimistic turn can end without its append: what it decided is taken back then.
        let mut undo = (mode == TurnMode::Optimistic).then(|| Undo::new(&state));
        let (sale_id, metrics) = (self.sale_id, Arc::clone(&self.metrics));
        let max_batch = self.max_batch;
        let mut foreign = false;
        let mut decided: Option<Result<Vec<Result<Decision, SaleError>>, CommandError>> = None;
        let expiry = &self.expiry;
        let result = self
            .store
            .take_turn(sale_id, self.known, mode, &mut |fresh| {
                foreign = !fresh.is_empty();
                for recorded in fresh {
                    match codec::decode(recorded) {
                        Ok(event) => {
                            // Another instance ended a hold: its timer here, if it has one,
                            // goes.
                            disarm_if_ended(expiry, sale_id, &event);
                            state.apply(&event)
                        }
                        Err(e) => {
                            decided = Some(Err(e.into()));
                            return Vec::new();
                        }
                    }
                }
                while batch.len() < max_batch {
                    let Ok(late) = inbox.try_recv() else { break };
                    if let Some(traceparent) = late.metadata.traceparent.as_deref() {
                        link_trace(&tracing::Span::current(), traceparent);
                    }
                    batch.push(late);
                }
                match decide_batch(sale_id, &mut state, batch, &metrics, undo.as_mut()) {
                    Ok((decisions, rows)) => {
                        decided = Some(Ok(decisions));
                        rows
                    }
                    Err(e) => {
                        decided = Some(Err(e));
                        Vec::new()
                    }
                }
            })
            .await;
        let failed = match (result, decided) {
            (Ok(Turned::Stale), _) => {
                if let Some(undo) = undo {
                    state.undo(undo);
                    self.state = Some(state);
                }
                self.locked_turns = LOCKED_TURNS;
                Failed::Stale
            }
            (Ok(Turned::Done { last, known }), Some(Ok(decisions))) => {
                let count = decisions
                    .iter()
                    .flatten()
                    .map(|d| d.events.len() as u64)
                    .sum::<u64>();
                self.known = known;
                self.state = Some(state);
                self.locked_turns = match mode {
                    // Even right after a hydration: another writer appended meanwhile.
                    TurnMode::Locked if foreign => LOCKED_TURNS,
                    TurnMode::Locked => self.locked_turns.saturating_sub(1),
                    TurnMode::Optimistic => 0,
                };
                let span = tracing::Span::current();
                span.record("events", count);
                span.record("db.operation.batch.size", count);
                return Ok((decisions, last.map(|position| (position, count))));
            }
            (Ok(_), Some(Err(e))) => Failed::Command(e),
            (Err(e), _) => Failed::Store(e),
            (Ok(_), None) => Failed::Store(StoreError::Unavailable(
                "the turn ended before its decision".into(),
            )),
        };
        Err(failed)
    }

    /// After the commit, decision by decision (a hold placed and ended in one batch is armed,
    /// then disarmed): the timers of the holds that ended, and the decisions' effects.
    fn run_effects(&self, decisions: &[Result<Decision, SaleError>]) {
        for decision in decisions.iter().flatten() {
            for event in &decision.events {
                disarm_if_ended(&self.expiry, self.sale_id, event);
            }
            for effect in &decision.effects {
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
}

/// Disarms the timer of the hold `event` ends (its seats sold or released), if it does.
fn disarm_if_ended(expiry: &ExpiryHandle, sale_id: EventId, event: &DomainEvent) {
    if let DomainEvent::HeldSeatsSold(HeldSeatsSold { reservation_id, .. })
    | DomainEvent::HeldSeatsReleased(HeldSeatsReleased { reservation_id, .. }) = event
    {
        expiry.disarm(sale_id, *reservation_id);
    }
}

/// What a turn decided and, when it appended, (last position, events appended).
type TurnResult = (Vec<Result<Decision, SaleError>>, Option<(u64, u64)>);

/// Why a turn failed: the store, the batch itself (undecodable history), or an optimistic
/// turn that found another writer's events.
enum Failed {
    Stale,
    Store(StoreError),
    Command(CommandError),
}

type Decided = (
    Vec<Result<Decision, SaleError>>,
    Vec<crate::eventstore::NewEvent>,
);

/// Decides every command in turn against the evolving state and encodes the resulting rows;
/// with `undo`, what the events change is noted there so that they can be taken back.
fn decide_batch(
    sale_id: EventId,
    state: &mut SaleState,
    batch: &[Envelope],
    metrics: &Metrics,
    mut undo: Option<&mut Undo>,
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
                match undo.as_deref_mut() {
                    Some(undo) => state.apply_undoable(event, undo),
                    None => state.apply(event),
                }
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
