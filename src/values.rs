//! Value parsers for the settings: each says what it expected, and the configuration's
//! declarations name them (`value_parser = ...`).
use herald_domain::thresholds::Thresholds;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Exchange names from a comma list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanges(pub Vec<String>);

pub(crate) fn listen_address(v: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("expected host:port such as 0.0.0.0:8080, got {v:?}"))
}

pub(crate) fn node_id(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() || v.chars().any(char::is_control) {
        return Err("expected a name without control characters".into());
    }
    Ok(v.to_owned())
}

pub(crate) fn url_with_scheme<'a>(v: &'a str, schemes: &[&str]) -> Result<&'a str, String> {
    let v = v.trim();
    if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) {
        Ok(v)
    } else {
        Err(format!(
            "expected a URL starting with {}",
            schemes.join("://, ") + "://"
        ))
    }
}

// URL parsers never echo the value: it may hold a password.
pub(crate) fn amqp_url(v: &str) -> Result<String, String> {
    let v = url_with_scheme(v, &["amqp", "amqps"])?;
    lapin::uri::AMQPUri::from_str(v).map_err(|e| {
        format!("expected an AMQP URL such as amqp://guest:guest@127.0.0.1:5672/%2f ({e})")
    })?;
    Ok(v.to_owned())
}

pub(crate) fn redis_url(v: &str) -> Result<String, String> {
    let v = url_with_scheme(v, &["redis", "rediss", "redis+cluster", "rediss+cluster"])?;
    herald_backplane::RedisConfig::check_url(v).map_err(|e| {
        let herald_backplane::BackplaneError::Unavailable(why) = e;
        format!("expected a Redis URL such as redis://127.0.0.1:6379 ({why})")
    })?;
    Ok(v.to_owned())
}

pub(crate) fn postgres_url(v: &str) -> Result<String, String> {
    let v = url_with_scheme(v, &["postgres", "postgresql"])?;
    herald_store::check_database_url(v).map_err(|e| {
        format!("expected a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/herald ({e})")
    })?;
    Ok(v.to_owned())
}

pub(crate) fn queue_name(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a queue name without spaces, at most 200 characters".into());
    }
    Ok(v.to_owned())
}

pub(crate) fn exchanges(v: &str) -> Result<Exchanges, String> {
    Ok(Exchanges(
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    ))
}

pub(crate) fn whole_number<T: FromStr + PartialOrd + std::fmt::Display>(
    v: &str,
    min: T,
) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least {min}, got {v:?}"
        )),
    }
}

pub(crate) fn prefetch(v: &str) -> Result<u16, String> {
    whole_number(v, 1u16)
}

pub(crate) fn history_maxlen(v: &str) -> Result<usize, String> {
    whole_number(v, 1usize)
}

pub(crate) fn thresholds(v: &str) -> Result<Thresholds, String> {
    Thresholds::parse(v.trim())
        .map_err(|e| format!("expected a comma list of percentages such as 50,75,90,100: {e}"))
}

pub(crate) fn history_ttl(v: &str) -> Result<Duration, String> {
    parse_duration(v)
        .ok_or_else(|| format!("expected a duration such as 900s, 15m or 1h, got {v:?}"))
}

pub(crate) fn drain_window(v: &str) -> Result<Duration, String> {
    if v.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(v).ok_or_else(|| format!("expected a duration such as 10s or 0, got {v:?}"))
}

pub(crate) fn allowed_origins(v: &str) -> Result<herald_gateway::AllowedOrigins, String> {
    herald_gateway::AllowedOrigins::parse(v)
}

pub(crate) fn long_poll_timeout(v: &str) -> Result<Duration, String> {
    match parse_duration(v) {
        Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(300) => Ok(d),
        _ => Err(format!(
            "expected a duration from 1s to 300s such as 20s, got {v:?}"
        )),
    }
}

pub(crate) fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v)
        .ok_or_else(|| format!("expected a duration such as 500ms, 10s or 1m, got {v:?}"))
}

/// A rate window or span: 1 minute to 7 days, whole minutes.
pub(crate) fn rate_window(v: &str) -> Result<Duration, String> {
    match parse_duration(v) {
        Some(d)
            if d >= Duration::from_secs(60)
                && d <= Duration::from_secs(7 * 86_400)
                && d.as_secs() % 60 == 0
                && d.subsec_nanos() == 0 =>
        {
            Ok(d)
        }
        _ => Err(format!(
            "expected whole minutes from 1m to 7 days such as 5m, 15m or 1h, got {v:?}"
        )),
    }
}

pub(crate) fn min_events(v: &str) -> Result<u32, String> {
    match whole_number(v, 1u32)? {
        n if n <= 1_000_000 => Ok(n),
        n => Err(format!("expected at most 1000000, got {n}")),
    }
}

pub(crate) fn tolerance(v: &str) -> Result<u32, String> {
    match whole_number(v, 1u32)? {
        n if n <= 1000 => Ok(n),
        n => Err(format!("expected a percentage from 1 to 1000, got {n}")),
    }
}

pub(crate) fn spike_factor(v: &str) -> Result<rust_decimal::Decimal, String> {
    match rust_decimal::Decimal::from_str_exact(v.trim()) {
        Ok(k) if k > rust_decimal::Decimal::ONE && k <= rust_decimal::Decimal::from(1000) => {
            Ok(k.normalize())
        }
        _ => Err(format!(
            "expected a number above 1 and at most 1000 such as 3 or 2.5, got {v:?}"
        )),
    }
}

pub(crate) fn summary_transactions(v: &str) -> Result<usize, String> {
    match whole_number(v, 0usize)? {
        n if n <= 1000 => Ok(n),
        n => Err(format!("expected 0 to 1000, got {n}")),
    }
}

pub(crate) fn at_least_one(v: &str) -> Result<usize, String> {
    whole_number(v, 1usize)
}

pub(crate) fn header_name(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "expected a header name such as X-Forwarded-For, got {v:?}"
        ));
    }
    Ok(v.to_ascii_lowercase())
}

pub(crate) fn redis_prefix(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() || v.contains(['{', '}', ' ']) {
        return Err("expected a prefix without braces or spaces".into());
    }
    Ok(v.to_owned())
}

pub(crate) fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
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

/// The URL without its user and password, for messages: `postgres://host:5432/db`.
pub fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "herald".into())
}
