//! `ticketing-admin diagnostics`: connectivity and sizes of every dependency, as one JSON
//! report. It only reads: the service's `/ready`, each distinct PostgreSQL database (size and
//! exact row count of every table), the head of the event log against the outbox relay's
//! cursor, the DLQ per status, and the Kafka broker's metadata.

use crate::api::Api;
use crate::offline;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use std::future::Future;
use std::time::{Duration, Instant};
use ticketing::config::Config;
use ticketing::dlq::postgres::PostgresDeadLetters;
use ticketing::dlq::DeadLetters;

/// Longest one dependency may take to report; a hung one is reported, not waited for.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The report, and whether every configured dependency answered (the service's absence is
/// reported but not counted: diagnostics also serve while it is stopped).
pub async fn run(api: &Api, config: &Config) -> (Value, bool) {
    let databases = databases(config);
    let (service, postgres, kafka) = tokio::join!(
        service(api),
        one_by_one(
            databases
                .iter()
                .map(|(url, roles)| database(config, url, roles))
        ),
        kafka(config),
    );
    let mut ok = service["status"] != "not_ready";
    ok &= postgres.iter().all(|d| d["status"] == "pass");
    ok &= kafka["status"] != "fail";
    let report = json!({
        "ok": ok,
        "service": service,
        "postgres": if databases.is_empty() {
            json!({"status": "not_configured", "note": "DATABASE_URL is not set: the service runs in memory"})
        } else {
            Value::Array(postgres)
        },
        "kafka": kafka,
    });
    (report, ok)
}

async fn one_by_one<F: Future<Output = Value>>(items: impl Iterator<Item = F>) -> Vec<Value> {
    let mut out = Vec::new();
    for item in items {
        out.push(item.await);
    }
    out
}

async fn timed<F: Future<Output = Result<Value, String>>>(probe: F) -> Value {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(mut figures) => {
            if let Value::Object(map) = &mut figures {
                map.insert("status".into(), json!("pass"));
                map.insert("duration_ms".into(), json!(duration_ms));
            }
            figures
        }
        Err(error) => json!({"status": "fail", "duration_ms": duration_ms, "error": error}),
    }
}

/// `/ready` of the service at `--api`: its own view of its dependencies.
async fn service(api: &Api) -> Value {
    match api.probe("/ready").await {
        Ok((status, body)) => json!({
            "status": body["status"].as_str().unwrap_or(if status.is_success() { "ready" } else { "not_ready" }),
            "http_status": status.as_u16(),
            "ready": body,
        }),
        Err(e) => json!({"status": "unreachable", "error": e.to_string()}),
    }
}

/// Each distinct database URL with the roles it serves (events, projections, auth).
fn databases(config: &Config) -> Vec<(String, Vec<&'static str>)> {
    let Some(events) = config.database_url.clone() else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<&'static str>)> = Vec::new();
    for (role, url) in [
        ("events", Some(events.clone())),
        ("projections", config.projections_database_url.clone()),
        ("auth", config.auth_database_url.clone()),
    ] {
        let url = url.unwrap_or_else(|| events.clone());
        match out.iter_mut().find(|(u, _)| *u == url) {
            Some((_, roles)) => roles.push(role),
            None => out.push((url, vec![role])),
        }
    }
    out
}

/// Host, port and database name of a URL, never its password.
fn describe(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

async fn database(config: &Config, url: &str, roles: &[&'static str]) -> Value {
    let mut report = timed(async {
        let pool = offline::connect(config, url, "diagnosed")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let figures = figures(&pool, roles).await.map_err(|e| e.to_string());
        pool.close().await;
        figures
    })
    .await;
    if let Value::Object(map) = &mut report {
        map.insert("database".into(), json!(describe(url)));
        map.insert("roles".into(), json!(roles));
    }
    report
}

async fn figures(pool: &PgPool, roles: &[&'static str]) -> Result<Value, sqlx::Error> {
    let (version, size, size_pretty): (String, i64, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), pg_database_size(current_database()),
                pg_size_pretty(pg_database_size(current_database()))",
    )
    .fetch_one(pool)
    .await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
          ORDER BY schemaname, tablename",
    )
    .fetch_all(pool)
    .await?;
    let mut tables = serde_json::Map::new();
    for name in names {
        // `name` comes quoted from format('%I'), so it is safe to splice.
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
            .fetch_one(pool)
            .await?;
        tables.insert(name, json!(rows));
    }
    let mut report = json!({
        "server_version": version,
        "size_bytes": size,
        "size": size_pretty,
        "tables": tables,
    });
    if roles.contains(&"events") {
        report["event_log"] = event_log(pool).await?;
        report["dlq"] = match PostgresDeadLetters::new(pool.clone()).stats().await {
            Ok(stats) => json!(stats),
            Err(e) => json!({"error": e.to_string()}),
        };
    }
    if roles.contains(&"projections") {
        let checkpoints = sqlx::query("SELECT name, position FROM projection_checkpoints")
            .fetch_all(pool)
            .await?;
        let mut map = serde_json::Map::new();
        for row in checkpoints {
            map.insert(
                row.try_get("name")?,
                json!(row.try_get::<i64, _>("position")?),
            );
        }
        report["projection_checkpoints"] = Value::Object(map);
    }
    Ok(report)
}

/// The head of the log against the outbox relay's cursor: how many events wait to be
/// published (only kept in PostgreSQL when the service runs with Kafka).
async fn event_log(pool: &PgPool) -> Result<Value, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let cursors = sqlx::query("SELECT name, position FROM outbox_relay ORDER BY name")
        .fetch_all(pool)
        .await?;
    let mut relay = Vec::new();
    for row in cursors {
        let position: i64 = row.try_get("position")?;
        relay.push(json!({
            "name": row.try_get::<String, _>("name")?,
            "position": position,
            "backlog": head - position,
        }));
    }
    Ok(json!({"head_position": head, "outbox_relay": relay}))
}

/// The broker's metadata: brokers, and each topic with its partition count; the service's
/// own topics (`<KAFKA_TOPIC_PREFIX>events`, ...) are marked present or missing.
async fn kafka(config: &Config) -> Value {
    let Some(brokers) = config.kafka_brokers.clone() else {
        return json!({"status": "not_configured", "note": "KAFKA_BROKERS is not set: the service uses the in-process bus"});
    };
    let expected = ticketing::bus::Topics::new(config.kafka_topic_prefix.clone()).all();
    let mut report = timed(async move {
        tokio::task::spawn_blocking(move || metadata(&brokers, &expected))
            .await
            .map_err(|e| e.to_string())?
    })
    .await;
    if let (Value::Object(map), Some(brokers)) = (&mut report, &config.kafka_brokers) {
        map.insert("bootstrap".into(), json!(brokers));
    }
    report
}

fn metadata(brokers: &str, expected: &[String]) -> Result<Value, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let brokers: Vec<Value> = metadata
        .brokers()
        .iter()
        .map(|b| json!({"id": b.id(), "host": b.host(), "port": b.port()}))
        .collect();
    let topics: Vec<Value> = metadata
        .topics()
        .iter()
        .map(|t| json!({"name": t.name(), "partitions": t.partitions().len()}))
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|name| !metadata.topics().iter().any(|t| t.name() == name.as_str()))
        .collect();
    Ok(json!({"brokers": brokers, "topics": topics, "missing_topics": missing}))
}
