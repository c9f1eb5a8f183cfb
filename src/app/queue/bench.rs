//! Measurements behind BENCHMARKS.md's waiting-room figures, not checks: 100 000 users join
//! one queue from 500 concurrent tasks (an opening crowd has many requests in flight; the
//! store's join, what `POST .../queue/join` writes), then random users poll their position
//! as `GET .../queue/me` computes it (the line copy plus one look-up), and for comparison with
//! a count of everyone ahead; on each store; the memory a waiting user costs; and what
//! verifying a pass costs.
//! Run: `cargo test --release --lib app::queue::bench -- --ignored --nocapture`

use super::WaitingRoom;
use crate::db;
use crate::observability::Metrics;
use crate::queue::memory::MemoryQueues;
use crate::queue::pass::{Claims, PassKey};
use crate::queue::postgres::PostgresQueues;
use crate::queue::{QueueSettings, QueueStore, Ticket};
use chrono::Utc;
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use uuid::Uuid;

const USERS: usize = 100_000;
const TASKS: usize = 500;

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Joins `USERS` users from `TASKS` tasks, then polls `polls` random positions the same way;
/// prints the rates and returns the tickets.
async fn joins_and_polls(name: &str, store: Arc<dyn QueueStore>, polls: usize) -> Vec<Ticket> {
    let before = resident_bytes();
    let event = Uuid::new_v4();
    let settings = QueueSettings {
        event_id: event,
        enabled: true,
        admit_per_minute: 600,
        pass_ttl_seconds: 600,
        shuffle_until: None,
    };
    store.put_settings(&settings, Utc::now()).await.unwrap();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(USERS / TASKS + 1);
            for _ in 0..USERS / TASKS {
                let (ticket, _) = store
                    .join(event, Uuid::new_v4(), None, Utc::now())
                    .await
                    .unwrap();
                mine.push(ticket);
            }
            mine
        });
    }
    let mut tickets = Vec::with_capacity(USERS);
    while let Some(mine) = tasks.join_next().await {
        tickets.extend(mine.unwrap());
    }
    let joined = started.elapsed();
    let grown = resident_bytes().saturating_sub(before);
    let list = (std::mem::size_of::<Ticket>() * tickets.capacity()) as u64;
    let tickets = Arc::new(tickets);
    let n = tickets.len();
    println!(
        "{name}: {n} joins in {joined:.2?} ({:.0}/s); this process grew {} MB, {} MB of it the \
         test's own ticket list: about {} bytes per waiting user in this process",
        n as f64 / joined.as_secs_f64(),
        grown / 1_000_000,
        list / 1_000_000,
        grown.saturating_sub(list) / n as u64
    );
    let key = PassKey::new(b"a-benchmark-key-of-at-least-32-bytes!").unwrap();
    let room = Arc::new(WaitingRoom::new(
        Arc::clone(&store),
        key,
        Arc::new(Metrics::new()),
    ));
    for (how, polls, counted) in [
        ("with the line copy", polls, false),
        ("counting everyone ahead", polls / 10, true),
    ] {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..TASKS {
            let (room, tickets) = (Arc::clone(&room), Arc::clone(&tickets));
            tasks.spawn(async move {
                for _ in 0..polls / TASKS {
                    let ticket = &tickets[rand::thread_rng().gen_range(0..tickets.len())];
                    let position = match counted {
                        true => room.store.position(ticket).await.unwrap(),
                        false => room.position(ticket).await.unwrap(),
                    };
                    assert!(position >= 1);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let polled = started.elapsed();
        println!(
            "{name}: {polls} position polls of random users {how} in {polled:.2?} ({:.0}/s)",
            polls as f64 / polled.as_secs_f64(),
        );
    }
    Arc::try_unwrap(tickets).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_joins_polls_and_memory() {
    let memory: Arc<dyn QueueStore> = Arc::new(MemoryQueues::default());
    joins_and_polls("memory", memory, 200_000).await;

    let url = db::testing::fresh_database().await;
    let settings = db::PoolSettings {
        max_connections: 10,
        ..db::PoolSettings::default()
    };
    let pool = db::connect(&url, &settings).await.unwrap();
    db::events_migrator().run(&pool).await.unwrap();
    let postgres: Arc<dyn QueueStore> = Arc::new(PostgresQueues::new(
        pool.clone(),
        crate::db::PoolSettings::default().answer_limit(),
    ));
    joins_and_polls("postgres (10 connections)", postgres, 20_000).await;
    let (bytes,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('queue_tickets')")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "postgres: queue_tickets with its indexes {} MB: {} bytes per waiting user",
        bytes / 1_000_000,
        bytes / USERS as i64
    );

    let key = PassKey::new(b"a-benchmark-key-of-at-least-32-bytes!").unwrap();
    let pass = key.issue(&Claims {
        user_id: Uuid::new_v4(),
        event_id: Uuid::new_v4(),
        expires_at: 1_900_000_000,
    });
    let started = Instant::now();
    for _ in 0..USERS {
        key.verify(&pass).unwrap();
    }
    println!(
        "a pass verified in {:.2?}",
        started.elapsed() / USERS as u32
    );
}
