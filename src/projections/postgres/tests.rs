//! The read-model contract against PostgreSQL, plus what only a shared database can show:
//! instances racing on one batch, and rows that ignore events they already include.

use super::*;
use crate::db;
use crate::db::testing::fresh_database;
use crate::projections::contract;

/// A pool on a new, migrated database.
async fn database() -> PgPool {
    let url = fresh_database().await;
    let pool = db::connect(&url, &db::PoolSettings::default())
        .await
        .unwrap();
    db::projections_migrator().run(&pool).await.unwrap();
    pool
}

/// A new database with `log` applied in one batch: the rows to compare with.
async fn applied_once(log: &[Arc<RecordedEvent>]) -> PgPool {
    let pool = database().await;
    PostgresReadModel::new(pool.clone())
        .apply(log)
        .await
        .unwrap();
    pool
}

/// Another pool on the same database: what a second service instance has.
async fn second_instance(pool: &PgPool) -> PgPool {
    let options = pool.connect_options().as_ref().clone();
    PgPool::connect_with(options).await.unwrap()
}

const TABLES: [&str; 5] = [
    "projection_checkpoints",
    "event_views",
    "event_sections",
    "reservation_views",
    "payment_views",
];

/// Every row of every read-model table, as sorted JSON lines per table.
async fn rows(pool: &PgPool) -> Vec<(&'static str, String)> {
    let mut dump = Vec::new();
    for table in TABLES {
        let sql = format!(
            "SELECT COALESCE(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY to_jsonb(t)::text), '')
               FROM {table} t"
        );
        let text: String = sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap();
        dump.push((table, text));
    }
    dump
}

/// The PostgreSQL read model honours the shared read-model contract.
#[tokio::test]
async fn postgres_read_model_passes_the_contract() {
    let model = PostgresReadModel::new(database().await);
    assert_eq!(model.kind(), "postgres");
    contract::run_all(&model).await;
}

/// Folding a batch never shows: any cut of a history gives what applying it event by event
/// in memory gives.
#[tokio::test]
async fn postgres_read_model_shows_no_batch_boundaries() {
    let model = PostgresReadModel::new(database().await);
    contract::batch_boundaries_change_no_view(&model).await;
}

/// Below the queries too: one event per batch and one batch for everything leave the same rows
/// in every table, stream versions, first-sale positions and the checkpoint included.
#[tokio::test]
async fn one_batch_leaves_the_rows_that_one_event_per_batch_leaves() {
    let pool = database().await;
    let model = PostgresReadModel::new(pool.clone());
    let busy = contract::generated::busy_sales(400, 11);
    for event in &busy.log {
        model.apply(std::slice::from_ref(event)).await.unwrap();
    }
    let one_by_one = rows(&pool).await;
    for size in [busy.log.len(), 512, 33] {
        model.reset().await.unwrap();
        for batch in busy.log.chunks(size) {
            model.apply(batch).await.unwrap();
        }
        assert_eq!(rows(&pool).await, one_by_one, "batches of {size}");
    }
}

/// A batch that straddles what the rows already include (the checkpoint was lost half-way)
/// applies only the events each row has not seen: guards hold per event, not per batch.
#[tokio::test]
async fn a_batch_straddling_a_lost_checkpoint_applies_only_what_rows_have_not_seen() {
    let busy = contract::generated::busy_sales(400, 13);
    let reference = applied_once(&busy.log).await;

    let pool = database().await;
    let model = PostgresReadModel::new(pool.clone());
    for cut in [busy.log.len() / 3, busy.log.len() / 2] {
        model.reset().await.unwrap();
        model.apply(&busy.log[..cut]).await.unwrap();
        sqlx::query("UPDATE projection_checkpoints SET position = 0")
            .execute(&pool)
            .await
            .unwrap();
        model.apply(&busy.log).await.unwrap();
        assert_eq!(rows(&pool).await, rows(&reference).await, "lost at {cut}");
    }
}

/// However large a batch of sale events, the hot path writes it with at most one statement
/// per table: five, besides locking and moving the checkpoint.
#[tokio::test]
async fn a_batch_of_sale_events_takes_a_constant_number_of_statements() {
    let sale = contract::generated::flash_sale(400);
    let pool = database().await;
    let opened = 4; // created, stocked, published, sales opened

    PostgresReadModel::new(pool.clone())
        .apply(&sale.log[..opened])
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut start = opened;
    // Holds only; holds and payments, as most batches of a sale are.
    for (size, statements) in [(8, 2), (512, 4), (512, 4)] {
        let events = &sale.log[start..start + size];
        start += size;
        let mut batch = bulk::Batch::default();
        for recorded in events {
            let event = codec::decode(recorded).unwrap();
            assert!(
                batch.add(recorded, &event),
                "{} is hot",
                recorded.event_type
            );
        }
        let ran = batch.flush(&mut conn).await.unwrap();
        assert_eq!(ran, statements, "{size} events from {}", events[0].position);
    }
}

/// The projector's throughput on a flash sale: 50 000 `seats_held + placed` pairs and
/// `captured + confirmed + held_seats_sold` triples, applied in batches of 512 as the
/// subscription delivers them. Run with
/// `cargo test --release --lib bulk_apply_throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark: run it in release mode"]
async fn bulk_apply_throughput() {
    let sale = contract::generated::flash_sale(10_000);
    let model = PostgresReadModel::new(database().await);
    let started = std::time::Instant::now();
    for batch in sale.log.chunks(512) {
        model.apply(batch).await.unwrap();
    }
    let elapsed = started.elapsed();
    let events = sale.log.len();
    println!(
        "bulk_apply_throughput: {events} events in {:.3} s, {:.0} events/s, {:.1} ms per batch of 512",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / events.div_ceil(512) as f64,
    );
    assert_eq!(model.checkpoint().await.unwrap(), events as u64);
    let event = model.event(sale.ids.events[0]).await.unwrap().unwrap();
    let (held, sold): (u32, u32) = event
        .sections
        .iter()
        .fold((0, 0), |(h, s), x| (h + x.held, s + x.sold));
    assert_eq!((held, sold), (0, 15_000));
}

/// Two instances applying the same batches at the same time end with exactly the rows one
/// instance applying them once has: the checkpoint lock makes each batch land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_applying_the_same_batches_concurrently_apply_them_once() {
    let log = contract::history();
    let reference = applied_once(&log).await;

    let shared = database().await;
    let a = PostgresReadModel::new(shared.clone());
    let b = PostgresReadModel::new(second_instance(&shared).await);
    let half = log.len() / 2;
    // Both follow the first half batch by batch, as two subscriptions started together do.
    for batch in log[..half].chunks(4) {
        let (ra, rb) = tokio::join!(a.apply(batch), b.apply(batch));
        ra.unwrap();
        rb.unwrap();
    }
    // Then one runs ahead to the end while the other re-delivers an older, overlapping batch:
    // the checkpoint must not move back, nor any event land twice.
    let (ra, rb) = tokio::join!(a.apply(&log[half..]), b.apply(&log[half - 3..half + 3]));
    ra.unwrap();
    rb.unwrap();
    let (ra, rb) = tokio::join!(a.apply(&log[3..]), b.apply(&log[half..]));
    ra.unwrap();
    rb.unwrap();

    assert_eq!(rows(&shared).await, rows(&reference).await);
    assert_eq!(
        contract::snapshot(&a).await,
        contract::snapshot(&PostgresReadModel::new(reference)).await
    );
}

/// Even when the checkpoint is lost (rewound without emptying the views), replaying the log
/// changes no row: every row ignores events of its stream it already includes.
#[tokio::test]
async fn views_ignore_events_they_already_include_even_behind_the_checkpoint() {
    let pool = database().await;
    let model = PostgresReadModel::new(pool.clone());
    let log = contract::history();
    model.apply(&log).await.unwrap();
    let before = rows(&pool).await;

    sqlx::query("UPDATE projection_checkpoints SET position = 0")
        .execute(&pool)
        .await
        .unwrap();
    // A restarted instance: it reads the rewound checkpoint and replays everything.
    PostgresReadModel::new(pool.clone())
        .apply(&log)
        .await
        .unwrap();
    assert_eq!(rows(&pool).await, before);
}

/// A batch of hot events is one statement, checkpoint included; an applier that claims from
/// a checkpoint another instance moved meanwhile writes nothing (no seat moves twice), learns
/// where the checkpoint is, and then applies only what is left.
#[tokio::test]
async fn a_hot_batch_is_one_statement_and_a_lost_claim_writes_nothing() {
    let sale = contract::generated::flash_sale(100);
    let reference = applied_once(&sale.log).await;

    let pool = database().await;
    let a = PostgresReadModel::new(pool.clone());
    let b = PostgresReadModel::new(second_instance(&pool).await);
    let opened = 4; // created, stocked, published, sales opened
    a.apply(&sale.log[..opened]).await.unwrap();
    assert_eq!(b.checkpoint().await.unwrap(), opened as u64);
    let batch = &sale.log[opened..opened + 40];
    let end = batch.last().unwrap().position;
    assert_eq!(
        a.apply_from(opened as u64, batch).await.unwrap(),
        (bulk::Claim::Claimed, 1, 0)
    );
    let after_a = rows(&pool).await;
    assert_eq!(
        b.apply_from(opened as u64, batch).await.unwrap(),
        (
            bulk::Claim::Lost {
                seen: Some(end as i64)
            },
            1,
            0
        )
    );
    assert_eq!(rows(&pool).await, after_a, "a lost claim wrote");
    // Also with events no row includes yet, which only the claim holds back.
    let next = &sale.log[opened + 40..opened + 80];
    assert_eq!(
        b.apply_from(opened as u64, next).await.unwrap(),
        (
            bulk::Claim::Lost {
                seen: Some(end as i64)
            },
            1,
            0
        )
    );
    assert_eq!(rows(&pool).await, after_a, "a lost claim wrote");

    b.apply(&sale.log[opened..opened + 100]).await.unwrap();
    a.apply(&sale.log).await.unwrap();
    assert_eq!(rows(&pool).await, rows(&reference).await);
}

/// Four instances applying one flash sale at the same time, in batches of their own sizes
/// (one statement each when hot, a transaction when a batch confirms what it places), end
/// with the rows one instance applying it once leaves: every batch landed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appliers_racing_on_the_same_batches_apply_each_event_once() {
    let sale = contract::generated::flash_sale(300);
    let reference = applied_once(&sale.log).await;

    let shared = database().await;
    let mut racers = Vec::new();
    for size in [5, 8, 8, 70] {
        let model = PostgresReadModel::new(second_instance(&shared).await);
        let log = sale.log.clone();
        racers.push(tokio::spawn(async move {
            for batch in log.chunks(size) {
                model.apply(batch).await.unwrap();
            }
        }));
    }
    for racer in racers {
        racer.await.unwrap();
    }
    assert_eq!(rows(&shared).await, rows(&reference).await);
}

/// A query against an unreachable database is `Unavailable`, never a panic.
#[tokio::test]
async fn queries_on_a_closed_pool_report_unavailable() {
    let pool = database().await;
    let model = PostgresReadModel::new(pool.clone());
    pool.close().await;
    assert!(matches!(model.ping().await, Err(ReadError::Unavailable(_))));
    assert!(matches!(
        model.reservations(None, PageRequest::default()).await,
        Err(ReadError::Unavailable(_))
    ));
    assert!(matches!(
        model.reservation(ReservationId::random()).await,
        Err(ReadError::Unavailable(_))
    ));
    assert!(model.apply(&contract::history()).await.is_err());
}

/// Reservations read at once by id share one statement and each get their own answer: the
/// hold when the read models have it, nothing for an id they do not.
#[tokio::test]
async fn concurrent_reads_by_id_each_get_their_own_reservation() {
    let model = Arc::new(PostgresReadModel::new(database().await));
    model.apply(&contract::history()).await.unwrap();
    let listed = model
        .reservations(None, PageRequest::default())
        .await
        .unwrap()
        .items;
    assert!(listed.len() > 1, "the history holds several reservations");
    let unknown = ReservationId::random();
    let ids = listed
        .iter()
        .map(|view| ReservationId(view.reservation_id))
        .chain([unknown]);
    // Spawned before any runs: on the test's one thread they queue up for one batch.
    let reads: Vec<_> = ids
        .map(|id| {
            let model = Arc::clone(&model);
            tokio::spawn(async move { model.reservation(id).await })
        })
        .collect();
    let mut found = Vec::new();
    for read in reads {
        found.push(read.await.unwrap());
    }
    let (last, views) = found.split_last().unwrap();
    assert_eq!(last, &Ok(None));
    for (view, listed) in views.iter().zip(&listed) {
        assert_eq!(view.as_ref().unwrap().as_ref(), Some(listed));
    }
}

/// A pool on a new, migrated database with `settings`, and the database's URL.
async fn database_with(settings: &db::PoolSettings) -> (PgPool, String) {
    let url = fresh_database().await;
    let pool = db::connect_and_migrate(db::Database::Projections, &url, settings, "ticketing")
        .await
        .unwrap();
    (pool, url)
}

/// Takes `table` in ACCESS EXCLUSIVE mode on a connection of its own (no statement time-out)
/// until the returned connection commits or drops: reads of it wait.
async fn lock(url: &str, table: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// A read held up past the pool's `statement_timeout` (here behind a lock) is cancelled by
/// the server and reported `Unavailable` (503 at the edge) instead of waiting on.
#[tokio::test]
async fn a_read_past_the_statement_timeout_is_unavailable() {
    let settings = db::PoolSettings {
        statement_timeout: Some(std::time::Duration::from_millis(200)),
        ..db::PoolSettings::default()
    };
    let (pool, url) = database_with(&settings).await;
    let model = PostgresReadModel::new(pool);
    let _held = lock(&url, "event_views").await;
    match model.event(EventId(uuid::Uuid::new_v4())).await {
        Err(ReadError::Unavailable(e)) => assert!(e.contains("statement timeout"), "{e}"),
        other => panic!("expected a cancelled statement, got {other:?}"),
    }
}

/// More reads than the pool has connections wait their turn in the bulkhead rather than time
/// out on the pool: with one connection and a 300 ms acquire time-out, three reads queued
/// behind one that a lock holds up for longer than that all succeed once it is released.
#[tokio::test]
async fn reads_beyond_the_pool_wait_in_the_bulkhead_instead_of_timing_out() {
    let settings = db::PoolSettings {
        max_connections: 1,
        min_connections: 0,
        acquire_timeout: std::time::Duration::from_millis(300),
        statement_timeout: None,
        ..db::PoolSettings::default()
    };
    let (pool, url) = database_with(&settings).await;
    let model = Arc::new(PostgresReadModel::new(pool));
    let held = lock(&url, "event_views").await;
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let model = Arc::clone(&model);
            tokio::spawn(async move { model.event(EventId(uuid::Uuid::new_v4())).await })
        })
        .collect();
    // Longer than the acquire time-out: without the bulkhead the queued reads fail.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    sqlx::Connection::close(held).await.unwrap();
    for read in reads {
        assert!(matches!(read.await.unwrap(), Ok(None)));
    }
}
