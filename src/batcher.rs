//! `Batcher`: one task that runs requests in batches, the group commit of reads and writes
//! that are not a sale's events (idempotency answers, the simulated processor's charges,
//! reservations read by id, waiting-room joins). Every request that arrives while a batch is
//! in flight goes into the next one, so a crowd costs a statement per batch instead of one
//! per request. The task ends once its handle is dropped. A lost answer says whether the
//! request could have run: `Lost::NotTaken` (it did not) or `Lost::Unanswered` (it may have).
//! A batch that gets no answer within its limit (a database gone without a reset) is
//! abandoned, its requests `Unanswered`, so the requests queued behind it are not stalled.

use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a batching task does with each batch.
pub trait Batch: Send + 'static {
    type Request: Send + 'static;
    type Answer: Send + 'static;

    /// The most requests one batch carries.
    const PER_BATCH: usize = 256;
    /// Requests waiting for the task before `ask` waits to queue one (`tell` gives up).
    const QUEUED: usize = 65_536;

    /// Runs `requests` (at least one) and answers them in their order; a request past the
    /// end of the answers gets `Lost::Unanswered`.
    fn run(&mut self, requests: &[Self::Request])
        -> impl Future<Output = Vec<Self::Answer>> + Send;
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// The task has stopped, or its queue is full (`tell`): the request did not run.
    #[error("the batching task did not take the request")]
    NotTaken,
    /// The task took the request and stopped (or left it out) before answering: it may have
    /// run.
    #[error("the batching task took the request and gave no answer")]
    Unanswered,
}

type Queued<B> = (
    <B as Batch>::Request,
    Option<oneshot::Sender<<B as Batch>::Answer>>,
);

/// The handle requests go through.
pub struct Batcher<B: Batch> {
    queue: mpsc::Sender<Queued<B>>,
}

impl<B: Batch> Batcher<B> {
    /// Starts the batching task, so it must be called inside the runtime; a batch still
    /// running after `limit` is abandoned (`db::PoolSettings::answer_limit`).
    pub fn start(batch: B, limit: Duration) -> Self {
        let (queue, incoming) = mpsc::channel(B::QUEUED);
        tokio::spawn(batches(batch, incoming, limit));
        Self { queue }
    }

    /// Runs `request` with the others queued meanwhile and waits for its answer.
    pub async fn ask(&self, request: B::Request) -> Result<B::Answer, Lost> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, Some(reply)))
            .await
            .map_err(|_| Lost::NotTaken)?;
        answer.await.map_err(|_| Lost::Unanswered)
    }

    /// Queues `request` without waiting for it: nobody wants its answer.
    pub fn tell(&self, request: B::Request) -> Result<(), Lost> {
        self.queue
            .try_send((request, None))
            .map_err(|_| Lost::NotTaken)
    }
}

/// Takes whatever has queued up (at least one request, at most `PER_BATCH`), runs it,
/// answers, and goes again.
async fn batches<B: Batch>(mut batch: B, mut incoming: mpsc::Receiver<Queued<B>>, limit: Duration) {
    let mut queued = Vec::with_capacity(B::PER_BATCH);
    let mut requests = Vec::with_capacity(B::PER_BATCH);
    let mut replies = Vec::with_capacity(B::PER_BATCH);
    while incoming.recv_many(&mut queued, B::PER_BATCH).await > 0 {
        for (request, reply) in queued.drain(..) {
            requests.push(request);
            replies.push(reply);
        }
        let count = requests.len();
        let run = batch.run(&requests);
        let run = async move { Ok::<_, ()>(run.await) };
        let answers = crate::db::within(limit, run, || {
            tracing::warn!(
                requests = count,
                limit_ms = limit.as_millis(),
                "a batch got no answer in time; abandoned"
            );
        })
        .await
        .unwrap_or_default();
        requests.clear();
        // A reply left without an answer is dropped with the drain: its caller learns
        // `Unanswered`.
        for (reply, answer) in replies.drain(..).zip(answers) {
            // A caller that gave up (its client went away) is no reason to stop.
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const LIMIT: Duration = Duration::from_secs(3600);

    /// Doubles numbers; records each batch it ran; answers nothing for 0.
    struct Doubling(Arc<Mutex<Vec<Vec<u32>>>>);

    impl Batch for Doubling {
        type Request = u32;
        type Answer = u32;
        const PER_BATCH: usize = 3;

        async fn run(&mut self, requests: &[u32]) -> Vec<u32> {
            self.0.lock().unwrap().push(requests.to_vec());
            requests
                .iter()
                .map_while(|&n| (n > 0).then_some(n * 2))
                .collect()
        }
    }

    #[tokio::test]
    async fn requests_queued_together_run_in_batches_of_at_most_per_batch() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::start(Doubling(Arc::clone(&ran)), LIMIT);
        // All five are queued in one poll, before the task (on this one-thread runtime) runs.
        let answers = tokio::join!(
            batcher.ask(1),
            batcher.ask(2),
            batcher.ask(3),
            batcher.ask(4),
            batcher.ask(5)
        );
        assert_eq!(answers, (Ok(2), Ok(4), Ok(6), Ok(8), Ok(10)));
        assert_eq!(*ran.lock().unwrap(), [vec![1, 2, 3], vec![4, 5]]);
    }

    /// Runs each batch only once the test lets it (one permit per batch), saying when it
    /// started one; queues at most two requests.
    struct Gated {
        started: mpsc::UnboundedSender<Vec<u32>>,
        permits: Arc<tokio::sync::Semaphore>,
    }

    impl Batch for Gated {
        type Request = u32;
        type Answer = u32;
        const QUEUED: usize = 2;

        async fn run(&mut self, requests: &[u32]) -> Vec<u32> {
            let _ = self.started.send(requests.to_vec());
            self.permits.acquire().await.unwrap().forget();
            requests.to_vec()
        }
    }

    /// While a batch runs, requests queue up to `QUEUED`: past the bound a `tell` is refused
    /// at once (`NotTaken`: it will not run) and an `ask` waits for room instead; every
    /// request taken runs, in the next batches.
    #[tokio::test]
    async fn a_full_queue_refuses_a_tell_and_makes_an_ask_wait() {
        let (started, mut batches) = mpsc::unbounded_channel();
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let batcher = Arc::new(Batcher::start(
            Gated {
                started,
                permits: Arc::clone(&permits),
            },
            LIMIT,
        ));
        let first = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { batcher.ask(1).await }
        });
        assert_eq!(batches.recv().await.unwrap(), [1], "the first batch runs");
        batcher.tell(2).unwrap();
        batcher.tell(3).unwrap();
        assert_eq!(batcher.tell(4), Err(Lost::NotTaken), "the queue holds two");
        let waiting = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { batcher.ask(5).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiting.is_finished(),
            "an ask waits for room, it is not refused"
        );
        permits.add_permits(3);
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(waiting.await.unwrap(), Ok(5));
        let mut ran = Vec::new();
        while let Ok(batch) = batches.try_recv() {
            ran.extend(batch);
        }
        assert_eq!(ran, [2, 3, 5], "the refused tell never ran");
    }

    #[tokio::test]
    async fn told_requests_run_and_an_unanswered_one_is_told_apart_from_one_not_taken() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::start(Doubling(Arc::clone(&ran)), LIMIT);
        batcher.tell(7).unwrap();
        assert_eq!(batcher.ask(0).await, Err(Lost::Unanswered));
        assert_eq!(*ran.lock().unwrap(), [vec![7, 0]]);
        let stopped = Batcher::<Doubling> {
            queue: mpsc::channel(1).0,
        };
        assert_eq!(stopped.ask(1).await, Err(Lost::NotTaken));
        assert_eq!(stopped.tell(1), Err(Lost::NotTaken));
    }

    /// A batch that never answers (its connection went silent) is abandoned after the limit:
    /// its requests learn `Unanswered` (they may have run), and the requests queued behind it
    /// run in the next batch instead of waiting for ever.
    #[tokio::test(start_paused = true)]
    async fn a_batch_without_an_answer_is_abandoned_after_the_limit() {
        let (started, mut batches) = mpsc::unbounded_channel();
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let limit = Duration::from_secs(7);
        let batcher = Arc::new(Batcher::start(
            Gated {
                started,
                permits: Arc::clone(&permits),
            },
            limit,
        ));
        let began = tokio::time::Instant::now();
        let hung = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { batcher.ask(1).await }
        });
        assert_eq!(batches.recv().await.unwrap(), [1]);
        let queued = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { batcher.ask(2).await }
        });
        assert_eq!(hung.await.unwrap(), Err(Lost::Unanswered));
        assert_eq!(began.elapsed(), limit, "abandoned at the limit, not before");
        assert_eq!(batches.recv().await.unwrap(), [2], "the next batch runs");
        permits.add_permits(1);
        assert_eq!(queued.await.unwrap(), Ok(2));
    }
}
