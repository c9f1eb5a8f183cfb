//! Waiting for something that happens in the background (a projection, a consumer, a timer)
//! without fixed sleeps: poll with a deadline. Shared by the test binaries with `#[path]`.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it holds; panics with `what` once `deadline` has passed.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
