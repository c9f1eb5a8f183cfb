//! The contract every `Cache` adapter passes. Each adapter's tests call `run_all`. Keys are
//! fresh per check, so the cache may be shared.

use super::Cache;
use std::time::{Duration, Instant};

fn fresh_key() -> String {
    format!("k-{}", uuid::Uuid::new_v4().simple())
}

pub async fn run_all(cache: &dyn Cache) {
    a_set_value_is_read_back_and_replaced(cache).await;
    deleted_keys_are_gone_and_unknown_keys_are_fine(cache).await;
    entries_expire_after_their_ttl(cache).await;
    cache.ping().await.unwrap();
    assert!(!cache.kind().is_empty());
}

async fn a_set_value_is_read_back_and_replaced(cache: &dyn Cache) {
    let key = fresh_key();
    assert_eq!(cache.get(&key).await.unwrap(), None);
    cache
        .set(&key, b"one".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(b"one".to_vec()));
    cache
        .set(&key, vec![0, 255, 7], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(vec![0, 255, 7]));
}

async fn deleted_keys_are_gone_and_unknown_keys_are_fine(cache: &dyn Cache) {
    let (a, b, c) = (fresh_key(), fresh_key(), fresh_key());
    for key in [&a, &b, &c] {
        cache
            .set(key, b"v".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    cache
        .delete(&[a.clone(), b.clone(), fresh_key()])
        .await
        .unwrap();
    cache.delete(&[]).await.unwrap();
    assert_eq!(cache.get(&a).await.unwrap(), None);
    assert_eq!(cache.get(&b).await.unwrap(), None);
    assert_eq!(cache.get(&c).await.unwrap(), Some(b"v".to_vec()));
}

async fn entries_expire_after_their_ttl(cache: &dyn Cache) {
    let (short, long) = (fresh_key(), fresh_key());
    cache
        .set(&short, b"v".to_vec(), Duration::from_millis(50))
        .await
        .unwrap();
    cache
        .set(&long, b"v".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    let started = Instant::now();
    while cache.get(&short).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.get(&long).await.unwrap(), Some(b"v".to_vec()));
}
