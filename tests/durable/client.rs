//! A running `ticketing` process and a small HTTP client that speaks its API.

#![allow(dead_code)]

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use uuid::Uuid;

#[path = "../common/metrics.rs"]
pub mod metrics;
#[path = "../common/poll.rs"]
mod poll;
pub use poll::eventually;

pub const PASSWORD: &str = "correct-horse-1";

/// Taken by the tests that start several instances (each with its pools), so that they run
/// one at a time and stay under PostgreSQL's default `max_connections` (100) next to the others.
pub static MANY_INSTANCES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `request` to its answer and, beside it, `then` once `reached` says the request got
/// where the test wants it (a lock to release only once the request waits behind it), or once
/// it was answered: an outside signal in place of a pause that guesses how long it takes.
pub async fn once_reached<T, R, F>(
    request: impl std::future::Future<Output = T>,
    reached: R,
    then: impl std::future::Future<Output = ()>,
) -> T
where
    R: Fn() -> F,
    F: std::future::Future<Output = bool>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let answered = AtomicBool::new(false);
    let request = async {
        let answer = request.await;
        answered.store(true, Ordering::SeqCst);
        answer
    };
    let watch = async {
        while !answered.load(Ordering::SeqCst) && !reached().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        then.await;
    };
    tokio::join!(request, watch).0
}

/// One service process on its own port.
pub struct Service {
    child: tokio::sync::Mutex<Child>,
    pub base: String,
    pub http: reqwest::Client,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Service {
    /// Starts the binary on `database_url` and waits until `/ready` answers 200.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Service {
        let port = free_port();
        // SERVICE_RUST_LOG=debug shows the service's own log (quiet by default).
        let log = std::env::var("SERVICE_RUST_LOG").ok();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ticketing"));
        command
            .env("DATABASE_URL", database_url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .env("DB_MAX_CONNECTIONS", "6")
            // Every client here is one loopback address signing up many buyers.
            .env("RATE_LIMIT_AUTH_PER_MINUTE", "1000000")
            .env("RATE_LIMIT_AUTH_BURST", "1000000")
            .env("RATE_LIMIT_WRITES_PER_SECOND", "1000000")
            .env("RATE_LIMIT_READS_PER_SECOND", "1000000")
            .env_remove("PROJECTIONS_DATABASE_URL")
            .env_remove("AUTH_DATABASE_URL")
            .env_remove("KAFKA_BROKERS")
            .env_remove("REDIS_URL")
            .stdout(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("ticketing binary starts");
        let service = Service {
            child: tokio::sync::Mutex::new(child),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = service
                .http
                .get(format!("{}/ready", service.base))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return service;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown hook, no flush, like a crash. Requests in flight get no answer.
    pub async fn kill9(&self) {
        let mut child = self.child.lock().await;
        child.start_kill().expect("kill");
        let _ = child.wait().await;
    }

    /// Sends SIGTERM, as an orchestrator does to stop a container.
    pub async fn sigterm(&self) {
        let child = self.child.lock().await;
        let pid = child.id().expect("the process still runs");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill only sends a signal to the child this test started and still owns.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM not sent");
    }

    /// Waits up to `deadline` for the process to exit and returns its status.
    pub async fn exit_status(&self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.lock().await;
        tokio::time::timeout(deadline, child.wait())
            .await
            .unwrap_or_else(|_| panic!("the process did not exit within {deadline:?}"))
            .expect("waiting for the process")
    }

    /// Logs in an existing account and returns its token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            // The process may be killed mid-request: that is not an answer.
            Err(_) => (StatusCode::from_u16(599).unwrap(), Value::Null),
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// POSTs `body` with an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("the instance answers");
        let status = sent.status();
        (status, sent.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    /// GETs `path` until `settled` holds for the body: for the asynchronous views (sales,
    /// history), which follow the bus within moments. Panics after 30 s.
    pub async fn get_when(
        &self,
        path: &str,
        token: Option<&str>,
        settled: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.get(path, token).await;
            if status == 200 && settled(&body) {
                return body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path} never settled; last answer: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One figure of `/metrics`: the sum of `name`'s samples carrying `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = metrics::scrape(&self.http, &self.base).await;
        metrics::sample(&text, name, labels)
    }

    /// Registers and logs in; returns (user id, token). A 503 (the account store's pool busy
    /// on a loaded machine, with `Retry-After`) is tried again a few times, as a client does;
    /// a register retried after its first attempt went through finds the email taken.
    pub async fn user(&self, role: &str) -> (Uuid, String) {
        let email = format!("{role}-{}@durable.example", Uuid::new_v4().simple());
        let register = json!({"email": email, "password": PASSWORD, "role": role});
        let (status, body) = self.post_retrying("/auth/register", register).await;
        assert!(
            status == 201 || (status == 409 && body["type"] == "urn:ticketing:problem:email-taken"),
            "{status} {body}"
        );
        let login = json!({"email": email, "password": PASSWORD});
        let (status, body) = self.post_retrying("/auth/login", login).await;
        assert_eq!(status, 200, "{body}");
        (
            uuid(&body, "user_id"),
            body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// POSTs `body` without a token, again while the answer is 503 (bounded).
    async fn post_retrying(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let mut answer = self.post(path, None, body.clone()).await;
        for _ in 0..20 {
            if answer.0 != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            answer = self.post(path, None, body.clone()).await;
        }
        answer
    }

    /// An event on sale with one section `floor` of `capacity` seats at 25.00.
    pub async fn event_on_sale(&self, organizer: &str, capacity: u32) -> Uuid {
        let (status, body) = self
            .post(
                "/api/events",
                Some(organizer),
                json!({
                    "name": "Durable Fest", "venue": {"name": "Hall", "address": "1 Main St"},
                    "starts_at": "2030-06-01T20:00:00Z", "ends_at": "2030-06-01T23:00:00Z",
                    "sections": [{"name": "floor", "capacity": capacity, "price_cents": 2500}]
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = uuid(&body, "id");
        for step in ["publish", "open-sales"] {
            let (status, body) = self
                .post(
                    &format!("/api/events/{id}/{step}"),
                    Some(organizer),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{step}: {body}");
        }
        id
    }

    pub async fn reserve(&self, token: &str, event: Uuid, quantity: u32) -> (StatusCode, Value) {
        self.post(
            "/api/reservations",
            Some(token),
            json!({"event_id": event, "section": "floor", "quantity": quantity}),
        )
        .await
    }

    /// `reserve`, retried while the answer is 503: instances racing on one sale may answer
    /// that (contended, nothing written) with `Retry-After`, and a client tries again.
    pub async fn reserve_retrying(
        &self,
        token: &str,
        event: Uuid,
        quantity: u32,
    ) -> (StatusCode, Value) {
        let mut answer = self.reserve(token, event, quantity).await;
        for _ in 0..20 {
            if answer.0 != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            answer = self.reserve(token, event, quantity).await;
        }
        answer
    }

    pub async fn pay(&self, token: &str, reservation: Uuid) -> (StatusCode, Value) {
        self.post(
            "/api/payments",
            Some(token),
            json!({"reservation_id": reservation, "payment_method": {"type": "card", "token": "tok_visa"}}),
        )
        .await
    }

    /// `(available, held, sold)` of section `floor`.
    pub async fn floor(&self, event: Uuid) -> (u64, u64, u64) {
        let (status, body) = self
            .get(&format!("/api/events/{event}/availability"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let s = &body["sections"][0];
        (
            s["available"].as_u64().unwrap(),
            s["held"].as_u64().unwrap(),
            s["sold"].as_u64().unwrap(),
        )
    }
}

pub fn uuid(body: &Value, field: &str) -> Uuid {
    body[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no uuid `{field}` in {body}"))
}

/// Waits until the bus-fed insights have applied the last version of every stream they follow
/// (a reservation's kept on its purchase row, any other stream's in `consumer_stream_versions`).
pub async fn insights_catch_up(pool: &sqlx::PgPool) {
    let started = std::time::Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT COUNT(*)
               FROM (SELECT stream_id, MAX(version) AS version FROM events
                      WHERE stream_id LIKE 'event-%' OR stream_id LIKE 'reservation-%'
                      GROUP BY stream_id) e
               LEFT JOIN consumer_stream_versions c
                      ON c.consumer = 'insights' AND c.stream_id = e.stream_id
               LEFT JOIN insight_purchases p ON 'reservation-' || p.reservation_id = e.stream_id
              WHERE GREATEST(c.version, p.version) IS DISTINCT FROM e.version",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the insights consumer is {behind} streams behind the event store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every row of each of `tables`, as sorted text: two states compare equal row for row.
pub async fn table_rows(
    pool: &sqlx::PgPool,
    tables: &[&'static str],
) -> std::collections::BTreeMap<&'static str, String> {
    let mut rows = std::collections::BTreeMap::new();
    for table in tables {
        let text: String = sqlx::query_scalar(&format!(
            "SELECT COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        rows.insert(*table, text);
    }
    rows
}

/// Rows of `sql` (each row's columns as text, joined by ` | `): for the balance checks, whose
/// queries list what is wrong, so an empty result is a pass and a failure shows the rows.
pub async fn rows(pool: &sqlx::PgPool, sql: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(&format!("SELECT CONCAT_WS(' | ', q.*) FROM ({sql}) q"))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

/// Invariant 2 (every sale balances) in SQL, on the read models and the event log, once the
/// read models have applied the whole log: every confirmed reservation has one captured
/// payment of exactly its total, and no captured payment stands behind anything but the
/// confirmed reservation it pays (so no refunded or failed payment is behind a sold seat and
/// no money is kept for a seat not sold); each section's sold and held seats are the
/// confirmed and pending reservations; the money captured is the price of the seats sold; and
/// the log agrees: the payments captured and not refunded there are those the views show
/// captured. Returns the money kept, in cents.
pub async fn assert_sales_balance_in_sql(pool: &sqlx::PgPool) -> i64 {
    eventually(
        "the read models apply the whole log",
        Duration::from_secs(60),
        || async {
            let behind: bool = sqlx::query_scalar(
                "SELECT COALESCE((SELECT MAX(position) FROM events), 0)
                      > COALESCE((SELECT position FROM projection_checkpoints
                                   WHERE name = 'read-models'), 0)",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            !behind
        },
    )
    .await;
    let unpaid = rows(
        pool,
        "SELECT r.reservation_id, r.total_cents, p.payment_id, p.status, p.amount_cents
           FROM reservation_views r LEFT JOIN payment_views p ON p.payment_id = r.payment_id
          WHERE r.status = 'confirmed'
            AND (p.payment_id IS NULL OR p.status <> 'captured'
                 OR p.amount_cents <> r.total_cents OR p.reservation_id <> r.reservation_id)",
    )
    .await;
    assert_eq!(
        unpaid,
        Vec::<String>::new(),
        "confirmed without its payment"
    );
    let kept_for_nothing = rows(
        pool,
        "SELECT p.payment_id, p.amount_cents, r.status, r.payment_id
           FROM payment_views p LEFT JOIN reservation_views r ON r.reservation_id = p.reservation_id
          WHERE p.status = 'captured'
            AND (r.status IS DISTINCT FROM 'confirmed' OR r.payment_id IS DISTINCT FROM p.payment_id)",
    )
    .await;
    assert_eq!(
        kept_for_nothing,
        Vec::<String>::new(),
        "money kept for a seat not sold"
    );
    let seats = rows(
        pool,
        "SELECT s.event_id, s.name, s.sold, s.held, COALESCE(c.sold, 0), COALESCE(c.held, 0)
           FROM event_sections s
           LEFT JOIN (SELECT event_id, section,
                             SUM(quantity) FILTER (WHERE status = 'confirmed') AS sold,
                             SUM(quantity) FILTER (WHERE status = 'pending') AS held
                        FROM reservation_views GROUP BY event_id, section) c
                  ON c.event_id = s.event_id AND c.section = s.name
          WHERE s.sold <> COALESCE(c.sold, 0) OR s.held <> COALESCE(c.held, 0)",
    )
    .await;
    assert_eq!(seats, Vec::<String>::new(), "seat counts vs reservations");
    let (kept, price): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(amount_cents), 0) FROM payment_views
                  WHERE status = 'captured')::BIGINT,
                (SELECT COALESCE(SUM(sold * price_cents), 0) FROM event_sections)::BIGINT",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(kept, price, "money captured vs the price of the seats sold");
    let log_vs_views = rows(
        pool,
        "(SELECT stream_id FROM events WHERE event_type = 'payment.captured'
          EXCEPT SELECT stream_id FROM events WHERE event_type = 'payment.refunded')
         EXCEPT (SELECT 'payment-' || payment_id FROM payment_views WHERE status = 'captured')",
    )
    .await;
    assert_eq!(
        log_vs_views,
        Vec::<String>::new(),
        "captured in the log, not in the views"
    );
    kept
}

/// Captures at the simulated processor (its ledger table) that are neither recorded (a
/// captured payment in the views, kept at the processor) nor refunded (at both ends).
pub async fn unreconciled_captures(pool: &sqlx::PgPool) -> Vec<String> {
    rows(
        pool,
        "SELECT c.payment_id, c.refunded, p.status
           FROM simulated_processor_charges c
           LEFT JOIN payment_views p ON p.payment_id = c.payment_id
          WHERE c.outcome = 'captured'
            AND (p.payment_id IS NULL
                 OR (p.status = 'captured' AND c.refunded)
                 OR (p.status = 'refunded' AND NOT c.refunded)
                 OR p.status NOT IN ('captured', 'refunded'))",
    )
    .await
}

/// Registers `n` customers spread over `instances`; returns their tokens. A few at a time:
/// each sign-up hashes a password twice (Argon2id, deliberately slow), and hundreds at once
/// would starve the machine's cores past the request timeout before the sale even starts.
/// A connection holding `table` locked against writes (SHARE: reads go on) until it commits:
/// the projector cannot apply to it, so the read models lag behind the log.
pub async fn lock_against_writes(db: &str, table: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut locker = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN SHARE MODE"))
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}

pub async fn sign_up(instances: &[Arc<Service>], n: usize) -> Vec<String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut signups = JoinSet::new();
    for i in 0..n {
        let service = Arc::clone(&instances[i % instances.len()]);
        let permits = Arc::clone(&permits);
        signups.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            (i, service.user("customer").await.1)
        });
    }
    let mut buyers = vec![String::new(); n];
    while let Some(done) = signups.join_next().await {
        let (i, token) = done.unwrap();
        buyers[i] = token;
    }
    buyers
}
