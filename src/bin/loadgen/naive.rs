//! The naive baseline: the same flash sale sold straight through SQL, the way a typical CRUD
//! service does it, so the service's figures have something to be compared with.
//!
//! Set-up (untimed) drops and recreates the schema `loadgen_naive` on `--database-url`, so two
//! naive runs against one database must not overlap. Each purchase attempt is one transaction
//! that locks the section row (`SELECT ... FOR UPDATE`), takes the seats if enough are left and
//! records an order; a sale is sampled as 201, sold out as 409, an SQL error as a transport
//! error. Nothing is retried. Afterwards the tables are read back and checked.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Url;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::{PRICE_CENTS, SECTION};
use crate::cli::{Cli, Mode};
use crate::measure::{self, Kind, Measured, Outcome, Queue, Sample};
use crate::report::{RunConfig, Summary};
use crate::verify::Ledger;

/// Generous: every worker has its own connection, so an acquire only waits on a sick server.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The baseline's tables, recreated on every run.
const SCHEMA: &str = "
    DROP SCHEMA IF EXISTS loadgen_naive CASCADE;
    CREATE SCHEMA loadgen_naive;
    CREATE TABLE loadgen_naive.naive_sections (
        event_id    uuid   NOT NULL,
        name        text   NOT NULL,
        capacity    int    NOT NULL,
        available   int    NOT NULL,
        price_cents bigint NOT NULL,
        PRIMARY KEY (event_id, name)
    );
    CREATE TABLE loadgen_naive.naive_orders (
        id           uuid        PRIMARY KEY,
        event_id     uuid        NOT NULL,
        user_id      uuid        NOT NULL,
        section      text        NOT NULL,
        quantity     int         NOT NULL,
        amount_cents bigint      NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
";

/// What every worker needs to know about the sale.
#[derive(Debug, Clone, Copy)]
struct Sale {
    event_id: Uuid,
    quantity: i32,
}

/// Runs the whole naive sale: set-up, measured phase, read-back; returns the summary.
pub async fn run(cli: &Cli, run_id: String) -> anyhow::Result<Summary> {
    if cli.no_pay {
        bail!("--no-pay applies to service mode only: a naive purchase is paid in its transaction");
    }
    let Some(url) = cli.database_url.as_deref() else {
        bail!("--mode naive needs --database-url (or LOADGEN_DATABASE_URL)");
    };
    let concurrency = usize::try_from(cli.concurrency).context("--concurrency")?;
    let buyer_count = usize::try_from(cli.buyers).context("--buyers")?;
    let rounds = usize::try_from(cli.rounds).context("--rounds")?;
    let shown_url = redacted(url);
    let sale = Sale {
        event_id: Uuid::new_v4(),
        quantity: i32::try_from(cli.quantity).context("--quantity")?,
    };

    eprintln!("run {run_id}: setting up the naive sale at {shown_url}");
    let pool = PgPoolOptions::new()
        .max_connections(cli.concurrency)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("connecting to {shown_url}"))?;
    open_sale(&pool, sale.event_id, cli.seats).await?;
    eprintln!("event {} on sale with {} seats", sale.event_id, cli.seats);
    warm(&pool, concurrency).await?;

    let buyers: Vec<Uuid> = (0..buyer_count).map(|_| Uuid::new_v4()).collect();
    let attempts: Vec<Uuid> = (0..rounds).flat_map(|_| buyers.iter().copied()).collect();
    eprintln!(
        "measured phase: {buyer_count} buyers x {rounds} rounds = {} attempts, {concurrency} workers",
        attempts.len()
    );
    let measured = measure_sale(&pool, sale, attempts, concurrency).await?;
    eprintln!(
        "measured phase done in {:.3} s; verifying",
        measured.wall.as_secs_f64()
    );
    let ledger = read_ledger(&pool, sale.event_id)
        .await
        .map_err(|error| format!("{error:#}"));
    pool.close().await;

    let config = RunConfig {
        run_id,
        mode: Mode::Naive,
        base_url: None,
        database_url: Some(shown_url),
        event_id: sale.event_id,
        seats: cli.seats,
        // Every attempt is a would-be purchase, so demand is buyers x rounds.
        buyers: cli.buyers.saturating_mul(cli.rounds),
        quantity: cli.quantity,
        concurrency: cli.concurrency,
        pay: true,
    };
    Ok(Summary::naive(config, measured, ledger))
}

/// `url` with its password, if any, replaced, for printing.
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot carry a password, which this one does.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable database url>".to_owned(),
    }
}

/// Recreates the schema and puts one event with `seats` seats in one section on sale.
async fn open_sale(pool: &PgPool, event_id: Uuid, seats: u32) -> anyhow::Result<()> {
    let capacity = i32::try_from(seats).context("--seats must fit a PostgreSQL int")?;
    sqlx::raw_sql(SCHEMA)
        .execute(pool)
        .await
        .context("recreating the loadgen_naive schema")?;
    sqlx::query(
        "INSERT INTO loadgen_naive.naive_sections (event_id, name, capacity, available, price_cents)
         VALUES ($1, $2, $3, $3, $4)",
    )
    .bind(event_id)
    .bind(SECTION)
    .bind(capacity)
    .bind(i64::from(PRICE_CENTS))
    .execute(pool)
    .await
    .context("creating the event's section")?;
    Ok(())
}

/// Opens every connection of the pool before the clock starts, so the measured phase does
/// not time connection set-up (the service's own pool is warm too).
async fn warm(pool: &PgPool, connections: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(
            pool.acquire()
                .await
                .context("opening the connection pool")?,
        );
    }
    Ok(())
}

/// Runs `workers` tasks, one connection each, until every attempt has been made.
async fn measure_sale(
    pool: &PgPool,
    sale: Sale,
    attempts: Vec<Uuid>,
    workers: usize,
) -> anyhow::Result<Measured> {
    let queue = Arc::new(Queue::new(attempts));
    measure::run_workers(workers, || {
        let (pool, queue) = (pool.clone(), Arc::clone(&queue));
        async move { work(&pool, sale, &queue).await }
    })
    .await
}

/// One worker: buys for the next buyer until the queue is empty.
async fn work(pool: &PgPool, sale: Sale, queue: &Queue<Uuid>) -> Measured {
    let mut measured = Measured::default();
    while let Some(&buyer) = queue.next() {
        let (result, latency) = measure::timed(purchase(pool, sale, buyer)).await;
        let (outcome, succeeded) = match result {
            Ok(true) => (Outcome::Status(201), true),
            Ok(false) => (Outcome::Status(409), false),
            Err(error) => {
                measured
                    .first_transport_error
                    .get_or_insert_with(|| error.to_string());
                (Outcome::Transport, false)
            }
        };
        measured.samples.push(Sample {
            kind: Kind::Reserve,
            outcome,
            latency,
            succeeded,
            malformed: false,
        });
    }
    measured
}

/// One purchase as a CRUD service writes it: lock the section row, take the seats if enough
/// are left, record the order, commit. `Ok(false)` is sold out (rolled back). On an error the
/// dropped transaction rolls back.
async fn purchase(pool: &PgPool, sale: Sale, buyer: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (_available, price_cents): (i32, i64) = sqlx::query_as(
        "SELECT available, price_cents FROM loadgen_naive.naive_sections
         WHERE event_id = $1 AND name = $2 FOR UPDATE",
    )
    .bind(sale.event_id)
    .bind(SECTION)
    .fetch_one(&mut *tx)
    .await?;
    let taken = sqlx::query(
        "UPDATE loadgen_naive.naive_sections SET available = available - $3
         WHERE event_id = $1 AND name = $2 AND available >= $3",
    )
    .bind(sale.event_id)
    .bind(SECTION)
    .bind(sale.quantity)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO loadgen_naive.naive_orders (id, event_id, user_id, section, quantity, amount_cents)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::new_v4())
    .bind(sale.event_id)
    .bind(buyer)
    .bind(SECTION)
    .bind(sale.quantity)
    .bind(i64::from(sale.quantity) * price_cents)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The event's section and the sum of its orders, as they stand after the measured phase.
async fn read_ledger(pool: &PgPool, event_id: Uuid) -> anyhow::Result<Ledger> {
    let (capacity, available, price_cents, orders, ordered_seats, amount_cents): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT s.capacity::bigint, s.available::bigint, s.price_cents,
                COUNT(o.id), COALESCE(SUM(o.quantity), 0)::bigint,
                COALESCE(SUM(o.amount_cents), 0)::bigint
         FROM loadgen_naive.naive_sections s
         LEFT JOIN loadgen_naive.naive_orders o ON o.event_id = s.event_id AND o.section = s.name
         WHERE s.event_id = $1 AND s.name = $2
         GROUP BY s.capacity, s.available, s.price_cents",
    )
    .bind(event_id)
    .bind(SECTION)
    .fetch_one(pool)
    .await
    .context("reading the section and its orders back")?;
    Ok(Ledger {
        capacity,
        available,
        orders,
        ordered_seats,
        amount_cents,
        price_cents,
    })
}
