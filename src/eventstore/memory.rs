//! In-memory `EventStore`: the embedded default. Same semantics as the PostgreSQL adapter
//! (atomic multi-stream appends, typed conflicts, gap-free positions), none of the durability.

use super::{
    check_contiguous, raise_head, Decide, EventStore, Known, NewEvent, RecordedEvent, StoreError,
    TurnMode, Turned,
};
use crate::domain::EventId;
use async_trait::async_trait;
use chrono::Utc;
use foldhash::{HashMap, HashSet, HashSetExt};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

#[derive(Default)]
struct Log {
    events: Vec<Arc<RecordedEvent>>,
    /// Each stream's version, and where its first event is in `events`.
    streams: HashMap<String, Stream>,
    by_sale: HashMap<EventId, Vec<usize>>,
}

struct Stream {
    version: u64,
    first: usize,
}

pub struct MemoryEventStore {
    // A std mutex: the critical sections are short and never held across an await.
    log: Mutex<Log>,
    head: watch::Sender<u64>,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self {
            log: Mutex::new(Log::default()),
            head: watch::Sender::new(0),
        }
    }
}

impl MemoryEventStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Log {
    /// Checks the expected versions and appends; nothing is written on error.
    fn append(&mut self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
        check_contiguous(&events)?;
        let mut seen = HashSet::new();
        // Only the first event of each stream needs checking: the rest are contiguous.
        for e in events.iter().filter(|e| seen.insert(e.stream_id.as_str())) {
            let actual = self.streams.get(&e.stream_id).map_or(0, |s| s.version);
            if e.version != actual + 1 {
                return Err(StoreError::Conflict {
                    stream_id: e.stream_id.clone(),
                    attempted: e.version,
                    actual,
                });
            }
        }
        let now = Utc::now();
        for e in events {
            let position = self.events.len() as u64 + 1;
            let index = self.events.len();
            match self.streams.get_mut(&e.stream_id) {
                Some(stream) => stream.version = e.version,
                None => {
                    let stream = Stream {
                        version: e.version,
                        first: index,
                    };
                    self.streams.insert(e.stream_id.clone(), stream);
                }
            }
            self.by_sale.entry(sale_id).or_default().push(index);
            self.events.push(Arc::new(RecordedEvent {
                position,
                sale_id,
                stream_id: e.stream_id,
                version: e.version,
                event_type: e.event_type.to_owned(),
                event_version: e.event_version,
                payload: e.payload,
                metadata: e.metadata,
                recorded_at: now,
            }));
        }
        Ok(self.events.len() as u64)
    }

    fn read_sale(&self, sale_id: EventId, after: u64, limit: usize) -> Vec<Arc<RecordedEvent>> {
        self.by_sale
            .get(&sale_id)
            .map(|idx| {
                // Position = index + 1, so the events after `after` start at index `after`.
                let start = idx.partition_point(|&i| (i as u64) < after);
                idx[start..]
                    .iter()
                    .take(limit)
                    .filter_map(|&i| self.events.get(i).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
        let last = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(sale_id, events)?;
        self.head.send_if_modified(|h| raise_head(h, last));
        Ok(last)
    }

    /// The whole turn runs under the log's mutex (`decide` is synchronous), which is all the
    /// turn-taking one process needs; an optimistic turn is only checked against the head.
    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError> {
        let (last, known) = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let head = log.by_sale.get(&sale_id).map_or(0, |idx| idx.len() as u64);
            if mode == TurnMode::Optimistic && head != known.events {
                return Ok(Turned::Stale);
            }
            let fresh = match mode {
                TurnMode::Locked => log.read_sale(sale_id, known.position, usize::MAX),
                TurnMode::Optimistic => Vec::new(),
            };
            let seen = fresh.last().map_or(known.position, |e| e.position);
            let events = decide(&fresh);
            let count = events.len() as u64;
            if events.is_empty() {
                let known = Known {
                    position: seen,
                    events: head,
                };
                return Ok(Turned::Done { last: None, known });
            }
            let last = log.append(sale_id, events)?;
            let known = Known {
                position: last,
                events: head + count,
            };
            (last, known)
        };
        self.head.send_if_modified(|h| raise_head(h, last));
        Ok(Turned::Done {
            last: Some(last),
            known,
        })
    }

    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        Ok(self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_sale(sale_id, after, limit))
    }

    async fn first_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Arc<RecordedEvent>>, StoreError> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(log
            .streams
            .get(stream_id)
            .and_then(|s| log.events.get(s.first))
            .cloned())
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        Ok(log.events[start..].iter().take(limit).cloned().collect())
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    /// The in-memory store honours the same contract as every other adapter.
    #[tokio::test]
    async fn memory_store_passes_the_event_store_contract() {
        super::super::contract::run_all(&super::MemoryEventStore::new()).await;
    }
}
