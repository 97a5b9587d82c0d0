//! Settings from flags and `HERALD_*` environment variables (flags win). Parsing takes a
//! lookup function instead of reading the process environment, so it is testable as is.
use herald_domain::thresholds::Thresholds;
use std::net::SocketAddr;
use std::time::Duration;

/// A setting that could not be used: names the variable and what it expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub amqp_url: Option<String>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub master_key: Option<String>,
    /// Signs connection tokens; every gateway node needs the same one.
    pub connection_secret: Option<String>,
    pub node_id: String,
    pub amqp_queue: String,
    /// Exchanges bound to the queue besides herald's own topic exchange.
    pub amqp_bind: Option<Vec<String>>,
    pub amqp_prefetch: u16,
    pub budget_thresholds: Thresholds,
    pub history_maxlen: usize,
    pub history_ttl: Duration,
    pub redis_prefix: String,
    pub migrate: bool,
    pub log_format: Option<LogFormat>,
    /// On SIGTERM, connections are closed (allowReconnect) spread over this window.
    pub drain_window: Duration,
}

/// The variables Herald reads, with their defaults, for `--help` and docs.
pub const VARIABLES: &[(&str, &str)] = &[
    ("HERALD_LISTEN", "0.0.0.0:8080"),
    (
        "HERALD_AMQP_URL",
        "(none: standalone takes events over HTTP only)",
    ),
    (
        "HERALD_REDIS_URL",
        "(none: in-memory backplane, standalone only)",
    ),
    (
        "HERALD_DATABASE_URL",
        "(none: in-memory store, standalone only)",
    ),
    ("HERALD_MASTER_KEY", "(standalone: generated and printed)"),
    (
        "HERALD_CONNECTION_SECRET",
        "(derived from HERALD_MASTER_KEY)",
    ),
    ("HERALD_NODE_ID", "(hostname)"),
    ("HERALD_AMQP_QUEUE", "herald.events"),
    (
        "HERALD_AMQP_BIND",
        "(the MassTransit exchanges of every event type)",
    ),
    ("HERALD_AMQP_PREFETCH", "64"),
    ("HERALD_BUDGET_THRESHOLDS", "50,75,90,100"),
    ("HERALD_HISTORY_MAXLEN", "1000"),
    ("HERALD_HISTORY_TTL", "15m"),
    ("HERALD_REDIS_PREFIX", "herald"),
    ("HERALD_MIGRATE", "false"),
    ("HERALD_LOG_FORMAT", "(text for standalone, json otherwise)"),
    ("HERALD_DRAIN_WINDOW", "10s"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "(none: no trace export; read by the OpenTelemetry SDK, see docs/operations.md)",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "(OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces for http/protobuf)",
    ),
    ("OTEL_SERVICE_NAME", "herald"),
];

/// Values given on the command line; `None` falls back to the environment, then the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on [env: HERALD_LISTEN, default 0.0.0.0:8080]
    #[arg(long, global = true)]
    pub listen: Option<String>,
    /// RabbitMQ URL [env: HERALD_AMQP_URL]
    #[arg(long, global = true)]
    pub amqp_url: Option<String>,
    /// Redis URL [env: HERALD_REDIS_URL]
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// PostgreSQL URL [env: HERALD_DATABASE_URL]
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Node id for logs and metrics [env: HERALD_NODE_ID, default hostname]
    #[arg(long, global = true)]
    pub node_id: Option<String>,
    /// Queue name; every other bus name follows it [env: HERALD_AMQP_QUEUE]
    #[arg(long, global = true)]
    pub amqp_queue: Option<String>,
    /// Exchanges to bind, comma list [env: HERALD_AMQP_BIND]
    #[arg(long, global = true)]
    pub amqp_bind: Option<String>,
    /// Unacked messages per consumer [env: HERALD_AMQP_PREFETCH, default 64]
    #[arg(long, global = true)]
    pub amqp_prefetch: Option<String>,
    /// Default alert thresholds in percent [env: HERALD_BUDGET_THRESHOLDS]
    #[arg(long, global = true)]
    pub budget_thresholds: Option<String>,
    /// Events kept per history stream [env: HERALD_HISTORY_MAXLEN, default 1000]
    #[arg(long, global = true)]
    pub history_maxlen: Option<String>,
    /// Idle expiry of history, e.g. 15m [env: HERALD_HISTORY_TTL]
    #[arg(long, global = true)]
    pub history_ttl: Option<String>,
    /// Prefix of every Redis key [env: HERALD_REDIS_PREFIX, default herald]
    #[arg(long, global = true)]
    pub redis_prefix: Option<String>,
    /// Apply migrations at start-up [env: HERALD_MIGRATE]
    #[arg(long, global = true)]
    pub migrate: Option<String>,
    /// text or json [env: HERALD_LOG_FORMAT]
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    /// Spread of connection closes on shutdown, e.g. 10s; 0 closes at once [env: HERALD_DRAIN_WINDOW]
    #[arg(long, global = true)]
    pub drain_window: Option<String>,
}

impl Settings {
    /// Reads settings from `flags`, then `env`, then defaults. The master key and connection
    /// secret are read from the environment only, so they never appear in process listings.
    pub fn load(
        flags: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |flag: &Option<String>, var: &str| -> Option<String> {
            flag.clone()
                .or_else(|| env(var))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let listen = match get(&flags.listen, "HERALD_LISTEN") {
            Some(v) => v.parse().map_err(|_| {
                ConfigError::new(
                    "HERALD_LISTEN",
                    format!("expected host:port such as 0.0.0.0:8080, got {v:?}"),
                )
            })?,
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let url = |var: &'static str,
                   flag: &Option<String>,
                   schemes: &[&str]|
         -> Result<Option<String>, ConfigError> {
            match get(flag, var) {
                None => Ok(None),
                Some(v) if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) => Ok(Some(v)),
                Some(_) => Err(ConfigError::new(
                    var,
                    format!(
                        "expected a URL starting with {}",
                        schemes.join("://, ") + "://"
                    ),
                )),
            }
        };
        let amqp_url = url("HERALD_AMQP_URL", &flags.amqp_url, &["amqp", "amqps"])?;
        let redis_url = url(
            "HERALD_REDIS_URL",
            &flags.redis_url,
            &["redis", "rediss", "redis+cluster"],
        )?;
        let database_url = url(
            "HERALD_DATABASE_URL",
            &flags.database_url,
            &["postgres", "postgresql"],
        )?;
        let master_key = env("HERALD_MASTER_KEY").filter(|v| !v.is_empty());
        if master_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::new(
                "HERALD_MASTER_KEY",
                "expected at least 16 characters",
            ));
        }
        let node_id = get(&flags.node_id, "HERALD_NODE_ID").unwrap_or_else(hostname);
        let amqp_queue =
            get(&flags.amqp_queue, "HERALD_AMQP_QUEUE").unwrap_or_else(|| "herald.events".into());
        if amqp_queue.len() > 200
            || amqp_queue
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "HERALD_AMQP_QUEUE",
                "expected a queue name without spaces, at most 200 characters",
            ));
        }
        let amqp_bind = get(&flags.amqp_bind, "HERALD_AMQP_BIND").map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        });
        let amqp_prefetch = number(
            "HERALD_AMQP_PREFETCH",
            get(&flags.amqp_prefetch, "HERALD_AMQP_PREFETCH"),
            256u16,
            1,
        )?;
        let budget_thresholds = match get(&flags.budget_thresholds, "HERALD_BUDGET_THRESHOLDS") {
            Some(v) => Thresholds::parse(&v).map_err(|e| {
                ConfigError::new(
                    "HERALD_BUDGET_THRESHOLDS",
                    format!("expected a comma list of percentages such as 50,75,90,100: {e}"),
                )
            })?,
            None => Thresholds::default(),
        };
        let history_maxlen = number(
            "HERALD_HISTORY_MAXLEN",
            get(&flags.history_maxlen, "HERALD_HISTORY_MAXLEN"),
            1000usize,
            1,
        )?;
        let history_ttl = match get(&flags.history_ttl, "HERALD_HISTORY_TTL") {
            Some(v) => parse_duration(&v).ok_or_else(|| {
                ConfigError::new(
                    "HERALD_HISTORY_TTL",
                    format!("expected a duration such as 900s, 15m or 1h, got {v:?}"),
                )
            })?,
            None => Duration::from_secs(15 * 60),
        };
        let redis_prefix =
            get(&flags.redis_prefix, "HERALD_REDIS_PREFIX").unwrap_or_else(|| "herald".into());
        if redis_prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError::new(
                "HERALD_REDIS_PREFIX",
                "expected a prefix without braces or spaces",
            ));
        }
        let migrate = match get(&flags.migrate, "HERALD_MIGRATE").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                return Err(ConfigError::new(
                    "HERALD_MIGRATE",
                    format!("expected true or false, got {v:?}"),
                ));
            }
        };
        let log_format =
            match get(&flags.log_format, "HERALD_LOG_FORMAT").map(|v| v.to_ascii_lowercase()) {
                None => None,
                Some(v) if v == "text" => Some(LogFormat::Text),
                Some(v) if v == "json" => Some(LogFormat::Json),
                Some(v) => {
                    return Err(ConfigError::new(
                        "HERALD_LOG_FORMAT",
                        format!("expected text or json, got {v:?}"),
                    ));
                }
            };
        let drain_window = match get(&flags.drain_window, "HERALD_DRAIN_WINDOW") {
            Some(v) if v.trim() == "0" => Duration::ZERO,
            Some(v) => parse_duration(&v).ok_or_else(|| {
                ConfigError::new(
                    "HERALD_DRAIN_WINDOW",
                    format!("expected a duration such as 10s or 0, got {v:?}"),
                )
            })?,
            None => Duration::from_secs(10),
        };
        Ok(Self {
            drain_window,
            listen,
            amqp_url,
            redis_url,
            database_url,
            master_key,
            connection_secret: env("HERALD_CONNECTION_SECRET").filter(|v| !v.is_empty()),
            node_id,
            amqp_queue,
            amqp_bind,
            amqp_prefetch,
            budget_thresholds,
            history_maxlen,
            history_ttl,
            redis_prefix,
            migrate,
            log_format,
        })
    }

    /// Settings as the process environment gives them.
    pub fn from_process(flags: &Overrides) -> Result<Self, ConfigError> {
        Self::load(flags, |k| std::env::var(k).ok())
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    var: &'static str,
    v: Option<String>,
    default: T,
    min: T,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<T>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(ConfigError::new(
                var,
                format!("expected a whole number of at least {min}, got {v:?}"),
            )),
        },
    }
}

/// `90`, `90s`, `15m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "herald".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)], flags: Overrides) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&flags, |k| map.get(k).cloned())
    }

    #[test]
    fn a_redis_cluster_url_is_accepted() {
        for url in [
            "redis+cluster://127.0.0.1:7001,127.0.0.1:7002",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002",
        ] {
            let s = load(&[("HERALD_REDIS_URL", url)], Overrides::default()).unwrap();
            assert_eq!(s.redis_url.as_deref(), Some(url));
        }
        let e = load(&[("HERALD_REDIS_URL", "cluster://x")], Overrides::default()).unwrap_err();
        assert_eq!(e.var, "HERALD_REDIS_URL");
    }

    #[test]
    fn defaults_match_the_design() {
        let s = load(&[], Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.amqp_queue, "herald.events");
        assert_eq!(s.budget_thresholds.as_slice(), &[50, 75, 90, 100]);
        assert_eq!(s.history_maxlen, 1000);
        assert_eq!(s.history_ttl, Duration::from_secs(900));
        assert_eq!(s.redis_prefix, "herald");
        assert!(s.amqp_url.is_none() && s.redis_url.is_none() && s.database_url.is_none());
        assert!(!s.migrate);
    }

    #[test]
    fn flags_win_over_environment() {
        let flags = Overrides {
            listen: Some("127.0.0.1:9000".into()),
            ..Default::default()
        };
        let s = load(
            &[
                ("HERALD_LISTEN", "127.0.0.1:1"),
                ("HERALD_HISTORY_TTL", "1h"),
            ],
            flags,
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.history_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("HERALD_LISTEN", "localhost"),
            ("HERALD_AMQP_URL", "http://x"),
            ("HERALD_REDIS_URL", "127.0.0.1:6379"),
            ("HERALD_DATABASE_URL", "mysql://x"),
            ("HERALD_AMQP_PREFETCH", "0"),
            ("HERALD_BUDGET_THRESHOLDS", "50,lots"),
            ("HERALD_HISTORY_MAXLEN", "-1"),
            ("HERALD_HISTORY_TTL", "soon"),
            ("HERALD_MIGRATE", "maybe"),
            ("HERALD_MASTER_KEY", "short"),
            ("HERALD_LOG_FORMAT", "xml"),
            ("HERALD_REDIS_PREFIX", "a{b}"),
            ("HERALD_DRAIN_WINDOW", "soon"),
        ] {
            let err = load(&[(var, value)], Overrides::default()).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(err.to_string().starts_with(var), "{err}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn bind_list_is_split_and_trimmed() {
        let s = load(&[("HERALD_AMQP_BIND", " a:B , ,c ")], Overrides::default()).unwrap();
        assert_eq!(s.amqp_bind, Some(vec!["a:B".to_string(), "c".to_string()]));
    }
}
