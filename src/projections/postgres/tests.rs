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

/// Another pool on the same database: what a second service instance has.
async fn second_instance(pool: &PgPool) -> PgPool {
    let options = pool.connect_options().as_ref().clone();
    PgPool::connect_with(options).await.unwrap()
}

const TABLES: [&str; 7] = [
    "projection_checkpoints",
    "event_views",
    "event_sections",
    "reservation_views",
    "payment_views",
    "sales_by_event",
    "sales_by_section",
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

/// Two instances applying the same batches at the same time end with exactly the rows one
/// instance applying them once has: the checkpoint lock makes each batch land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_applying_the_same_batches_concurrently_apply_them_once() {
    let log = contract::history();
    let reference = database().await;
    PostgresReadModel::new(reference.clone())
        .apply(&log)
        .await
        .unwrap();

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
    model.apply(&log).await.unwrap();
    assert_eq!(rows(&pool).await, before);
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
    assert!(model.apply(&contract::history()).await.is_err());
}
