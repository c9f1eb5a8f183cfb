//! The series created at start-up, at 0: the label values fixed by the code, and those the
//! wiring knows (`KnownLabels`), so a fresh scrape already shows what dashboards and alerts read.

use super::Metrics;

/// `commands_total{result}` (`runtime::writer`): done, or refused by a rule.
const COMMAND_RESULTS: [&str; 2] = ["ok", "rejected"];
/// `consumer_events_total{outcome}` (`bus::consumer::Outcome`).
const CONSUMER_OUTCOMES: [&str; 4] = ["applied", "duplicate", "parked", "dead_lettered"];
/// `payments_total{outcome}` (`app::checkout`).
const PAYMENT_OUTCOMES: [&str; 5] = [
    "captured",
    "declined",
    "captured_then_refunded",
    "refunded",
    "gateway_error",
];
/// `revenue_cents_total{currency}`: the currency of an event created without one.
const DEFAULT_CURRENCY: &str = "USD";

/// The operations `payment::guarded` times (`gateway_call_duration_seconds`).
const GATEWAY_OPERATIONS: [&str; 3] = ["charge", "refund", "captures_since"];
/// `http_problems_total{route, kind}`: the refusals of a reservation a dashboard tells apart
/// (the kinds of `app::error` and `app::queue`; `http::error`'s tests keep them in step).
pub const RESERVATION_REFUSALS: [&str; 5] = [
    "sold-out",
    "customer-limit",
    "sales-not-open",
    "queue-pass-required",
    "queue-pass-invalid",
];
/// `projection_errors_total{reason}`: a batch the read models could not apply (retried).
pub const PROJECTION_APPLY_FAILED: &str = "apply_failed";
/// `projection_errors_total{reason}`: an event this build cannot decode, skipped for good.
pub const PROJECTION_UNDECODABLE: &str = "undecodable";
const PROJECTION_ERROR_REASONS: [&str; 2] = [PROJECTION_APPLY_FAILED, PROJECTION_UNDECODABLE];
/// `rate_limited_total{scope}` (`http::ratelimit::Scope`).
const RATE_LIMIT_SCOPES: [&str; 3] = ["auth", "writes", "reads"];
/// `cache_requests_total{cache, result}` (`cache::events`, `auth::cache`).
const CACHES: [&str; 3] = ["events", "availability", "sessions"];
const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "error"];
/// `audit_records_total{outcome}` (`audit`).
const AUDIT_OUTCOMES: [&str; 4] = ["written", "dropped", "failed", "throttled"];
/// `reconciled_captures_total{outcome}` (`app::reconcile`).
const RECONCILE_OUTCOMES: [&str; 3] = ["recorded", "refunded", "failed"];
/// `dlq_entries{status}` (`dlq::DlqStats::record`).
const DLQ_STATUSES: [&str; 4] = ["pending", "processing", "resolved", "discarded"];

/// The label values that depend on the wiring, for [`Metrics::initialise`].
pub struct KnownLabels<'a> {
    /// (method, route template) of every route.
    pub routes: &'a [(&'a str, &'a str)],
    /// Every sale command name (`runtime::writer::command_name`).
    pub commands: &'a [&'a str],
    /// Every stream category (`domain::StreamId::category`).
    pub aggregates: &'a [&'a str],
    /// The event store adapter's kind (`memory`, `postgres`).
    pub store: &'a str,
    /// Every bus topic the relay publishes to.
    pub topics: &'a [String],
    /// Every bus consumer's name.
    pub consumers: &'a [&'a str],
    /// Every PostgreSQL pool's name (none in memory).
    pub pools: &'a [&'a str],
}

impl Metrics {
    /// Creates, at 0, every labelled series whose label values are known before anything
    /// happened, so that a fresh scrape already shows what the dashboards and alert rules read
    /// (a series born at its first increment shows "no data", and `rate()` misses that first
    /// increment). Label values fixed by the code are listed here; those that depend on the
    /// wiring (routes, store, topics, consumers, pools) come in `known`.
    pub fn initialise(&self, known: &KnownLabels<'_>) {
        for (method, route) in known.routes {
            self.http_duration.with_label_values(&[method, route]);
            // Zero server errors so far: the error-ratio alert and panels have a numerator.
            self.http_requests
                .with_label_values(&[method, route, "500"]);
        }
        for command in known.commands {
            self.decide_duration.with_label_values(&[command]);
            for result in COMMAND_RESULTS {
                self.commands.with_label_values(&[command, result]);
            }
        }
        for aggregate in known.aggregates {
            self.events_appended.with_label_values(&[aggregate]);
        }
        self.append_duration.with_label_values(&[known.store]);
        self.hydration_duration.with_label_values(&[known.store]);
        self.batch_size.with_label_values(&[known.store]);
        for topic in known.topics {
            self.bus_published.with_label_values(&[topic.as_str()]);
        }
        for consumer in known.consumers {
            self.consumer_retries.with_label_values(&[consumer]);
            self.consumer_lag.with_label_values(&[consumer]);
            for outcome in CONSUMER_OUTCOMES {
                self.consumer_events.with_label_values(&[consumer, outcome]);
            }
        }
        for pool in known.pools {
            self.record_pool(pool, 0, 0);
        }
        for outcome in PAYMENT_OUTCOMES {
            self.payments.with_label_values(&[outcome]);
        }
        self.revenue_cents.with_label_values(&[DEFAULT_CURRENCY]);
        for operation in GATEWAY_OPERATIONS {
            self.gateway_duration.with_label_values(&[operation]);
        }
        for kind in RESERVATION_REFUSALS {
            self.http_problems
                .with_label_values(&["/api/reservations", kind]);
        }
        for reason in PROJECTION_ERROR_REASONS {
            self.projection_errors.with_label_values(&[reason]);
        }
        for scope in RATE_LIMIT_SCOPES {
            self.rate_limited.with_label_values(&[scope]);
        }
        for cache in CACHES {
            for result in CACHE_RESULTS {
                self.cache_requests.with_label_values(&[cache, result]);
            }
        }
        for outcome in AUDIT_OUTCOMES {
            self.audit_records.with_label_values(&[outcome]);
        }
        for status in DLQ_STATUSES {
            self.dlq_entries.with_label_values(&[status]);
        }
        self.effects.with_label_values(&["arm_expiry"]);
        for outcome in RECONCILE_OUTCOMES {
            self.reconciled_captures.with_label_values(&[outcome]);
        }
    }
}
