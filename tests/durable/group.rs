//! The insights consumer's group on the suite's Kafka-protocol broker (tansu) across restarts:
//! instances stopped while their consumer is still joining leave the group usable for the
//! next one, and a group wedged by a member that vanished mid-join shows as a stall on
//! `/ready` and in the metrics.

use super::client::*;
use serde_json::Value;
use std::time::Duration;
use ticketing::db::testing::fresh_database;
use uuid::Uuid;

/// Starts an instance on `db` and the broker, with topics and groups under `prefix`.
async fn start(db: &str, brokers: &str, prefix: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = vec![("KAFKA_BROKERS", brokers), ("KAFKA_TOPIC_PREFIX", prefix)];
    env.extend_from_slice(extra);
    Service::start(db, &env).await
}

/// The bus check of `/ready`.
async fn bus_check(service: &Service) -> Value {
    let (_, body) = service.get("/ready", None).await;
    body["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "bus"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Three instances, one after the other, stopped with SIGTERM as soon as they answer `/ready`
/// (about a second after start, while their consumer is still joining the group, which takes
/// the broker some seconds); then a new instance: a purchase shows in the sales analytics
/// within 30 s, the bus check passes and no consumer is stalled.
#[tokio::test]
async fn stops_during_the_group_join_leave_the_group_usable() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = format!("t{}.", Uuid::new_v4().simple());
    for _ in 0..3 {
        let doomed = start(&db, &brokers, &prefix, &[]).await;
        doomed.sigterm().await;
        let status = doomed.exit_status(Duration::from_secs(30)).await;
        assert!(status.success(), "a stop exits cleanly: {status}");
    }

    let service = start(&db, &brokers, &prefix, &[]).await;
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    let (_, buyer) = service.user("customer").await;
    let (status, body) = service.reserve(&buyer, event, 2).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = service.pay(&buyer, uuid(&body, "reservation_id")).await;
    assert_eq!(status, 201, "{body}");
    // get_when gives up after 30 s.
    service
        .get_when(
            &format!("/api/analytics/events/{event}/sales"),
            Some(&organizer),
            |sales| sales["tickets_sold"] == 2,
        )
        .await;
    assert_eq!(bus_check(&service).await["status"], "pass");
    let insights = [("consumer", "insights")];
    assert_eq!(
        service
            .metric("ticketing_consumer_stalled", &insights)
            .await,
        0.0
    );
}

/// An instance killed -9 while its consumer is joining cannot leave the group, and tansu keeps
/// it as the group's leader: the rebalance never completes. A new instance with stall recovery
/// off (and a 2 s bound) reports it: `/ready` stays 200 with the bus check `warn` and the
/// reason, the stall gauge is 1, and the lag is unknown (no lag series), not 0.
#[tokio::test]
async fn a_wedged_group_shows_as_a_stall_when_recovery_is_off() {
    let db = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = format!("t{}.", Uuid::new_v4().simple());
    let doomed = start(&db, &brokers, &prefix, &[]).await;
    doomed.kill9().await;

    let service = start(
        &db,
        &brokers,
        &prefix,
        &[
            ("CONSUMER_STALL_SECONDS", "2"),
            ("CONSUMER_STALL_RECOVERY", "false"),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let check = loop {
        let check = bus_check(&service).await;
        if check["status"] == "warn" {
            break check;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/ready never showed the stall; last bus check: {check}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = check["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("insights: no partitions assigned for"),
        "{check}"
    );
    let (status, _) = service.get("/ready", None).await;
    assert_eq!(
        status, 200,
        "a stalled consumer does not take the instance out"
    );
    let insights = [("consumer", "insights")];
    assert_eq!(
        service
            .metric("ticketing_consumer_stalled", &insights)
            .await,
        1.0
    );
    assert_eq!(
        service
            .metric("ticketing_consumer_rejoins_total", &insights)
            .await,
        0.0
    );
    let text = metrics::scrape(&service.http, &service.base).await;
    assert!(text.contains("ticketing_consumer_lag_known{consumer=\"insights\"} 0"));
    assert!(
        !text.contains("ticketing_consumer_lag_events{"),
        "an unknown lag has no series"
    );
}
