//! Cache-aside of event details and availability over HTTP: reads through the cache never
//! show a state older than a change already acknowledged to a client of this instance (with
//! the in-process cache and with Redis, while other clients poll the same key), hits and
//! misses are counted, and with Redis unreachable the API answers correctly from the read
//! models while `/ready` stays 200 and warns.

use super::helpers::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use ticketing::config::Config;

fn with_redis(config: &mut Config) {
    config.redis_url = Some(ticketing::cache::redis::test_url());
    config.redis_key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
}

/// A connection to the test Redis; fails the test loudly when Redis is not there, so a Redis
/// test can never pass on the service's fallback to the read models.
async fn redis() -> redis::aio::MultiplexedConnection {
    let url = ticketing::cache::redis::test_url();
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let mut connection = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| {
        panic!("no Redis at {url}: start it with ./scripts/services.sh or set TEST_REDIS_URL")
    });
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("Redis answers PING");
    assert_eq!(pong, "PONG");
    connection
}

/// The keys Redis holds under `prefix`.
async fn redis_keys(prefix: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis().await)
        .await
        .expect("KEYS")
}

/// Holds one seat at a time and reads availability right after each acknowledgement, while
/// eight clients poll the same availability (so loads race with invalidations): every read
/// after an acknowledged hold shows that hold, and a repeated read is a cache hit.
async fn reads_after_acknowledged_holds_are_never_stale(app: TestApp) -> uuid::Uuid {
    let app = Arc::new(app);
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 100).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = (0..8)
        .map(|_| {
            let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    app.floor(event).await;
                    reads += 1;
                }
                reads
            })
        })
        .collect();

    for held in 1..=25u64 {
        let answer = app.reserve(&buyer, event, 1).await;
        assert_eq!(answer.status, 201, "{:#}", answer.body);
        assert_eq!(
            app.floor(event).await,
            (100 - held, held, 0),
            "after hold {held}"
        );
        let details = app.get(&format!("/api/events/{event}"), None).await;
        assert_eq!(details.body["sections"][0]["held"], held);
    }
    stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        assert!(poller.await.unwrap() > 0);
    }
    // Nothing changes now, so the second of two reads is served from the cache.
    app.floor(event).await;
    let hits = cache_count(&app, "availability", "hit").await;
    assert_eq!(app.floor(event).await, (75, 25, 0));
    assert_eq!(cache_count(&app, "availability", "hit").await, hits + 1);
    assert_eq!(cache_count(&app, "availability", "error").await, 0);
    assert_eq!(cache_count(&app, "events", "error").await, 0);
    event
}

/// In-process cache: no read after an acknowledged change is stale.
#[tokio::test]
async fn the_in_process_cache_never_serves_a_state_older_than_an_acknowledged_change() {
    let app = spawn_app_with(|config| config.redis_url = None).await;
    reads_after_acknowledged_holds_are_never_stale(app).await;
}

/// Redis cache: no read after an acknowledged change is stale, and the entries are in Redis.
#[tokio::test]
async fn the_redis_cache_never_serves_a_state_older_than_an_acknowledged_change() {
    redis().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let key_prefix = prefix.clone();
    let app = spawn_app_with(move |config| {
        config.redis_url = Some(ticketing::cache::redis::test_url());
        config.redis_key_prefix = key_prefix;
    })
    .await;
    let event = reads_after_acknowledged_holds_are_never_stale(app).await;
    let keys = redis_keys(&prefix).await;
    assert!(
        keys.iter().any(|k| k.contains(&event.to_string())),
        "Redis holds no entry of the event under {prefix}: {keys:?}"
    );
}

/// The sum of `ticketing_cache_requests_total` samples with these labels.
async fn cache_count(app: &TestApp, cache: &str, result: &str) -> u64 {
    app.metric(
        "ticketing_cache_requests_total",
        &[("cache", cache), ("result", result)],
    )
    .await as u64
}

/// A repeated read is a hit, counted per cache; a change makes the next read a miss.
#[tokio::test]
async fn hits_and_misses_are_counted_and_a_change_invalidates() {
    redis().await;
    let app = spawn_app_with(with_redis).await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;

    app.floor(event).await;
    app.floor(event).await;
    let (misses, hits) = (
        cache_count(&app, "availability", "miss").await,
        cache_count(&app, "availability", "hit").await,
    );
    assert!(misses >= 1 && hits >= 1, "misses {misses}, hits {hits}");
    let event_hits = cache_count(&app, "events", "hit").await;
    app.get(&format!("/api/events/{event}"), None).await;
    app.get(&format!("/api/events/{event}"), None).await;
    assert!(cache_count(&app, "events", "hit").await > event_hits);

    assert_eq!(app.reserve(&buyer, event, 2).await.status, 201);
    assert_eq!(app.floor(event).await, (8, 2, 0));
    assert_eq!(cache_count(&app, "availability", "miss").await, misses + 1);
    assert_eq!(cache_count(&app, "availability", "error").await, 0);
}

/// With Redis unreachable the API answers correctly from the read models, errors are
/// counted, and `/ready` stays 200 with the cache check at `warn`.
#[tokio::test]
async fn with_redis_unreachable_reads_come_from_the_read_models_and_ready_warns() {
    let app = spawn_app_with(|config| {
        config.redis_url = Some("redis://127.0.0.1:1/0".into());
    })
    .await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;

    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(app.reserve(&buyer, event, 3).await.status, 201);
    assert_eq!(app.floor(event).await, (7, 3, 0));
    let details = app.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(details.status, 200, "{:#}", details.body);
    assert_eq!(details.body["sections"][0]["held"], 3);
    assert!(cache_count(&app, "availability", "error").await >= 2);

    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, 200, "{:#}", ready.body);
    assert_eq!(ready.body["status"], "degraded");
    let checks = ready.body["checks"].as_array().unwrap();
    let cache = checks
        .iter()
        .find(|c| c["name"] == "cache")
        .expect("a cache check");
    assert_eq!(cache["status"], "warn", "{cache:#}");
    assert_eq!(cache["adapter"], "redis");
    assert!(cache["error"].is_string());
}

/// A TCP relay to Redis that a test can cut (live connections dropped, new ones closed at
/// once) and restore, to stop Redis for one app without stopping it for the other tests.
struct RedisRelay {
    port: u16,
    up: Arc<tokio::sync::watch::Sender<bool>>,
}

impl RedisRelay {
    async fn start() -> RedisRelay {
        let upstream = ticketing::cache::redis::test_url()
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(tokio::sync::watch::channel(true).0);
        let state = Arc::clone(&up);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let mut cut = state.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        RedisRelay { port, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Redis stops mid-sale and comes back: meanwhile the API answers correctly from the read
/// models and `/ready` warns; afterwards the cache is used again, and the entry written before
/// the outage (its invalidation could not reach Redis) is never served.
#[tokio::test]
async fn redis_going_away_and_back_never_serves_a_stale_view() {
    redis().await;
    let relay = RedisRelay::start().await;
    let port = relay.port;
    let app = spawn_app_with(move |config| {
        config.redis_url = Some(format!("redis://127.0.0.1:{port}/0"));
        config.redis_key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        // The outage below cuts connections (errors at once); a slow machine must not turn
        // the healthy reads before it into timeouts that open the breaker.
        config.cache_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let organizer = app.organizer().await;
    let buyer = app.customer().await;
    let event = app.event_on_sale(&organizer, 10).await;
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert_eq!(app.floor(event).await, (10, 0, 0));
    assert!(cache_count(&app, "availability", "hit").await >= 1);

    relay.set(false);
    assert_eq!(app.reserve(&buyer, event, 3).await.status, 201);
    assert_eq!(app.floor(event).await, (7, 3, 0));
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, 200, "{:#}", ready.body);
    let checks = ready.body["checks"].as_array().unwrap();
    let cache = checks.iter().find(|c| c["name"] == "cache").unwrap();
    assert_eq!(cache["status"], "warn", "{cache:#}");

    relay.set(true);
    let hits = cache_count(&app, "availability", "hit").await;
    let started = std::time::Instant::now();
    while cache_count(&app, "availability", "hit").await <= hits {
        assert_eq!(app.floor(event).await, (7, 3, 0), "a stale view was served");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the cache was not used again after Redis came back"
        );
    }
    assert_eq!(app.floor(event).await, (7, 3, 0));
}
