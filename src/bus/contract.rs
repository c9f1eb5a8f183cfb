//! The contract every `EventBus` keeps, run against the in-process bus and a real
//! Kafka-protocol broker: per-key order, intact headers and payloads, redelivery of what a
//! group did not commit, independent groups, a lag that is unknown until measured. Each run
//! uses fresh topic and group names.

use super::{BusConsumer, BusMessage, Delivery, EventBus};
use std::collections::HashMap;
use std::time::Duration;

/// How long one delivery may take: a real broker needs seconds for a group to form.
const PATIENCE: Duration = Duration::from_secs(30);

fn message(topic: &str, key: &str, n: usize) -> BusMessage {
    BusMessage {
        topic: topic.into(),
        key: key.to_owned(),
        headers: vec![
            ("seq".into(), n.to_string()),
            ("traceparent".into(), format!("00-{n:032x}-{n:016x}-01")),
        ],
        payload: format!("payload {key} {n}").into_bytes(),
    }
}

async fn next(consumer: &mut Box<dyn BusConsumer>) -> Delivery {
    tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a delivery within the patience window")
        .expect("the bus delivers")
}

/// Consumes `n` messages and returns them grouped by key, in arrival order.
async fn take(consumer: &mut Box<dyn BusConsumer>, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(consumer).await);
    }
    out
}

/// Sequence numbers per (topic, key), in arrival order: the order a bus promises.
fn by_key(deliveries: &[Delivery]) -> HashMap<(String, String), Vec<usize>> {
    let mut map: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for d in deliveries {
        let seq = d.message.header("seq").unwrap().parse().unwrap();
        map.entry((d.message.topic.to_string(), d.message.key.clone()))
            .or_default()
            .push(seq);
    }
    map
}

pub async fn run(bus: &dyn EventBus, unique: &str) {
    let topics = vec![format!("{unique}.a"), format!("{unique}.b")];
    bus.ensure_topics(&topics).await.unwrap();
    // Idempotent: a second call on existing topics is fine.
    bus.ensure_topics(&topics).await.unwrap();

    let keys = ["k1", "k2", "k3", "k4", "k5"];
    let mut sent = Vec::new();
    for n in 0..40 {
        sent.push(message(&topics[n % 2], keys[n % keys.len()], n));
    }
    bus.publish(sent[..20].to_vec()).await.unwrap();
    bus.publish(sent[20..].to_vec()).await.unwrap();

    // One group sees every message once, each key in publish order, intact.
    let group = format!("{unique}-g1");
    let mut consumer = bus.subscribe(&group, &topics).await.unwrap();
    assert_eq!(
        consumer.lag().await,
        None,
        "lag is unknown before the consumer measured it, never a guessed 0"
    );
    let got = take(&mut consumer, 40).await;
    for d in &got {
        let seq: usize = d.message.header("seq").unwrap().parse().unwrap();
        assert_eq!(*d.message, sent[seq], "a message changed on the way");
    }
    let expected = by_key(
        &sent
            .iter()
            .map(|m| Delivery {
                message: std::sync::Arc::new(m.clone()),
                partition: 0,
                offset: 0,
            })
            .collect::<Vec<_>>(),
    );
    assert_eq!(by_key(&got), expected, "per-key order or count differs");

    // Commit the first half of each partition's deliveries only; a restart of the group
    // redelivers exactly the rest.
    let mut seen_per_partition: HashMap<(String, i32), usize> = HashMap::new();
    let mut committed = 0;
    for d in &got {
        let count = seen_per_partition
            .entry((d.message.topic.to_string(), d.partition))
            .or_default();
        *count += 1;
        if *count <= 2 {
            consumer.commit(d).await.unwrap();
            committed += 1;
        }
    }
    drop(consumer);
    let mut again = bus.subscribe(&group, &topics).await.unwrap();
    let redelivered = take(&mut again, 40 - committed).await;
    let mut redelivered_seqs: Vec<usize> = redelivered
        .iter()
        .map(|d| d.message.header("seq").unwrap().parse().unwrap())
        .collect();
    redelivered_seqs.sort_unstable();
    let mut uncommitted_seqs: Vec<usize> = Vec::new();
    let mut counts: HashMap<(String, i32), usize> = HashMap::new();
    for d in &got {
        let c = counts
            .entry((d.message.topic.to_string(), d.partition))
            .or_default();
        *c += 1;
        if *c > 2 {
            uncommitted_seqs.push(d.message.header("seq").unwrap().parse().unwrap());
        }
    }
    uncommitted_seqs.sort_unstable();
    assert_eq!(
        redelivered_seqs, uncommitted_seqs,
        "a restarted group must get exactly what it did not commit"
    );
    for d in &redelivered {
        again.commit(d).await.unwrap();
    }
    // A broker reports lag from periodic statistics, served while the consumer is polled (as
    // it always is when running): it becomes known, and 0, within a few seconds. An unknown
    // lag does not count as 0.
    let started = std::time::Instant::now();
    loop {
        let lag = again.lag().await;
        if lag == Some(0) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "all handled, yet the lag is {lag:?}"
        );
        if let Ok(extra) = tokio::time::timeout(Duration::from_millis(100), again.next()).await {
            panic!("everything was delivered, yet came {extra:?}");
        }
    }
    assert!(
        again.joining_since().is_none(),
        "a consumer with a lag has joined"
    );

    // Another group is independent: it starts from the beginning.
    let mut other = bus
        .subscribe(&format!("{unique}-g2"), &topics)
        .await
        .unwrap();
    assert_eq!(take(&mut other, 40).await.len(), 40);
    bus.ping().await.unwrap();
}

#[tokio::test]
async fn the_in_process_bus_keeps_the_contract() {
    let bus = super::memory::MemoryBus::new();
    run(&bus, &format!("mem{}", uuid::Uuid::new_v4().simple())).await;
}

/// The in-process bus refuses topics nobody created, as a broker without auto-creation does.
#[tokio::test]
async fn the_in_process_bus_refuses_unknown_topics() {
    let bus = super::memory::MemoryBus::new();
    let err = bus
        .publish(vec![message("nope", "k", 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, super::BusError::Rejected(_)), "{err}");
    assert!(bus.subscribe("g", &["nope".into()]).await.is_err());
}

#[tokio::test]
async fn the_kafka_bus_keeps_the_contract() {
    let brokers = crate::bus::kafka::testing::brokers().await;
    let bus = super::kafka::KafkaBus::new(&brokers).unwrap();
    run(&bus, &format!("contract{}", uuid::Uuid::new_v4().simple())).await;
}
