//! A TCP proxy a test can stop and start again, to take a dependency away from the service,
//! slow down, to make it answer late, and silence, to cut the connections open now without a
//! reset (a black-holed route, or a failed-over database host) while new ones get through.

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
    /// Bumped by `silence`: a connection accepted under an older value forwards nothing more.
    epoch: Arc<AtomicU64>,
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
            epoch: Arc::new(AtomicU64::new(0)),
            running: None,
        };
        proxy.listen(listener);
        proxy
    }

    fn listen(&mut self, listener: TcpListener) {
        let links = Links {
            latency_ms: Arc::clone(&self.latency_ms),
            epoch: Arc::clone(&self.epoch),
        };
        self.running = Some(tokio::spawn(forward(
            listener,
            self.upstream.clone(),
            links,
        )));
    }

    /// Every connection open now stops forwarding without a word to the service: what it sent
    /// is never delivered and no answer ever comes, as when a database host vanishes (fails
    /// over) or a route drops packets. The upstream side is closed, so the server's sessions
    /// end and release their locks. Connections opened from now on forward as usual.
    pub fn silence(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
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

/// What every connection's pipes share with the proxy's handle.
#[derive(Clone)]
struct Links {
    latency_ms: Arc<AtomicU64>,
    epoch: Arc<AtomicU64>,
}

/// Accepts and pipes connections; aborting it drops the listener and, with the `JoinSet`,
/// every connection task and its sockets.
async fn forward(listener: TcpListener, upstream: String, links: Links) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let (upstream, links) = (upstream.clone(), links.clone());
                connections.spawn(async move {
                    let born = links.epoch.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (mut client_in, mut client_out) = client.into_split();
                    let (mut server_in, mut server_out) = server.into_split();
                    let up = Pipe { links: &links, born, delayed: true };
                    let down = Pipe { links: &links, born, delayed: false };
                    let silenced = tokio::select! {
                        _ = up.copy(&mut client_in, &mut server_out) => false,
                        _ = down.copy(&mut server_in, &mut client_out) => false,
                        _ = up.silenced() => true,
                    };
                    if silenced {
                        // The old host is gone: its sessions end (and release their locks),
                        // while the service's side of the connection hears nothing, ever.
                        drop((server_in, server_out));
                        std::future::pending::<()>().await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One direction of a connection accepted in epoch `born`.
struct Pipe<'a> {
    links: &'a Links,
    born: u64,
    /// Whether the proxy's latency applies (requests sent upstream).
    delayed: bool,
}

impl Pipe<'_> {
    /// Copies `from` to `to` until either side closes, waiting the latency before each chunk;
    /// once the proxy silenced this connection it holds every chunk, and the sockets, forever.
    async fn copy(&self, from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = if self.delayed {
                self.links.latency_ms.load(Ordering::SeqCst)
            } else {
                0
            };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.links.epoch.load(Ordering::SeqCst) != self.born {
                std::future::pending::<()>().await;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Resolves once the proxy silenced this connection.
    async fn silenced(&self) {
        while self.links.epoch.load(Ordering::SeqCst) == self.born {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
