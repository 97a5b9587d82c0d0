//! How to reach and use the Redis backplane: URL, TLS, key prefix, history limits, probe
//! interval.
use crate::connection::Target;
use crate::contract::BackplaneError;
use herald_domain::tls::ClientTls;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// CA and client certificate for a `rediss://` URL (docs/security.md).
    pub tls: ClientTls,
    pub prefix: String,
    /// Approximate cap of each history stream (`XADD MAXLEN ~`).
    pub max_len: usize,
    /// Idle expiry of history streams.
    pub ttl: Duration,
    /// How often the subscriber connection is probed with PING.
    pub probe_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: ClientTls::default(),
            prefix: "herald".into(),
            max_len: 1000,
            ttl: Duration::from_secs(15 * 60),
            probe_interval: Duration::from_secs(5),
        }
    }

    /// The publish script's three shared ARGV: the stream cap, the idle expiry in ms and how
    /// long the `last` key is kept in ms.
    pub fn publish_script_limits(&self) -> (usize, u64, u64) {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        // Long enough that a client coming back a day later still learns it missed events.
        let last_ttl_ms = ttl_ms.max(24 * 3600 * 1000);
        (self.max_len, ttl_ms, last_ttl_ms)
    }
}

impl RedisConfig {
    /// Checks a URL exactly as [`RedisBackplane::connect`] reads it, without connecting, so a
    /// bad one can stop start-up instead of being retried (docs/configuration.md).
    pub fn check_url(url: &str) -> Result<(), BackplaneError> {
        Target::parse(url, &ClientTls::default()).map(|_| ())
    }
}
