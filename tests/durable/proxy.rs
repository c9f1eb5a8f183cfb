//! A TCP proxy a test can stop and start again, to take a dependency away from the service.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy in front of a dependency (PostgreSQL, the broker) that a test can stop (closing its listener and every
/// open connection) and start again on the same port.
pub struct Proxy {
    pub port: u16,
    upstream: String,
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
            running: None,
        };
        proxy.running = Some(tokio::spawn(forward(listener, proxy.upstream.clone())));
        proxy
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
        self.running = Some(tokio::spawn(forward(listener, self.upstream.clone())));
    }
}

/// Accepts and pipes connections; aborting it drops the listener and, with the `JoinSet`,
/// every connection task and its sockets.
async fn forward(listener: TcpListener, upstream: String) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
