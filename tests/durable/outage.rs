//! Losing the database and shutting down: `/ready` and writes answer 503 with `Retry-After`
//! (never 500, never a hang) while PostgreSQL is unreachable behind a stopped TCP proxy, and
//! recover by themselves; SIGTERM drains (`/ready` 503 first) and exits 0 in bounded time.

use super::client::*;
use super::proxy::Proxy;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use ticketing::db::testing::fresh_database;

/// A fresh database reached through a new proxy: (proxy, URL through the proxy, direct URL).
pub async fn database_behind_a_proxy() -> (Proxy, String, String) {
    let direct = reqwest::Url::parse(&fresh_database().await).expect("database URL");
    let upstream = format!(
        "{}:{}",
        direct.host_str().expect("database host"),
        direct.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(&upstream).await;
    let mut proxied = direct.clone();
    proxied.set_host(Some("127.0.0.1")).expect("host");
    proxied.set_port(Some(proxy.port)).expect("port");
    (proxy, proxied.to_string(), direct.to_string())
}

/// One request bounded by a client timeout: a hang fails the test instead of stalling it.
async fn bounded(
    service: &Service,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = service
        .http
        .request(method, format!("{}{path}", service.base))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} gave no answer within 10 s: {e}"));
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.json().await.unwrap_or(Value::Null);
    if status == StatusCode::SERVICE_UNAVAILABLE && path != "/ready" {
        assert_eq!(content_type, "application/problem+json", "{path}: {body}");
    }
    (status, retry_after, body)
}

/// One reservation of a seat of `event` by `buyer`, bounded like `bounded`.
async fn reserve_bounded(
    service: &Service,
    buyer: &str,
    event: uuid::Uuid,
) -> (StatusCode, Option<String>, Value) {
    let body = Some(reservation(event));
    bounded(
        service,
        reqwest::Method::POST,
        "/api/reservations",
        Some(buyer),
        body,
    )
    .await
}

fn reservation(event: uuid::Uuid) -> Value {
    json!({"event_id": event, "section": "floor", "quantity": 1})
}

/// With PostgreSQL unreachable, `/ready` names every failed check within 2 s and writes answer
/// 503 with `Retry-After`; once it is back both recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_recovers_by_itself() {
    let (mut proxy, url, _) = database_behind_a_proxy().await;
    let service = Service::start(&url, &[]).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 50).await;
    let (_, buyer) = service.user("customer").await;
    let email = {
        let (_, me) = service.get("/auth/me", Some(&buyer)).await;
        me["email"].as_str().unwrap().to_owned()
    };

    proxy.stop().await;

    let started = Instant::now();
    let (status, retry_after, body) =
        bounded(&service, reqwest::Method::GET, "/ready", None, None).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/ready took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "/ready 503 without Retry-After");
    assert_eq!(body["status"], "not_ready", "{body}");
    for name in ["event_store", "projections", "auth"] {
        let check = body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {body}"));
        assert_eq!(check["status"], "fail", "{body}");
        assert!(
            check["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // The same verdict on /metrics, for an alert that needs nothing to probe /ready.
    let text = metrics::scrape(&service.http, &service.base).await;
    assert!(has_line(&text, "ticketing_ready 0"), "{text}");
    for name in ["event_store", "projections", "auth"] {
        let line = format!("ticketing_ready_check{{check=\"{name}\"}} 0");
        assert!(has_line(&text, &line), "no {line} in:\n{text}");
    }

    let writes = [
        (
            "/api/reservations",
            Some(buyer.as_str()),
            reservation(event),
        ),
        (
            "/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        ),
    ];
    for (path, token, body) in writes {
        let (status, retry_after, answer) =
            bounded(&service, reqwest::Method::POST, path, token, Some(body)).await;
        assert_eq!(status, 503, "{path}: {answer}");
        assert!(retry_after.is_some(), "{path}: 503 without Retry-After");
    }

    proxy.restart().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    ready_again(&service, deadline).await;
    let text = metrics::scrape(&service.http, &service.base).await;
    assert!(has_line(&text, "ticketing_ready 1"), "{text}");
    reserve_again(&service, &buyer, event, deadline).await;
}

/// Whether the scrape `text` has `line` as one of its lines.
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Polls `/ready` until 200, failing after `deadline`.
async fn ready_again(service: &Service, deadline: Instant) {
    loop {
        let (status, _, body) = bounded(service, reqwest::Method::GET, "/ready", None, None).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/ready did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries a reservation until 201, accepting only 503 meanwhile, failing after `deadline`.
async fn reserve_again(service: &Service, buyer: &str, event: uuid::Uuid, deadline: Instant) {
    loop {
        let (status, _, body) = reserve_bounded(service, buyer, event).await;
        match status.as_u16() {
            201 => return,
            503 => assert!(Instant::now() < deadline, "writes did not recover: {body}"),
            other => panic!("a reservation after the outage answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With only the event store unreachable (accounts and read models still answer), a
/// reservation reaches the writer and answers 503 with `Retry-After`; later ones succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_an_event_store_outage_answers_503_and_later_succeeds() {
    let (mut proxy, url, direct) = database_behind_a_proxy().await;
    let service = Service::start(
        &url,
        &[
            ("AUTH_DATABASE_URL", &direct),
            ("PROJECTIONS_DATABASE_URL", &direct),
        ],
    )
    .await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 50).await;
    let (_, buyer) = service.user("customer").await;
    // One reservation before the outage: the instance then knows the event's waiting-room
    // settings (none), and keeps using them while the database is away.
    reserve_again(
        &service,
        &buyer,
        event,
        Instant::now() + Duration::from_secs(30),
    )
    .await;

    proxy.stop().await;

    let (status, _, body) = bounded(&service, reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(status, 503, "{body}");
    for _ in 0..2 {
        let (status, retry_after, body) = reserve_bounded(&service, &buyer, event).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("event store")),
            "the write did not reach the event store: {body}"
        );
        assert!(retry_after.is_some(), "503 without Retry-After");
    }

    proxy.restart().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    ready_again(&service, deadline).await;
    reserve_again(&service, &buyer, event, deadline).await;
    // The seat held before the cut and the one after it; the refused writes held nothing.
    eventually(
        "exactly two seats held",
        Duration::from_secs(10),
        || async {
            let held = service.floor(event).await.1;
            assert!(held <= 2, "{held} seats held: a refused write held one");
            held == 2
        },
    )
    .await;
}

/// SIGTERM makes `/ready` answer 503 `draining` while the listener still accepts, then the
/// process exits 0 well within 30 s.
#[tokio::test]
async fn sigterm_turns_ready_to_draining_then_exits_cleanly() {
    let db = fresh_database().await;
    let service = Service::start(&db, &[("SHUTDOWN_DRAIN_SECONDS", "5")]).await;
    service.sigterm().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, retry_after, body) =
            bounded(&service, reqwest::Method::GET, "/ready", None, None).await;
        if status == 503 {
            assert_eq!(body["status"], "draining", "{body}");
            assert!(retry_after.is_some(), "draining without Retry-After");
            let text = metrics::scrape(&service.http, &service.base).await;
            assert!(has_line(&text, "ticketing_ready 0"), "{text}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "/ready never said draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = service.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
}

/// Without a drain delay, SIGTERM stops the service with exit status 0 within 30 s.
#[tokio::test]
async fn sigterm_exits_with_status_zero_within_thirty_seconds() {
    let db = fresh_database().await;
    let service = Service::start(&db, &[]).await;
    let (_, organizer) = service.user("organizer").await;
    service.event_on_sale(&organizer, 5).await;
    service.sigterm().await;
    let status = service.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
}

/// `/metrics` on PostgreSQL carries the size and idle gauges of each of the four pools.
#[tokio::test]
async fn metrics_report_every_database_pool() {
    let db = fresh_database().await;
    let service = Service::start(&db, &[]).await;
    let text = metrics::scrape(&service.http, &service.base).await;
    for pool in ["events", "projections", "projector", "auth"] {
        for gauge in ["ticketing_db_pool_connections", "ticketing_db_pool_idle"] {
            let series = format!("{gauge}{{pool=\"{pool}\"}} ");
            assert!(text.contains(&series), "no {series} in:\n{text}");
        }
    }
}

/// The database host vanishes without a reset while buyers are reserving (a failover, or a
/// route that drops packets): every connection open at that moment goes silent for good,
/// while new ones reach the database. No request hangs past the request time-out meanwhile,
/// and reservations and payments succeed again within a bound, without a restart: nothing in
/// the service waits forever on a dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_host_that_vanishes_without_a_reset_stalls_writes_for_a_bounded_time() {
    let (proxy, url, _) = database_behind_a_proxy().await;
    let service = std::sync::Arc::new(
        Service::start(
            &url,
            &[
                // A call without an answer is abandoned after 1 s + 3 x 1 s.
                ("DB_STATEMENT_TIMEOUT_MS", "1000"),
                ("DB_ACQUIRE_TIMEOUT_SECONDS", "1"),
                ("REQUEST_TIMEOUT_SECONDS", "3"),
            ],
        )
        .await,
    );
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 5_000).await;
    let (_, buyer) = service.user("customer").await;

    // Buyers keep reserving, so statements are in flight when the host vanishes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buyers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (service, buyer, stop) = (service.clone(), buyer.clone(), stop.clone());
        buyers.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, _, body) = reserve_bounded(&service, &buyer, event).await;
                assert!(
                    matches!(status.as_u16(), 201 | 503),
                    "a reservation around the vanishing answered {status}: {body}"
                );
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.silence();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(done) = buyers.join_next().await {
        done.expect("a buyer neither hung past its 10 s nor saw a 5xx other than 503");
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    reserve_again(&service, &buyer, event, deadline).await;
    let held = loop {
        let (status, body) = service.reserve(&buyer, event, 1).await;
        if status == 201 {
            break uuid(&body, "reservation_id");
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "no hold after the vanishing: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let (status, body) = service.pay(&buyer, held).await;
        if status.is_success() {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "payments did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready_again(&service, deadline).await;
    // The session cache serves again: its revocation feed (a listener and heartbeats on
    // connections that went silent too) is back.
    let hits = [("cache", "sessions"), ("result", "hit")];
    loop {
        let before = service
            .metric("ticketing_cache_requests_total", &hits)
            .await;
        let (status, body) = service.get("/auth/me", Some(&buyer)).await;
        assert_eq!(status, 200, "{body}");
        if service
            .metric("ticketing_cache_requests_total", &hits)
            .await
            > before
        {
            break;
        }
        assert!(Instant::now() < deadline, "the session cache stayed off");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bus-fed analytics count the payment made after it: the outbox relay and the
    // consumers are back too.
    service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |s| s["revenue_cents"].as_u64().is_some_and(|r| r > 0),
        )
        .await;
}

/// The event notifications' listener on a connection that goes silent finds out with a probe
/// and listens anew on a new connection: an append by another instance still raises this
/// store's head (what wakes its projector) within two quiet periods (5 s each), though this
/// store appends nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_event_notification_connection_is_found_and_replaced() {
    use ticketing::db::{self, PoolSettings};
    use ticketing::domain::EventId;
    use ticketing::eventstore::postgres::PostgresEventStore;
    use ticketing::eventstore::testing::seats_held;
    use ticketing::eventstore::EventStore;

    let (proxy, proxied, direct) = database_behind_a_proxy().await;
    let settings = PoolSettings::default();
    let pool = db::connect(&direct, &settings).await.expect("pool");
    db::events_migrator().run(&pool).await.expect("migrations");
    let elsewhere = PostgresEventStore::new(pool).await.expect("store");
    let here = db::connect(&proxied, &settings).await.expect("pool");
    let here = PostgresEventStore::new(here).await.expect("store");
    let mut head = here.subscribe_head();

    let sale = EventId::random();
    let stream = format!("inventory-{sale}");
    let append = |version: u64| seats_held(&stream, version);
    // Until the listener listens, an append elsewhere may go unheard: append until heard.
    let mut version = 0;
    let heard = loop {
        version += 1;
        let at = elsewhere.append(sale, vec![append(version)]).await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(1), head.wait_for(|h| *h >= at));
        if heard.await.is_ok() {
            break at;
        }
        assert!(version < 20, "the listener never heard an append");
    };

    proxy.silence();
    let at = elsewhere
        .append(sale, vec![append(version + 1)])
        .await
        .unwrap();
    assert!(at > heard);
    tokio::time::timeout(Duration::from_secs(20), head.wait_for(|h| *h >= at))
        .await
        .expect("a silent listener was found and replaced, and the head read again")
        .expect("the store is still running");
}
