//! Webhooks against a local receiver (an axum server on 127.0.0.1:0 in the test): signed
//! deliveries a Standard Webhooks verifier accepts (checked here with an HMAC written from
//! the specification, and with the `standardwebhooks` Python package when it is installed),
//! retries with the same `webhook-id`, 410 disabling, rotation, isolation between
//! organizers, the delivery log, redelivery, a slow endpoint that delays nobody else, and
//! SSRF refusals in production.

use super::helpers::*;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ticketing::config::AppEnv;
use tokio::sync::Notify;
use uuid::Uuid;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    /// Whether the receiver had answered it.
    answered: bool,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Received>>,
    changed: Notify,
}

/// The receiver: `/ok/{name}` answers 200, `/flaky/{name}` 500 to the first request of each
/// message and 200 after, `/gone/{name}` 410, `/down/{name}` always 503, `/slow/{name}` 200
/// after 10 s.
struct Receiver {
    base: String,
    log: Arc<Log>,
}

async fn receive(
    State(log): State<Arc<Log>>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = format!("/{kind}/{name}");
    let id = header("webhook-id");
    let index = {
        let mut seen = log.seen.lock().unwrap();
        seen.push(Received {
            path: path.clone(),
            id: id.clone(),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
            answered: false,
        });
        seen.len() - 1
    };
    log.changed.notify_waiters();
    let status = match kind.as_str() {
        "ok" => StatusCode::OK,
        "gone" => StatusCode::GONE,
        "down" => StatusCode::SERVICE_UNAVAILABLE,
        "flaky" => {
            let earlier = log.seen.lock().unwrap()[..index]
                .iter()
                .any(|r| r.path == path && r.id == id);
            if earlier {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            StatusCode::OK
        }
        _ => StatusCode::NOT_FOUND,
    };
    log.seen.lock().unwrap()[index].answered = true;
    log.changed.notify_waiters();
    status
}

impl Receiver {
    async fn start() -> Receiver {
        let log = Arc::new(Log::default());
        let router = axum::Router::new()
            .route("/{kind}/{name}", post(receive))
            .with_state(Arc::clone(&log));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits (at most 20 s) until `done` holds for everything received; returns it.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let seen = self.log.seen.lock().unwrap().clone();
            if done(&seen) {
                return seen;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("the receiver never saw {what}; it saw {seen:#?}");
            }
        }
    }
}

/// Standard Webhooks verification, written from the specification (not the service's code):
/// some `v1,` signature must be base64(HMAC-SHA256(base64-decoded secret, "id.ts.body")).
fn verify(secret: &str, r: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// A Python with the `standardwebhooks` package: `STANDARDWEBHOOKS_PYTHON`, or the venv
/// `target/swh-venv` (see README.md, "Tests"), if present.
fn reference_python() -> Option<String> {
    let candidate = std::env::var("STANDARDWEBHOOKS_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/swh-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    std::path::Path::new(&candidate)
        .exists()
        .then_some(candidate)
}

/// The reference library's verdict on `r` signed with `secret`.
fn reference_verify(python: &str, secret: &str, r: &Received) -> bool {
    let script = "import json,sys\nfrom standardwebhooks.webhooks import Webhook\n\
        a=json.load(sys.stdin)\n\
        Webhook(a['secret']).verify(a['body'],{'webhook-id':a['id'],'webhook-timestamp':a['ts'],'webhook-signature':a['sig']})\n";
    let input = json!({"secret": secret, "body": r.body, "id": r.id, "ts": r.timestamp,
        "sig": r.signature})
    .to_string();
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

async fn fast_retries() -> TestApp {
    spawn_app_with(|c| {
        c.webhook_retry_base = Duration::from_millis(20);
        c.webhook_max_attempts = 3;
    })
    .await
}

async fn register(app: &TestApp, who: &User, url: &str, types: &[&str]) -> (Uuid, String) {
    let created = app
        .post(
            "/api/webhooks",
            Some(&who.token),
            json!({"url": url, "event_types": types, "description": "test"}),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    assert_eq!(created.body["status"], "active");
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created.id("id");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/webhooks/{id}").as_str())
    );
    (id, secret)
}

fn of_type<'a>(seen: &'a [Received], path: &str, t: &str) -> Vec<&'a Received> {
    seen.iter()
        .filter(|r| r.path == path && r.json()["type"] == t)
        .collect()
}

/// A purchase reaches the organizer's endpoint as `reservation.confirmed` and
/// `payment.captured`, signed so that a Standard Webhooks verifier accepts it, with the
/// public views as data; another organizer's endpoint gets none of it.
#[tokio::test]
async fn a_purchase_is_delivered_signed_and_only_to_its_organizer() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let (organizer, other) = (app.organizer().await, app.organizer().await);
    let (_, secret) = register(
        &app,
        &organizer,
        &rx.url("/ok/mine"),
        &["reservation.confirmed", "payment.captured"],
    )
    .await;
    register(&app, &other, &rx.url("/ok/other"), &["*"]).await;
    let listed = app.get("/api/webhooks", Some(&organizer.token)).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert!(
        listed.body["items"][0].get("secret").is_none(),
        "never the secret again"
    );

    let event = app.event_on_sale(&organizer, 10).await;
    let customer = app.customer().await;
    let held = app.reserve(&customer, event, 2).await;
    let reservation = held.id("reservation_id");
    let paid = app.pay(&customer, reservation, "tok_visa").await;
    assert_eq!(paid.status, 201, "{:#}", paid.body);

    let seen = rx
        .until("the confirmation and the capture", |s| {
            of_type(s, "/ok/mine", "reservation.confirmed").len() == 1
                && of_type(s, "/ok/mine", "payment.captured").len() == 1
        })
        .await;
    let confirmed = of_type(&seen, "/ok/mine", "reservation.confirmed")[0];
    let captured = of_type(&seen, "/ok/mine", "payment.captured")[0];
    let python = reference_python();
    for r in [confirmed, captured] {
        assert!(verify(&secret, r), "signature does not verify: {r:#?}");
        if let Some(python) = &python {
            assert!(
                reference_verify(python, &secret, r),
                "standardwebhooks refuses {r:#?}"
            );
        }
        assert!(r.id.starts_with("msg_"));
        let body = r.json();
        assert!(body["timestamp"].is_string() && body["data"].is_object());
        assert!(!r.body.contains("charge_id") && !r.body.contains("whsec_"));
    }
    let data = confirmed.json()["data"].clone();
    assert_eq!(data["reservation_id"], reservation.to_string());
    assert_eq!(data["event_id"], event.to_string());
    assert_eq!(
        captured.json()["data"]["payment_id"],
        paid.body["payment_id"]
    );
    eprintln!(
        "reference verifier: {}",
        python.as_deref().unwrap_or("not installed")
    );

    // The other organizer's endpoint is live (it hears its own event) but heard nothing of
    // this one.
    let own = app.draft_event(&other, 5).await;
    let seen = rx
        .until("the other organizer's own event", |s| {
            s.iter()
                .any(|r| r.path == "/ok/other" && r.body.contains(&own.to_string()))
        })
        .await;
    assert!(seen
        .iter()
        .filter(|r| r.path == "/ok/other")
        .all(|r| !r.body.contains(&event.to_string())));
}

/// A 500 is retried with the same `webhook-id`; the log shows both attempts; a redelivery
/// sends the same message again.
#[tokio::test]
async fn a_failed_delivery_is_retried_logged_and_redelivered_with_the_same_id() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    let (endpoint, _) = register(&app, &organizer, &rx.url("/flaky/a"), &["event.created"]).await;
    app.draft_event(&organizer, 5).await;
    let seen = rx
        .until("a failure and its retry", |s| {
            s.iter()
                .filter(|r| r.path == "/flaky/a" && r.answered)
                .count()
                == 2
        })
        .await;
    assert_eq!(seen[0].id, seen[1].id, "a retry keeps the webhook-id");

    let log_path = format!("/api/webhooks/{endpoint}/deliveries");
    let log = app
        .get_when(&log_path, Some(&organizer.token), |a| {
            a.body["items"][0]["status"] == "succeeded"
        })
        .await;
    let entry = &log.body["items"][0];
    assert_eq!(entry["attempts"], 2, "{entry:#}");
    assert_eq!(entry["last_status_code"], 200);
    assert_eq!(entry["message_id"], seen[0].id.as_str());
    assert_eq!(entry["event_type"], "event.created");

    let delivery = entry["id"].as_str().unwrap();
    let again = app
        .post(
            &format!("/api/webhooks/{endpoint}/deliveries/{delivery}/redeliver"),
            Some(&organizer.token),
            json!({}),
        )
        .await;
    assert_eq!(again.status, 202, "{:#}", again.body);
    let seen = rx
        .until("the redelivery", |s| {
            s.iter().filter(|r| r.path == "/flaky/a").count() == 3
        })
        .await;
    assert_eq!(seen[2].id, seen[0].id);
    app.get_when(&log_path, Some(&organizer.token), |a| {
        a.body["items"][0]["attempts"] == 3 && a.body["items"][0]["status"] == "succeeded"
    })
    .await;
}

/// `410 Gone` disables the endpoint: its status says so and nothing more is sent.
#[tokio::test]
async fn gone_disables_the_endpoint() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    let (endpoint, _) = register(&app, &organizer, &rx.url("/gone/a"), &["*"]).await;
    app.draft_event(&organizer, 5).await;
    rx.until("the first delivery", |s| s.iter().any(|r| r.answered))
        .await;
    let path = format!("/api/webhooks/{endpoint}");
    app.get_when(&path, Some(&organizer.token), |a| {
        a.body["status"] == "disabled"
    })
    .await;
    let log = app
        .get(&format!("{path}/deliveries"), Some(&organizer.token))
        .await;
    let entry = &log.body["items"][0];
    assert_eq!(
        (entry["status"].as_str(), entry["attempts"].as_u64()),
        (Some("failed"), Some(1))
    );
    let delivery = entry["id"].as_str().unwrap();
    app.post(
        &format!("{path}/deliveries/{delivery}/redeliver"),
        Some(&organizer.token),
        json!({}),
    )
    .await
    .assert_problem(409, "invalid-state");
}

/// After a rotation both secrets sign for 24 hours, then only the new one.
#[tokio::test]
async fn a_rotation_signs_with_both_secrets_for_a_day() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    let (endpoint, old) = register(&app, &organizer, &rx.url("/ok/r"), &["event.created"]).await;
    let rotated = app
        .post(
            &format!("/api/webhooks/{endpoint}/rotate-secret"),
            Some(&organizer.token),
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{:#}", rotated.body);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);

    app.draft_event(&organizer, 5).await;
    let seen = rx.until("a delivery", |s| s.len() == 1).await;
    assert_eq!(seen[0].signature.split(' ').count(), 2);
    assert!(verify(&old, &seen[0]) && verify(&new, &seen[0]));

    app.clock.advance(chrono::Duration::hours(25));
    // The session lasts a day too.
    let organizer = app.login(&organizer.email, PASSWORD).await;
    app.draft_event(&organizer, 5).await;
    let seen = rx.until("a second delivery", |s| s.len() == 2).await;
    assert_eq!(seen[1].signature.split(' ').count(), 1);
    assert!(verify(&new, &seen[1]) && !verify(&old, &seen[1]));
}

/// An endpoint that takes 10 s to answer does not delay another endpoint's deliveries: the
/// fast one has all of them while the slow one's first request is still unanswered.
#[tokio::test]
async fn a_slow_endpoint_does_not_delay_another() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    register(&app, &organizer, &rx.url("/slow/s"), &["*"]).await;
    register(&app, &organizer, &rx.url("/ok/f"), &["*"]).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        app.event_on_sale(&organizer, 5).await;
    }
    // created, published, sales_opened per event.
    let seen = rx
        .until("every delivery to the fast endpoint", |s| {
            s.iter().filter(|r| r.path == "/ok/f" && r.answered).count() == 9
        })
        .await;
    let slow: Vec<&Received> = seen.iter().filter(|r| r.path == "/slow/s").collect();
    assert!(
        slow.iter().all(|r| !r.answered),
        "the fast endpoint had everything while the slow one was still pending"
    );
    eprintln!(
        "fast endpoint: 9 deliveries in {:?}; slow endpoint: {} requests in flight",
        started.elapsed(),
        slow.len()
    );
}

/// In production, URLs that resolve to loopback, private, link-local or metadata addresses
/// are refused at registration.
#[tokio::test]
async fn production_refuses_private_addresses() {
    let app = spawn_app_with(|c| c.app_env = AppEnv::Production).await;
    let organizer = app.organizer().await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/hook",
    ] {
        let refused = app
            .post(
                "/api/webhooks",
                Some(&organizer.token),
                json!({"url": url, "event_types": ["*"]}),
            )
            .await;
        refused.assert_problem(422, "validation-failed");
        assert_eq!(refused.body["errors"][0]["field"], "url", "{url}");
    }
    let listed = app.get("/api/webhooks", Some(&organizer.token)).await;
    assert_eq!(listed.body["total_count"], 0);
}

/// The webhook metrics exist from start-up, at zero, and count deliveries by outcome.
#[tokio::test]
async fn webhook_metrics_start_at_zero_and_count_outcomes() {
    let app = fast_retries().await;
    let text = app.metrics_text().await;
    for outcome in [
        "succeeded",
        "retried",
        "failed",
        "disabled",
        "refused",
        "superseded",
    ] {
        let series = format!("ticketing_webhook_deliveries_total{{outcome=\"{outcome}\"}} 0");
        assert!(text.contains(&series), "{series} missing");
    }
    assert!(text.contains("ticketing_webhook_delivery_duration_seconds_count 0"));
    assert!(text.contains("ticketing_webhook_queue_depth 0"));

    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    register(&app, &organizer, &rx.url("/ok/m"), &["event.created"]).await;
    app.draft_event(&organizer, 5).await;
    rx.until("a delivery", |s| s.iter().any(|r| r.answered))
        .await;
    eventually(
        "the success is counted",
        Duration::from_secs(10),
        || async {
            app.metric(
                "ticketing_webhook_deliveries_total",
                &[("outcome", "succeeded")],
            )
            .await
                == 1.0
        },
    )
    .await;
}

/// An endpoint hears only of events committed after it was registered, even when the bus
/// hands the consumer older ones (the in-process bus replays the log at every start).
#[tokio::test]
async fn an_endpoint_hears_nothing_from_before_its_registration() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    let before = app.draft_event(&organizer, 5).await;
    register(&app, &organizer, &rx.url("/ok/late"), &["*"]).await;
    let after = app.draft_event(&organizer, 5).await;
    let seen = rx
        .until("the later event", |s| {
            s.iter().any(|r| r.body.contains(&after.to_string()))
        })
        .await;
    assert!(seen.iter().all(|r| !r.body.contains(&before.to_string())));
}

/// A delivery that fails every attempt gives up after `WEBHOOK_MAX_ATTEMPTS` (3 here) and marks
/// the endpoint `failing`; the log shows the attempts and the last status code.
#[tokio::test]
async fn repeated_failure_marks_the_endpoint_failing() {
    let app = fast_retries().await;
    let rx = Receiver::start().await;
    let organizer = app.organizer().await;
    let (endpoint, _) = register(&app, &organizer, &rx.url("/down/a"), &["event.created"]).await;
    app.draft_event(&organizer, 5).await;
    let seen = rx
        .until("three attempts", |s| {
            s.iter().filter(|r| r.answered).count() == 3
        })
        .await;
    assert!(seen.iter().all(|r| r.id == seen[0].id));
    let path = format!("/api/webhooks/{endpoint}");
    app.get_when(&path, Some(&organizer.token), |a| {
        a.body["status"] == "failing"
    })
    .await;
    let log = app
        .get(&format!("{path}/deliveries"), Some(&organizer.token))
        .await;
    let entry = &log.body["items"][0];
    assert_eq!(entry["status"], "failed", "{entry:#}");
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["last_status_code"], 503);
}
