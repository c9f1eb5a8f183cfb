//! Configuration from the environment: defaults, derived values and named refusals.
use super::*;
use std::collections::HashMap;

fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

/// An empty environment is the in-memory development default on 127.0.0.1:8080.
#[test]
fn empty_environment_gives_the_in_memory_default() {
    let c = from(&[]).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
    assert!(c.database_url.is_none());
    assert_eq!(c.reservation_ttl.num_seconds(), 900);
}

/// The projections and auth databases default to DATABASE_URL; bad values name their variable.
#[test]
fn derived_urls_default_and_bad_values_are_named() {
    let c = from(&[("DATABASE_URL", "postgres://x/db")]).unwrap();
    assert_eq!(c.auth_database_url.as_deref(), Some("postgres://x/db"));
    assert_eq!(
        from(&[("RESERVATION_TTL_SECONDS", "0")]).unwrap_err().var,
        "RESERVATION_TTL_SECONDS"
    );
    assert_eq!(from(&[("APP_ENV", "moon")]).unwrap_err().var, "APP_ENV");
    assert!(!format!("{:?}", from(&[("ADMIN_PASSWORD", "hunter2")]).unwrap()).contains("hunter2"));
}

/// Counts and durations are bounded: a TTL so long that now plus it overflows (a panic in a
/// sale's writer or in login, once running) or a batch too large to buffer is refused at start.
#[test]
fn values_too_large_to_use_are_refused_by_name() {
    for (var, value) in [
        ("RESERVATION_TTL_SECONDS", "10000000000000"),
        ("SESSION_TTL_SECONDS", "9000000000000000000"),
        ("MAX_BATCH", "1000000000"),
        ("SALE_MAILBOX_CAPACITY", "3000000000000000000"),
    ] {
        let refused = from(&[(var, value)]).unwrap_err();
        assert_eq!(refused.var, var);
        assert!(
            refused.reason.contains("between 1 and"),
            "{}",
            refused.reason
        );
    }
    let one = from(&[("DB_MAX_CONNECTIONS", "1")]).unwrap_err();
    assert_eq!(
        one.var, "DB_MAX_CONNECTIONS",
        "the listener keeps one: {}",
        one.reason
    );
    let c = from(&[("RESERVATION_TTL_SECONDS", "1000000000")]).unwrap();
    assert!(chrono::Utc::now()
        .checked_add_signed(c.reservation_ttl)
        .is_some());
}

/// Rate limits, proxy trust, CORS origins and the request timeout have safe defaults.
#[test]
fn edge_settings_default_to_safe_values() {
    let c = from(&[]).unwrap();
    assert!(!c.trust_proxy);
    assert_eq!(c.rate_limits, RateLimits::default());
    assert_eq!(c.rate_limits.auth_per_minute, 10);
    assert_eq!(c.rate_limits.auth_burst, 5);
    assert!(c.cors_allowed_origins.is_empty());
    assert_eq!(c.request_timeout, Duration::from_secs(30));
}

/// Edge settings are read from the environment and bad values name their variable.
#[test]
fn edge_settings_are_read_and_checked() {
    let c = from(&[
        ("TRUST_PROXY", "true"),
        ("RATE_LIMIT_AUTH_PER_MINUTE", "3"),
        ("RATE_LIMIT_AUTH_BURST", "2"),
        ("RATE_LIMIT_WRITES_PER_SECOND", "4"),
        ("RATE_LIMIT_READS_PER_SECOND", "50"),
        (
            "CORS_ALLOWED_ORIGINS",
            "https://tickets.example, http://localhost:3000",
        ),
        ("REQUEST_TIMEOUT_SECONDS", "5"),
    ])
    .unwrap();
    assert!(c.trust_proxy);
    assert_eq!(
        c.rate_limits,
        RateLimits {
            auth_per_minute: 3,
            auth_burst: 2,
            writes_per_second: 4,
            reads_per_second: 50
        }
    );
    assert_eq!(
        c.cors_allowed_origins,
        ["https://tickets.example", "http://localhost:3000"]
    );
    assert_eq!(c.request_timeout, Duration::from_secs(5));
    for (var, value) in [
        ("TRUST_PROXY", "maybe"),
        ("RATE_LIMIT_AUTH_PER_MINUTE", "0"),
        ("RATE_LIMIT_READS_PER_SECOND", "-1"),
        ("CORS_ALLOWED_ORIGINS", "tickets.example"),
        ("REQUEST_TIMEOUT_SECONDS", "0"),
    ] {
        assert_eq!(from(&[(var, value)]).unwrap_err().var, var);
    }
}

/// The drain delay defaults to none, may be zero, and a non-number names its variable.
#[test]
fn shutdown_drain_defaults_to_zero_and_bad_values_are_named() {
    assert_eq!(from(&[]).unwrap().shutdown_drain, Duration::ZERO);
    assert_eq!(
        from(&[("SHUTDOWN_DRAIN_SECONDS", "5")])
            .unwrap()
            .shutdown_drain,
        Duration::from_secs(5)
    );
    assert_eq!(
        from(&[("SHUTDOWN_DRAIN_SECONDS", "-1")]).unwrap_err().var,
        "SHUTDOWN_DRAIN_SECONDS"
    );
}

/// Cache settings default to 30 s TTL, 50 ms Redis timeout, `ticketing:` keys; bad values
/// name their variable.
#[test]
fn cache_settings_default_and_are_checked() {
    let d = from(&[]).unwrap();
    assert_eq!(
        (d.cache_ttl, d.cache_timeout, d.redis_key_prefix.as_str()),
        (
            Duration::from_secs(30),
            Duration::from_millis(50),
            "ticketing:"
        )
    );
    let c = from(&[
        ("CACHE_TTL_SECONDS", "5"),
        ("CACHE_TIMEOUT_MS", "20"),
        ("REDIS_KEY_PREFIX", "t1:"),
    ])
    .unwrap();
    assert_eq!(
        (c.cache_ttl, c.cache_timeout, c.redis_key_prefix.as_str()),
        (Duration::from_secs(5), Duration::from_millis(20), "t1:")
    );
    assert_eq!(
        from(&[("CACHE_TIMEOUT_MS", "0")]).unwrap_err().var,
        "CACHE_TIMEOUT_MS"
    );
}

/// The traces URL: the signal-specific variable as is, else the base URL + `/v1/traces`;
/// none when the SDK is disabled. The export filter defaults to `info`.
#[test]
fn otel_variables_resolve_the_traces_endpoint() {
    let c = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
    assert_eq!(
        c.otel_endpoint.as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(c.otel_traces_filter, "info");
    let c = from(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://other:4318/traces",
        ),
        ("OTEL_TRACES_FILTER", "ticketing=debug"),
    ])
    .unwrap();
    assert_eq!(c.otel_endpoint.as_deref(), Some("http://other:4318/traces"));
    assert_eq!(c.otel_traces_filter, "ticketing=debug");
    let c = from(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .unwrap();
    assert_eq!(c.otel_endpoint, None);
}

/// A database URL that is not one names its variable and does not echo the value.
#[test]
fn a_database_url_that_is_no_url_is_refused_by_name() {
    let e = from(&[("DATABASE_URL", "not-a-url-with-s3cret")]).unwrap_err();
    assert_eq!(e.var, "DATABASE_URL");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = from(&[
        ("DATABASE_URL", "postgres://x/db"),
        ("PROJECTIONS_DATABASE_URL", "x"),
    ])
    .unwrap_err();
    assert_eq!(e.var, "PROJECTIONS_DATABASE_URL");
}

/// Reconciliation runs every 60 s unless told otherwise; the crash hook is off by default,
/// honoured outside production and refused in production.
#[test]
fn reconciliation_interval_and_the_crash_hook() {
    let c = from(&[]).unwrap();
    assert_eq!(c.reconcile_interval, Duration::from_secs(60));
    assert!(!c.fault_crash_after_capture);
    let c = from(&[
        ("RECONCILE_INTERVAL_SECONDS", "2"),
        ("FAULT_CRASH_AFTER_CAPTURE", "1"),
        ("APP_ENV", "staging"),
    ])
    .unwrap();
    assert_eq!(c.reconcile_interval, Duration::from_secs(2));
    assert!(c.fault_crash_after_capture);
    let refused = from(&[
        ("FAULT_CRASH_AFTER_CAPTURE", "true"),
        ("APP_ENV", "production"),
    ]);
    assert_eq!(refused.unwrap_err().var, "FAULT_CRASH_AFTER_CAPTURE");
    assert_eq!(
        from(&[("RECONCILE_INTERVAL_SECONDS", "0")])
            .unwrap_err()
            .var,
        "RECONCILE_INTERVAL_SECONDS"
    );
}

/// Production refuses to start without a queue pass secret; a short one is refused anywhere;
/// the secret never shows in `Debug`.
#[test]
fn queue_pass_secret_is_required_in_production() {
    let err = from(&[("APP_ENV", "production")]).unwrap_err();
    assert_eq!(err.var, "QUEUE_PASS_SECRET");
    assert_eq!(from(&[]).unwrap().queue_pass_secret, None);
    let short = from(&[("QUEUE_PASS_SECRET", "short")]).unwrap_err();
    assert_eq!(short.var, "QUEUE_PASS_SECRET");
    let secret = "a-queue-pass-secret-of-32-characters!";
    let c = from(&[("APP_ENV", "production"), ("QUEUE_PASS_SECRET", secret)]).unwrap();
    assert_eq!(c.queue_pass_secret.as_deref(), Some(secret));
    assert!(!format!("{c:?}").contains(secret));
}

/// The gateway drill file is off by default, honoured outside production, refused in it.
#[test]
fn the_gateway_drill_file() {
    assert_eq!(from(&[]).unwrap().fault_gateway_file, None);
    let c = from(&[("FAULT_GATEWAY_FILE", "/tmp/drill")]).unwrap();
    assert_eq!(
        c.fault_gateway_file,
        Some(std::path::PathBuf::from("/tmp/drill"))
    );
    let refused = from(&[
        ("FAULT_GATEWAY_FILE", "/tmp/drill"),
        ("APP_ENV", "production"),
    ]);
    assert_eq!(refused.unwrap_err().var, "FAULT_GATEWAY_FILE");
}

/// The serving pools' statement time-out: 5 s by default, `0` turns it off, garbage is named.
#[test]
fn the_statement_timeout_defaults_to_five_seconds_and_zero_turns_it_off() {
    let ms = Duration::from_millis;
    assert_eq!(from(&[]).unwrap().pool.statement_timeout, Some(ms(5_000)));
    let c = from(&[("DB_STATEMENT_TIMEOUT_MS", "250")]).unwrap();
    assert_eq!(c.pool.statement_timeout, Some(ms(250)));
    let c = from(&[("DB_STATEMENT_TIMEOUT_MS", "0")]).unwrap();
    assert_eq!(c.pool.statement_timeout, None);
    let e = from(&[("DB_STATEMENT_TIMEOUT_MS", "-1")]).unwrap_err();
    assert_eq!(e.var, "DB_STATEMENT_TIMEOUT_MS");
}
