//! The in-process bus: partitioned topics in memory with consumer-group offsets, the same
//! semantics as a Kafka-protocol broker for one process (ordered per key, redelivery of what
//! was not committed, topics must exist). It keeps nothing across a restart, so the relay
//! that feeds it starts from the beginning of the log each time (see `relay.rs`); consumers
//! are idempotent, so the replay changes nothing. Each group has one member: every
//! subscription of a group reads every partition. Retention, as a broker's: a message is
//! dropped once every group that ever subscribed to its topic committed it, except the last
//! `RETAIN` of each partition; a group that subscribes later starts at the earliest kept.

use super::{BusConsumer, BusError, BusMessage, Delivery, EventBus};
use async_trait::async_trait;
use foldhash::HashMap;
use smallvec::SmallVec;
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Partitions per topic: enough to interleave keys as a broker would.
const PARTITIONS: usize = 4;
/// Messages each partition keeps after every group committed them (a broker's retention):
/// what a group that subscribes later still gets. The rest of a long-running service's log
/// is the event store's to keep, not the bus's.
const RETAIN: usize = 256;

/// The messages of a partition still kept: offsets `base..base + messages.len()`.
#[derive(Default)]
struct Partition {
    base: usize,
    messages: VecDeque<Arc<BusMessage>>,
}

impl Partition {
    fn end(&self) -> usize {
        self.base + self.messages.len()
    }

    fn get(&self, offset: usize) -> Option<&Arc<BusMessage>> {
        self.messages.get(offset.checked_sub(self.base)?)
    }

    /// Drops the messages before offset `floor`, keeping at least the last `RETAIN`.
    fn trim(&mut self, floor: usize) {
        while self.base < floor && self.messages.len() > RETAIN {
            self.messages.pop_front();
            self.base += 1;
        }
    }
}

#[derive(Default)]
struct Topic {
    partitions: [Partition; PARTITIONS],
    /// Next offset to deliver, per partition, of every group that subscribed to the topic.
    committed: HashMap<String, [usize; PARTITIONS]>,
}

impl Topic {
    /// The first offset of `partition` some group has not committed (`usize::MAX` for none).
    fn floor(&self, partition: usize) -> usize {
        self.committed
            .values()
            .map(|offsets| offsets[partition])
            .min()
            .unwrap_or(usize::MAX)
    }

    fn trim(&mut self, partition: usize) {
        let floor = self.floor(partition);
        self.partitions[partition].trim(floor);
    }
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
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
                .find(|m| !state.topics.contains_key(&*m.topic))
            {
                return Err(BusError::Rejected(format!("unknown topic {}", m.topic)));
            }
            for message in messages {
                let partition = partition_of(&message.key);
                if let Some(topic) = state.topics.get_mut(&*message.topic) {
                    topic.partitions[partition]
                        .messages
                        .push_back(Arc::new(message));
                    // A topic no group reads keeps only its last `RETAIN` per partition.
                    topic.trim(partition);
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
        let mut state = self.lock();
        if let Some(topic) = topics.iter().find(|t| !state.topics.contains_key(*t)) {
            return Err(BusError::Rejected(format!("unknown topic {topic}")));
        }
        let (mut names, mut cursors) = (Vec::new(), Vec::new());
        for name in topics {
            let Some(topic) = state.topics.get_mut(name) else {
                continue;
            };
            // From now on the topic keeps what this group has not committed.
            let offsets = *topic
                .committed
                .entry(group.to_owned())
                .or_insert_with(|| std::array::from_fn(|p| topic.partitions[p].base));
            for (partition, next) in offsets.into_iter().enumerate() {
                cursors.push((names.len(), partition, next));
            }
            names.push(name.clone());
        }
        Ok(Box::new(MemoryConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            topics: names,
            cursors,
            turn: 0,
            published: self.published.subscribe(),
            polled: false,
        }))
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let mut state = self.lock();
        for topic in topics {
            state.topics.entry(topic.clone()).or_default();
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
    /// The topics subscribed to.
    topics: Vec<String>,
    /// (index in `topics`, partition, next offset to deliver) per subscribed partition.
    cursors: Vec<(usize, usize, usize)>,
    /// Where the next scan starts, so that no partition starves the others.
    turn: usize,
    published: watch::Receiver<u64>,
    /// Whether `next` was called: lag is known from then on (a broker's consumer only learns
    /// its partitions while it is polled, and the contract holds both to that).
    polled: bool,
}

impl MemoryConsumer {
    /// Up to `max` deliveries at hand, taken under one lock, partitions in turn.
    fn take(&mut self, max: usize) -> Vec<Delivery> {
        let state = self.bus.lock();
        // Each topic looked up once per take, not once per partition visited: a woken
        // consumer visits every partition of its topics at least once.
        let topics: SmallVec<[Option<&Topic>; 4]> = self
            .topics
            .iter()
            .map(|name| state.topics.get(name))
            .collect();
        let mut taken = Vec::new();
        let n = self.cursors.len();
        let mut dry = 0;
        while taken.len() < max && dry < n {
            let at = self.turn % n.max(1);
            self.turn = at + 1;
            let (topic, partition, next) = &mut self.cursors[at];
            let Some(kept) = topics.get(*topic).copied().flatten() else {
                dry += 1;
                continue;
            };
            let kept = &kept.partitions[*partition];
            // Retention dropped what this cursor had not reached: go on from the earliest kept.
            *next = (*next).max(kept.base);
            let Some(message) = kept.get(*next) else {
                dry += 1;
                continue;
            };
            dry = 0;
            taken.push(Delivery {
                message: Arc::clone(message),
                partition: i32::try_from(*partition).unwrap_or(0),
                offset: i64::try_from(*next).unwrap_or(i64::MAX),
            });
            *next += 1;
        }
        taken
    }
}

#[async_trait]
impl BusConsumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let mut batch = self.next_batch(1).await?;
        batch
            .pop()
            .ok_or_else(|| BusError::Unavailable("an empty delivery".into()))
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        self.polled = true;
        loop {
            self.published.borrow_and_update();
            let taken = self.take(max.max(1));
            if !taken.is_empty() {
                return Ok(taken);
            }
            if self.published.changed().await.is_err() {
                return Err(BusError::Unavailable("the bus was dropped".into()));
            }
        }
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let partition = usize::try_from(delivery.partition)
            .ok()
            .filter(|p| *p < PARTITIONS)
            .ok_or_else(|| BusError::Rejected("no such partition".into()))?;
        let offset = usize::try_from(delivery.offset)
            .map_err(|_| BusError::Rejected("negative offset".into()))?;
        let mut state = self.bus.lock();
        let Some(topic) = state.topics.get_mut(&*delivery.message.topic) else {
            return Err(BusError::Rejected(format!(
                "unknown topic {}",
                delivery.message.topic
            )));
        };
        let committed = topic
            .committed
            .entry(self.group.clone())
            .or_insert([0; PARTITIONS]);
        committed[partition] = committed[partition].max(offset + 1);
        topic.trim(partition);
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
                let name = self.topics.get(*topic).map(String::as_str);
                name.and_then(|name| state.topics.get(name))
                    .map_or(0, |topic| {
                        let committed = topic
                            .committed
                            .get(&self.group)
                            .map_or(0, |offsets| offsets[*partition]);
                        topic.partitions[*partition].end().saturating_sub(committed)
                    })
            })
            .sum::<usize>();
        u64::try_from(lag).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, n: usize) -> BusMessage {
        BusMessage {
            topic: topic.into(),
            key: "k".to_owned(),
            headers: vec![("seq".into(), n.to_string())],
            payload: Vec::new(),
        }
    }

    fn kept(bus: &MemoryBus, topic: &str) -> usize {
        let state = bus.lock();
        state.topics[topic]
            .partitions
            .iter()
            .map(|p| p.messages.len())
            .sum()
    }

    /// What every group committed is dropped (but the last `RETAIN` of a partition), what one
    /// group has not committed is kept for it, and a topic no group reads keeps `RETAIN`: a
    /// long-running service's bus stays bounded.
    #[tokio::test]
    async fn messages_every_group_committed_are_dropped() {
        let bus = MemoryBus::new();
        let (read, unread) = ("t.read".to_owned(), "t.unread".to_owned());
        bus.ensure_topics(&[read.clone(), unread.clone()])
            .await
            .unwrap();
        let total = 3 * RETAIN;
        let mut fast = bus
            .subscribe("fast", std::slice::from_ref(&read))
            .await
            .unwrap();
        let mut slow = bus
            .subscribe("slow", std::slice::from_ref(&read))
            .await
            .unwrap();
        let sent = |topic: &str| (0..total).map(|n| message(topic, n)).collect();
        bus.publish(sent(&read)).await.unwrap();
        bus.publish(sent(&unread)).await.unwrap();
        assert_eq!(kept(&bus, &unread), RETAIN, "a topic no group reads");

        let all = fast.next_batch(total).await.unwrap();
        assert_eq!(all.len(), total);
        fast.commit(&all[total - 1]).await.unwrap();
        assert_eq!(kept(&bus, &read), total, "kept for the group behind");

        let half = slow.next_batch(total / 2).await.unwrap();
        slow.commit(&half[half.len() - 1]).await.unwrap();
        assert_eq!(kept(&bus, &read), total - half.len());
        let rest = slow.next_batch(total).await.unwrap();
        assert_eq!(
            rest.len(),
            total - half.len(),
            "nothing the group lacks was dropped"
        );
        slow.commit(&rest[rest.len() - 1]).await.unwrap();
        assert_eq!(kept(&bus, &read), RETAIN);
        assert_eq!(slow.lag().await, Some(0));

        // A group that comes later starts at the earliest message kept.
        let mut late = bus
            .subscribe("late", std::slice::from_ref(&read))
            .await
            .unwrap();
        let got = late.next_batch(total).await.unwrap();
        assert_eq!(got.len(), RETAIN);
        assert_eq!(*got[0].message, message(&read, total - RETAIN));
    }
}
