//! Start-up errors an operator can act on: the real binary, misconfigured, must exit non-zero
//! and say on stderr which variable is wrong and, for an unreachable database, where it tried
//! (host and port) and why (the cause, e.g. "connection refused"), never the password. And the
//! log of a good start, written to a pipe, is plain text.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the service with `env` and returns its stderr once it exited (non-zero).
fn failed_start(env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ticketing"));
    command
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("PROJECTIONS_DATABASE_URL")
        .env_remove("AUTH_DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the ticketing binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the service") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the service did not exit on a bad configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("stderr of the service");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!status.success(), "the service exited 0:\n{stderr}");
    stderr
}

/// A port nothing listens on right now.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn an_unreachable_database_names_the_variable_host_port_and_cause() {
    let port = closed_port();
    let url = format!("postgres://ticketing:s3cret-pw@127.0.0.1:{port}/ticketing");
    let stderr = failed_start(&[("DATABASE_URL", &url)]);
    for expected in [
        "DATABASE_URL".to_owned(),
        "host 127.0.0.1".to_owned(),
        format!("port {port}"),
    ] {
        assert!(stderr.contains(&expected), "no {expected:?} in:\n{stderr}");
    }
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "no cause in:\n{stderr}"
    );
    assert!(
        !stderr.contains("s3cret-pw"),
        "the password leaked:\n{stderr}"
    );
}

#[test]
fn a_database_url_that_is_no_url_names_the_variable() {
    let stderr = failed_start(&[("DATABASE_URL", "not-a-url")]);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("not a PostgreSQL URL"),
        "{stderr}"
    );
    let stderr = failed_start(&[
        ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
        ("AUTH_DATABASE_URL", "nonsense"),
    ]);
    assert!(stderr.contains("AUTH_DATABASE_URL"), "{stderr}");
}

/// The crash-after-capture fault hook is never honoured in production: the binary refuses to
/// start and names the variable.
#[test]
fn the_crash_hook_is_refused_in_production() {
    let stderr = failed_start(&[
        ("APP_ENV", "production"),
        ("FAULT_CRASH_AFTER_CAPTURE", "1"),
    ]);
    assert!(
        stderr.contains("FAULT_CRASH_AFTER_CAPTURE") && stderr.contains("refused"),
        "{stderr}"
    );
}

/// A log written to a pipe (a file, journald, a collector) carries no terminal colour codes,
/// so that `grep key=value` finds the fields the RUNBOOK names.
#[test]
fn a_log_written_to_a_pipe_is_plain_text() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .env_remove("APP_ENV")
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the ticketing binary starts");
    let stdout = child.stdout.take().expect("the service's stdout");
    // Stopped once the log was read, or after a minute should it never say it listens.
    let (read, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let _ = finished.recv_timeout(Duration::from_secs(60));
        let _ = child.kill();
        let _ = child.wait();
    });
    // Read until the service says it listens (or its stdout closes, as it stops).
    let mut log = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a log line");
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    let _ = read.send(());
    watchdog.join().expect("the watchdog stops the service");
    assert!(log.contains("listening addr=127.0.0.1:"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log:?}"
    );
}
