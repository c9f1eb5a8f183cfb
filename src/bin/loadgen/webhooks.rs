//! A webhook receiver for the flash sale with webhooks: an HTTP server on 127.0.0.1 (port
//! chosen by the OS) that answers every POST with 200 and counts what arrived, so the
//! service's deliveries do real work during the measured phase.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;

pub struct Receiver {
    url: String,
    received: Arc<AtomicU64>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("webhook receiver stopped: {e}");
            }
        });
        Ok(Receiver { url, received })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}
