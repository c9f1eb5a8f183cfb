//! Group commit of joins: at an on-sale's opening a crowd joins within seconds, and one
//! `INSERT` (and one commit, one WAL flush) per join would cap the rate at what the disk
//! flushes. One task per store (`Batcher`) takes every join queued meanwhile (up to 1000),
//! inserts them with one statement over arrays, reads back in one more the tickets of those
//! already in line, and answers each caller after the commit.

use super::{unavailable, TicketRow, TICKET};
use crate::batcher::Batch;
use crate::queue::{QueueError, Ticket, ARRIVAL_BASE};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

pub(super) type Answer = Result<(Ticket, bool), QueueError>;

pub(super) struct Join {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub draw: Option<i64>,
    pub now: DateTime<Utc>,
}

/// Writes each batch of joins.
pub(super) struct Joins(pub PgPool);

impl Batch for Joins {
    type Request = Join;
    type Answer = Answer;
    const PER_BATCH: usize = 1000;
    const QUEUED: usize = 10_000;

    async fn run(&mut self, batch: &[Join]) -> Vec<Answer> {
        write(&self.0, batch)
            .await
            .unwrap_or_else(|e| batch.iter().map(|_| Err(e.clone())).collect())
    }
}

/// Inserts the batch's new tickets and finds the others; one answer per join, in order.
async fn write(pool: &PgPool, batch: &[Join]) -> Result<Vec<Answer>, QueueError> {
    let column = |f: fn(&Join) -> Uuid| batch.iter().map(f).collect::<Vec<Uuid>>();
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::new_v4()).collect();
    let draws: Vec<Option<i64>> = batch.iter().map(|j| j.draw).collect();
    let times: Vec<DateTime<Utc>> = batch.iter().map(|j| j.now).collect();
    let inserted: Vec<TicketRow> = sqlx::query_as(&format!(
        "INSERT INTO queue_tickets (id, event_id, user_id, rank, joined_at) \
         SELECT j.id, j.event_id, j.user_id, COALESCE(j.draw, $6 + nextval('queue_arrival')), \
                j.joined_at \
         FROM unnest($1::UUID[], $2::UUID[], $3::UUID[], $4::BIGINT[], $5::TIMESTAMPTZ[]) \
              AS j(id, event_id, user_id, draw, joined_at) \
         WHERE EXISTS (SELECT 1 FROM waiting_rooms r WHERE r.event_id = j.event_id AND r.enabled) \
         ON CONFLICT (event_id, user_id) DO NOTHING RETURNING {TICKET}"
    ))
    .bind(&ids)
    .bind(column(|j| j.event_id))
    .bind(column(|j| j.user_id))
    .bind(&draws)
    .bind(&times)
    .bind(ARRIVAL_BASE)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let mut new: HashMap<(Uuid, Uuid), Ticket> = inserted
        .into_iter()
        .map(|r| ((r.event_id, r.user_id), Ticket::from(r)))
        .collect();
    // The first join of a (event, user) in the batch made the ticket; any other finds it.
    let mut given: HashMap<(Uuid, Uuid), Ticket> = HashMap::new();
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch.len());
    let mut unknown = Vec::new();
    for join in batch {
        let key = (join.event_id, join.user_id);
        if let Some(ticket) = new.remove(&key) {
            given.insert(key, ticket.clone());
            answers.push(Some(Ok((ticket, true))));
        } else if let Some(ticket) = given.get(&key) {
            answers.push(Some(Ok((ticket.clone(), false))));
        } else {
            unknown.push(key);
            answers.push(None);
        }
    }
    let mut existing = HashMap::new();
    if !unknown.is_empty() {
        let (events, users): (Vec<Uuid>, Vec<Uuid>) = unknown.iter().copied().unzip();
        let rows: Vec<TicketRow> = sqlx::query_as(&format!(
            "SELECT {TICKET} FROM queue_tickets \
             WHERE (event_id, user_id) IN (SELECT * FROM unnest($1::UUID[], $2::UUID[]))"
        ))
        .bind(events)
        .bind(users)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
        existing = rows
            .into_iter()
            .map(|r| ((r.event_id, r.user_id), Ticket::from(r)))
            .collect();
    }
    Ok(batch
        .iter()
        .zip(answers)
        .map(|(join, answer)| {
            answer.unwrap_or_else(|| {
                existing
                    .get(&(join.event_id, join.user_id))
                    .map(|t| (t.clone(), false))
                    // Not inserted and not there: the event has no enabled queue.
                    .ok_or(QueueError::NoQueue)
            })
        })
        .collect())
}
