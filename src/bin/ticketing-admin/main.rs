//! `ticketing-admin`: the operator's command line for a ticketing service.
//!
//! `dlq` and `events` are HTTP clients of the running service (same checks and audit trail
//! as any admin client); `projections rebuild` and `users create-admin` work on the
//! databases through the library's own code; `diagnostics` reads every dependency. Answers
//! are pretty JSON on stdout; errors go to stderr (a refusal as the service's problem+json)
//! with exit code 1.
//!
//! ```text
//! ticketing-admin --email admin@example.com --password change-me-please dlq stats
//! TICKETING_TOKEN=... ticketing-admin events cancel 6c1f...
//! DATABASE_URL=postgres://... ticketing-admin projections rebuild
//! ```

mod api;
mod cli;
mod diagnostics;
mod offline;

use crate::api::{Api, ApiError};
use crate::cli::{
    CacheCommand, Cli, Command, DlqCommand, EventsCommand, ProjectionsCommand, UsersCommand,
};
use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::process::ExitCode;
use ticketing::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome { report, ok }) => {
            print_json(&report);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            match e.downcast_ref::<ApiError>() {
                Some(ApiError::Refused { body, .. }) if !body.is_null() => {
                    eprintln!("error: {e}");
                    eprintln!("{}", pretty(body));
                }
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// What a command prints, and whether it succeeded (diagnostics can report a failure).
struct Outcome {
    report: Value,
    ok: bool,
}

impl From<Value> for Outcome {
    fn from(report: Value) -> Self {
        Outcome { report, ok: true }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Prints the answer; a reader that went away (`| head`) is not an error worth a panic.
fn print_json(value: &Value) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{}", pretty(value));
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let api = Api::new(&cli.api)?;
    match cli.command {
        Command::Dlq(command) => Ok(dlq(api.sign_in(&cli.api).await?, command).await?.into()),
        Command::Events(command) => Ok(events(api.sign_in(&cli.api).await?, command).await?.into()),
        Command::Projections(ProjectionsCommand::Rebuild { force }) => {
            let config = Config::from_env()?;
            if let Ok((status, _)) = api.probe("/health").await {
                if !force {
                    bail!(
                        "the service answers on {} (/health: {status}): stop every instance \
                         first, since a running projector would race the replay (--force \
                         rebuilds anyway, e.g. when --api names another service)",
                        cli.api.api
                    );
                }
            }
            Ok(offline::rebuild_projections(&config).await?.into())
        }
        Command::Cache(CacheCommand::Stats) => {
            let system = api
                .sign_in(&cli.api)
                .await?
                .get("/admin/dashboard/system")
                .await?;
            Ok(system["cache"].clone().into())
        }
        Command::Cache(CacheCommand::Clear) => {
            let config = Config::from_env()?;
            Ok(offline::clear_cache(&config).await?.into())
        }
        Command::Users(UsersCommand::CreateAdmin { email, password }) => {
            let config = Config::from_env()?;
            Ok(offline::create_admin(&config, &email, &password)
                .await?
                .into())
        }
        Command::Diagnostics => {
            let config = Config::from_env()?;
            let (report, ok) = diagnostics::run(&api, &config).await;
            Ok(Outcome { report, ok })
        }
    }
}

async fn dlq(api: Api, command: DlqCommand) -> Result<Value, ApiError> {
    match command {
        DlqCommand::List { status, page } => {
            api.list(
                "/admin/dlq",
                &[
                    ("status", status),
                    ("page", Some(page.page.to_string())),
                    ("page_size", Some(page.page_size.to_string())),
                ],
            )
            .await
        }
        DlqCommand::Show { id } => api.get(&format!("/admin/dlq/{id}")).await,
        DlqCommand::Stats => api.get("/admin/dlq/stats").await,
        DlqCommand::Retry { id } => api.post(&format!("/admin/dlq/{id}/retry"), json!({})).await,
        DlqCommand::Resolve { id, notes } => {
            api.post(
                &format!("/admin/dlq/{id}/resolve"),
                json!({ "notes": notes }),
            )
            .await
        }
        DlqCommand::Discard { id, reason } => {
            api.post(
                &format!("/admin/dlq/{id}/discard"),
                json!({ "reason": reason }),
            )
            .await
        }
    }
}

async fn events(api: Api, command: EventsCommand) -> anyhow::Result<Value> {
    Ok(match command {
        EventsCommand::List {
            status,
            owner_id,
            page,
        } => {
            api.list(
                "/api/events",
                &[
                    ("status", status),
                    ("owner_id", owner_id.map(|id| id.to_string())),
                    ("page", Some(page.page.to_string())),
                    ("page_size", Some(page.page_size.to_string())),
                ],
            )
            .await?
        }
        EventsCommand::Show { id } => api.get(&format!("/api/events/{id}")).await?,
        EventsCommand::Cancel { id } => {
            let path = format!("/api/events/{id}");
            api.call(reqwest::Method::DELETE, &path, None).await?;
            // 204 has no body: show the event as it is now.
            api.get(&path)
                .await
                .context("the event was cancelled, but reading it back failed")?
        }
    })
}
