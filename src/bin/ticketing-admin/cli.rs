//! Command-line options of `ticketing-admin`: parsing only; `main.rs` dispatches and the
//! other modules do the work.

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use ticketing::dlq::DlqStatus;
use ticketing::domain::concert::EventStatus;
use uuid::Uuid;

/// Operate a ticketing service: the dead letter queue, events, projection rebuilds, admin
/// accounts and diagnostics.
///
/// `dlq` and `events` are HTTP clients of the running service, so every change goes through
/// the same code paths, checks and audit trail as the HTTP API; they sign in with
/// `--token`, or with `--email`/`--password` (given before the subcommand). `projections`
/// and `users` work on the databases (`DATABASE_URL`, `PROJECTIONS_DATABASE_URL`,
/// `AUTH_DATABASE_URL`). Answers are pretty JSON on stdout; a refusal prints the service's
/// problem+json on stderr and exits 1.
#[derive(Debug, Parser)]
#[command(name = "ticketing-admin", version)]
pub struct Cli {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the running service.
    #[arg(
        long,
        env = "TICKETING_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// A bearer token of an admin (instead of --email/--password).
    #[arg(long, env = "TICKETING_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The admin account to sign in with (POST /auth/login).
    #[arg(long, env = "TICKETING_ADMIN_EMAIL")]
    pub email: Option<String>,
    /// Its password.
    #[arg(long, env = "TICKETING_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The dead letter queue (over HTTP: /admin/dlq).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Events people buy tickets for (over HTTP: /api/events).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Read models, offline: run with every instance stopped.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// The cache of event details and availability.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Accounts, on the auth database.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Connectivity and sizes of every dependency: the service's /ready, the three
    /// PostgreSQL databases, the outbox relay, the DLQ and the Kafka broker. Exits 1 when a
    /// configured dependency fails (a service that does not answer is reported, not failed).
    Diagnostics,
}

#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Page number, from 1.
    #[arg(long, default_value_t = 1)]
    pub page: u32,
    /// Entries per page, 1 to 100.
    #[arg(long, default_value_t = 20)]
    pub page_size: u32,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Entries, newest first.
    List {
        /// Only entries with this status.
        #[arg(long, value_parser = one_of(DlqStatus::ALL.map(DlqStatus::as_str)))]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One entry: stream, event type and version, error, retries, timestamps, status.
    Show { id: i64 },
    /// Entries per status.
    Stats,
    /// Re-runs the failed handler; exits 1 with the new error if it fails again.
    Retry { id: i64 },
    /// Closes an entry as handled.
    Resolve {
        id: i64,
        /// What was done about it.
        #[arg(long)]
        notes: Option<String>,
    },
    /// Closes an entry without applying it.
    Discard {
        id: i64,
        /// Why it is dropped (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events, drafts included (as an admin sees them).
    List {
        /// Only events with this status.
        #[arg(long, value_parser = one_of(EventStatus::ALL.map(EventStatus::as_str)))]
        status: Option<String>,
        /// Only the events of this organizer.
        #[arg(long)]
        owner_id: Option<Uuid>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One event with its sections and version.
    Show { id: Uuid },
    /// Cancels an event: open holds are released and every paid ticket is refunded.
    Cancel { id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Empties the read models and the insights and replays the event store into them.
    /// Refuses while the service answers on --api, since a running projector would race
    /// the replay.
    Rebuild {
        /// Rebuild even though the service answers on --api.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// The cache's adapter, its health and its hits, misses and errors since start-up, as the
    /// instance on --api sees them (over HTTP: /admin/dashboard/system).
    Stats,
    /// Deletes every entry under REDIS_KEY_PREFIX in the Redis of REDIS_URL (entries are
    /// reloaded from PostgreSQL on the next read). An in-process cache lives inside each
    /// instance: it empties itself within CACHE_TTL_SECONDS, or with a restart.
    Clear,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Makes EMAIL an admin with PASSWORD: creates the account, or promotes it and replaces
    /// its password. Idempotent, like ADMIN_EMAIL/ADMIN_PASSWORD at start-up.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, env = "TICKETING_NEW_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

/// Accepts exactly the names the service uses (and lists them in `--help`).
fn one_of<const N: usize>(names: [&'static str; N]) -> PossibleValuesParser {
    PossibleValuesParser::new(names)
}
