//! The read-heavy scenario: clients polling one event's availability, back to back, while the
//! sale runs, and what those reads cost the database according to the service's `/metrics`
//! (`ticketing_event_view_loads_total`: one PostgreSQL statement per load; the cache's hits,
//! misses and errors). Polling stops when the sale's measured phase ends; nothing sleeps.

use crate::api::Api;
use anyhow::Context;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The counters of `/metrics` this scenario compares before and after.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    loads: f64,
    hits: f64,
    misses: f64,
    errors: f64,
}

impl Counters {
    async fn read(api: &Api) -> anyhow::Result<Self> {
        let text = api.metrics().await.context("reading /metrics")?;
        let sum = |prefix: &str| -> f64 {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|rest| rest.rsplit(' ').next())
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        };
        let cache = |result: &str| {
            sum(&format!(
                "ticketing_cache_requests_total{{cache=\"availability\",result=\"{result}\"}}"
            ))
        };
        Ok(Counters {
            loads: sum("ticketing_event_view_loads_total "),
            hits: cache("hit"),
            misses: cache("miss"),
            errors: cache("error"),
        })
    }
}

pub struct Pollers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: JoinSet<()>,
    before: Counters,
    started: Instant,
    count: u32,
}

impl Pollers {
    /// Starts `count` pollers of `event_id`'s availability; `None` for zero.
    pub async fn start(api: &Api, event_id: Uuid, count: u32) -> anyhow::Result<Option<Self>> {
        if count == 0 {
            return Ok(None);
        }
        let before = Counters::read(api).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (reads, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            let (api, stop) = (api.clone(), Arc::clone(&stop));
            let (reads, failed) = (Arc::clone(&reads), Arc::clone(&failed));
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match api.availability(event_id).await {
                        Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        Ok(Some(Pollers {
            stop,
            reads,
            failed,
            tasks,
            before,
            started: Instant::now(),
            count,
        }))
    }

    /// Stops the pollers and describes what their reads cost.
    pub async fn stop(mut self, api: &Api) -> anyhow::Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.tasks.join_next().await {
            joined.context("a poller panicked")?;
        }
        let wall = self.started.elapsed().as_secs_f64();
        let after = Counters::read(api).await?;
        let reads = self.reads.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        // Only event-details and availability reads load through the cache, and during the
        // sale only the pollers make them: `loads` is what the polls cost PostgreSQL.
        let loads = after.loads - self.before.loads;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "read-heavy: {} pollers, {reads} availability reads in {wall:.2} s ({:.0}/s), {failed} failed",
            self.count,
            reads as f64 / wall.max(1e-9)
        );
        let _ = writeln!(
            out,
            "read-heavy: event-view loads from the read models {loads:.0} = {:.4} PostgreSQL statements per read; \
             availability cache hits {:.0}, misses {:.0}, errors {:.0}",
            loads / (reads.max(1) as f64),
            after.hits - self.before.hits,
            after.misses - self.before.misses,
            after.errors - self.before.errors,
        );
        Ok(out)
    }
}
