//! Cache-aside for hot reads (event details and availability). The `Cache` port is a plain
//! byte store with TTLs (`memory.rs` in process, `redis.rs` shared); `events.rs` puts the
//! policy on top, once for both adapters: per-key single-flight loads, invalidation by the
//! projector before it publishes progress, stamps that refuse entries older than the last
//! invalidation, and degradation to PostgreSQL when the cache fails. The cache is never the
//! source of truth: any failure of it only costs a read from the read models.

#[cfg(test)]
pub mod contract;
pub mod events;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use std::time::Duration;

pub use events::{CacheName, EventCache, Invalidator};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The cache answered with an error or cannot be reached.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeout.
    #[error("cache gave no answer within {0:?}")]
    Timeout(Duration),
}

/// A byte store with per-entry time to live. Keys are the callers'; adapters may prefix them.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Stores `value` under `key` for `ttl`, replacing any previous value.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError>;
    /// Removes the keys; absent keys are not an error.
    async fn delete(&self, keys: &[String]) -> Result<(), CacheError>;
    async fn ping(&self) -> Result<(), CacheError>;
    fn kind(&self) -> &'static str;
}
