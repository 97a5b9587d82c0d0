//! Event sources: RabbitMQ (MassTransit envelope, the production path), HTTP `POST /v1/events`,
//! Redis through Herald's own backplane library (isolates the gateway), and plain Redis PUBLISH
//! on `{prefix}:{key}` (what the floor and the peer subscribe to).
//!
//! Event `i` goes to key `i % K` with sequence `i / K`; its id is `{run}-{keyId}-{seq}` and its
//! `requestId` is `t{send time in ns}`, so clients can check order, loss and latency.
use crate::client::now_ns;
use crate::error::Error;
use crate::http::Http;
use herald_backplane::{Backplane, RedisBackplane, RedisConfig};
use herald_domain::{Audience, EventId, KeyId, OutboundEvent};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// No events (idle-memory runs).
    None,
    /// RabbitMQ fanout exchange `ConduitLLM.Core.Events:SpendUpdated`.
    Amqp,
    /// Herald's `POST /v1/events` with the master key.
    Http,
    /// Herald's Redis backplane library (`RedisBackplane::publish`).
    Backplane,
    /// Plain `PUBLISH {prefix}:{keyId}` with the client object (floor, peer).
    RedisPub,
    /// The client object on `{prefix}:{keyId}` through Herald's history script (dedupe set,
    /// stream, last id, then the `PUBLISH`): the floor with Herald's Redis work per event.
    RedisHistory,
}

/// One publisher per worker (connections are cheap to clone or per worker).
pub enum Publisher {
    None,
    Amqp {
        channel: lapin::Channel,
        exchange: Arc<str>,
    },
    Http {
        http: Http,
        master: Arc<str>,
    },
    Backplane(Arc<RedisBackplane>),
    RedisPub {
        conn: redis::aio::MultiplexedConnection,
        prefix: Arc<str>,
    },
    RedisHistory {
        conn: redis::aio::MultiplexedConnection,
        prefix: Arc<str>,
        script: Arc<redis::Script>,
        /// Herald's defaults (`RedisConfig::publish_script_limits`).
        limits: (usize, u64, u64),
    },
}

pub struct SourceConfig {
    pub source: Source,
    pub amqp_url: String,
    /// The exchange `--source amqp` publishes to (MassTransit's SpendUpdated exchange by default).
    pub amqp_exchange: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub http_host: String,
    pub master_key: String,
}

/// Makes `workers` publishers sharing what can be shared.
pub async fn publishers(cfg: &SourceConfig, workers: usize) -> Result<Vec<Publisher>, Error> {
    let mut out = Vec::with_capacity(workers);
    match cfg.source {
        Source::None => out.extend((0..workers).map(|_| Publisher::None)),
        Source::Amqp => {
            let conn = Connection::connect(&cfg.amqp_url, ConnectionProperties::default()).await?;
            let exchange: Arc<str> = cfg.amqp_exchange.as_str().into();
            for _ in 0..workers {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                out.push(Publisher::Amqp {
                    channel,
                    exchange: exchange.clone(),
                });
            }
            // The connection lives as long as its channels are used.
            std::mem::forget(conn);
        }
        Source::Http => {
            let master: Arc<str> = cfg.master_key.as_str().into();
            for _ in 0..workers {
                out.push(Publisher::Http {
                    http: Http::new(cfg.http_host.clone()),
                    master: master.clone(),
                });
            }
        }
        Source::Backplane => {
            let mut rc = RedisConfig::new(cfg.redis_url.clone());
            rc.prefix = cfg.redis_prefix.clone();
            let bp = RedisBackplane::connect(rc)?;
            bp.ping().await?;
            out.extend((0..workers).map(|_| Publisher::Backplane(bp.clone())));
        }
        Source::RedisPub => {
            let client = redis::Client::open(cfg.redis_url.as_str())?;
            let conn = client.get_multiplexed_async_connection().await?;
            let prefix: Arc<str> = cfg.redis_prefix.as_str().into();
            out.extend((0..workers).map(|_| Publisher::RedisPub {
                conn: conn.clone(),
                prefix: prefix.clone(),
            }));
        }
        Source::RedisHistory => {
            let client = redis::Client::open(cfg.redis_url.as_str())?;
            let conn = client.get_multiplexed_async_connection().await?;
            let prefix: Arc<str> = cfg.redis_prefix.as_str().into();
            let script = Arc::new(redis::Script::new(
                &herald_backplane::history_script_for_plain_subscribers(),
            ));
            let limits = RedisConfig::new(cfg.redis_url.clone()).publish_script_limits();
            out.extend((0..workers).map(|_| Publisher::RedisHistory {
                conn: conn.clone(),
                prefix: prefix.clone(),
                script: script.clone(),
                limits,
            }));
        }
    }
    Ok(out)
}

/// The client-facing object, as Herald builds it for a SpendUpdate.
pub fn client_object(event_id: &str, key_id: i64, sent_ns: u64, time: &str) -> String {
    format!(
        "{{\"eventId\":\"{event_id}\",\"timestamp\":\"{time}\",\"virtualKeyId\":{key_id},\"newSpend\":0.001,\"totalSpend\":1.5,\"requestId\":\"t{sent_ns}\"}}"
    )
}

impl Publisher {
    /// Publishes the event `(key_id, seq)` of run `run`.
    pub async fn publish(&mut self, run: &str, key_id: i64, seq: u64) -> Result<(), Error> {
        let event_id = format!("{run}-{key_id}-{seq}");
        let now = chrono::Utc::now();
        let time = herald_domain::fields::format_time(now);
        let sent = now_ns();
        match self {
            Publisher::None => Ok(()),
            Publisher::Amqp { channel, exchange } => {
                let body = envelope(&event_id, key_id, sent, &time);
                let confirm = channel
                    .basic_publish(
                        exchange.as_ref().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default()
                            .with_content_type("application/vnd.masstransit+json".into())
                            .with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if confirm.is_nack() {
                    return Err("broker nacked the publish".into());
                }
                Ok(())
            }
            Publisher::Http { http, master } => {
                let body = envelope(&event_id, key_id, sent, &time);
                let r = http.post("/v1/events", Some(master), &body).await?;
                if !(200..300).contains(&r.status) {
                    return Err(format!("POST /v1/events answered {}: {}", r.status, r.body).into());
                }
                Ok(())
            }
            Publisher::Backplane(bp) => {
                let key = KeyId::new(key_id)?;
                let payload = serde_json::value::RawValue::from_string(client_object(
                    &event_id, key_id, sent, &time,
                ))?;
                let ev = OutboundEvent {
                    event_id: EventId::parse(&event_id)?,
                    name: herald_domain::Outbound::SpendUpdate,
                    key_id: Some(key),
                    timestamp: now,
                    traceparent: None,
                    payload,
                    task: None,
                    binary: Default::default(),
                };
                bp.publish(&[Audience::Key(key)], &ev).await?;
                Ok(())
            }
            Publisher::RedisHistory {
                conn,
                prefix,
                script,
                limits: (max_len, ttl_ms, last_ttl_ms),
            } => {
                let mut call = script.prepare_invoke();
                call.arg(*max_len)
                    .arg(*ttl_ms)
                    .arg(*last_ttl_ms)
                    .key(format!("{prefix}:stream:{{{key_id}}}"))
                    .key(format!("{prefix}:seen:{{{key_id}}}"))
                    .key(format!("{prefix}:last:{{{key_id}}}"))
                    .arg(format!("{prefix}:{key_id}"))
                    .arg(&event_id)
                    .arg(client_object(&event_id, key_id, sent, &time));
                let _: redis::Value = call.invoke_async(conn).await?;
                Ok(())
            }
            Publisher::RedisPub { conn, prefix } => {
                let body = client_object(&event_id, key_id, sent, &time);
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(format!("{prefix}:{key_id}"))
                    .arg(body)
                    .query_async(conn)
                    .await?;
                Ok(())
            }
        }
    }
}

/// A MassTransit envelope of `SpendUpdated`.
fn envelope(event_id: &str, key_id: i64, sent_ns: u64, time: &str) -> String {
    format!(
        "{{\"messageId\":\"{event_id}\",\"messageType\":[\"urn:message:ConduitLLM.Core.Events:SpendUpdated\"],\"message\":{{\"KeyId\":{key_id},\"Amount\":0.001,\"NewTotalSpend\":1.5,\"RequestId\":\"t{sent_ns}\"}},\"sentTime\":\"{time}\"}}"
    )
}
