//! The exposition side of the metric catalogue: pool gauges sampled at scrape time and the
//! Prometheus text format of every metric.

use super::Metrics;
use prometheus::{Encoder, TextEncoder};

impl Metrics {
    /// Records one pool's size and idle connections.
    pub fn record_pool(&self, pool: &str, connections: u32, idle: usize) {
        self.db_pool_connections
            .with_label_values(&[pool])
            .set(i64::from(connections));
        self.db_pool_idle
            .with_label_values(&[pool])
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
