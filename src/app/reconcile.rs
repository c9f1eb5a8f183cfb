//! Payment reconciliation: finds captures at the gateway that have no recorded event (the
//! process died between the capture and the append, or the store failed right then) and
//! records them through the sale's writer, which decides as for any capture: a hold still
//! valid confirms, one that ended gets the capture refunded in the same commit. Runs every
//! `RECONCILE_INTERVAL_SECONDS` on every instance; the writer refuses a payment recorded
//! twice, so instances racing for one capture record it once. It never charges anything.

use super::{App, AppError};
use crate::domain::{EventId, Outcome, PaymentId, SaleCommand};
use crate::eventstore::Metadata;
use crate::payment::Capture;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// How far back the first pass of a process looks: captures older than a day whose process
/// died, with no instance running since, are left to an operator (RUNBOOK.md).
pub const LOOKBACK: Duration = Duration::hours(24);

/// How many captures one question to the read models covers (`ReadModel::recorded_payments`).
const LOOKUP_BATCH: usize = 1000;

/// Slack added to the request timeout before a capture counts as abandoned by its request.
const GRACE_SLACK: Duration = Duration::seconds(2);

/// What one capture came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// Already recorded (by its own request or another instance): nothing done.
    Settled,
    /// Recorded now; its reservation is confirmed.
    Recorded,
    /// Recorded now together with its refund: the hold had ended.
    Refunded,
}

impl Reconciled {
    fn label(self) -> Option<&'static str> {
        match self {
            Reconciled::Settled => None,
            Reconciled::Recorded => Some("recorded"),
            Reconciled::Refunded => Some("refunded"),
        }
    }
}

/// One instance's reconciliation state: where the next pass starts, and the captures already
/// known to be settled since then (so a pass asks about each capture once).
pub struct Reconciler {
    app: Arc<App>,
    /// A capture younger than this may still be recorded by its own request.
    grace: Duration,
    since: DateTime<Utc>,
    settled: HashMap<PaymentId, DateTime<Utc>>,
}

impl Reconciler {
    /// `request_timeout` bounds how long a payment request can still record its capture.
    pub fn new(app: Arc<App>, request_timeout: std::time::Duration) -> Self {
        let grace =
            Duration::from_std(request_timeout).unwrap_or(Duration::seconds(30)) + GRACE_SLACK;
        let since = app.clock.now() - LOOKBACK;
        Self {
            app,
            grace,
            since,
            settled: HashMap::new(),
        }
    }

    /// One pass: lists the captures since the last complete pass and records every one that
    /// has no event and is older than the grace. A capture that cannot be recorded now is
    /// counted `failed` and tried again next pass.
    pub async fn pass(&mut self) -> Result<Vec<(PaymentId, Reconciled)>, AppError> {
        let now = self.app.clock.now();
        let cutoff = now - self.grace;
        let captures = self
            .app
            .gateway
            .captures_since(self.since)
            .await
            .map_err(|e| AppError::Unavailable {
                detail: e.to_string(),
                retry_after: 5,
            })?;
        let due: Vec<Capture> = captures
            .into_iter()
            .filter(|c| c.captured_at <= cutoff && !self.settled.contains_key(&c.payment_id))
            .collect();
        let mut done = Vec::new();
        let mut complete = true;
        for chunk in due.chunks(LOOKUP_BATCH) {
            // One question to the read models per chunk: which of them are recorded already.
            let ids: Vec<PaymentId> = chunk
                .iter()
                .filter(|c| !c.refunded)
                .map(|c| c.payment_id)
                .collect();
            let shown = self.app.reads.applied().recorded_payments(&ids).await;
            if let Err(e) = &shown {
                tracing::error!(captures = ids.len(), error = %e, "cannot ask the read models which captures are recorded");
            }
            for capture in chunk {
                let outcome = match &shown {
                    _ if capture.refunded => Ok(Reconciled::Settled),
                    Ok(shown) if shown.contains(&capture.payment_id) => Ok(Reconciled::Settled),
                    Ok(_) => self.app.reconcile_capture(capture, now).await,
                    Err(e) => Err(AppError::from(e.clone())),
                };
                complete &= self.count(capture, outcome, &mut done, shown.is_ok());
            }
        }
        if complete {
            // The next pass overlaps this one by a grace: a capture whose row landed late
            // (another instance's clock, a slow insert) is still seen.
            self.since = self.since.max(cutoff - self.grace);
            let since = self.since;
            self.settled.retain(|_, at| *at >= since);
        }
        self.app.metrics.reconcile_last_run.set(now.timestamp());
        Ok(done)
    }

    /// Counts what `capture` came to (remembering it as settled unless it failed); false if
    /// it failed and must be tried again next pass. A failure is logged unless `log_failure`
    /// is false (the chunk's failed question was logged once).
    fn count(
        &mut self,
        capture: &Capture,
        outcome: Result<Reconciled, AppError>,
        done: &mut Vec<(PaymentId, Reconciled)>,
        log_failure: bool,
    ) -> bool {
        match outcome {
            Ok(outcome) => {
                if let Some(label) = outcome.label() {
                    tracing::warn!(
                        payment_id = %capture.payment_id,
                        outcome = label,
                        "reconciled a capture that had no recorded event"
                    );
                    self.app
                        .metrics
                        .reconciled_captures
                        .with_label_values(&[label])
                        .inc();
                    done.push((capture.payment_id, outcome));
                }
                self.settled.insert(capture.payment_id, capture.captured_at);
                true
            }
            Err(e) => {
                if log_failure {
                    tracing::error!(
                        payment_id = %capture.payment_id,
                        error = %e,
                        "cannot reconcile a capture; trying again next pass"
                    );
                }
                self.app
                    .metrics
                    .reconciled_captures
                    .with_label_values(&["failed"])
                    .inc();
                false
            }
        }
    }
}

/// Runs a pass every `every`, forever.
pub async fn run(mut reconciler: Reconciler, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = reconciler.pass().await {
            tracing::warn!(error = %e, "cannot list the gateway's captures; reconciling later");
        }
    }
}

impl App {
    /// Records one capture found at the gateway that the read models do not show (asked by
    /// the pass, without waiting: should they lag behind a recorded payment, the writer
    /// refuses the capture as a repeat, `Conflict` below).
    async fn reconcile_capture(
        &self,
        capture: &Capture,
        now: DateTime<Utc>,
    ) -> Result<Reconciled, AppError> {
        let command = SaleCommand::RecordCapture {
            payment_id: capture.payment_id,
            reservation_id: capture.paid_for.reservation_id,
            amount: capture.amount,
            charge_id: capture.charge_id.clone(),
            now,
        };
        let metadata = Metadata {
            correlation_id: Some(format!("reconcile-{}", capture.payment_id.0)),
            ..Metadata::default()
        };
        let sale: EventId = capture.paid_for.event_id;
        match self.record(sale, command, metadata).await {
            Ok(committed) => Ok(match committed.outcome {
                Outcome::Compensated(_) => Reconciled::Refunded,
                _ => Reconciled::Recorded,
            }),
            // The only conflict a capture meets: its payment is recorded already (another
            // instance was first, or the read models had not shown it yet).
            Err(AppError::Conflict { .. }) => Ok(Reconciled::Settled),
            Err(e) => Err(e),
        }
    }
}
