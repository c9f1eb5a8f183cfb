//! Settling what one poll brought, as one batch. The dead letter queue is asked once which of
//! the batch's streams have an open entry; from then on that answer, kept in memory and
//! extended by every entry this batch writes, decides which events to park (each parked in
//! one step with the check that its head is still open). Poison messages and events of
//! parked streams are dead-lettered in order (a poison message's stream's earlier events of
//! the batch are settled on their own before it); the rest go to the handler in one call
//! (`Handler::handle_batch`: one transaction). A handler that takes one event at a time, or a
//! batch the handler refused, is settled event by event, with retries, as before. Every
//! dead-letter write is retried until it lands, so a batch is settled in full, never half,
//! before any of its offsets is committed.

use super::{
    envelope, outage_backoff, process_span, Applied, Consumer, HandlerError, Outcome, ParkedBehind,
};
use crate::bus::envelope::BusEvent;
use crate::bus::Delivery;
use crate::dlq::DlqError;
use std::collections::HashMap;
use tracing::Instrument;

/// Per stream, the index of a batch from which its events park behind an open dead letter.
type Heads = HashMap<String, usize>;

/// Whether the batch's `index`-th event, of `stream`, parks behind an open dead letter.
fn parks(heads: &Heads, stream: &str, index: usize) -> bool {
    heads.get(stream).is_some_and(|&from| index >= from)
}

/// The batch's `index`-th event, of `stream`, was dead-lettered: the stream's later ones park.
fn parks_from(heads: &mut Heads, stream: &str, index: usize) {
    let from = heads.entry(stream.to_owned()).or_insert(index + 1);
    *from = (*from).min(index + 1);
}

/// The last delivery of each (topic, partition) of `deliveries`: committing it commits the
/// partition's earlier ones.
pub(super) fn last_per_partition(deliveries: &[Delivery]) -> Vec<&Delivery> {
    let mut last: Vec<&Delivery> = Vec::new();
    for d in deliveries {
        let same = |l: &&Delivery| l.message.topic == d.message.topic && l.partition == d.partition;
        match last.iter_mut().find(|l| same(l)) {
            Some(l) if l.offset < d.offset => *l = d,
            Some(_) => {}
            None => last.push(d),
        }
    }
    last
}

impl Consumer {
    /// `call`, failed with `silent()` once `answer_limit` passed without an answer.
    pub(super) async fn bounded<T, E>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
        silent: fn() -> E,
    ) -> Result<T, E> {
        crate::db::within(self.answer_limit, call, silent).await
    }

    /// Settles every delivery of a batch (in order within each stream), however long the dead
    /// letter queue stays away, and counts each outcome. `system` names the bus in the spans.
    pub async fn settle_batch(
        &self,
        deliveries: &[Delivery],
        system: &'static str,
    ) -> Vec<Outcome> {
        let name = self.handler.name();
        // One CONSUMER span per message, continuing its producer's trace; each lasts until its
        // message is settled.
        let spans: Vec<tracing::Span> = deliveries
            .iter()
            .map(|d| process_span(name, system, d))
            .collect();
        let opened: Vec<_> = deliveries
            .iter()
            .map(|d| envelope::open(&d.message))
            .collect();
        let mut streams: Vec<&str> = opened
            .iter()
            .filter_map(|o| o.as_ref().ok().map(|e| e.stream_id.as_str()))
            .collect();
        streams.sort_unstable();
        streams.dedup();
        // Per stream with an open dead letter, the index of the batch from which its events
        // park: 0 for an entry open before the batch, else the index after this batch's first
        // dead letter of the stream (its earlier events in the batch go first).
        let mut heads: Heads = self
            .open_entries(&streams)
            .await
            .into_keys()
            .map(|stream| (stream, 0))
            .collect();

        let mut outcomes = vec![Outcome::Applied; deliveries.len()];
        let (mut ready, mut events): (Vec<usize>, Vec<BusEvent>) = (Vec::new(), Vec::new());
        for (i, (delivery, opened)) in deliveries.iter().zip(opened).enumerate() {
            let span = &spans[i];
            match opened {
                Err(poison) => {
                    let stream = delivery.message.header(envelope::STREAM_ID);
                    // The stream's earlier events of the batch are settled first, so that its
                    // dead letters (whose ids order the replays) are written in its order.
                    if let Some(stream) = stream {
                        while let Some(k) = events.iter().position(|e| e.stream_id == stream) {
                            let (earlier, event) = (ready.remove(k), events.remove(k));
                            outcomes[earlier] = self
                                .settle_one(&deliveries[earlier], earlier, &event, &mut heads)
                                .instrument(spans[earlier].clone())
                                .await;
                        }
                    }
                    span.in_scope(|| {
                        tracing::error!(consumer = name, topic = %delivery.message.topic,
                        offset = delivery.offset, error = %poison, "poison message dead-lettered")
                    });
                    self.park_until_written(delivery, &poison, 0, None)
                        .instrument(span.clone())
                        .await;
                    // A stream's later messages wait behind it, as `open_entries_of` would say.
                    if let Some(stream) = stream {
                        parks_from(&mut heads, stream, i);
                    }
                    outcomes[i] = Outcome::DeadLettered;
                }
                Ok(event) => {
                    if parks(&heads, &event.stream_id, i) {
                        if self
                            .park_behind_open(delivery, &event)
                            .instrument(span.clone())
                            .await
                        {
                            outcomes[i] = Outcome::Parked;
                            continue;
                        }
                        // Its head closed since the look-up (an admin retried or resolved it).
                        heads.remove(&event.stream_id);
                    }
                    ready.push(i);
                    events.push(event);
                }
            }
        }

        let batch = match events.len() {
            0 => Some(Ok(Vec::new())),
            _ => {
                let batch = async { Ok(self.handler.handle_batch(&events).await) };
                let batch = self.bounded(batch, handler_silent).await;
                batch.unwrap_or_else(|silent| Some(Err(silent)))
            }
        };
        match batch {
            Some(Ok(applied)) if applied.len() == events.len() => {
                for (&i, applied) in ready.iter().zip(applied) {
                    outcomes[i] = match applied {
                        Applied::Applied => Outcome::Applied,
                        Applied::Duplicate => Outcome::Duplicate,
                    };
                }
            }
            refused => {
                if let Some(Err(e)) = refused {
                    tracing::warn!(consumer = name, events = events.len(), error = %e,
                        "the batch failed; settling its events one by one");
                }
                for (&i, event) in ready.iter().zip(&events) {
                    outcomes[i] = self
                        .settle_one(&deliveries[i], i, event, &mut heads)
                        .instrument(spans[i].clone())
                        .await;
                }
            }
        }
        for outcome in &outcomes {
            self.metrics
                .consumer_events
                .with_label_values(&[name, outcome.as_str()])
                .inc();
        }
        outcomes
    }

    /// Settles one message on its own (tests; the service settles batches).
    #[cfg(test)]
    pub async fn settle(&self, delivery: &Delivery) -> Outcome {
        let outcomes = self
            .settle_batch(std::slice::from_ref(delivery), "test")
            .await;
        outcomes.first().copied().unwrap_or(Outcome::Applied)
    }

    /// One event (the batch's `index`-th) through the handler alone: retried while transient,
    /// dead-lettered after the limit or at once when permanent (then its stream's later events
    /// park behind it).
    async fn settle_one(
        &self,
        delivery: &Delivery,
        index: usize,
        event: &BusEvent,
        heads: &mut Heads,
    ) -> Outcome {
        let name = self.handler.name();
        if parks(heads, &event.stream_id, index) {
            if self.park_behind_open(delivery, event).await {
                return Outcome::Parked;
            }
            heads.remove(&event.stream_id);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self
                .bounded(self.handler.handle(event), handler_silent)
                .await
            {
                Ok(Applied::Applied) => return Outcome::Applied,
                Ok(Applied::Duplicate) => return Outcome::Duplicate,
                Err(e) => e,
            };
            let give_up =
                matches!(error, HandlerError::Permanent(_)) || attempt >= self.retry.attempts;
            if give_up {
                tracing::error!(consumer = name, stream = %event.stream_id, version = event.version,
                    attempts = attempt, error = %error, "event dead-lettered");
                self.park_until_written(delivery, &error, attempt - 1, None)
                    .await;
                parks_from(heads, &event.stream_id, index);
                return Outcome::DeadLettered;
            }
            self.metrics
                .consumer_retries
                .with_label_values(&[name])
                .inc();
            tracing::warn!(consumer = name, stream = %event.stream_id, attempt, error = %error, "retrying");
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    /// Parks `event` behind its stream's open dead letter in one step with the check
    /// (`DeadLetters::park_behind_open`: ordered with that entry's close, so whoever replays
    /// the followers after the close finds it), however long the queue stays away. False when
    /// the entry closed meanwhile: the event is then handled like any other.
    async fn park_behind_open(&self, delivery: &Delivery, event: &BusEvent) -> bool {
        let reason = ParkedBehind {
            stream_id: event.stream_id.clone(),
        };
        let mut outage = outage_backoff();
        loop {
            let entry = self.dead_letter(delivery, &reason, 0, None);
            match self
                .bounded(self.dlq.park_behind_open(entry), dlq_silent)
                .await
            {
                Ok(parked) => return parked.is_some(),
                Err(e) => {
                    tracing::warn!(consumer = self.handler.name(), error = %e,
                        "cannot dead-letter; will try the message again");
                    outage.wait().await;
                }
            }
        }
    }

    /// The open dead letters of `streams` (one look-up), however long the queue stays away.
    async fn open_entries(&self, streams: &[&str]) -> HashMap<String, i64> {
        let mut outage = outage_backoff();
        loop {
            let look_up = self.dlq.open_entries_of(self.handler.name(), streams);
            match self.bounded(look_up, dlq_silent).await {
                Ok(heads) => return heads,
                Err(e) => {
                    tracing::warn!(consumer = self.handler.name(), error = %e,
                        "cannot read the dead letter queue; will try the batch again");
                    outage.wait().await;
                }
            }
        }
    }

    /// Writes a dead letter, however long the queue stays away: the consumer pauses rather
    /// than loses the message.
    async fn park_until_written(
        &self,
        delivery: &Delivery,
        error: &(dyn std::error::Error + Sync),
        retry_count: u32,
        parked_behind: Option<i64>,
    ) {
        let mut outage = outage_backoff();
        loop {
            match self.park(delivery, error, retry_count, parked_behind).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(consumer = self.handler.name(), error = %e,
                        "cannot dead-letter; will try the message again");
                    outage.wait().await;
                }
            }
        }
    }
}

fn handler_silent() -> HandlerError {
    HandlerError::Transient("no answer from the handler's store in time".into())
}

pub(super) fn dlq_silent() -> DlqError {
    DlqError::Unavailable("no answer in time".into())
}
