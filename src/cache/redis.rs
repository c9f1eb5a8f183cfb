//! Redis `Cache` (`REDIS_URL`): one multiplexed connection through redis' `ConnectionManager`,
//! made lazily and re-made after a failure, so the service starts and serves while Redis is
//! down. Every command is bounded by a short timeout; a slow or absent Redis is an error the
//! caller turns into a read from PostgreSQL. Keys get a prefix, so several deployments (or
//! parallel tests) can share one Redis.

use super::{Cache, CacheError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::Duration;

pub struct RedisCache {
    manager: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl RedisCache {
    /// A cache on `url` (`redis://host:port/db`); connects on first use. Fails only on a
    /// malformed URL.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisCache {
            manager,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one command with the timeout; errors and timeouts are `CacheError`s.
    async fn run<T>(
        &self,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        }
    }
}

fn unavailable(e: redis::RedisError) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut conn = self.manager.clone();
        let key = self.key(key);
        self.run(async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let mut conn = self.manager.clone();
        let key = self.key(key);
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.manager.clone();
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.run(async move {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.manager.clone();
        self.run(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The Redis the tests use: `TEST_REDIS_URL`, else the local default.
pub fn test_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache on the test Redis under a key prefix of its own; panics with how to start Redis
    /// when it is not reachable (tests must not skip silently).
    pub async fn test_cache() -> RedisCache {
        let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let cache = RedisCache::new(&test_url(), &prefix, Duration::from_secs(2)).unwrap();
        if let Err(e) = cache.ping().await {
            panic!(
                "Redis is not reachable at {} ({e}). Start it with ./scripts/services.sh \
                 (or set TEST_REDIS_URL)",
                test_url()
            );
        }
        cache
    }

    /// The Redis cache honours the same contract as the in-process one.
    #[tokio::test]
    async fn redis_cache_passes_the_cache_contract() {
        super::super::contract::run_all(&test_cache().await).await;
    }

    /// A closed port is an error (or a timeout) at once, never a hang or a panic.
    #[tokio::test]
    async fn a_closed_port_is_an_error_not_a_hang() {
        let cache =
            RedisCache::new("redis://127.0.0.1:1/0", "x:", Duration::from_millis(200)).unwrap();
        assert!(cache.get("k").await.is_err());
        assert!(cache
            .set("k", b"v".to_vec(), Duration::from_secs(1))
            .await
            .is_err());
        assert!(cache.ping().await.is_err());
    }
}
