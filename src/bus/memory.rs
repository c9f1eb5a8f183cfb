//! The in-process bus: partitioned topics in memory with consumer-group offsets, the same
//! semantics as a Kafka-protocol broker for one process (ordered per key, redelivery of what
//! was not committed, topics must exist). It keeps nothing across a restart, so the relay
//! that feeds it starts from the beginning of the log each time (see `relay.rs`); consumers
//! are idempotent, so the replay changes nothing. Each group has one member: every
//! subscription of a group reads every partition.

use super::{BusConsumer, BusError, BusMessage, Delivery, EventBus};
use async_trait::async_trait;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Partitions per topic: enough to interleave keys as a broker would.
const PARTITIONS: usize = 4;

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<Vec<BusMessage>>>,
    /// Next offset to deliver, per (group, topic, partition).
    committed: HashMap<(String, String, usize), usize>,
}

#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    published: watch::Sender<u64>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            state: Arc::default(),
            published: watch::Sender::new(0),
        }
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn partition_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    usize::try_from(h.finish() % PARTITIONS as u64).unwrap_or(0)
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, messages: Vec<BusMessage>) -> Result<(), BusError> {
        {
            let mut state = self.lock();
            if let Some(m) = messages
                .iter()
                .find(|m| !state.topics.contains_key(&m.topic))
            {
                return Err(BusError::Rejected(format!("unknown topic {}", m.topic)));
            }
            for message in messages {
                let partition = partition_of(&message.key);
                if let Some(partitions) = state.topics.get_mut(&message.topic) {
                    partitions[partition].push(message);
                }
            }
        }
        self.published.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn BusConsumer>, BusError> {
        let state = self.lock();
        let mut cursors = Vec::new();
        for topic in topics {
            if !state.topics.contains_key(topic) {
                return Err(BusError::Rejected(format!("unknown topic {topic}")));
            }
            for partition in 0..PARTITIONS {
                let key = (group.to_owned(), topic.clone(), partition);
                let next = state.committed.get(&key).copied().unwrap_or(0);
                cursors.push((topic.clone(), partition, next));
            }
        }
        Ok(Box::new(MemoryConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            cursors,
            turn: 0,
            published: self.published.subscribe(),
            polled: false,
        }))
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let mut state = self.lock();
        for topic in topics {
            state
                .topics
                .entry(topic.clone())
                .or_insert_with(|| vec![Vec::new(); PARTITIONS]);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

struct MemoryConsumer {
    bus: MemoryBus,
    group: String,
    /// (topic, partition, next offset to deliver) per subscribed partition.
    cursors: Vec<(String, usize, usize)>,
    /// Where the next scan starts, so that no partition starves the others.
    turn: usize,
    published: watch::Receiver<u64>,
    /// Whether `next` was called: lag is known from then on (a broker's consumer only learns
    /// its partitions while it is polled, and the contract holds both to that).
    polled: bool,
}

impl MemoryConsumer {
    fn take(&mut self) -> Option<Delivery> {
        let state = self.bus.lock();
        let n = self.cursors.len();
        for i in 0..n {
            let at = (self.turn + i) % n;
            let (topic, partition, next) = &mut self.cursors[at];
            let Some(message) = state
                .topics
                .get(topic.as_str())
                .and_then(|p| p[*partition].get(*next))
            else {
                continue;
            };
            let delivery = Delivery {
                message: message.clone(),
                partition: i32::try_from(*partition).unwrap_or(0),
                offset: i64::try_from(*next).unwrap_or(i64::MAX),
            };
            *next += 1;
            self.turn = at + 1;
            return Some(delivery);
        }
        None
    }
}

#[async_trait]
impl BusConsumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        self.polled = true;
        loop {
            self.published.borrow_and_update();
            if let Some(delivery) = self.take() {
                return Ok(delivery);
            }
            if self.published.changed().await.is_err() {
                return Err(BusError::Unavailable("the bus was dropped".into()));
            }
        }
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let partition = usize::try_from(delivery.partition)
            .map_err(|_| BusError::Rejected("negative partition".into()))?;
        let offset = usize::try_from(delivery.offset)
            .map_err(|_| BusError::Rejected("negative offset".into()))?;
        let key = (
            self.group.clone(),
            delivery.message.topic.clone(),
            partition,
        );
        let mut state = self.bus.lock();
        let committed = state.committed.entry(key).or_insert(0);
        *committed = (*committed).max(offset + 1);
        Ok(())
    }

    async fn lag(&self) -> Option<u64> {
        if !self.polled {
            return None;
        }
        let state = self.bus.lock();
        let lag = self
            .cursors
            .iter()
            .map(|(topic, partition, _)| {
                let end = state.topics.get(topic).map_or(0, |p| p[*partition].len());
                let key = (self.group.clone(), topic.clone(), *partition);
                end.saturating_sub(state.committed.get(&key).copied().unwrap_or(0))
            })
            .sum::<usize>();
        u64::try_from(lag).ok()
    }
}
