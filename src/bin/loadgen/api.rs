//! Typed HTTP client for the parts of the ticketing API (shared/API.md) the load test uses.
//!
//! Set-up calls fail with an `anyhow` error on any unexpected answer; the measured calls
//! never fail, they return an [`Answer`] so that every request can be counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// Per-request timeout; a request that takes longer counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The only section of the generated event.
pub const SECTION: &str = "general";
/// Price of a seat in the generated event, in cents.
pub const PRICE_CENTS: u32 = 5000;
/// Test card token that the built-in gateway always captures.
const CARD_TOKEN: &str = "tok_visa";

/// What a measured request came back with.
#[derive(Debug)]
pub enum Answer<T> {
    /// The expected status, with a body that decoded.
    Success(StatusCode, T),
    /// The expected status, but the body did not decode.
    Malformed(StatusCode),
    /// Any other status.
    Rejected(StatusCode),
    /// No answer at all (connect error, timeout, broken body); the cause chain.
    Transport(String),
}

/// `POST /api/reservations` -> 201.
#[derive(Debug, Deserialize)]
pub struct Reservation {
    pub reservation_id: Uuid,
}

/// `POST /api/payments` -> 201.
#[derive(Debug, Deserialize)]
pub struct Payment {
    pub status: String,
}

/// `GET /api/events/{id}/availability` -> 200.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Availability {
    pub sections: Vec<SectionAvailability>,
    pub total_available: u64,
}

/// One section of [`Availability`].
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SectionAvailability {
    pub name: String,
    pub capacity: u64,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
    pub price_cents: i64,
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: Uuid,
}

/// A role the service accepts at registration.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Organizer,
    Customer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Organizer => "organizer",
            Role::Customer => "customer",
        }
    }
}

/// The service at `--base-url`, behind one pooled HTTP client. With several base URLs
/// (instances of one service), the sale's requests (sign-ups, reservations, payments) take
/// them in turn, as a round-robin load balancer would; set-up of the event and the reads
/// (availability, metrics) go to the first.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    bases: Arc<[String]>,
    turn: Arc<AtomicUsize>,
}

impl Api {
    /// Builds the shared client; `pool_size` idle connections are kept for reuse.
    pub fn new(base_urls: &[Url], pool_size: usize) -> anyhow::Result<Self> {
        let client = Client::builder()
            .pool_max_idle_per_host(pool_size)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let bases: Arc<[String]> = base_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "no --base-url");
        Ok(Self {
            client,
            bases,
            turn: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.bases[0])
    }

    /// The next instance's URL for a request of the sale.
    fn spread(&self, path: &str) -> String {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        format!("{}{path}", self.bases[turn])
    }

    /// `POST /auth/register`, expecting 201.
    pub async fn register(&self, email: &str, password: &str, role: Role) -> anyhow::Result<()> {
        let body = json!({
            "email": email,
            "password": password,
            "name": email.split('@').next().unwrap_or(email),
            "role": role.as_str(),
        });
        let request = self.client.post(self.spread("/auth/register")).json(&body);
        expect_status(request, StatusCode::CREATED).await?;
        Ok(())
    }

    /// `POST /auth/login`, expecting 200; returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({ "email": email, "password": password });
        let request = self.client.post(self.spread("/auth/login")).json(&body);
        let login: Login = expect_json(request, StatusCode::OK).await?;
        Ok(login.token)
    }

    /// `POST /api/events` with one section of `seats` seats, expecting 201; returns its id.
    pub async fn create_event(
        &self,
        token: &str,
        name: &str,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        seats: u32,
    ) -> anyhow::Result<Uuid> {
        let body = json!({
            "name": name,
            "venue": { "name": "Loadgen Arena", "address": "1 Benchmark Way" },
            "starts_at": starts_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "ends_at": ends_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "currency": "USD",
            "sections": [{ "name": SECTION, "capacity": seats, "price_cents": PRICE_CENTS }],
        });
        let request = self
            .client
            .post(self.url("/api/events"))
            .bearer_auth(token)
            .json(&body);
        let event: Created = expect_json(request, StatusCode::CREATED).await?;
        Ok(event.id)
    }

    /// `POST /api/events/{id}/{transition}` (`publish`, `open-sales`), expecting 200.
    pub async fn transition_event(
        &self,
        token: &str,
        event_id: Uuid,
        transition: &str,
    ) -> anyhow::Result<()> {
        let url = self.url(&format!("/api/events/{event_id}/{transition}"));
        let request = self.client.post(url).bearer_auth(token);
        expect_status(request, StatusCode::OK).await?;
        Ok(())
    }

    /// `GET /api/events/{id}/availability`, expecting 200.
    /// `POST /api/webhooks` for every event type, expecting 201.
    pub async fn register_webhook(&self, token: &str, url: &str) -> anyhow::Result<Uuid> {
        let body = json!({ "url": url, "event_types": ["*"], "description": "loadgen" });
        let request = self
            .client
            .post(self.url("/api/webhooks"))
            .bearer_auth(token)
            .json(&body);
        let endpoint: Created = expect_json(request, StatusCode::CREATED).await?;
        Ok(endpoint.id)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.client.get(self.url("/metrics")).send().await?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "/metrics answered {}",
            response.status()
        );
        Ok(response.text().await?)
    }

    pub async fn availability(&self, event_id: Uuid) -> anyhow::Result<Availability> {
        let url = self.url(&format!("/api/events/{event_id}/availability"));
        expect_json(self.client.get(url), StatusCode::OK).await
    }

    /// `POST /api/reservations` for `quantity` seats, with a fresh idempotency key.
    pub async fn reserve(&self, token: &str, event_id: Uuid, quantity: u32) -> Answer<Reservation> {
        let body = json!({ "event_id": event_id, "section": SECTION, "quantity": quantity });
        let request = self
            .client
            .post(self.spread("/api/reservations"))
            .bearer_auth(token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body);
        exchange(request, StatusCode::CREATED).await
    }

    /// `POST /api/payments` for a reservation with the always-captured test card.
    pub async fn pay(&self, token: &str, reservation_id: Uuid) -> Answer<Payment> {
        let body = json!({
            "reservation_id": reservation_id,
            "payment_method": { "type": "card", "token": CARD_TOKEN },
        });
        let request = self
            .client
            .post(self.spread("/api/payments"))
            .bearer_auth(token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body);
        exchange(request, StatusCode::CREATED).await
    }
}

/// Sends a set-up request and fails unless it is answered with `expected`.
async fn expect_status(
    request: RequestBuilder,
    expected: StatusCode,
) -> anyhow::Result<reqwest::Response> {
    let response = request.send().await.context("sending the request")?;
    let status = response.status();
    if status != expected {
        let url = response.url().clone();
        let body = response.text().await.unwrap_or_default();
        bail!("{url} answered {status} (expected {expected}): {body}");
    }
    Ok(response)
}

/// Like [`expect_status`], then decodes the JSON body.
async fn expect_json<T: DeserializeOwned>(
    request: RequestBuilder,
    expected: StatusCode,
) -> anyhow::Result<T> {
    let response = expect_status(request, expected).await?;
    let url = response.url().clone();
    response
        .json()
        .await
        .with_context(|| format!("decoding the body from {url}"))
}

/// Sends a measured request; reads the whole body so the connection goes back to the pool.
async fn exchange<T: DeserializeOwned>(request: RequestBuilder, expected: StatusCode) -> Answer<T> {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Answer::Transport(format!("{:#}", anyhow::Error::from(error))),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => return Answer::Transport(format!("{:#}", anyhow::Error::from(error))),
    };
    if status != expected {
        return Answer::Rejected(status);
    }
    match serde_json::from_slice(&body) {
        Ok(decoded) => Answer::Success(status, decoded),
        Err(_) => Answer::Malformed(status),
    }
}
