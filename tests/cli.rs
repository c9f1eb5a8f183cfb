//! `ticketing-admin` against the real `ticketing` binary on a fresh PostgreSQL database: every
//! `--help` answers, accounts made by the CLI can sign in, DLQ and event commands go through
//! the HTTP API, diagnostics name every dependency, and a projection rebuild with the service
//! stopped leaves a database the service restarts on; `dlq retry`, `resolve` and `discard`
//! work real dead letters, and `events show` reads an event.

#[path = "durable/client.rs"]
mod client;

use client::{eventually, Service};
use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;
use ticketing::db::testing::fresh_database;

const ADMIN_EMAIL: &str = "boot-admin@cli.example";
const ADMIN_PASSWORD: &str = "boot-admin-password";

/// Runs `ticketing-admin` with `args` and only the environment given in `env`.
async fn admin_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketing-admin"));
    command.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.expect("ticketing-admin runs")
}

/// Asserts exit 0 and returns stdout as JSON.
#[track_caller]
fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Every command and subcommand prints its help and exits 0, without any service or database.
#[tokio::test]
async fn every_subcommand_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "stats"],
        &["dlq", "retry"],
        &["dlq", "resolve"],
        &["dlq", "discard"],
        &["events"],
        &["events", "list"],
        &["events", "show"],
        &["events", "cancel"],
        &["projections"],
        &["projections", "rebuild"],
        &["cache"],
        &["cache", "stats"],
        &["cache", "clear"],
        &["users"],
        &["users", "create-admin"],
        &["diagnostics"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = admin_cli(&args, &[]).await;
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "{args:?}: {output:?}"
        );
    }
}

/// The whole operator's round trip on one database: create an admin, work the DLQ and an
/// event over HTTP, diagnose, refuse a rebuild while the service runs, rebuild once it is
/// stopped, and restart on the rebuilt read models.
#[tokio::test]
async fn the_cli_operates_a_service_on_postgres() {
    let database = fresh_database().await;
    let boot = [
        ("ADMIN_EMAIL", ADMIN_EMAIL),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
    ];
    let service = Service::start(&database, &boot).await;
    let db = [("DATABASE_URL", database.as_str())];

    // users create-admin writes through AuthService; the account signs in over HTTP.
    let created = json_of(
        &admin_cli(
            &[
                "users",
                "create-admin",
                "--email",
                "Ops@CLI.example",
                "--password",
                "ops-password-1",
            ],
            &db,
        )
        .await,
    );
    assert_eq!(created["email"], "ops@cli.example", "{created}");
    assert_eq!(created["role"], "admin");
    let (status, me) = service
        .post(
            "/auth/login",
            None,
            json!({"email": "ops@cli.example", "password": "ops-password-1"}),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["role"], "admin");

    // DLQ and events commands sign in with the new admin and go through the API.
    let signed_in = [
        ("TICKETING_API", service.base.as_str()),
        ("TICKETING_ADMIN_EMAIL", "ops@cli.example"),
        ("TICKETING_ADMIN_PASSWORD", "ops-password-1"),
    ];
    let stats = json_of(&admin_cli(&["dlq", "stats"], &signed_in).await);
    assert_eq!(
        stats,
        json!({"pending": 0, "processing": 0, "resolved": 0, "discarded": 0})
    );
    let list = json_of(&admin_cli(&["dlq", "list", "--status", "pending"], &signed_in).await);
    assert_eq!(list["total_count"], 0, "{list}");
    let missing = admin_cli(&["dlq", "show", "999"], &signed_in).await;
    assert!(!missing.status.success());
    let problem: Value = serde_json::from_slice(
        missing
            .stderr
            .split(|b| *b == b'\n')
            .skip(1)
            .flat_map(|line| line.iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .unwrap_or_else(|e| panic!("no problem+json on stderr ({e}): {missing:?}"));
    assert_eq!(problem["status"], 404, "{problem}");
    let anonymous = admin_cli(&["dlq", "stats"], &[("TICKETING_API", &service.base)]).await;
    assert!(!anonymous.status.success());
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("no credentials"),
        "{anonymous:?}"
    );

    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    let listed = json_of(&admin_cli(&["events", "list", "--status", "on_sale"], &signed_in).await);
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == event.to_string()),
        "{listed}"
    );
    let cancelled =
        json_of(&admin_cli(&["events", "cancel", &event.to_string()], &signed_in).await);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let (_, shown) = service.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(shown["status"], "cancelled", "{shown}");

    // The cache: the instance's figures over HTTP; Redis entries under the prefix cleared.
    let cache = json_of(&admin_cli(&["cache", "stats"], &signed_in).await);
    assert_eq!(
        (cache["kind"].clone(), cache["status"].clone()),
        (json!("memory"), json!("pass")),
        "{cache}"
    );
    let prefix = format!("cli-test-{}:", uuid::Uuid::new_v4().simple());
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    for key in ["a", "b", "c"] {
        let () = redis::cmd("SET")
            .arg(format!("{prefix}{key}"))
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let () = redis::cmd("SET")
        .arg(format!("other-{prefix}kept"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let on_redis = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let cleared = json_of(&admin_cli(&["cache", "clear"], &on_redis).await);
    assert_eq!(cleared["deleted"], 3, "{cleared}");
    let kept: i64 = redis::cmd("EXISTS")
        .arg(format!("other-{prefix}kept"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 1, "a key outside the prefix was deleted");

    // Diagnostics: the service, the database and the broker.
    let mut diagnose = db.to_vec();
    diagnose.push(("TICKETING_API", &service.base));
    diagnose.push(("KAFKA_BROKERS", "127.0.0.1:9092"));
    let report = json_of(&admin_cli(&["diagnostics"], &diagnose).await);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["service"]["status"], "ready", "{report:#}");
    let postgres = &report["postgres"][0];
    assert_eq!(postgres["status"], "pass", "{report:#}");
    assert_eq!(postgres["roles"], json!(["events", "projections", "auth"]));
    assert!(postgres["tables"]["public.events"].as_i64().unwrap() > 0);
    assert!(postgres["event_log"]["head_position"].as_i64().unwrap() > 0);
    assert!(postgres["dlq"]["pending"].is_u64(), "{report:#}");
    assert_eq!(
        report["kafka"]["status"], "pass",
        "the Kafka broker on 127.0.0.1:9092 does not answer: start it with ./scripts/services.sh\n{report:#}"
    );

    // A rebuild is refused while the service answers, and runs once it is stopped.
    let rebuild_env = [
        ("DATABASE_URL", database.as_str()),
        ("TICKETING_API", service.base.as_str()),
    ];
    let refused = admin_cli(&["projections", "rebuild"], &rebuild_env).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop every instance"),
        "{refused:?}"
    );
    service.sigterm().await;
    assert!(service.exit_status(Duration::from_secs(30)).await.success());
    let rebuilt = json_of(&admin_cli(&["projections", "rebuild"], &rebuild_env).await);
    let head = postgres["event_log"]["head_position"].as_u64().unwrap();
    assert!(
        rebuilt["read_models"]["position"].as_u64().unwrap() >= head,
        "{rebuilt}"
    );
    assert!(
        rebuilt["insights"]["position"].as_u64().unwrap() >= head,
        "{rebuilt}"
    );

    let restarted = Service::start(&database, &boot).await;
    let (status, shown) = restarted.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"], "cancelled", "{shown}");
    let token = restarted.login("ops@cli.example", "ops-password-1").await;
    let (status, page) = restarted
        .get("/api/events?status=cancelled", Some(&token))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total_count"], 1, "{page}");
}

/// The DLQ commands on real dead letters (poison produced onto the service's topics on the
/// Kafka broker): `retry` re-runs the handler and, failing again, exits non-zero with the
/// problem and a grown retry count; `resolve` and `discard` close their entries with the notes
/// and reason given; `dlq stats` and `dlq show` follow. `events show` reads one event.
#[tokio::test]
async fn dlq_commands_work_dead_letters_and_events_show_reads_an_event() {
    use ticketing::bus::EventBus;
    let database = fresh_database().await;
    let brokers = ticketing::bus::kafka::testing::brokers().await;
    let prefix = format!("cli{}.", uuid::Uuid::new_v4().simple());
    let env = [
        ("ADMIN_EMAIL", ADMIN_EMAIL),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC_PREFIX", prefix.as_str()),
    ];
    let service = Service::start(&database, &env).await;
    let signed_in = [
        ("TICKETING_API", service.base.as_str()),
        ("TICKETING_ADMIN_EMAIL", ADMIN_EMAIL),
        ("TICKETING_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ];
    let cli = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        admin_cli(&args, &signed_in).await
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();

    // events show: the event as the API shows it.
    let (_, organizer) = service.user("organizer").await;
    let event = service.event_on_sale(&organizer, 10).await;
    let shown = json_of(&cli(args(&["events", "show", &event.to_string()])).await);
    let (_, api) = service.get(&format!("/api/events/{event}"), None).await;
    assert_eq!(shown, api);
    assert_eq!(shown["status"], "on_sale");

    // Three poison messages: three pending dead letters.
    let bus = ticketing::bus::kafka::KafkaBus::new(&brokers).unwrap();
    let poison = |n: usize| ticketing::bus::BusMessage {
        topic: format!("{prefix}reservations").into(),
        key: format!("reservation-poison-{n}"),
        headers: vec![
            ("event-type".into(), "reservation.placed".into()),
            ("event-version".into(), "7".into()),
            ("stream-id".into(), format!("reservation-poison-{n}")),
        ],
        payload: b"not bincode".to_vec(),
    };
    bus.publish((0..3).map(poison).collect()).await.unwrap();
    // Each is dead-lettered by both consumers of the topic, insights and webhooks.
    eventually("six dead letters", Duration::from_secs(60), || async {
        json_of(&cli(args(&["dlq", "stats"])).await)["pending"] == 6
    })
    .await;
    let listed = json_of(&cli(args(&["dlq", "list", "--status", "pending"])).await);
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["consumer"] == "insights")
        .map(|e| e["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{listed}");

    // retry: the handler fails again; non-zero exit, the problem on stderr, one more retry.
    let before = json_of(&cli(args(&["dlq", "show", &ids[0]])).await);
    let retried = cli(args(&["dlq", "retry", &ids[0]])).await;
    assert!(!retried.status.success(), "{retried:?}");
    let stderr = String::from_utf8_lossy(&retried.stderr);
    assert!(stderr.contains("409") || stderr.contains("422"), "{stderr}");
    let after = json_of(&cli(args(&["dlq", "show", &ids[0]])).await);
    assert_eq!(after["status"], "pending", "{after}");
    assert_eq!(
        after["retry_count"].as_u64(),
        before["retry_count"].as_u64().map(|n| n + 1),
        "{after}"
    );

    // resolve and discard close their entries with what the operator said.
    let resolved = json_of(
        &cli(args(&[
            "dlq",
            "resolve",
            &ids[1],
            "--notes",
            "fixed by hand",
        ]))
        .await,
    );
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    let discarded = json_of(
        &cli(args(&[
            "dlq",
            "discard",
            &ids[2],
            "--reason",
            "a test's garbage",
        ]))
        .await,
    );
    assert_eq!(discarded["status"], "discarded", "{discarded}");
    let stats = json_of(&cli(args(&["dlq", "stats"])).await);
    assert_eq!(
        stats,
        json!({"pending": 4, "processing": 0, "resolved": 1, "discarded": 1})
    );
    let resolved = json_of(&cli(args(&["dlq", "show", &ids[1]])).await);
    let discarded = json_of(&cli(args(&["dlq", "show", &ids[2]])).await);
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_eq!(discarded["status"], "discarded", "{discarded}");
    assert!(
        resolved.to_string().contains("fixed by hand"),
        "the notes are kept: {resolved}"
    );
    assert!(
        discarded.to_string().contains("a test's garbage"),
        "the reason is kept: {discarded}"
    );
    // A closed entry is not retried.
    assert!(!cli(args(&["dlq", "retry", &ids[2]])).await.status.success());
}
