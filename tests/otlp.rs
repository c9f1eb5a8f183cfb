//! Traces over the wire, as a collector receives them: the real binary exports OTLP/HTTP
//! protobuf to a small receiver in this test, which decodes each request with the
//! `opentelemetry-proto` messages and checks the spans of a purchase against the OpenTelemetry
//! semantic conventions (kinds, names, attributes, error status). The service runs with
//! `RUST_LOG=warn`: span export has its own filter, so the log level must not silence it.
//! Needs PostgreSQL (the projection batch span is PostgreSQL's): `./scripts/services.sh`.

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtelStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/service.rs"]
mod service;

type Received = Arc<Mutex<Vec<Span>>>;

/// Listens for `POST /v1/traces` and keeps every span it decodes.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans);
                sink.lock().unwrap().extend(spans);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => s.clone(),
                Any::IntValue(i) => i.to_string(),
                Any::BoolValue(b) => b.to_string(),
                Any::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

struct Service {
    base: String,
    http: reqwest::Client,
}

impl Service {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, path, token, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    async fn token(&self, role: &str) -> String {
        let email = format!("{role}-{}@otlp.example", uuid::Uuid::new_v4().simple());
        let account = json!({"email": email, "password": "correct-horse-1", "role": role});
        self.post("/auth/register", None, account).await;
        let login = json!({"email": email, "password": "correct-horse-1"});
        self.post("/auth/login", None, login).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Waits (bounded) until `done` holds for the spans received so far, then returns them.
async fn spans_until(received: &Received, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let started = Instant::now();
    loop {
        let spans = received.lock().unwrap().clone();
        if done(&spans) {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "spans never arrived; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_exported_by_the_semantic_conventions_even_at_log_level_warn() {
    let (collector, received) = receiver().await;
    let database = ticketing::db::testing::fresh_database().await;
    let mut child = service::start(
        &[
            ("DATABASE_URL", &database),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "warn"),
        ],
        "/ready",
    )
    .await;
    let service = Service {
        base: child.base.clone(),
        http: reqwest::Client::new(),
    };

    let organizer = service.token("organizer").await;
    let event = service
        .post(
            "/api/events",
            Some(&organizer),
            json!({
            "name": "Traced", "venue": {"name": "Hall", "address": "1 Road"},
            "starts_at": "2030-06-01T19:00:00Z", "ends_at": "2030-06-01T23:00:00Z",
            "sections": [{"name": "floor", "capacity": 10, "price_cents": 5000}]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for step in ["publish", "open-sales"] {
        service
            .post(
                &format!("/api/events/{event}/{step}"),
                Some(&organizer),
                Value::Null,
            )
            .await;
    }
    let customer = service.token("customer").await;
    let reservation = service
        .post(
            "/api/reservations",
            Some(&customer),
            json!({"event_id": event, "section": "floor", "quantity": 2}),
        )
        .await["reservation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    service
        .post(
            "/api/payments",
            Some(&customer),
            json!({"reservation_id": reservation,
            "payment_method": {"type": "card", "token": "tok_visa"}}),
        )
        .await;
    let (missing, _) = service
        .call(
            reqwest::Method::GET,
            "/api/events/not-a-uuid",
            None,
            Value::Null,
        )
        .await;
    assert_eq!(missing, 400);

    let spans = spans_until(&received, |spans| {
        [
            "POST /api/payments",
            "INSERT events",
            "BATCH read_models",
            "GET /api/events/{id}",
        ]
        .iter()
        .all(|name| named(spans, name).is_some())
            && spans.iter().any(|s| s.name.starts_with("send "))
            && spans.iter().any(|s| s.name.starts_with("process "))
    })
    .await;
    child.process.kill().await.unwrap();
    ticketing::db::testing::drop_database(&database).await;

    let pay = named(&spans, "POST /api/payments").unwrap();
    assert_eq!(pay.kind, SpanKind::Server as i32);
    let a = attributes(pay);
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["http.route"], "/api/payments");
    assert_eq!(a["url.path"], "/api/payments");
    assert_eq!(a["http.response.status_code"], "201");
    assert!(!a.contains_key("error.type"), "{a:?}");

    let bad = named(&spans, "GET /api/events/{id}").unwrap();
    assert_eq!(attributes(bad)["http.response.status_code"], "400");
    assert_ne!(
        bad.status.as_ref().map(|s| s.code),
        Some(OtelStatus::Error as i32),
        "4xx is no server error"
    );

    let append = named(&spans, "INSERT events").unwrap();
    assert_eq!(append.kind, SpanKind::Client as i32);
    let a = attributes(append);
    assert_eq!(
        (
            a["db.system.name"].as_str(),
            a["db.operation.name"].as_str()
        ),
        ("postgresql", "INSERT")
    );

    let batch = named(&spans, "BATCH read_models").unwrap();
    assert_eq!(batch.kind, SpanKind::Client as i32);
    assert_eq!(attributes(batch)["db.system.name"], "postgresql");

    let send = spans.iter().find(|s| s.name.starts_with("send ")).unwrap();
    assert_eq!(send.kind, SpanKind::Producer as i32);
    let a = attributes(send);
    assert_eq!(a["messaging.system"], "memory");
    assert_eq!(
        send.name,
        format!("send {}", a["messaging.destination.name"])
    );

    let process = spans
        .iter()
        .find(|s| s.name.starts_with("process "))
        .unwrap();
    assert_eq!(process.kind, SpanKind::Consumer as i32);
    let a = attributes(process);
    for key in [
        "messaging.system",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
    ] {
        assert!(a.contains_key(key), "{key} missing: {a:?}");
    }
    // The consumer continues the producer's trace (one purchase, one trace).
    assert!(spans
        .iter()
        .any(|s| s.trace_id == process.trace_id && s.kind == SpanKind::Server as i32));
}
