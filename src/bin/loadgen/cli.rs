//! Command-line options of the load generator.
//!
//! Parsing only: the defaults and ranges live here, the behaviour elsewhere.

use clap::{Parser, ValueEnum};
use reqwest::Url;
use serde::Serialize;

/// What the load generator sells through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The running service, over HTTP: reserve, then pay.
    Service,
    /// The baseline: the same sale straight through SQL, one `SELECT ... FOR UPDATE`
    /// transaction per purchase, against `--database-url`.
    Naive,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Service => "service",
            Mode::Naive => "naive",
        }
    }
}

/// Run a flash sale against a running ticketing service and check its invariants.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// Sell through the running service, or through SQL as a naive CRUD service would.
    #[arg(long, value_enum, default_value_t = Mode::Service)]
    pub mode: Mode,

    /// PostgreSQL the naive baseline sells through; required with `--mode naive`. The run
    /// drops and recreates the schema `loadgen_naive` there.
    #[arg(long, env = "LOADGEN_DATABASE_URL", required_if_eq("mode", "naive"))]
    pub database_url: Option<String>,

    /// Base URL of the running service; every request goes here and nowhere else. Several
    /// (comma-separated or repeated): instances of one service, which the sale's requests
    /// take in turn (round robin); set-up and reads go to the first.
    #[arg(
        long,
        env = "LOADGEN_BASE_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub base_url: Vec<Url>,

    /// Seats on sale: the capacity of the event's single section.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub seats: u32,

    /// Buyers registered before the sale; each makes one reservation.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub buyers: u32,

    /// Worker tasks buying in parallel during the measured phase; the connection pool keeps
    /// at least this many connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,

    /// Seats per reservation (1..=10).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub quantity: u32,

    /// Only reserve; do not pay, so seats end up held rather than sold. Service mode only.
    #[arg(long)]
    pub no_pay: bool,

    /// Print the summary as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Purchases each buyer attempts, one after another; `buyers * rounds` attempts in all.
    /// Lets a long sale run without registering (slow, Argon2-hashed) accounts for every attempt.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,

    /// Read-heavy scenario: this many extra clients poll the event's availability (anonymous
    /// `GET /api/events/{id}/availability`, back to back) for as long as the sale runs; the
    /// summary then adds reads per second and the read-model loads per read from `/metrics`.
    /// Service mode only.
    #[arg(long, default_value_t = 0)]
    pub pollers: u32,

    /// Webhook endpoints the organizer registers (every event type) before the sale, all
    /// pointing at a receiver this process runs on 127.0.0.1 that answers 200; the run then
    /// reports how many deliveries arrived. Service mode only; the service must not run with
    /// APP_ENV=production (which refuses loopback addresses).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub webhooks: u32,

    /// Parallel requests while registering and logging in buyers (not timed).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub setup_concurrency: u32,
}

impl Cli {
    /// Whether buyers pay for what they reserve.
    pub fn pays(&self) -> bool {
        !self.no_pay
    }
}
