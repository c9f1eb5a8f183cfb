//! Untimed set-up: an organizer, an event on sale, and logged-in buyers.
//!
//! Every account carries the run id, so runs never collide. Any unexpected answer aborts
//! the run: measuring against a half-built sale would report nonsense.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{Duration, Utc};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::api::{Api, Role};

/// Password of every generated account.
const PASSWORD: &str = "loadgen-password-1";
/// Domain of every generated e-mail address.
const EMAIL_DOMAIN: &str = "loadgen.test";
/// How far ahead the event starts, and how long it lasts.
const STARTS_IN_DAYS: i64 = 30;
const LASTS_HOURS: i64 = 3;
/// How many progress lines buyer set-up prints at most.
const PROGRESS_STEPS: usize = 10;

/// A logged-in customer.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub token: String,
}

/// Registers and logs in an organizer, registers `webhooks.1` webhook endpoints for every
/// event type at `webhooks.0`, creates an event with `seats` seats, publishes it and opens
/// its sales; returns the event id.
pub async fn open_sale(
    api: &Api,
    run_id: &str,
    seats: u32,
    webhooks: Option<(&str, u32)>,
) -> anyhow::Result<Uuid> {
    let email = format!("org-{run_id}@{EMAIL_DOMAIN}");
    api.register(&email, PASSWORD, Role::Organizer)
        .await
        .context("registering the organizer")?;
    let token = api
        .login(&email, PASSWORD)
        .await
        .context("logging in the organizer")?;
    if let Some((url, count)) = webhooks {
        for _ in 0..count {
            api.register_webhook(&token, url)
                .await
                .context("registering a webhook endpoint")?;
        }
    }
    let starts_at = Utc::now() + Duration::days(STARTS_IN_DAYS);
    let ends_at = starts_at + Duration::hours(LASTS_HOURS);
    let name = format!("Loadgen flash sale {run_id}");
    let event_id = api
        .create_event(&token, &name, starts_at, ends_at, seats)
        .await
        .context("creating the event")?;
    for transition in ["publish", "open-sales"] {
        api.transition_event(&token, event_id, transition)
            .await
            .with_context(|| format!("{transition} on event {event_id}"))?;
    }
    Ok(event_id)
}

/// Registers and logs in `count` customers with `parallelism` requests in flight.
pub async fn buyers(
    api: &Api,
    run_id: &str,
    count: usize,
    parallelism: usize,
) -> anyhow::Result<Vec<Buyer>> {
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::new(count));
    let mut workers = JoinSet::new();
    for _ in 0..parallelism.min(count) {
        let (api, run_id) = (api.clone(), run_id.to_owned());
        let (next, progress) = (Arc::clone(&next), Arc::clone(&progress));
        workers.spawn(async move {
            let mut ready = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return anyhow::Ok(ready);
                }
                ready.push(buyer(&api, &run_id, index).await?);
                progress.tick();
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.context("a set-up worker panicked")??);
    }
    Ok(all)
}

/// Registers and logs in buyer number `index`.
async fn buyer(api: &Api, run_id: &str, index: usize) -> anyhow::Result<Buyer> {
    let email = format!("buyer-{run_id}-{index}@{EMAIL_DOMAIN}");
    api.register(&email, PASSWORD, Role::Customer)
        .await
        .with_context(|| format!("registering {email}"))?;
    let token = api
        .login(&email, PASSWORD)
        .await
        .with_context(|| format!("logging in {email}"))?;
    Ok(Buyer { token })
}

/// Counts finished buyers and prints a line to stderr every tenth of the way.
struct Progress {
    done: AtomicUsize,
    total: usize,
    step: usize,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            done: AtomicUsize::new(0),
            total,
            step: (total / PROGRESS_STEPS).max(1),
            started: Instant::now(),
        }
    }

    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if done % self.step == 0 || done == self.total {
            let elapsed = self.started.elapsed().as_secs_f64();
            eprintln!("setup: {done}/{} buyers ready ({elapsed:.1} s)", self.total);
        }
    }
}
