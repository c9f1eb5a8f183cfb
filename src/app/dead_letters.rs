//! What admins do with dead letters. A retry claims the entry (pending -> processing), runs
//! the consumer's own handler on the stored message, and resolves the entry, or puts it back
//! to pending with the new error and one more retry. Whenever the oldest open entry of a
//! stream closes (retried, resolved or discarded), the entries parked behind it are replayed
//! in order, until one fails again; so a stream never skips ahead of its parked events. An
//! entry whose retry's instance died stays `processing` only until `dlq::CLAIM_TIMEOUT`:
//! every instance sweeps such claims back to `pending`, and replays the followers of an entry
//! closed longer ago whose replay did not run to its end (`sweep`).

use crate::bus::consumer::Handler;
use crate::bus::envelope;
use crate::bus::BusMessage;
use crate::clock::Clock;
use crate::dlq::{Closing, DeadLetter, DeadLetters, DlqError, DlqStatus, CLAIM_TIMEOUT};
use crate::domain::UserId;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The handler failed again; the entry is pending with the new error.
    #[error("the retry failed: {}", .0.error)]
    Failed(Box<DeadLetter>),
}

#[derive(Clone)]
pub struct DeadLetterAdmin {
    store: Arc<dyn DeadLetters>,
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
    clock: Arc<dyn Clock>,
}

impl DeadLetterAdmin {
    pub fn new(
        store: Arc<dyn DeadLetters>,
        handlers: Vec<Arc<dyn Handler>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        DeadLetterAdmin {
            store,
            handlers: handlers.into_iter().map(|h| (h.name(), h)).collect(),
            clock,
        }
    }

    pub fn store(&self) -> &dyn DeadLetters {
        self.store.as_ref()
    }

    /// Runs the entry's message through its consumer's handler again.
    pub async fn retry(&self, id: i64, by: UserId) -> Result<DeadLetter, RetryError> {
        let resolved = self.replay(id, Some(by), "retried").await?;
        self.release_followers(&resolved, Some(by)).await;
        Ok(resolved)
    }

    /// Marks a pending entry handled by other means.
    pub async fn resolve(
        &self,
        id: i64,
        by: UserId,
        notes: Option<String>,
    ) -> Result<DeadLetter, DlqError> {
        let entry = self.close(id, DlqStatus::Resolved, by, notes).await?;
        self.skip(&entry).await;
        self.release_followers(&entry, Some(by)).await;
        Ok(entry)
    }

    /// Gives up on a pending entry; `reason` is kept as its notes.
    pub async fn discard(
        &self,
        id: i64,
        by: UserId,
        reason: String,
    ) -> Result<DeadLetter, DlqError> {
        let entry = self
            .close(id, DlqStatus::Discarded, by, Some(reason))
            .await?;
        self.skip(&entry).await;
        self.release_followers(&entry, Some(by)).await;
        Ok(entry)
    }

    /// Returns to `pending` every entry claimed longer than `CLAIM_TIMEOUT` ago: its retry's
    /// instance died (a live retry runs one handler call). Returns their ids.
    pub async fn release_stale_claims(&self) -> Result<Vec<i64>, DlqError> {
        let released = self
            .store
            .release_stale_claims(self.clock.now() - CLAIM_TIMEOUT)
            .await?;
        for id in &released {
            tracing::warn!(
                entry = id,
                "a dead letter's retry was abandoned; it is pending again"
            );
        }
        Ok(released)
    }

    /// Replays the followers of every entry closed longer than `CLAIM_TIMEOUT` ago whose
    /// replay after the close did not run to its end (the admin's request timed out, its
    /// instance died, the queue was away): without this, the stream would wait behind its
    /// first follower until someone noticed. Returns how many such heads it found.
    pub async fn release_stranded(&self) -> Result<usize, DlqError> {
        let heads = self
            .store
            .stranded_heads(self.clock.now() - CLAIM_TIMEOUT)
            .await?;
        for head in &heads {
            tracing::warn!(
                entry = head.id,
                "the dead letters parked behind a closed entry were not replayed; replaying them"
            );
            self.release_followers(head, None).await;
        }
        Ok(heads.len())
    }

    async fn close(
        &self,
        id: i64,
        status: DlqStatus,
        by: UserId,
        notes: Option<String>,
    ) -> Result<DeadLetter, DlqError> {
        let closing = Closing {
            status,
            by: Some(by),
            notes,
            at: self.clock.now(),
        };
        self.store.close(id, DlqStatus::Pending, closing).await
    }

    /// `by`: the admin, or `None` for the sweep.
    async fn replay(
        &self,
        id: i64,
        by: Option<UserId>,
        notes: &str,
    ) -> Result<DeadLetter, RetryError> {
        let entry = self.store.claim(id, self.clock.now()).await?;
        match self.run_handler(&entry).await {
            Ok(()) => {
                let closing = Closing {
                    status: DlqStatus::Resolved,
                    by,
                    notes: Some(notes.to_owned()),
                    at: self.clock.now(),
                };
                Ok(self.store.close(id, DlqStatus::Processing, closing).await?)
            }
            Err(error) => {
                let failed = self
                    .store
                    .retry_failed(id, error, Vec::new(), self.clock.now())
                    .await?;
                Err(RetryError::Failed(Box::new(failed)))
            }
        }
    }

    async fn run_handler(&self, entry: &DeadLetter) -> Result<(), String> {
        let handler = self
            .handlers
            .get(entry.consumer.as_str())
            .ok_or_else(|| format!("no consumer named {:?} runs here", entry.consumer))?;
        let event = envelope::open(&BusMessage::from(entry)).map_err(|e| e.to_string())?;
        handler
            .handle(&event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Tells the entry's consumer that its event was handled by other means (`Handler::skip`),
    /// so that the followers replayed next do not meet a gap in the stream's versions. A
    /// failure is logged: those followers then fail on the gap and stay pending, with it as
    /// their error, until an admin closes them too.
    async fn skip(&self, closed: &DeadLetter) {
        let (Some(stream), Some(version)) = (&closed.stream_id, closed.stream_version) else {
            return;
        };
        let Some(handler) = self.handlers.get(closed.consumer.as_str()) else {
            return;
        };
        if let Err(e) = handler.skip(stream, version).await {
            tracing::warn!(entry = closed.id, error = %e, "a closed dead letter's version was not recorded");
        }
    }

    /// Replays, in order, the entries of `closed`'s stream that waited behind it.
    async fn release_followers(&self, closed: &DeadLetter, by: Option<UserId>) {
        let Some(stream) = &closed.stream_id else {
            return;
        };
        let notes = format!("replayed after dead letter {} closed", closed.id);
        loop {
            let next = match self.store.open_entry_of(&closed.consumer, stream).await {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for parked dead letters");
                    return;
                }
            };
            if let Err(e) = self.replay(next, by, &notes).await {
                tracing::warn!(entry = next, error = %e, "a parked dead letter failed again");
                return;
            }
        }
    }
}

/// Every `every`, returns abandoned claims to `pending` (`release_stale_claims`) and replays
/// stranded followers (`release_stranded`).
pub async fn sweep(admin: DeadLetterAdmin, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = admin.release_stale_claims().await {
            tracing::warn!(error = %e, "cannot release abandoned dead-letter claims");
        }
        if let Err(e) = admin.release_stranded().await {
            tracing::warn!(error = %e, "cannot look for stranded dead letters");
        }
    }
}
