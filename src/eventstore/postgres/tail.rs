//! The log's recent tail as this instance committed it, kept in memory so that the readers
//! tailing the log here (the outbox relay, the subscriptions) get the events just appended
//! without a query. It holds only committed events, exactly as the table has them (positions
//! and `recorded_at` come back from the insert), and answers `read_all` only with a run of
//! consecutive positions that starts right after the reader's position and is complete: it
//! reaches the known head, or the reader's limit (or nothing, for a reader at the head while
//! the tail reaches it: what a query would answer unless another instance's commit is not
//! announced yet, which wakes the reader when it is). Anything else (events another instance
//! appended, a range evicted or never seen) is read from PostgreSQL. What such a read brings
//! back (and what a locked turn reads of the other instances' appends) is committed too, and
//! is kept here as well (`learned`): the instance's other readers, which wake on the same
//! commits, find it instead of querying it again, and a reader whose run stops short of the
//! head queries only what follows it (`run_after`).
//!
//! The head (what wakes the readers) must not pass the tail for this instance's own appends:
//! the commit's NOTIFY may reach this instance's listener before the commit's answer reaches
//! the appender, and readers woken then would find the tail short and query. So appends mark
//! their notifications with the store's tag, the listener leaves those to the appender, and
//! the appender raises the head after recording the events (`committed`). An append whose
//! outcome is unknown (the connection broke at commit) raises nothing: the head moves with
//! the next append or notification.

use crate::domain::EventId;
use crate::eventstore::{NewEvent, RecordedEvent};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Events kept: a few seconds of a hot sale, far more than a reader tailing the head lags.
const KEEP: usize = 20_000;

#[derive(Default)]
pub(super) struct Tail {
    events: Mutex<BTreeMap<u64, Arc<RecordedEvent>>>,
}

impl Tail {
    /// Records `events`, just committed by one append of `sale_id` ending at position `last`.
    pub fn committed(
        &self,
        sale_id: EventId,
        events: &[NewEvent],
        last: u64,
        recorded_at: DateTime<Utc>,
    ) {
        let Some(first) = (last + 1).checked_sub(events.len() as u64) else {
            return;
        };
        let mut tail = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        for (position, e) in (first..).zip(events) {
            let recorded = RecordedEvent {
                position,
                sale_id,
                stream_id: e.stream_id.clone(),
                version: e.version,
                event_type: e.event_type.to_owned(),
                event_version: e.event_version,
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at,
            };
            tail.insert(position, Arc::new(recorded));
        }
        trim(&mut tail);
    }

    /// Keeps `events`, committed events as read from the table.
    pub fn learned(&self, events: &[Arc<RecordedEvent>]) {
        if events.is_empty() {
            return;
        }
        let mut tail = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            tail.entry(event.position)
                .or_insert_with(|| Arc::clone(event));
        }
        trim(&mut tail);
    }

    /// The run of consecutive events held here right after position `after`, at most `limit`
    /// (empty when `after + 1` is not here).
    pub fn run_after(&self, after: u64, limit: usize) -> Vec<Arc<RecordedEvent>> {
        let tail = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        consecutive(&tail, after, limit)
    }

    /// Up to `limit` events after position `after`, if the tail holds them all: consecutive
    /// from `after + 1` up to `limit` events or to `head` (the newest position known to be
    /// committed). Nothing, for a reader at the head while the tail reaches it (a reader that
    /// caught up, about to wait for the head to move). `None`: ask the database.
    pub fn read(&self, after: u64, limit: usize, head: u64) -> Option<Vec<Arc<RecordedEvent>>> {
        let tail = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if after == head {
            let reaches = tail.last_key_value().is_some_and(|(&last, _)| last >= head);
            return reaches.then(Vec::new);
        }
        let run = consecutive(&tail, after, limit);
        let next = after.saturating_add(1).saturating_add(run.len() as u64);
        let complete = run.len() == limit || next > head;
        (!run.is_empty() && complete).then_some(run)
    }
}

/// Drops the oldest events past `KEEP`.
fn trim(tail: &mut BTreeMap<u64, Arc<RecordedEvent>>) {
    while tail.len() > KEEP {
        tail.pop_first();
    }
}

/// The events at `after + 1`, `after + 2`, ... held in `tail`, up to the first gap or `limit`.
fn consecutive(
    tail: &BTreeMap<u64, Arc<RecordedEvent>>,
    after: u64,
    limit: usize,
) -> Vec<Arc<RecordedEvent>> {
    let mut run = Vec::new();
    let Some(mut next) = after.checked_add(1) else {
        return run;
    };
    for (&position, event) in tail.range(next..) {
        if position != next || run.len() == limit {
            break;
        }
        run.push(Arc::clone(event));
        next += 1;
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::Metadata;

    fn new_events(n: u64) -> Vec<NewEvent> {
        (1..=n)
            .map(|version| crate::eventstore::testing::seats_held("inventory-1", version))
            .collect()
    }

    fn positions(read: Option<Vec<Arc<RecordedEvent>>>) -> Option<Vec<u64>> {
        read.map(|events| events.iter().map(|e| e.position).collect())
    }

    /// A run is served only when it starts right after the reader and is complete: up to the
    /// limit, or to the head; a gap (another instance's events) or a head beyond the tail
    /// sends the reader to the database.
    #[test]
    fn only_complete_runs_are_served() {
        let tail = Tail::default();
        let sale = EventId::random();
        let now = Utc::now();
        tail.committed(sale, &new_events(3), 13, now); // 11..=13
        tail.committed(sale, &new_events(2), 17, now); // 16..=17, 14 and 15 elsewhere
        assert_eq!(positions(tail.read(10, 10, 13)), Some(vec![11, 12, 13]));
        assert_eq!(positions(tail.read(10, 2, 17)), Some(vec![11, 12]));
        assert_eq!(positions(tail.read(10, 10, 17)), None, "14 is not here");
        assert_eq!(positions(tail.read(13, 10, 17)), None, "14 is not here");
        assert_eq!(positions(tail.read(15, 10, 17)), Some(vec![16, 17]));
        assert_eq!(positions(tail.read(15, 10, 18)), None, "18 is not here");
        assert_eq!(positions(tail.read(9, 10, 17)), None, "10 is not here");
        assert_eq!(
            positions(tail.read(17, 10, 17)),
            Some(vec![]),
            "a reader at the head, the tail reaching it"
        );
        assert_eq!(positions(tail.read(18, 10, 18)), None, "18 is not here");
        assert_eq!(
            positions(Tail::default().read(0, 10, 0)),
            None,
            "an empty tail"
        );
    }

    /// Events read from the table fill the gaps between this instance's own; what is held
    /// right after a reader's position is handed out up to the first gap.
    #[test]
    fn learned_events_fill_the_runs() {
        let tail = Tail::default();
        let sale = EventId::random();
        tail.committed(sale, &new_events(2), 12, Utc::now()); // 11..=12
        tail.committed(sale, &new_events(1), 16, Utc::now()); // 16
        assert_eq!(positions(Some(tail.run_after(10, 10))), Some(vec![11, 12]));
        assert!(tail.run_after(12, 10).is_empty(), "13 is not here");
        let read = |position| {
            Arc::new(RecordedEvent {
                position,
                sale_id: sale,
                stream_id: "inventory-2".into(),
                version: position,
                event_type: "inventory.seats_held".into(),
                event_version: 1,
                payload: vec![2],
                metadata: Metadata::default(),
                recorded_at: Utc::now(),
            })
        };
        tail.learned(&[read(13), read(14)]);
        assert_eq!(
            positions(Some(tail.run_after(10, 10))),
            Some(vec![11, 12, 13, 14])
        );
        assert_eq!(positions(tail.read(10, 10, 16)), None, "15 is not here");
        tail.learned(&[read(15), read(16)]);
        assert_eq!(
            positions(tail.read(10, 10, 16)),
            Some(vec![11, 12, 13, 14, 15, 16])
        );
        let kept = tail.run_after(15, 1);
        assert_eq!(
            kept[0].payload,
            vec![1],
            "what this instance committed stays"
        );
    }
}
