//! `TestApp`: the real application on a random port with a manual clock, plus helpers that
//! speak the HTTP API the way a client would.

#![allow(dead_code)]

use chrono::{Duration, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use ticketing::clock::ManualClock;
use ticketing::config::{Config, RateLimits};
use ticketing::payment::simulated::SimulatedGateway;
use tokio::sync::oneshot;
use uuid::Uuid;

#[path = "../common/metrics.rs"]
pub mod metrics;
#[path = "../common/poll.rs"]
mod poll;
pub use poll::eventually;

pub const ADMIN_EMAIL: &str = "admin@tests.example";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PASSWORD: &str = "correct-horse-1";
/// The hold length the test apps run with.
pub const TTL_SECONDS: i64 = 900;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub gateway: Arc<SimulatedGateway>,
    /// The in-process bus, for tests that produce straight onto a topic.
    pub bus: Arc<dyn ticketing::bus::EventBus>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A signed-in account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

/// An HTTP answer: status, headers and the JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn id(&self, field: &str) -> Uuid {
        self.body[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no uuid `{field}` in {:#}", self.body))
    }

    /// Asserts a problem+json answer with this status and `type` suffix.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{:#}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("urn:ticketing:problem:{kind}"),
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn unique_email(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}@tests.example",
        SEQ.fetch_add(1, Ordering::Relaxed),
        Uuid::new_v4().simple()
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Limits no ordinary test reaches: every test talks from the loopback address and signs up
/// many accounts. Rate-limit tests set `RateLimits::default()` or small limits themselves.
pub const UNREACHABLE_LIMITS: RateLimits = RateLimits {
    auth_per_minute: 1_000_000,
    auth_burst: 1_000_000,
    writes_per_second: 1_000_000,
    reads_per_second: 1_000_000,
};

/// The adapter set the API suite runs on, chosen by `TEST_BACKEND`: `memory` (the default:
/// in-memory stores, in-process cache) or `postgres` (every store on a fresh PostgreSQL
/// database, the cache on Redis). The test bodies are the same on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("memory") => Backend::Memory,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("TEST_BACKEND must be memory or postgres, not {other:?}"),
    }
}

/// Starts the application with the default config changed by `tweak`, on the adapter set
/// `TEST_BACKEND` names.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        reservation_ttl: Duration::seconds(TTL_SECONDS),
        rate_limits: UNREACHABLE_LIMITS,
        ..Config::default()
    };
    if backend() == Backend::Postgres {
        config.database_url = Some(ticketing::db::testing::fresh_database().await);
        config.redis_url = Some(ticketing::cache::redis::test_url());
        config.redis_key_prefix = format!("test:{}:", Uuid::new_v4().simple());
        // Two tests run at once, each with its own pools: stay far below max_connections.
        config.pool.max_connections = 4;
    }
    tweak(&mut config);
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = ticketing::startup::build(config, clock.clone())
        .await
        .expect("app builds");
    let gateway = app.gateway.clone();
    let bus = app.state.bus.clone();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.serve(listener, async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        clock,
        gateway,
        bus,
        shutdown: Some(tx),
    }
}

impl TestApp {
    /// Sends a request; `body` is sent as JSON when present.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        metrics::scrape(&self.client, &self.base).await
    }

    /// One figure of `/metrics`: the sum of `name`'s samples carrying `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sample(&self.metrics_text().await, name, labels)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, path, token, None).await
    }

    /// GETs `path` until `settled` holds for the answer: for the asynchronous views (sales,
    /// history), which follow the bus within moments. Panics after 10 s.
    pub async fn get_when(
        &self,
        path: &str,
        token: Option<&str>,
        settled: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let started = std::time::Instant::now();
        loop {
            let answer = self.get(path, token).await;
            if settled(&answer) {
                return answer;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{path} never settled; last answer: {} {:#}",
                answer.status,
                answer.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers and logs in a new account with `role` (customer or organizer).
    pub async fn user(&self, role: &str) -> User {
        let email = unique_email(role);
        let registered = self
            .post(
                "/auth/register",
                None,
                json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(registered.status, 201, "{:#}", registered.body);
        self.login(&email, PASSWORD).await
    }

    pub async fn login(&self, email: &str, password: &str) -> User {
        let login = self
            .post(
                "/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(login.status, 200, "{:#}", login.body);
        User {
            id: login.id("user_id"),
            email: email.to_owned(),
            token: login.body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn customer(&self) -> User {
        self.user("customer").await
    }

    pub async fn organizer(&self) -> User {
        self.user("organizer").await
    }

    pub async fn admin(&self) -> User {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// A valid event body with one section `floor` of `capacity` seats at 25.00.
    pub fn event_body(capacity: u32) -> Value {
        json!({
            "name": "Test Concert",
            "venue": {"name": "Hall", "address": "1 Main St"},
            "starts_at": "2030-06-01T20:00:00Z",
            "ends_at": "2030-06-01T23:00:00Z",
            "currency": "USD",
            "sections": [{"name": "floor", "capacity": capacity, "price_cents": 2500}]
        })
    }

    /// Creates a draft event owned by `organizer`.
    pub async fn draft_event(&self, organizer: &User, capacity: u32) -> Uuid {
        let created = self
            .post(
                "/api/events",
                Some(&organizer.token),
                Self::event_body(capacity),
            )
            .await;
        assert_eq!(created.status, 201, "{:#}", created.body);
        created.id("id")
    }

    /// Creates, publishes and opens sales for an event.
    pub async fn event_on_sale(&self, organizer: &User, capacity: u32) -> Uuid {
        let id = self.draft_event(organizer, capacity).await;
        for step in ["publish", "open-sales"] {
            let answer = self
                .post(
                    &format!("/api/events/{id}/{step}"),
                    Some(&organizer.token),
                    json!({}),
                )
                .await;
            assert_eq!(answer.status, 200, "{step}: {:#}", answer.body);
        }
        id
    }

    pub async fn reserve(&self, user: &User, event: Uuid, quantity: u32) -> Answer {
        self.post(
            "/api/reservations",
            Some(&user.token),
            json!({"event_id": event, "section": "floor", "quantity": quantity}),
        )
        .await
    }

    pub async fn pay(&self, user: &User, reservation: Uuid, card: &str) -> Answer {
        self.post(
            "/api/payments",
            Some(&user.token),
            json!({"reservation_id": reservation, "payment_method": {"type": "card", "token": card}}),
        )
        .await
    }

    /// `user` cancels `reservation`.
    pub async fn cancel(&self, user: &User, reservation: Uuid) -> Answer {
        let path = format!("/api/reservations/{reservation}/cancel");
        self.post(&path, Some(&user.token), json!({})).await
    }

    /// The `status` of `reservation` as its owner `user` reads it (the read must answer 200).
    pub async fn reservation_status(&self, user: &User, reservation: Uuid) -> String {
        let read = self
            .get(
                &format!("/api/reservations/{reservation}"),
                Some(&user.token),
            )
            .await;
        assert_eq!(read.status, 200, "{:#}", read.body);
        read.body["status"].as_str().unwrap_or_default().to_owned()
    }

    /// `(available, held, sold)` of section `floor`.
    pub async fn floor(&self, event: Uuid) -> (u64, u64, u64) {
        let a = self
            .get(&format!("/api/events/{event}/availability"), None)
            .await;
        assert_eq!(a.status, 200, "{:#}", a.body);
        let s = &a.body["sections"][0];
        (
            s["available"].as_u64().unwrap(),
            s["held"].as_u64().unwrap(),
            s["sold"].as_u64().unwrap(),
        )
    }
}
