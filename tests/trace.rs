//! One purchase is one trace: the spans of the HTTP requests, the reducer, the append, the
//! outbox relay's publish and the bus consumer all share the trace id the client sent in its
//! `traceparent` header, each hop a child of the one before. The spans are captured in memory
//! through the layers the service installs (`telemetry::layers`: the log's and the exporter's,
//! with their filters), the exporter aside. Its own test binary, because the subscriber it
//! installs is global.

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ticketing::clock::SystemClock;
use ticketing::config::{Config, RateLimits};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// POSTs `body`; the purchase's requests (`traced`) carry the client's `traceparent`.
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let traced = path == "/api/reservations" || path == "/api/payments";
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if traced {
            request = request.header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"));
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    async fn user(&self, role: &str) -> String {
        let email = format!("{role}-{}@trace.example", uuid::Uuid::new_v4().simple());
        let password = "correct-horse-1";
        self.post(
            "/auth/register",
            None,
            json!({"email": email, "password": password, "role": role}),
        )
        .await;
        let login = self
            .post(
                "/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        login["token"].as_str().unwrap().to_owned()
    }
}

/// The spans of one hop. Names follow the OpenTelemetry semantic conventions: "METHOD route"
/// for a request, "INSERT events" for an append, "send <topic>" and "process <topic>" on the
/// bus; the reducer's span is "decide".
fn named<'a>(spans: &'a [SpanData], hop: &str) -> Vec<&'a SpanData> {
    let is = |name: &str| match hop {
        "http_request" => name.starts_with("POST ") || name.starts_with("GET "),
        "append" => name == "INSERT events",
        "publish" => name.starts_with("send "),
        "consume" => name.starts_with("process "),
        other => name == other,
    };
    spans.iter().filter(|s| is(&s.name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_one_trace_from_the_request_to_the_projection() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // The layers the service installs, both at `info`: the log's and the exporter's, each
    // with the filter that keeps the other's own spans out.
    tracing_subscriber::registry()
        .with(ticketing::observability::telemetry::layers(
            false,
            EnvFilter::new("info"),
            Some(&provider),
            EnvFilter::new("info"),
        ))
        .init();

    let config = Config {
        rate_limits: RateLimits {
            auth_per_minute: 1_000_000,
            auth_burst: 1_000_000,
            writes_per_second: 1_000_000,
            reads_per_second: 1_000_000,
        },
        ..Config::default()
    };
    let app = ticketing::startup::build(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client {
        base: format!("http://{}", listener.local_addr().unwrap()),
        http: reqwest::Client::new(),
    };
    tokio::spawn(app.serve(listener, std::future::pending()));

    let organizer = client.user("organizer").await;
    let event = client
        .post(
            "/api/events",
            Some(&organizer),
            json!({
                "name": "Traced", "venue": {"name": "Hall", "address": "1 Main St"},
                "starts_at": "2030-06-01T20:00:00Z", "ends_at": "2030-06-01T23:00:00Z",
                "sections": [{"name": "floor", "capacity": 5, "price_cents": 2500}]
            }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for step in ["publish", "open-sales"] {
        client
            .post(
                &format!("/api/events/{event}/{step}"),
                Some(&organizer),
                json!({}),
            )
            .await;
    }
    let buyer = client.user("customer").await;
    let reservation = client
        .post(
            "/api/reservations",
            Some(&buyer),
            json!({"event_id": event, "section": "floor", "quantity": 1}),
        )
        .await["reservation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    client
        .post(
            "/api/payments",
            Some(&buyer),
            json!({"reservation_id": reservation,
                   "payment_method": {"type": "card", "token": "tok_visa"}}),
        )
        .await;

    // The consumer applies the confirmation moments later; wait for its span.
    let trace = TraceId::from_hex(TRACE).unwrap();
    let started = Instant::now();
    let spans = loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        // reservation.placed and reservation.confirmed reach the insights consumer.
        if named(&spans, "consume").len() >= 2 {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no consume spans in the trace: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The log's own span of each request is never exported.
    let exported = exporter.get_finished_spans().unwrap();
    assert!(
        exported.iter().all(|s| s.name != "request"),
        "the log's span was exported"
    );
    for name in ["http_request", "decide", "append", "publish", "consume"] {
        assert!(
            !named(&spans, name).is_empty(),
            "no {name} span in the purchase's trace: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }
    // Each hop is a child of the one before it.
    let ids = |name: &str| -> Vec<SpanId> {
        named(&spans, name)
            .iter()
            .map(|s| s.span_context.span_id())
            .collect()
    };
    let requests = ids("http_request");
    for hop in ["decide", "append", "publish"] {
        for span in named(&spans, hop) {
            assert!(
                requests.contains(&span.parent_span_id),
                "{hop} is not a child of a request span"
            );
        }
    }
    let publishes = ids("publish");
    for span in named(&spans, "consume") {
        assert!(
            publishes.contains(&span.parent_span_id),
            "consume is not a child of a publish span"
        );
    }
    let commands: Vec<String> = named(&spans, "decide")
        .iter()
        .flat_map(|s| s.attributes.iter())
        .filter(|kv| kv.key.as_str() == "command")
        .map(|kv| kv.value.to_string())
        .collect();
    assert!(commands.contains(&"reserve".to_owned()), "{commands:?}");
    assert!(
        commands.contains(&"record_capture".to_owned()),
        "{commands:?}"
    );
}
