//! The metric catalogue. Labels are always bounded (route templates, aggregate and command
//! kinds, outcomes); never raw paths, user ids or event ids.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub(super) registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_problems: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub commands: IntCounterVec,
    pub decide_duration: HistogramVec,
    pub effects: IntCounterVec,
    pub append_duration: HistogramVec,
    /// How long a sale's writer took to read and fold its sale's events.
    pub hydration_duration: HistogramVec,
    pub events_appended: IntCounterVec,
    pub store_conflicts: IntCounter,
    pub batch_size: HistogramVec,
    pub tickets_sold: IntCounter,
    pub revenue_cents: IntCounterVec,
    pub payments: IntCounterVec,
    pub active_holds: IntGauge,
    pub sale_writers: IntGauge,
    pub log_waits: IntCounter,
    pub projection_position: IntGauge,
    pub projection_errors: IntCounterVec,
    pub rate_limited: IntCounterVec,
    /// Open connections per PostgreSQL pool; set when `/metrics` is scraped.
    pub db_pool_connections: IntGaugeVec,
    /// Idle connections per PostgreSQL pool; set when `/metrics` is scraped.
    pub db_pool_idle: IntGaugeVec,
    pub outbox_backlog: IntGauge,
    pub outbox_publish_lag: prometheus::Gauge,
    pub bus_published: IntCounterVec,
    pub bus_publish_errors: IntCounter,
    pub consumer_events: IntCounterVec,
    pub consumer_retries: IntCounterVec,
    /// Absent for a consumer while its lag is unknown (see `consumer_lag_known`).
    pub consumer_lag: IntGaugeVec,
    pub consumer_lag_known: IntGaugeVec,
    pub consumer_stalled: IntGaugeVec,
    pub consumer_rejoins: IntCounterVec,
    /// Dead letters per status; refreshed when `/metrics` is scraped.
    pub dlq_entries: IntGaugeVec,
    /// 1 when `/ready` would answer 200, 0 when 503 (draining too); set when scraped.
    pub ready: IntGauge,
    /// 1 per dependency check of `/ready` that passes, 0 failing; set when scraped.
    pub ready_checks: IntGaugeVec,
    /// Audit records by outcome: written, dropped (queue full), failed (store refused),
    /// throttled (`AuditLog::record_refusal`).
    pub audit_records: IntCounterVec,
    /// Cache look-ups by cache (`events`, `availability`, `sessions`) and result.
    pub cache_requests: IntCounterVec,
    /// Event views the cached reads loaded from the read models: what the cache did not save.
    pub event_view_loads: IntCounter,
    /// Webhook delivery attempts by outcome (succeeded, retried, failed, disabled, refused).
    pub webhook_deliveries: IntCounterVec,
    /// How long a webhook receiver took to answer (or to time out).
    pub webhook_delivery_duration: HistogramVec,
    /// Webhook deliveries waiting to be sent or retried, over every endpoint.
    pub webhook_queue_depth: IntGauge,
    /// How long the payment processor took to answer, by operation (`charge`, `refund`,
    /// `captures_since`); a call its breaker refused is not timed.
    pub gateway_duration: HistogramVec,
    /// How long a command that changes what the read models show waited for them to show it
    /// before answering (`App::command`, `App::record`): the read-your-writes part of its
    /// latency.
    pub read_your_writes_wait: Histogram,
    /// Captures found without a recorded event, by outcome (`app::reconcile`).
    pub reconciled_captures: IntCounterVec,
    /// Unix time of reconciliation's last completed pass (0: none yet).
    pub reconcile_last_run: IntGauge,
    pub queue: super::queue_metrics::QueueMetrics,
    /// Circuit breakers and bulkheads (`resilience.rs`).
    pub resilience: super::resilience::Resilience,
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

const SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

mod initial;
pub use initial::{
    KnownLabels, PROJECTION_APPLY_FAILED, PROJECTION_UNDECODABLE, RESERVATION_REFUSALS,
};

impl Metrics {
    /// Builds and registers the catalogue. Panics only on a programming error in the definitions,
    /// which every test start-up would reveal.
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("ticketing".into()), None).expect("registry");
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        Metrics {
            http_requests: counter(
                &r,
                "http_requests_total",
                "HTTP requests by method (`_OTHER` for a non-standard one), route template \
                 (`unmatched` for a path of no route) and status.",
                &["method", "route", "status"],
            ),
            http_problems: counter(
                &r,
                "http_problems_total",
                "Problem answers by route template and problem kind (sold-out, customer-limit, ...).",
                &["route", "kind"],
            ),
            http_duration: histogram(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency by method and route template.",
                &["method", "route"],
                SECONDS.to_vec(),
            ),
            http_in_flight: gauge(
                "http_requests_in_flight",
                "HTTP requests received and not answered yet.",
            ),
            commands: counter(
                &r,
                "commands_total",
                "Sale commands by kind and result (ok, rejected, error).",
                &["command", "result"],
            ),
            decide_duration: histogram(
                &r,
                "reducer_duration_seconds",
                "Time spent deciding one command.",
                &["command"],
                vec![
                    0.000_001, 0.000_005, 0.000_02, 0.000_1, 0.000_5, 0.002, 0.01,
                ],
            ),
            effects: counter(
                &r,
                "effects_total",
                "Effects of committed decisions carried out, by kind (arm_expiry).",
                &["effect"],
            ),
            append_duration: histogram(
                &r,
                "store_append_duration_seconds",
                "Event store append latency by adapter.",
                &["store"],
                SECONDS.to_vec(),
            ),
            hydration_duration: histogram(
                &r,
                "sale_hydration_duration_seconds",
                "How long a sale's writer took to load the sale's events (before its first turn, or after a turn left its state behind), by adapter.",
                &["store"],
                vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            events_appended: counter(
                &r,
                "events_appended_total",
                "Events appended by aggregate.",
                &["aggregate"],
            ),
            store_conflicts: plain(
                "store_conflicts_total",
                "Appends rejected for a stale version and retried after reload.",
            ),
            batch_size: histogram(
                &r,
                "store_batch_commands",
                "Commands decided per group commit.",
                &["store"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            tickets_sold: plain("tickets_sold_total", "Seats moved from held to sold."),
            revenue_cents: counter(
                &r,
                "revenue_cents_total",
                "Captured revenue in minor units, by currency.",
                &["currency"],
            ),
            payments: counter(
                &r,
                "payments_total",
                "Payment outcomes: captured, declined, captured_then_refunded (hold ended first), refunded, gateway_error.",
                &["outcome"],
            ),
            log_waits: plain(
                "read_models_log_waits_total",
                "Requests that waited for the read models to apply the whole event log (a look-up by id or a keyed retry they did not show yet, maybe written on another instance), counted as the wait begins.",
            ),
            sale_writers: gauge(
                "sale_writers",
                "Sale writers running in this process, each holding its sale's state in memory (an idle one stops after 10 minutes).",
            ),
            active_holds: gauge(
                "active_holds",
                "Holds whose expiry timer runs in this process: placed here (or re-armed by the sweep) and not known here to have ended; a hold paid or cancelled on another instance is counted until this instance next writes its sale (or its expiry time).",
            ),
            projection_position: gauge(
                "projection_position",
                "Last global position applied to the read models.",
            ),
            projection_errors: counter(
                &r,
                "projection_errors_total",
                "Read-model failures by reason: apply_failed counts batches that failed (retried), undecodable counts events skipped for good.",
                &["reason"],
            ),
            rate_limited: counter(
                &r,
                "rate_limited_total",
                "Requests refused with 429, by limit scope (auth, writes, reads).",
                &["scope"],
            ),
            db_pool_connections: gauges(
                &r,
                "db_pool_connections",
                "Open connections per PostgreSQL pool (events, projections, projector, auth).",
                &["pool"],
            ),
            db_pool_idle: gauges(
                &r,
                "db_pool_idle",
                "Idle connections per PostgreSQL pool (events, projections, projector, auth).",
                &["pool"],
            ),
            outbox_backlog: gauge(
                "outbox_backlog_events",
                "Committed events the relay has not yet seen acknowledged by the broker.",
            ),
            outbox_publish_lag: {
                let g = prometheus::Gauge::new(
                    "outbox_publish_lag_seconds",
                    "Age of the oldest committed event not yet published (0 when none waits).",
                )
                .expect("metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            bus_published: counter(
                &r,
                "bus_published_total",
                "Events the outbox relay published and the broker acknowledged, by topic.",
                &["topic"],
            ),
            bus_publish_errors: plain(
                "bus_publish_errors_total",
                "Relay batches the broker did not acknowledge (retried with backoff).",
            ),
            consumer_events: counter(
                &r,
                "consumer_events_total",
                "Bus messages settled per consumer: applied, duplicate, parked, dead_lettered.",
                &["consumer", "outcome"],
            ),
            consumer_retries: counter(
                &r,
                "consumer_retries_total",
                "Handler attempts retried after a transient failure, per consumer.",
                &["consumer"],
            ),
            consumer_lag: gauges(
                &r,
                "consumer_lag_events",
                "Messages on a consumer's partitions that its group has not handled yet; absent while unknown.",
                &["consumer"],
            ),
            consumer_lag_known: gauges(
                &r,
                "consumer_lag_known",
                "1 when the consumer's lag is measured, 0 while it is unknown (not joined, no statistics since the last rebalance).",
                &["consumer"],
            ),
            consumer_stalled: gauges(
                &r,
                "consumer_stalled",
                "1 while the consumer has had no partitions assigned, or received nothing while behind, for longer than CONSUMER_STALL_SECONDS.",
                &["consumer"],
            ),
            consumer_rejoins: counter(
                &r,
                "consumer_rejoins_total",
                "Times a stalled consumer left its group and joined again as a new member.",
                &["consumer"],
            ),
            dlq_entries: gauges(
                &r,
                "dlq_entries",
                "Dead letter queue entries per status.",
                &["status"],
            ),
            ready: gauge(
                "ready",
                "1 when /ready would answer 200 (every critical dependency answers), 0 when it would answer 503 (one does not, or the instance is draining); evaluated at each scrape.",
            ),
            ready_checks: gauges(
                &r,
                "ready_check",
                "1 while the /ready check of a dependency passes, 0 while it fails (event_store, projections and auth decide readiness; bus, cache and projector only warn); evaluated at each scrape.",
                &["check"],
            ),
            audit_records: counter(
                &r,
                "audit_records_total",
                "Audit records by outcome: written, dropped (queue full: the audit store is down or behind), failed (the store refused the batch after retries), throttled (a caller's repeated refusals by role past a burst of 10, then one a second).",
                &["outcome"],
            ),
            cache_requests: counter(
                &r,
                "cache_requests_total",
                "Cache look-ups by cache (events, availability, sessions) and result (hit, miss, error: the cache failed or, for sessions, its revocation feed is not live, and PostgreSQL answered).",
                &["cache", "result"],
            ),
            event_view_loads: plain(
                "event_view_loads_total",
                "Event views the event-details and availability reads loaded from the read models (one PostgreSQL statement each), cache misses and errors included.",
            ),
            webhook_deliveries: counter(
                &r,
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome: succeeded, retried, failed (attempts exhausted), disabled (410 Gone), refused (non-public address in production), superseded (another instance took the delivery over; this one stopped).",
                &["outcome"],
            ),
            webhook_delivery_duration: histogram(
                &r,
                "webhook_delivery_duration_seconds",
                "Time from sending a webhook to its receiver's answer or time-out.",
                &[],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            gateway_duration: histogram(
                &r,
                "gateway_call_duration_seconds",
                "Payment processor call latency by operation (charge, refund, captures_since).",
                &["operation"],
                SECONDS.to_vec(),
            ),
            read_your_writes_wait: {
                let opts = HistogramOpts::new(
                    "read_your_writes_wait_seconds",
                    "Time commands waited for the read models to show their write before answering.",
                );
                let h = Histogram::with_opts(opts.buckets(SECONDS.to_vec()))
                    .expect("metric definition");
                r.register(Box::new(h.clone()))
                    .expect("metric registered once");
                h
            },
            webhook_queue_depth: gauge(
                "webhook_queue_depth",
                "Webhook deliveries pending (waiting to be sent or retried) over every endpoint.",
            ),
            reconciled_captures: counter(
                &r,
                "reconciled_captures_total",
                "Gateway captures reconciliation found without a recorded event: recorded (the hold was valid), refunded (it had ended), failed (retried next pass).",
                &["outcome"],
            ),
            reconcile_last_run: gauge(
                "reconciliation_last_run_timestamp_seconds",
                "Unix time of the last completed reconciliation pass (0 before the first).",
            ),
            queue: super::queue_metrics::QueueMetrics::new(&r),
            resilience: super::resilience::Resilience::register(&r),
            registry: r,
        }
    }
}
