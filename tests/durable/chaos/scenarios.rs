//! One fault per scenario, injected while the sale runs; the harness does the rest.

use super::super::bus::{outbox_backlog, prefix, Broker};
use super::super::client::eventually;
use super::super::outage::database_behind_a_proxy;
use super::super::proxy::Proxy;
use super::harness::{Chaos, Excused, AVAILABILITY};
use std::time::{Duration, Instant};
use ticketing::db::testing::fresh_database;

/// How long a dependency stays away.
const OUTAGE: Duration = Duration::from_secs(3);
/// What needs PostgreSQL: all of the sale.
const ALL: &[&str] = &[AVAILABILITY, "/api/reservations", "/api/payments"];

/// Runs a sale on `chaos`, calling `fault` once `holds` holds were acknowledged; `fault`
/// returns once the dependency is back, and the 503s it excuses are to `paths`.
async fn sale_with<F, Fut>(chaos: &Chaos, holds: usize, paths: &'static [&'static str], fault: F)
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
}

/// The dependency behind `proxy` goes away for `OUTAGE` (open connections cut) and comes back.
async fn outage(proxy: &mut Proxy) {
    proxy.stop().await;
    tokio::time::sleep(OUTAGE).await;
    proxy.restart().await;
}

/// PostgreSQL goes away mid-sale (every connection cut) and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_gone_mid_sale_and_back() {
    let (mut proxy, url, direct) = database_behind_a_proxy().await;
    let chaos = Chaos::start(2, &url, &direct, &[]).await;
    sale_with(&chaos, 10, ALL, || outage(&mut proxy)).await;
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

/// The broker unreachable mid-sale and back (a private tansu behind a proxy: restarting it
/// would lose its in-memory topics, see TODO.md): sales go on through the outbox, nothing
/// answers 5xx, and the outbox drains once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_gone_mid_sale() {
    let db = fresh_database().await;
    let (mut proxy, _broker, brokers) = Broker::behind_a_proxy().await;
    let prefix = prefix();
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC_PREFIX", &prefix),
    ];
    let chaos = Chaos::start(2, &db, &db, &env).await;
    sale_with(&chaos, 10, &[], || outage(&mut proxy)).await;
    eventually("the outbox drains", Duration::from_secs(60), || async {
        outbox_backlog(&chaos.pool).await == 0
    })
    .await;
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
