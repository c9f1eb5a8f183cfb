//! Typed configuration from environment variables (12-factor). Secrets are redacted from
//! `Debug`, so the config can be logged at start-up.

use std::net::SocketAddr;
use std::time::Duration;

const STMT: &str = "DB_STATEMENT_TIMEOUT_MS"; // `0` turns the pools' time-out off

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Staging,
    Production,
}

#[derive(Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub database_url: Option<String>,
    pub projections_database_url: Option<String>,
    pub auth_database_url: Option<String>,
    pub kafka_brokers: Option<String>,
    pub kafka_topic_prefix: String,
    /// When a bus consumer counts as stalled (`CONSUMER_STALL_SECONDS`; zero: never).
    pub consumer_stall_after: Duration,
    /// Whether a stalled consumer rejoins its group (else it only reports the stall).
    pub consumer_stall_recovery: bool,
    pub redis_url: Option<String>,
    /// `false` sends every event read to the read models (to measure what the cache saves).
    pub cache_enabled: bool,
    /// Prefix of every Redis key this service writes.
    pub redis_key_prefix: String,
    /// How long a cached event view lives at most (invalidation usually ends it sooner).
    pub cache_ttl: Duration,
    /// How long one Redis command may take before the read falls back to PostgreSQL.
    pub cache_timeout: Duration,
    pub admin_email: Option<String>,
    pub admin_password: Option<String>,
    pub reservation_ttl: chrono::Duration,
    /// How often each instance looks for overdue holds (those of an instance that died).
    pub expiry_sweep: Duration,
    /// How often each instance looks for gateway captures that have no recorded event
    /// (`RECONCILE_INTERVAL_SECONDS`).
    pub reconcile_interval: Duration,
    /// Fault injection (`FAULT_CRASH_AFTER_CAPTURE`, refused in production): abort the process
    /// right after a capture, before it is recorded, to prove reconciliation.
    pub fault_crash_after_capture: bool,
    /// Fault injection (`FAULT_GATEWAY_FILE`, refused in production): a file the simulated
    /// processor's latency and failure rate follow at run time (`payment::simulated::drill`).
    pub fault_gateway_file: Option<std::path::PathBuf>,
    pub session_ttl: chrono::Duration,
    pub app_env: AppEnv,
    /// Where spans go over OTLP/HTTP: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`; none with `OTEL_SDK_DISABLED=true`.
    pub otel_endpoint: Option<String>,
    /// Which spans are exported (`OTEL_TRACES_FILTER`, `RUST_LOG` syntax, default `info`):
    /// independent of the log level, so `RUST_LOG=warn` still exports every request's trace.
    pub otel_traces_filter: String,
    /// Most commands decided and appended together for one event.
    pub max_batch: usize,
    /// Most commands waiting for one event's writer; more are refused with 503
    /// (`SALE_MAILBOX_CAPACITY`).
    pub sale_mailbox: usize,
    pub body_limit_bytes: usize,
    pub payment_latency: Duration,
    pub payment_failure_rate: f64,
    /// Longest wait for one call to the payment gateway (`PAYMENT_TIMEOUT_MS`).
    pub payment_timeout: Duration,
    /// When the circuit breakers of PostgreSQL and the payment gateway open
    /// (`BREAKER_FAILURES` in a row) and how long they refuse calls (`BREAKER_COOL_DOWN_MS`).
    pub breaker: crate::breaker::BreakerConfig,
    /// Pool settings for every PostgreSQL database.
    pub pool: crate::db::PoolSettings,
    /// Take the client IP from `X-Forwarded-For` (the last address, appended by the proxy);
    /// only behind a trusted proxy.
    pub trust_proxy: bool,
    pub rate_limits: RateLimits,
    /// Origins allowed by CORS in staging and production; development allows any origin.
    pub cors_allowed_origins: Vec<String>,
    /// Longest a request may run before it is answered with 503 `request-timeout`.
    pub request_timeout: Duration,
    /// After SIGTERM, how long `/ready` answers 503 (`draining`) while the listener still
    /// accepts, so a load balancer stops sending traffic before connections are refused.
    pub shutdown_drain: Duration,
    /// Attempts per webhook delivery, the first included (`WEBHOOK_MAX_ATTEMPTS`).
    pub webhook_max_attempts: u32,
    /// The first pause between webhook attempts; each next one doubles
    /// (`WEBHOOK_RETRY_BASE_MS`).
    pub webhook_retry_base: Duration,
    /// The key that signs queue passes (`QUEUE_PASS_SECRET`), shared by every instance;
    /// required in production, a fixed development key otherwise (`None`).
    pub queue_pass_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("database_url", &redact(&self.database_url))
            .field("kafka_brokers", &self.kafka_brokers)
            .field("redis_url", &redact(&self.redis_url))
            .field("admin_email", &self.admin_email)
            .field("admin_password", &redact(&self.admin_password))
            .field("reservation_ttl_s", &self.reservation_ttl.num_seconds())
            .field("app_env", &self.app_env)
            .field("max_batch", &self.max_batch)
            .field("pool", &self.pool)
            .field("trust_proxy", &self.trust_proxy)
            .field("rate_limits", &self.rate_limits)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("request_timeout_s", &self.request_timeout.as_secs())
            .field("reconcile_interval", &self.reconcile_interval)
            .field("fault_crash_after_capture", &self.fault_crash_after_capture)
            .field("fault_gateway_file", &self.fault_gateway_file)
            .field("shutdown_drain", &self.shutdown_drain)
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .field("webhook_retry_base", &self.webhook_retry_base)
            .field("queue_pass_secret", &redact(&self.queue_pass_secret))
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    /// The in-memory development default, as with an empty environment.
    fn default() -> Self {
        Config {
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            projections_database_url: None,
            auth_database_url: None,
            kafka_brokers: None,
            kafka_topic_prefix: "ticketing.".into(),
            consumer_stall_after: Duration::from_secs(15),
            consumer_stall_recovery: true,
            redis_url: None,
            cache_enabled: true,
            redis_key_prefix: "ticketing:".into(),
            cache_ttl: Duration::from_secs(30),
            cache_timeout: Duration::from_millis(50),
            admin_email: None,
            admin_password: None,
            reservation_ttl: chrono::Duration::seconds(900),
            expiry_sweep: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(60),
            fault_crash_after_capture: false,
            fault_gateway_file: None,
            session_ttl: chrono::Duration::hours(24),
            app_env: AppEnv::Development,
            otel_endpoint: None,
            otel_traces_filter: "info".into(),
            max_batch: 256,
            sale_mailbox: 8192,
            body_limit_bytes: 1024 * 1024,
            payment_latency: Duration::ZERO,
            payment_failure_rate: 0.0,
            payment_timeout: Duration::from_secs(10),
            breaker: crate::breaker::BreakerConfig::default(),
            pool: crate::db::PoolSettings::default(),
            trust_proxy: false,
            rate_limits: RateLimits::default(),
            cors_allowed_origins: Vec::new(),
            request_timeout: Duration::from_secs(30),
            shutdown_drain: Duration::ZERO,
            webhook_max_attempts: 8,
            webhook_retry_base: Duration::from_millis(30_000),
            queue_pass_secret: None,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the config from any key lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let d = Config::default();
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        fn parse<T: std::str::FromStr>(
            var: &'static str,
            v: Option<String>,
            default: T,
        ) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match v {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError {
                    var,
                    reason: format!("{v:?}: {e}"),
                }),
            }
        }
        // 1..=max: past a billion seconds a time added to now overflows chrono (a panic).
        let bounded = |var: &'static str, default: i64, max: i64| -> Result<i64, ConfigError> {
            let n: i64 = parse(var, get(var), default)?;
            if !(1..=max).contains(&n) {
                return Err(ConfigError {
                    var,
                    reason: format!("must be between 1 and {max}"),
                });
            }
            Ok(n)
        };
        let positive = |var: &'static str, default: i64| bounded(var, default, 1_000_000_000);
        // The event store's pool lends one connection to its LISTEN for good: 1 starves appends.
        let db_max_connections = match positive("DB_MAX_CONNECTIONS", 10)? {
            1 => Err(ConfigError {
                var: "DB_MAX_CONNECTIONS",
                reason: "must be at least 2 (the event store's listener keeps one)".into(),
            }),
            n => Ok(u32::try_from(n).unwrap_or(10)),
        }?;
        let seconds = |n: i64| Duration::from_secs(u64::try_from(n).unwrap_or(1));
        let app_env = match get("APP_ENV")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("development") | Some("dev") => AppEnv::Development,
            Some("staging") => AppEnv::Staging,
            Some("production") | Some("prod") => AppEnv::Production,
            Some(other) => {
                return Err(ConfigError {
                    var: "APP_ENV",
                    reason: format!("{other:?} is not development, staging or production"),
                })
            }
        };
        let postgres_url = |var: &'static str| -> Result<Option<String>, ConfigError> {
            let Some(url) = get(var) else {
                return Ok(None);
            };
            match <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url) {
                Ok(_) => Ok(Some(url)),
                // The value may hold a password: name the variable, never echo it.
                Err(e) => Err(ConfigError {
                    var,
                    reason: format!(
                        "not a PostgreSQL URL like postgres://user:password@host:5432/database \
                         ({e})"
                    ),
                }),
            }
        };
        let database_url = postgres_url("DATABASE_URL")?;
        let failure_rate: f64 = parse("PAYMENT_FAILURE_RATE", get("PAYMENT_FAILURE_RATE"), 0.0)?;
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(ConfigError {
                var: "PAYMENT_FAILURE_RATE",
                reason: "must be within 0..=1".into(),
            });
        }
        let fault_crash_after_capture = match get("FAULT_CRASH_AFTER_CAPTURE")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "FAULT_CRASH_AFTER_CAPTURE",
                    reason: format!("{other:?} is not true or false"),
                })
            }
        };
        if fault_crash_after_capture && app_env == AppEnv::Production {
            return Err(ConfigError {
                var: "FAULT_CRASH_AFTER_CAPTURE",
                reason: "a fault-injection hook for tests; refused with APP_ENV=production".into(),
            });
        }
        let fault_gateway_file = get("FAULT_GATEWAY_FILE").map(std::path::PathBuf::from);
        if fault_gateway_file.is_some() && app_env == AppEnv::Production {
            return Err(ConfigError {
                var: "FAULT_GATEWAY_FILE",
                reason: "a fault-injection hook for tests; refused with APP_ENV=production".into(),
            });
        }
        let limit = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            u32::try_from(positive(var, i64::from(default))?).map_err(|_| ConfigError {
                var,
                reason: "too large".into(),
            })
        };
        let rl = RateLimits::default();
        let rate_limits = RateLimits {
            auth_per_minute: limit("RATE_LIMIT_AUTH_PER_MINUTE", rl.auth_per_minute)?,
            auth_burst: limit("RATE_LIMIT_AUTH_BURST", rl.auth_burst)?,
            writes_per_second: limit("RATE_LIMIT_WRITES_PER_SECOND", rl.writes_per_second)?,
            reads_per_second: limit("RATE_LIMIT_READS_PER_SECOND", rl.reads_per_second)?,
        };
        let trust_proxy = match get("TRUST_PROXY").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                return Err(ConfigError {
                    var: "TRUST_PROXY",
                    reason: format!("{v:?} is not true or false"),
                })
            }
        };
        let mut cors_allowed_origins = Vec::new();
        for origin in get("CORS_ALLOWED_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
                || axum::http::HeaderValue::from_str(origin).is_err()
            {
                return Err(ConfigError {
                    var: "CORS_ALLOWED_ORIGINS",
                    reason: format!("{origin:?} is not an origin like https://example.com"),
                });
            }
            cors_allowed_origins.push(origin.to_owned());
        }
        let queue_pass_secret = get("QUEUE_PASS_SECRET");
        match &queue_pass_secret {
            None if app_env == AppEnv::Production => {
                return Err(ConfigError {
                    var: "QUEUE_PASS_SECRET",
                    reason: "required in production (the key that signs queue passes)".into(),
                })
            }
            Some(secret) if secret.len() < 32 => {
                return Err(ConfigError {
                    var: "QUEUE_PASS_SECRET",
                    reason: "must be at least 32 characters".into(),
                })
            }
            _ => {}
        }
        Ok(Config {
            bind_addr: parse("BIND_ADDR", get("BIND_ADDR"), d.bind_addr)?,
            projections_database_url: postgres_url("PROJECTIONS_DATABASE_URL")?
                .or_else(|| database_url.clone()),
            auth_database_url: postgres_url("AUTH_DATABASE_URL")?.or_else(|| database_url.clone()),
            database_url,
            kafka_brokers: get("KAFKA_BROKERS"),
            kafka_topic_prefix: get("KAFKA_TOPIC_PREFIX").unwrap_or(d.kafka_topic_prefix),
            consumer_stall_after: Duration::from_secs(parse(
                "CONSUMER_STALL_SECONDS",
                get("CONSUMER_STALL_SECONDS"),
                d.consumer_stall_after.as_secs(),
            )?),
            consumer_stall_recovery: parse(
                "CONSUMER_STALL_RECOVERY",
                get("CONSUMER_STALL_RECOVERY"),
                d.consumer_stall_recovery,
            )?,
            redis_url: get("REDIS_URL"),
            cache_enabled: parse("CACHE_ENABLED", get("CACHE_ENABLED"), true)?,
            redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or(d.redis_key_prefix.clone()),
            cache_ttl: seconds(positive("CACHE_TTL_SECONDS", 30)?),
            cache_timeout: Duration::from_millis(
                u64::try_from(positive("CACHE_TIMEOUT_MS", 50)?).unwrap_or(50),
            ),
            admin_email: get("ADMIN_EMAIL"),
            admin_password: get("ADMIN_PASSWORD"),
            reservation_ttl: chrono::Duration::seconds(positive("RESERVATION_TTL_SECONDS", 900)?),
            expiry_sweep: seconds(positive("EXPIRY_SWEEP_SECONDS", 30)?),
            reconcile_interval: seconds(positive("RECONCILE_INTERVAL_SECONDS", 60)?),
            fault_crash_after_capture,
            fault_gateway_file,
            session_ttl: chrono::Duration::seconds(positive("SESSION_TTL_SECONDS", 86_400)?),
            app_env,
            otel_endpoint: match get("OTEL_SDK_DISABLED").map(|v| v.trim().to_ascii_lowercase()) {
                Some(v) if v == "true" => None,
                _ => get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
                    get("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
                }),
            },
            otel_traces_filter: get("OTEL_TRACES_FILTER").unwrap_or_else(|| "info".into()),
            max_batch: usize::try_from(bounded("MAX_BATCH", 256, 65_536)?).unwrap_or(256),
            sale_mailbox: usize::try_from(bounded("SALE_MAILBOX_CAPACITY", 8192, 1 << 24)?)
                .unwrap_or(8192),
            body_limit_bytes: d.body_limit_bytes,
            payment_latency: Duration::from_millis(parse(
                "PAYMENT_LATENCY_MS",
                get("PAYMENT_LATENCY_MS"),
                0,
            )?),
            payment_failure_rate: failure_rate,
            payment_timeout: Duration::from_millis(
                u64::try_from(positive("PAYMENT_TIMEOUT_MS", 10_000)?).unwrap_or(10_000),
            ),
            breaker: crate::breaker::BreakerConfig {
                consecutive: limit("BREAKER_FAILURES", d.breaker.consecutive)?,
                cool_down: Duration::from_millis(
                    u64::try_from(positive("BREAKER_COOL_DOWN_MS", 5_000)?).unwrap_or(5_000),
                ),
                ..d.breaker
            },
            pool: crate::db::PoolSettings {
                max_connections: db_max_connections,
                min_connections: parse("DB_MIN_CONNECTIONS", get("DB_MIN_CONNECTIONS"), 1)?,
                acquire_timeout: seconds(positive("DB_ACQUIRE_TIMEOUT_SECONDS", 3)?),
                idle_timeout: seconds(positive("DB_IDLE_TIMEOUT_SECONDS", 600)?),
                max_lifetime: seconds(positive("DB_MAX_LIFETIME_SECONDS", 1800)?),
                statement_timeout: Some(Duration::from_millis(parse(STMT, get(STMT), 5_000)?))
                    .filter(|t| !t.is_zero()),
            },
            trust_proxy,
            rate_limits,
            cors_allowed_origins,
            request_timeout: seconds(positive("REQUEST_TIMEOUT_SECONDS", 30)?),
            shutdown_drain: Duration::from_secs(parse(
                "SHUTDOWN_DRAIN_SECONDS",
                get("SHUTDOWN_DRAIN_SECONDS"),
                0,
            )?),
            webhook_max_attempts: limit("WEBHOOK_MAX_ATTEMPTS", d.webhook_max_attempts)?,
            webhook_retry_base: Duration::from_millis(
                u64::try_from(positive("WEBHOOK_RETRY_BASE_MS", 30_000)?).unwrap_or(30_000),
            ),
            queue_pass_secret,
        })
    }
}

mod rate_limits;
pub use rate_limits::RateLimits;

#[cfg(test)]
mod tests;
