//! Talking to the broker: the error type, connecting with a deadline, the shutdown signal and
//! the small conversions every part of the AMQP side shares.
use herald_domain::Cause;
use herald_domain::tls::ClientTls;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties};
use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Connecting and declaring the topology take milliseconds; a broker that does not answer
/// within this is treated as down.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid AMQP setting: {0}")]
    Config(String),
    #[error("RabbitMQ: {0}")]
    Broker(#[source] Cause),
    /// The broker did not take the message (nack, or no queue bound to the exchange).
    #[error("RabbitMQ did not accept the message: {0}")]
    NotAccepted(String),
}

pub(super) fn broker(context: &str) -> impl FnOnce(lapin::Error) -> AmqpError + '_ {
    move |e| AmqpError::Broker(Cause::context(context, e))
}

pub(super) fn short(s: &str, what: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(s)
        .map_err(|_| AmqpError::Config(format!("{what} {s:?} is longer than 255 bytes")))
}

pub(super) fn accepted(confirm: Confirmation, target: &str) -> Result<(), AmqpError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(AmqpError::NotAccepted(format!(
            "no queue is bound to {target}"
        ))),
        Confirmation::Nack(_) => Err(AmqpError::NotAccepted(format!("{target} nacked it"))),
    }
}

pub(super) fn amqp_int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A header's value as text, if it is a string.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Connects to `url`; an `amqps://` URL goes through lapin's rustls (ring, the system roots
/// plus `tls`'s CA, `tls`'s client certificate when the broker asks for one).
pub(super) async fn connect(
    url: &str,
    name: &str,
    tls: &ClientTls,
) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let failed = |e| AmqpError::Broker(Cause::context(format!("connecting to {}", redact(url)), e));
    let runtime = lapin::runtime::default_runtime().map_err(failed)?;
    Connection::connect_with_config(url, props, tls_config(tls), runtime)
        .await
        .map_err(failed)
}

/// lapin's form of `tls`: the CA as PEM text, the client certificate and key as PEM.
fn tls_config(tls: &ClientTls) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: tls.identity.as_ref().map(|i| OwnedIdentity::PKCS8 {
            pem: i.cert_pem.clone(),
            key: i.key_pem.clone(),
        }),
        // Checked as PEM at start-up (src/tls.rs), so this is text.
        cert_chain: tls
            .ca_pem
            .as_ref()
            .map(|pem| String::from_utf8_lossy(pem).into_owned()),
    }
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub(super) async fn bounded<T>(
    f: impl Future<Output = Result<T, AmqpError>>,
) -> Result<T, AmqpError> {
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(AmqpError::Broker(
                "the broker did not answer in time".into(),
            ))
        })
}

pub(super) fn is_stopped(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves once shutdown is requested, or when nobody can request it any more (the sender
/// is gone: the process is going away).
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// ±20 %, so consumers that lost the broker together do not reconnect in lockstep.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }

    #[test]
    fn headers_read_as_text() {
        let mut h = FieldTable::default();
        h.insert("traceparent".into(), AMQPValue::LongString("00-ab".into()));
        h.insert("n".into(), AMQPValue::LongInt(3));
        assert_eq!(header_text(&h, "traceparent").as_deref(), Some("00-ab"));
        assert_eq!(header_text(&h, "n"), None);
        assert_eq!(header_text(&h, "missing"), None);
    }

    #[test]
    fn over_long_names_are_config_errors() {
        assert!(matches!(
            short(&"q".repeat(300), "queue name"),
            Err(AmqpError::Config(_))
        ));
    }
}
