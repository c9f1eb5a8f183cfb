//! The `QueueStore` in process: one map of queues behind a mutex (never held across an
//! await), each with its tickets by user and its waiting line ordered by (rank, ticket id).
//! Not durable: a restart empties every queue.

use super::{
    admission, QueueCounts, QueueError, QueueSettings, QueueStore, Since, Ticket, WaitingLine,
    ARRIVAL_BASE,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use uuid::Uuid;

#[derive(Default)]
pub struct MemoryQueues(Mutex<HashMap<Uuid, Room>>);

struct Room {
    settings: QueueSettings,
    advanced_at: DateTime<Utc>,
    admitted: u64,
    arrivals: i64,
    tickets: HashMap<Uuid, Ticket>,
    /// (rank, ticket id) -> user, in admission order.
    waiting: BTreeMap<(i64, Uuid), Uuid>,
}

impl MemoryQueues {
    fn rooms(&self) -> MutexGuard<'_, HashMap<Uuid, Room>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl QueueStore for MemoryQueues {
    async fn put_settings(
        &self,
        settings: &QueueSettings,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        let mut rooms = self.rooms();
        match rooms.get_mut(&settings.event_id) {
            Some(room) => room.settings = settings.clone(),
            None => {
                rooms.insert(
                    settings.event_id,
                    Room {
                        settings: settings.clone(),
                        advanced_at: now,
                        admitted: 0,
                        arrivals: 0,
                        tickets: HashMap::new(),
                        waiting: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    async fn settings(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError> {
        Ok(self.rooms().get(&event_id).map(|r| r.settings.clone()))
    }

    async fn enabled(&self) -> Result<Vec<QueueSettings>, QueueError> {
        let rooms = self.rooms();
        let mut found: Vec<QueueSettings> = rooms
            .values()
            .filter(|r| r.settings.enabled)
            .map(|r| r.settings.clone())
            .collect();
        found.sort_by_key(|s| s.event_id);
        Ok(found)
    }

    async fn join(
        &self,
        event_id: Uuid,
        user_id: Uuid,
        draw: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, bool), QueueError> {
        let mut rooms = self.rooms();
        let room = rooms
            .get_mut(&event_id)
            .filter(|r| r.settings.enabled)
            .ok_or(QueueError::NoQueue)?;
        if let Some(ticket) = room.tickets.get(&user_id) {
            return Ok((ticket.clone(), false));
        }
        room.arrivals += 1;
        let ticket = Ticket {
            id: Uuid::new_v4(),
            event_id,
            user_id,
            rank: draw.unwrap_or(ARRIVAL_BASE + room.arrivals),
            joined_at: now,
            admitted_at: None,
        };
        room.waiting.insert((ticket.rank, ticket.id), user_id);
        room.tickets.insert(user_id, ticket.clone());
        Ok((ticket, true))
    }

    async fn ticket(&self, event_id: Uuid, user_id: Uuid) -> Result<Option<Ticket>, QueueError> {
        Ok(self
            .rooms()
            .get(&event_id)
            .and_then(|r| r.tickets.get(&user_id).cloned()))
    }

    async fn position(&self, ticket: &Ticket) -> Result<u64, QueueError> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(&ticket.event_id) else {
            return Ok(0);
        };
        if !room.waiting.contains_key(&(ticket.rank, ticket.id)) {
            return Ok(0);
        }
        let ahead = room.waiting.range(..(ticket.rank, ticket.id)).count();
        Ok(u64::try_from(ahead).unwrap_or(u64::MAX) + 1)
    }

    async fn counts(&self, event_id: Uuid) -> Result<QueueCounts, QueueError> {
        Ok(self
            .rooms()
            .get(&event_id)
            .map(|r| QueueCounts {
                waiting: u64::try_from(r.waiting.len()).unwrap_or(u64::MAX),
                admitted: r.admitted,
            })
            .unwrap_or_default())
    }

    async fn waiting_line(&self, event_id: Uuid) -> Result<WaitingLine, QueueError> {
        Ok(self
            .rooms()
            .get(&event_id)
            .map(|r| WaitingLine {
                admitted: r.admitted,
                order: r.waiting.keys().copied().collect(),
            })
            .unwrap_or_default())
    }

    async fn position_since(
        &self,
        ticket: &Ticket,
        after: Option<(i64, Uuid)>,
    ) -> Result<Since, QueueError> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(&ticket.event_id) else {
            return Ok(Since::default());
        };
        let upto = (ticket.rank, ticket.id);
        let between = match after {
            Some(after) if after >= upto => 0,
            Some(after) => room
                .waiting
                .range((Bound::Excluded(after), Bound::Included(upto)))
                .count(),
            None => room.waiting.range(..=upto).count(),
        };
        Ok(Since {
            admitted: room.admitted,
            between: u64::try_from(between).unwrap_or(u64::MAX),
        })
    }

    async fn advance(&self, event_id: Uuid, now: DateTime<Utc>) -> Result<Vec<Ticket>, QueueError> {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(&event_id).filter(|r| r.settings.enabled) else {
            return Ok(Vec::new());
        };
        let (owed, advanced_to) = admission::allowance(
            room.settings.admit_per_minute,
            room.settings.shuffle_until,
            room.advanced_at,
            now,
        );
        room.advanced_at = advanced_to;
        let mut admitted = Vec::new();
        for _ in 0..owed {
            let Some((_, user)) = room.waiting.pop_first() else {
                break;
            };
            if let Some(ticket) = room.tickets.get_mut(&user) {
                ticket.admitted_at = Some(now);
                admitted.push(ticket.clone());
            }
        }
        room.admitted += u64::try_from(admitted.len()).unwrap_or(0);
        Ok(admitted)
    }
}

#[cfg(test)]
mod tests {
    /// The in-memory store keeps the queue store contract.
    #[tokio::test]
    async fn memory_store_passes_the_queue_store_contract() {
        super::super::contract::run(&super::MemoryQueues::default()).await;
    }
}
