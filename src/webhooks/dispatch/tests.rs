//! Delivery-time refusals in production: an endpoint whose address is (or has become)
//! non-public is never connected to, whether the URL names the address or a host name that
//! resolves to it. A delivery is sent by one instance at a time, and only its holder records.

use super::*;
use crate::clock::SystemClock;
use crate::webhooks::memory::MemoryWebhooks;
use crate::webhooks::signing;
use std::sync::atomic::{AtomicUsize, Ordering};

fn endpoint(url: String) -> Endpoint {
    Endpoint {
        id: Uuid::new_v4(),
        owner_id: Uuid::new_v4(),
        url,
        event_types: vec!["*".into()],
        event_id: None,
        description: None,
        status: EndpointStatus::Active,
        secret: signing::new_secret(),
        previous_secret: None,
        created_at: chrono::Utc::now(),
        from_position: 0,
    }
}

fn delivery(endpoint: Uuid) -> Delivery {
    Delivery {
        id: Uuid::new_v4(),
        endpoint_id: endpoint,
        message_id: "msg_1".into(),
        event_type: "event.created".into(),
        body: "{}".into(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_status_code: None,
        next_attempt_at: None,
        created_at: chrono::Utc::now(),
    }
}

/// A receiver on 127.0.0.1 that answers `POST /hook` with 200 after `delay`, and how many
/// requests it got.
async fn receiver(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, hits)
}

/// In production, deliveries to 127.0.0.1 and to `localhost` fail as `refused` without a
/// single request reaching the (listening) receiver; in development the same URL is served.
#[tokio::test]
async fn production_never_connects_to_a_private_address() {
    let (port, hits) = receiver(Duration::ZERO).await;

    for (strict, expected) in [
        (true, DeliveryStatus::Failed),
        (false, DeliveryStatus::Succeeded),
    ] {
        let store = Arc::new(MemoryWebhooks::default());
        let metrics = Arc::new(Metrics::new());
        let settings = DeliverySettings {
            strict,
            retry_base: Duration::from_millis(10),
            ..DeliverySettings::default()
        };
        let dispatcher = Dispatcher::new(
            Arc::clone(&store) as Arc<dyn WebhookStore>,
            Arc::new(SystemClock),
            Arc::clone(&metrics),
            settings,
        )
        .unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let e = endpoint(format!("http://{host}:{port}/hook"));
            store.create(&e).await.unwrap();
            let d = delivery(e.id);
            store.enqueue(std::slice::from_ref(&d)).await.unwrap();
            // The worker's own delivery task is what we wait for: run it directly.
            let inner = Arc::clone(&dispatcher.0);
            inner.deliver(e.clone(), d).await;
            let logged = store.deliveries(e.id, Default::default()).await.unwrap();
            assert_eq!(logged.items[0].status, expected, "{host}, strict {strict}");
        }
        let refused = metrics
            .webhook_deliveries
            .with_label_values(&["refused"])
            .get();
        assert_eq!(refused, if strict { 2 } else { 0 });
        if strict {
            assert_eq!(
                hits.load(Ordering::SeqCst),
                0,
                "nothing reached the receiver"
            );
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The delivery client speaks TLS to an `https://` endpoint: the first byte it sends is a TLS
/// handshake record (0x16). A client without TLS never connects (unsupported scheme).
#[tokio::test]
async fn https_endpoints_are_reached_over_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (first_byte, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        if let Ok((mut socket, _)) = listener.accept().await {
            let mut byte = [0u8; 1];
            if socket.read_exact(&mut byte).await.is_ok() {
                let _ = first_byte.send(byte[0]);
            }
        }
    });
    let settings = DeliverySettings {
        timeout: Duration::from_secs(2),
        ..DeliverySettings::default()
    };
    let dispatcher = Dispatcher::new(
        Arc::new(MemoryWebhooks::default()) as Arc<dyn WebhookStore>,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        settings,
    )
    .unwrap();
    // The listener never completes the handshake: the request itself fails (timeout).
    let _ = dispatcher
        .0
        .client
        .post(format!("https://127.0.0.1:{port}/hook"))
        .send()
        .await;
    let byte = tokio::time::timeout(Duration::from_secs(5), received)
        .await
        .expect("the client never connected: no TLS support")
        .expect("the listener saw no byte");
    assert_eq!(byte, 0x16, "not a TLS handshake record");
}

/// Two instances' dispatchers offered the same pending delivery at once (each one's sweep
/// found it, the receiver being slow): only the one that holds it sends it, once, and its
/// success is what the log shows.
#[tokio::test]
async fn a_delivery_is_sent_by_one_instance_at_a_time() {
    let (port, hits) = receiver(Duration::from_millis(300)).await;

    let store = Arc::new(MemoryWebhooks::default());
    let instance = || {
        let settings = DeliverySettings {
            strict: false,
            ..DeliverySettings::default()
        };
        Dispatcher::new(
            Arc::clone(&store) as Arc<dyn WebhookStore>,
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            settings,
        )
        .unwrap()
    };
    let (a, b) = (instance(), instance());
    let e = endpoint(format!("http://127.0.0.1:{port}/hook"));
    store.create(&e).await.unwrap();
    let d = delivery(e.id);
    store.enqueue(std::slice::from_ref(&d)).await.unwrap();
    tokio::join!(
        Arc::clone(&a.0).deliver(e.clone(), d.clone()),
        Arc::clone(&b.0).deliver(e.clone(), d.clone()),
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let logged = store.deliveries(e.id, Default::default()).await.unwrap();
    assert_eq!(
        (logged.items[0].status, logged.items[0].attempts),
        (DeliveryStatus::Succeeded, 1)
    );
}

/// An instance whose last attempt is still waiting for the receiver when an admin redelivers
/// the delivery, and another instance sends it with success, does not undo that success with
/// its own late failure, nor mark the endpoint failing, nor send it again: its record is
/// refused (it no longer holds the delivery) and it stops.
#[tokio::test]
async fn a_late_answer_does_not_undo_the_instance_that_took_a_delivery_over() {
    // The first request fails at once; the second waits for the test and then fails too;
    // later ones succeed.
    let hits = Arc::new(AtomicUsize::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = Arc::new(Notify::new());
    let router = {
        let (hits, gate) = (Arc::clone(&hits), Arc::clone(&gate));
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (hits, gate, arrived) =
                    (Arc::clone(&hits), Arc::clone(&gate), arrived_tx.clone());
                async move {
                    match hits.fetch_add(1, Ordering::SeqCst) {
                        0 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        1 => {
                            let _ = arrived.send(());
                            gate.notified().await;
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        }
                        _ => axum::http::StatusCode::OK,
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let store = Arc::new(MemoryWebhooks::default());
    let instance = |metrics: Arc<Metrics>, max_attempts| {
        let settings = DeliverySettings {
            retry_base: Duration::from_millis(10),
            max_attempts,
            ..DeliverySettings::default()
        };
        Dispatcher::new(
            Arc::clone(&store) as Arc<dyn WebhookStore>,
            Arc::new(SystemClock),
            metrics,
            settings,
        )
        .unwrap()
    };
    let first_metrics = Arc::new(Metrics::new());
    // The first instance's second attempt is its last.
    let (first, second) = (
        instance(Arc::clone(&first_metrics), 2),
        instance(Arc::new(Metrics::new()), 8),
    );
    let e = endpoint(format!("http://127.0.0.1:{port}/hook"));
    store.create(&e).await.unwrap();
    let d = delivery(e.id);
    store.enqueue(std::slice::from_ref(&d)).await.unwrap();

    let first_sends = tokio::spawn(Arc::clone(&first.0).deliver(e.clone(), d.clone()));
    arrived
        .recv()
        .await
        .expect("the first instance's retry reached the receiver");
    store.redeliver(e.id, d.id).await.unwrap().unwrap();
    Arc::clone(&second.0).deliver(e.clone(), d.clone()).await;
    gate.notify_one();
    first_sends.await.unwrap();

    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "not sent again after the success"
    );
    let logged = store.deliveries(e.id, Default::default()).await.unwrap();
    assert_eq!(
        (logged.items[0].status, logged.items[0].attempts),
        (DeliveryStatus::Succeeded, 2),
        "the success stands; the late failure is not recorded"
    );
    let count = |outcome| {
        first_metrics
            .webhook_deliveries
            .with_label_values(&[outcome])
            .get()
    };
    assert_eq!((count("superseded"), count("failed")), (1, 0));
    let endpoint_now = store.get(e.id).await.unwrap().unwrap();
    assert_eq!(
        endpoint_now.status,
        EndpointStatus::Active,
        "not marked failing"
    );
}
