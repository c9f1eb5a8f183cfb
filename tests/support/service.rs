//! The real `ticketing` binary as a child process for the tests that look at it from outside
//! (its first scrape, its exported traces): started on a free port with the given
//! environment, ready once `ready_path` answers 2xx.

use std::time::{Duration, Instant};

/// A running service: the child (killed on drop) and its base URL.
pub struct Child {
    pub process: tokio::process::Child,
    pub base: String,
}

/// Starts the binary with `env` (and none of the optional adapters unless `env` names them)
/// and waits, bounded, until `GET ready_path` answers 2xx.
pub async fn start(env: &[(&str, &str)], ready_path: &str) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketing"));
    command
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("PROJECTIONS_DATABASE_URL")
        .env_remove("AUTH_DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_FILTER")
        .env_remove("OTEL_SDK_DISABLED")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let process = command.spawn().expect("the ticketing binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("{base}{ready_path}"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the service did not answer {ready_path}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Child { process, base }
}
