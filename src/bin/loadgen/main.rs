//! Flash-sale load generator for the ticketing service.
//!
//! Against an already running service (shared/API.md), it sets up an organizer, an event
//! with `--seats` seats on sale and `--buyers` logged-in customers (untimed), then lets
//! `--concurrency` workers reserve and pay for every buyer at once (timed), reads the
//! event's availability and reports throughput, latency and whether the sale's invariants
//! held. Exit code 0 only if they held and no request failed in transport.
//!
//! ```text
//! cargo run --release --bin loadgen -- --seats 1000 --buyers 2000 --concurrency 64
//! cargo run --release --bin loadgen -- --no-pay --json > summary.json
//! cargo run --release --bin loadgen -- --mode naive --database-url postgres://... --seats 2000
//! ```
//!
//! With `--mode naive` it runs the same sale without the service, straight through SQL against
//! `--database-url` the way a typical CRUD service would (see `naive`), as the baseline the
//! service's figures are compared with.
//!
//! With `--pollers N` (the read-heavy scenario) N more clients poll the event's availability
//! while the sale runs, and the run reports how many read-model loads (PostgreSQL statements)
//! each read cost, from the service's `/metrics`.
//!
//! It talks to `--base-url` (or, in naive mode, `--database-url`) only, never retries, never
//! sleeps, and stops by itself.

mod api;
mod cli;
mod measure;
mod naive;
mod polling;
mod report;
mod setup;
mod verify;
mod webhooks;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use uuid::Uuid;

use crate::api::Api;
use crate::cli::{Cli, Mode};
use crate::measure::Sale;
use crate::report::{RunConfig, Summary};

/// Hex digits of the run id embedded in account e-mails and the event name.
const RUN_ID_LEN: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let run_id = Uuid::new_v4().simple().to_string()[..RUN_ID_LEN].to_owned();
    let summary = match cli.mode {
        Mode::Service => service(&cli, run_id).await?,
        Mode::Naive => naive::run(&cli, run_id).await?,
    };
    if cli.json {
        println!("{}", summary.to_json().context("encoding the summary")?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The sale through the running service: set up over HTTP, reserve and pay, read availability.
async fn service(cli: &Cli, run_id: String) -> anyhow::Result<Summary> {
    let concurrency = usize::try_from(cli.concurrency).context("--concurrency")?;
    let setup_parallelism =
        usize::try_from(cli.setup_concurrency).context("--setup-concurrency")?;
    let buyer_count = usize::try_from(cli.buyers).context("--buyers")?;
    // One client for both phases; set-up may run more requests at once than the sale.
    let api = Api::new(&cli.base_url, concurrency.max(setup_parallelism))?;

    let targets = cli
        .base_url
        .iter()
        .map(reqwest::Url::as_str)
        .collect::<Vec<_>>()
        .join(",");
    eprintln!("run {run_id}: setting up the sale at {targets}");
    let receiver = match cli.webhooks {
        0 => None,
        _ => Some(webhooks::Receiver::start().await?),
    };
    let hooks = receiver.as_ref().map(|r| (r.url(), cli.webhooks));
    let event_id = setup::open_sale(
        &api,
        &run_id,
        cli.seats,
        hooks.as_ref().map(|(u, n)| (u.as_str(), *n)),
    )
    .await
    .context("setting up the event")?;
    eprintln!("event {event_id} on sale with {} seats", cli.seats);
    let buyers = setup::buyers(&api, &run_id, buyer_count, setup_parallelism)
        .await
        .context("setting up the buyers")?;

    let rounds = usize::try_from(cli.rounds).context("--rounds")?;
    let attempts: Vec<_> = (0..rounds).flat_map(|_| buyers.iter().cloned()).collect();
    eprintln!(
        "measured phase: {buyer_count} buyers x {rounds} rounds = {} attempts, {concurrency} workers",
        attempts.len()
    );
    let sale = Sale {
        event_id,
        quantity: cli.quantity,
        pay: cli.pays(),
    };
    let pollers = polling::Pollers::start(&api, event_id, cli.pollers).await?;
    let measured = measure::run(&api, &sale, attempts, concurrency)
        .await
        .context("running the measured phase")?;
    if let Some(pollers) = pollers {
        eprint!("{}", pollers.stop(&api).await?);
    }
    eprintln!(
        "measured phase done in {:.3} s; verifying",
        measured.wall.as_secs_f64()
    );
    if let Some(receiver) = &receiver {
        // On stdout, beside the summary (scripts/bench.sh discards stderr).
        println!(
            "webhooks: {} endpoints, {} deliveries received by the end of the measured phase",
            cli.webhooks,
            receiver.received()
        );
    }
    let availability = api
        .availability(event_id)
        .await
        .map_err(|error| format!("{error:#}"));

    let config = RunConfig {
        run_id,
        mode: Mode::Service,
        base_url: Some(targets),
        database_url: None,
        event_id,
        seats: cli.seats,
        // Every attempt is a would-be purchase, so demand is buyers x rounds.
        buyers: cli.buyers.saturating_mul(cli.rounds),
        quantity: cli.quantity,
        concurrency: cli.concurrency,
        pay: cli.pays(),
    };
    Ok(Summary::new(config, measured, availability))
}
