//! A TCP proxy a test can stop and start again, to take a dependency away from the service,
//! and slow down, to make it answer late.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy in front of a dependency (PostgreSQL, Redis, the broker) that a test can stop
/// (closing its listener and every open connection), start again on the same port, and delay.
pub struct Proxy {
    pub port: u16,
    upstream: String,
    /// Added before each chunk sent upstream, in milliseconds (0: a plain pipe).
    latency_ms: Arc<AtomicU64>,
    running: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let mut proxy = Proxy {
            port,
            upstream: upstream.to_owned(),
            latency_ms: Arc::new(AtomicU64::new(0)),
            running: None,
        };
        proxy.listen(listener);
        proxy
    }

    fn listen(&mut self, listener: TcpListener) {
        let (upstream, latency) = (self.upstream.clone(), Arc::clone(&self.latency_ms));
        self.running = Some(tokio::spawn(forward(listener, upstream, latency)));
    }

    /// Delays every request sent upstream by `latency` from now on (open connections too):
    /// each round trip through the proxy takes that much longer.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).expect("a latency in milliseconds");
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Closes the listener and every connection: the dependency is gone for the service.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
            let _ = running.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .expect("proxy binds its old port again");
        self.listen(listener);
    }
}

/// Accepts and pipes connections; aborting it drops the listener and, with the `JoinSet`,
/// every connection task and its sockets.
async fn forward(listener: TcpListener, upstream: String, latency_ms: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let (upstream, latency_ms) = (upstream.clone(), Arc::clone(&latency_ms));
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::select! {
                            _ = pipe(client_in, server_out, Some(latency_ms)) => {}
                            _ = pipe(server_in, client_out, None) => {}
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Copies `from` to `to` until either side closes, waiting `latency_ms` before each chunk.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    latency_ms: Option<Arc<AtomicU64>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = latency_ms.as_ref().map_or(0, |l| l.load(Ordering::SeqCst));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
