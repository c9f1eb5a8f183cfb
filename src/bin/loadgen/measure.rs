//! The measured phase: workers pull buyers from a shared queue, reserve, then pay.
//!
//! Every request becomes one [`Sample`]; nothing is retried, so the samples are exactly what
//! the service answered. The phase ends when the queue is empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::api::{Answer, Api};
use crate::setup::Buyer;

/// Status the payment must report for a purchase to count.
const CAPTURED: &str = "captured";

/// Which operation a sample measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reserve,
    Pay,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with this status code.
    Status(u16),
    /// No answer: connection error, timeout or broken body.
    Transport,
}

/// One measured request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: Kind,
    pub outcome: Outcome,
    pub latency: Duration,
    /// Reserve: 201 with a decodable body. Pay: 201 with status `captured`.
    pub succeeded: bool,
    /// The expected status came with a body that did not decode.
    pub malformed: bool,
}

/// What the measured phase produced.
#[derive(Debug, Default)]
pub struct Measured {
    pub samples: Vec<Sample>,
    pub wall: Duration,
    /// The first transport error seen, for the report.
    pub first_transport_error: Option<String>,
}

/// What every worker needs to know about the sale.
#[derive(Debug, Clone)]
pub struct Sale {
    pub event_id: Uuid,
    pub quantity: u32,
    pub pay: bool,
}

/// Runs `workers` tasks until every buyer has had one go, and times the whole phase.
pub async fn run(
    api: &Api,
    sale: &Sale,
    buyers: Vec<Buyer>,
    workers: usize,
) -> anyhow::Result<Measured> {
    let queue = Arc::new(Queue::new(buyers));
    run_workers(workers, || {
        let (api, sale, queue) = (api.clone(), sale.clone(), Arc::clone(&queue));
        async move { work(&api, &sale, &queue).await }
    })
    .await
}

/// Runs `workers` copies of a worker at once, merges what they measured, and times the
/// whole phase; shared by every mode of the load generator.
pub async fn run_workers<W, F>(workers: usize, mut worker: W) -> anyhow::Result<Measured>
where
    W: FnMut() -> F,
    F: std::future::Future<Output = Measured> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker());
    }
    let mut measured = Measured::default();
    while let Some(joined) = tasks.join_next().await {
        let part = joined.context("a load worker panicked")?;
        measured.samples.extend(part.samples);
        measured.first_transport_error = measured
            .first_transport_error
            .or(part.first_transport_error);
    }
    measured.wall = started.elapsed();
    Ok(measured)
}

/// One worker: takes buyers until the queue is empty.
async fn work(api: &Api, sale: &Sale, queue: &Queue<Buyer>) -> Measured {
    let mut measured = Measured::default();
    while let Some(buyer) = queue.next() {
        let reservation = timed(api.reserve(&buyer.token, sale.event_id, sale.quantity));
        let (answer, latency) = reservation.await;
        measured.record(Kind::Reserve, &answer, latency, |_| true);
        let Answer::Success(_, reservation) = answer else {
            continue;
        };
        if sale.pay {
            let (answer, latency) = timed(api.pay(&buyer.token, reservation.reservation_id)).await;
            measured.record(Kind::Pay, &answer, latency, |p| p.status == CAPTURED);
        }
    }
    measured
}

impl Measured {
    /// Adds a sample for `answer`; `accept` says whether a decoded body counts as success.
    fn record<T>(
        &mut self,
        kind: Kind,
        answer: &Answer<T>,
        latency: Duration,
        accept: impl Fn(&T) -> bool,
    ) {
        let (outcome, succeeded, malformed) = match answer {
            Answer::Success(status, body) => {
                (Outcome::Status(status.as_u16()), accept(body), false)
            }
            Answer::Malformed(status) => (Outcome::Status(status.as_u16()), false, true),
            Answer::Rejected(status) => (Outcome::Status(status.as_u16()), false, false),
            Answer::Transport(error) => {
                self.first_transport_error
                    .get_or_insert_with(|| error.clone());
                (Outcome::Transport, false, false)
            }
        };
        self.samples.push(Sample {
            kind,
            outcome,
            latency,
            succeeded,
            malformed,
        });
    }
}

/// Awaits `request` and measures how long it took.
pub async fn timed<T>(request: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let answer = request.await;
    (answer, started.elapsed())
}

/// A fixed list handed out one item at a time to any number of tasks.
pub struct Queue<T> {
    items: Vec<T>,
    next: AtomicUsize,
}

impl<T> Queue<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self {
            items,
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> Option<&T> {
        self.items.get(self.next.fetch_add(1, Ordering::Relaxed))
    }
}
