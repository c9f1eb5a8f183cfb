//! In-process `Cache`: a map behind a mutex with expiry instants. The default without
//! `REDIS_URL`, private to one instance. Expired entries are dropped when read, and swept
//! when the map grows, so it stays bounded by what was set within one TTL.

use super::{Cache, CacheError};
use async_trait::async_trait;
use foldhash::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many entries, a `set` first sweeps the expired ones.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl MemoryCache {
    /// A std mutex: held only for map operations, never across an await.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.to_owned(), (value, now + ttl));
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), CacheError> {
        let mut entries = self.lock();
        for key in keys {
            entries.remove(key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    /// The in-process cache honours the same contract as the Redis one.
    #[tokio::test]
    async fn memory_cache_passes_the_cache_contract() {
        super::super::contract::run_all(&super::MemoryCache::default()).await;
    }
}
