//! The labelled series a fresh service exposes at 0, so dashboards and alerts see them from
//! the first scrape: every route, command, aggregate, topic, consumer and pool.

use crate::bus::Topics;
use crate::config::Config;
use crate::db;
use crate::http;
use crate::observability::metrics::KnownLabels;
use crate::observability::Metrics;

/// Every sale command's metric label (`runtime::writer::command_name`).
const COMMANDS: [&str; 10] = [
    "create_event",
    "update_event",
    "change_lifecycle",
    "cancel_event",
    "reserve",
    "record_capture",
    "record_decline",
    "cancel_reservation",
    "expire_reservation",
    "refund_payment",
];

/// Every stream category (`domain::StreamId::category`).
const AGGREGATES: [&str; 4] = ["event", "inventory", "reservation", "payment"];

/// Creates the labelled series the dashboards and alerts read at 0 (see `Metrics::initialise`).
pub(super) fn initialise_metrics(
    metrics: &Metrics,
    config: &Config,
    store: &str,
    pools: &db::NamedPools,
) {
    let routes: Vec<(&str, &str)> = http::access::TABLE
        .iter()
        .map(|rule| (rule.method, rule.path))
        .collect();
    let pools: Vec<&str> = pools.sizes().map(|(name, _, _)| name).collect();
    metrics.initialise(&KnownLabels {
        routes: &routes,
        commands: &COMMANDS,
        aggregates: &AGGREGATES,
        store,
        topics: &Topics::new(config.kafka_topic_prefix.clone()).all(),
        consumers: &[crate::projections::insights::CONSUMER],
        pools: &pools,
    });
}
