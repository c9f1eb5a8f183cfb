//! `ticketing`: reads the configuration, builds the application and serves it until SIGTERM
//! or Ctrl-C. Wiring only; everything else lives in the library.

use anyhow::Context;
use std::sync::Arc;
use ticketing::clock::SystemClock;
use ticketing::config::{AppEnv, Config};
use ticketing::observability::telemetry;

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let telemetry = telemetry::init(
        config.app_env == AppEnv::Production,
        config.otel_endpoint.as_deref(),
        &config.otel_traces_filter,
    )?;
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config));
    // Flush the spans of the last requests, outside the runtime (the exporter blocks).
    telemetry.shutdown();
    served
}

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived blocks
/// on every worker thread, where glibc's malloc and free took a fifth of the in-memory
/// service's CPU (perf, BENCHMARKS.md). The 19 MiB blocks of each Argon2id hash go back to
/// the OS within seconds (300 registrations: 75 MB RSS at once, 34 MB ten seconds later).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for the signals before start-up: a stop that arrives while the app is built then
    // takes effect as soon as it serves, through the graceful path (the bus consumers finish
    // joining and leave their groups), instead of killing the process on the spot.
    let shutdown = shutdown_signal();
    tracing::info!(?config, "starting");
    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    let app = ticketing::startup::build(config, Arc::new(SystemClock)).await?;
    app.serve(listener, shutdown).await
}

/// Registers the handlers now (not when first polled) and completes on SIGTERM or Ctrl-C.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let ctrl_c = received(interrupt.as_mut(), "Ctrl-C");
            let terminate = received(terminate.as_mut(), "SIGTERM");
            tokio::select! {
                () = ctrl_c => {},
                () = terminate => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    }
}

/// Completes when the registered signal arrives; never, when it could not be registered.
#[cfg(unix)]
async fn received(
    signal: Result<&mut tokio::signal::unix::Signal, &mut std::io::Error>,
    name: &str,
) {
    match signal {
        Ok(signal) => {
            signal.recv().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}
