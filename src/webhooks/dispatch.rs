//! The `Dispatcher` sends stored deliveries. Each endpoint has its own worker task, started
//! on its first delivery, which sends at most `per_endpoint` deliveries at a time and takes
//! pending ones from the store in batches: the store is the queue (so it survives restarts
//! and never overflows memory), and a slow or dead endpoint only ever occupies its own
//! worker. Each delivery is tried up to `max_attempts` times with full-jitter doubling
//! pauses (`Backoff`), a 10 s time-out per request and no redirects. `410 Gone` disables
//! the endpoint; a delivery that exhausts its attempts marks the endpoint `failing` until
//! the next success. A sweep every few seconds wakes workers for pending deliveries (after
//! a restart, or a wake lost to a full store) and publishes the queue depth.

use super::guard::CheckedResolver;
use super::post::{post, Sent};
use super::{Attempt, Delivery, DeliveryStatus, Endpoint, EndpointStatus, WebhookStore};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::observability::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Beyond a request's time-out, how long a delivery stays held by the instance sending it.
const HOLD_MARGIN: Duration = Duration::from_secs(30);

/// How deliveries are sent.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts per delivery, the first included (`WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The first pause between attempts; each next one doubles (`WEBHOOK_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// The longest pause.
    pub retry_max: Duration,
    /// Per request.
    pub timeout: Duration,
    /// Production: only public addresses.
    pub strict: bool,
    /// Deliveries in flight per endpoint.
    pub per_endpoint: usize,
    /// A call to the store without an answer within this fails as unavailable, so a
    /// connection gone silent cannot hold a worker (`PoolSettings::answer_limit`).
    pub answer_limit: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_attempts: 8,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(6 * 3600),
            timeout: Duration::from_secs(10),
            strict: false,
            per_endpoint: 4,
            answer_limit: crate::db::PoolSettings::default().answer_limit(),
        }
    }
}

/// When a pending delivery's next attempt is due.
type Next = chrono::DateTime<chrono::Utc>;

/// Pending deliveries a worker takes from the store at a time.
const BATCH: usize = 64;

/// How often pending deliveries are looked for and the queue depth is published.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Outcomes counted in `webhook_deliveries_total`.
const OUTCOMES: [&str; 6] = [
    "succeeded",
    "retried",
    "failed",
    "disabled",
    "refused",
    "superseded",
];

#[derive(Clone)]
pub struct Dispatcher(Arc<Inner>);

struct Inner {
    store: Arc<dyn WebhookStore>,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: DeliverySettings,
    /// This instance as a delivery's holder (`WebhookStore::claim`): new at each start.
    holder: Uuid,
    /// The wake-up of each endpoint's worker.
    workers: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl Dispatcher {
    /// A dispatcher; its metrics start at zero. Fails only if the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: DeliverySettings,
    ) -> Result<Self, reqwest::Error> {
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect to addresses the guard never saw.
            .no_proxy()
            .timeout(settings.timeout)
            .user_agent("ticketing-webhooks/1");
        if settings.strict {
            client = client.dns_resolver(Arc::new(CheckedResolver));
        }
        for outcome in OUTCOMES {
            metrics.webhook_deliveries.with_label_values(&[outcome]);
        }
        metrics
            .webhook_delivery_duration
            .with_label_values(&[] as &[&str]);
        Ok(Dispatcher(Arc::new(Inner {
            store,
            client: client.build()?,
            clock,
            metrics,
            settings,
            holder: Uuid::new_v4(),
            workers: Mutex::new(HashMap::new()),
        })))
    }

    /// Tells `endpoint`'s worker (starting it if needed) that it has pending deliveries.
    pub fn wake(&self, endpoint: Uuid) {
        let mut workers = self.0.workers.lock().unwrap_or_else(|e| e.into_inner());
        let notify = workers.entry(endpoint).or_insert_with(|| {
            let notify = Arc::new(Notify::new());
            tokio::spawn(Arc::clone(&self.0).work(endpoint, Arc::clone(&notify)));
            notify
        });
        notify.notify_one();
    }

    /// Runs the sweep until the task is aborted.
    pub fn spawn_sweep(&self) -> tokio::task::JoinHandle<()> {
        let dispatcher = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                dispatcher.sweep().await;
            }
        })
    }

    async fn sweep(&self) {
        match self.0.bounded(self.0.store.endpoints_with_pending()).await {
            Ok(endpoints) => endpoints.into_iter().for_each(|e| self.wake(e)),
            Err(e) => tracing::warn!(error = %e, "cannot look for pending webhook deliveries"),
        }
        if let Ok(depth) = self.0.bounded(self.0.store.pending_count()).await {
            self.0
                .metrics
                .webhook_queue_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }
}

impl Inner {
    /// A call to the store, failed as unavailable once `answer_limit` passed without an answer.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, super::WebhookError>>,
    ) -> Result<T, super::WebhookError> {
        let silent = || super::WebhookError::Unavailable("no answer in time".into());
        crate::db::within(self.settings.answer_limit, call, silent).await
    }

    /// The worker of one endpoint: keeps up to `per_endpoint` deliveries in flight, taking
    /// pending ones from the store `BATCH` at a time (with the endpoint as it is then).
    async fn work(self: Arc<Self>, endpoint: Uuid, wake: Arc<Notify>) {
        let mut in_flight: HashSet<Uuid> = HashSet::new();
        let mut queue: VecDeque<Delivery> = VecDeque::new();
        let mut current: Option<Endpoint> = None;
        let mut tasks: JoinSet<Uuid> = JoinSet::new();
        loop {
            while tasks.len() < self.settings.per_endpoint {
                if queue.is_empty() {
                    current = self.refill(endpoint, &in_flight, &mut queue).await;
                }
                let (Some(target), Some(delivery)) = (&current, queue.pop_front()) else {
                    break;
                };
                in_flight.insert(delivery.id);
                tasks.spawn(Arc::clone(&self).deliver(target.clone(), delivery));
            }
            tokio::select! {
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done {
                        in_flight.remove(&id);
                    }
                }
                () = wake.notified() => {}
            }
        }
    }

    /// Reads the endpoint and its next pending deliveries that are not in flight.
    async fn refill(
        &self,
        endpoint: Uuid,
        in_flight: &HashSet<Uuid>,
        queue: &mut VecDeque<Delivery>,
    ) -> Option<Endpoint> {
        let limit = u32::try_from(BATCH + in_flight.len()).unwrap_or(u32::MAX);
        let read = async {
            let found = self.bounded(self.store.get(endpoint)).await?;
            let pending = match &found {
                Some(_) => {
                    let now = self.clock.now();
                    self.bounded(self.store.pending(endpoint, limit, now))
                        .await?
                }
                None => Vec::new(),
            };
            Ok::<_, super::WebhookError>((found, pending))
        };
        match read.await {
            Ok((found, pending)) => {
                queue.extend(pending.into_iter().filter(|d| !in_flight.contains(&d.id)));
                found
            }
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "cannot read pending webhook deliveries");
                None
            }
        }
    }

    /// Tries one delivery until it succeeds, is given up or its endpoint is gone. The first
    /// attempt uses the endpoint as the worker read it; retries read it again.
    async fn deliver(self: Arc<Self>, endpoint: Endpoint, delivery: Delivery) -> Uuid {
        let backoff =
            Backoff::doubling(self.settings.retry_base, self.settings.retry_max).with_full_jitter();
        let mut attempt = 0;
        let mut known = Some(endpoint);
        loop {
            attempt += 1;
            if !self.hold(&delivery, attempt).await {
                return delivery.id;
            }
            let endpoint = match known.take() {
                Some(e) => e,
                None => match self.bounded(self.store.get(delivery.endpoint_id)).await {
                    Ok(Some(e)) => e,
                    Ok(None) => return delivery.id,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a webhook endpoint");
                        tokio::time::sleep(backoff.delay_for(attempt)).await;
                        continue;
                    }
                },
            };
            if endpoint.status == EndpointStatus::Disabled {
                self.finish(&delivery, DeliveryStatus::Failed, None, "disabled")
                    .await;
                return delivery.id;
            }
            let started = Instant::now();
            let now = self.clock.now();
            let sent = post(
                &self.client,
                self.settings.strict,
                &endpoint,
                &delivery,
                now,
            )
            .await;
            self.metrics
                .webhook_delivery_duration
                .with_label_values(&[] as &[&str])
                .observe(started.elapsed().as_secs_f64());
            let code = match &sent {
                Sent::Answered(code) => Some(*code),
                _ => None,
            };
            match sent {
                Sent::Answered(code) if (200..300).contains(&code) => {
                    let done = DeliveryStatus::Succeeded;
                    if self.finish(&delivery, done, code.into(), "succeeded").await {
                        self.set_status(&endpoint, EndpointStatus::Active).await;
                    }
                    return delivery.id;
                }
                Sent::Answered(410) => {
                    if self
                        .finish(&delivery, DeliveryStatus::Failed, Some(410), "disabled")
                        .await
                    {
                        tracing::warn!(endpoint = %endpoint.id, "webhook receiver answered 410 Gone; endpoint disabled");
                        self.set_status(&endpoint, EndpointStatus::Disabled).await;
                    }
                    return delivery.id;
                }
                Sent::Refused(reason) => {
                    tracing::warn!(endpoint = %endpoint.id, %reason, "webhook not sent");
                    if self
                        .finish(&delivery, DeliveryStatus::Failed, None, "refused")
                        .await
                    {
                        self.set_status(&endpoint, EndpointStatus::Failing).await;
                    }
                    return delivery.id;
                }
                Sent::NoAnswer(reason) => {
                    tracing::info!(endpoint = %endpoint.id, attempt, %reason, "webhook receiver did not answer");
                }
                Sent::Answered(_) => {}
            }
            if attempt >= self.settings.max_attempts {
                if self
                    .finish(&delivery, DeliveryStatus::Failed, code, "failed")
                    .await
                {
                    self.set_status(&endpoint, EndpointStatus::Failing).await;
                }
                return delivery.id;
            }
            let pause = backoff.delay_for(attempt);
            let next = self.clock.now()
                + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
            let retry = (DeliveryStatus::Pending, code, Some(next));
            if !self.record(&delivery, retry, "retried").await {
                return delivery.id;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Holds `delivery` for this instance through the attempt about to start: its first
    /// claim, or a claim again before a retry (which extends the hold). False when another
    /// instance sends it (it took it over after a redelivery or a hold that ran out) or it was
    /// settled since it was read; this instance then leaves it alone.
    async fn hold(&self, delivery: &Delivery, attempt: u32) -> bool {
        let now = self.clock.now();
        let until = self.held_until(now);
        let claim = self.store.claim(delivery.id, self.holder, now, until);
        match self.bounded(claim).await {
            Ok(true) => true,
            Ok(false) => {
                if attempt > 1 {
                    tracing::info!(delivery = %delivery.id, "webhook delivery taken over by another instance");
                    self.count("superseded");
                }
                false
            }
            Err(e) => {
                tracing::warn!(delivery = %delivery.id, error = %e, "cannot hold a webhook delivery; the sweep offers it again once the hold passes");
                false
            }
        }
    }

    /// Records the delivery's last attempt; false when another instance took it over (then
    /// the endpoint's status is that instance's to change, not this one's).
    async fn finish(
        &self,
        delivery: &Delivery,
        status: DeliveryStatus,
        code: Option<u16>,
        outcome: &str,
    ) -> bool {
        self.record(delivery, (status, code, None), outcome).await
    }

    /// Records the attempt, counted as `outcome`, if this instance still holds the delivery;
    /// false when another took it over (counted as `superseded`: its record stands, and this
    /// one stops). A store that cannot record is logged and the delivery goes on (its next
    /// claim decides).
    async fn record(
        &self,
        delivery: &Delivery,
        (status, status_code, next_attempt_at): (DeliveryStatus, Option<u16>, Option<Next>),
        outcome: &str,
    ) -> bool {
        let attempt = Attempt {
            status,
            status_code,
            next_attempt_at,
            // Still pending: this instance keeps it through its next attempt.
            held_until: next_attempt_at.map(|next| self.held_until(next)),
        };
        let record = self.store.record_attempt(delivery.id, self.holder, attempt);
        match self.bounded(record).await {
            Ok(true) => {
                self.count(outcome);
                true
            }
            Ok(false) => {
                tracing::info!(delivery = %delivery.id, "webhook attempt not recorded: another instance holds the delivery");
                self.count("superseded");
                false
            }
            Err(e) => {
                tracing::warn!(delivery = %delivery.id, error = %e, "cannot record a webhook attempt");
                self.count(outcome);
                true
            }
        }
    }

    /// How long a delivery whose attempt starts at `start` stays held: the attempt's time-out
    /// and a margin.
    fn held_until(&self, start: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        let hold = self.settings.timeout + HOLD_MARGIN;
        start + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::MAX)
    }

    async fn set_status(&self, endpoint: &Endpoint, status: EndpointStatus) {
        if endpoint.status == status {
            return;
        }
        if let Err(e) = self
            .bounded(self.store.set_status(endpoint.id, status))
            .await
        {
            tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot change a webhook endpoint's status");
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests;
