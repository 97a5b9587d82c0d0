//! Herald's RabbitMQ topology and its names: the quorum queue, its dead-letter and retry
//! queues, the topic exchange and the MassTransit exchanges it binds, and the headers Herald
//! writes. Declared idempotently by every consumer and by `herald publish`.
use super::connection::{AmqpError, broker, short};
use herald_domain::Cause;
use herald_domain::tls::ClientTls;
use herald_domain::vocabulary;
use lapin::Channel;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// The namespace Conduit's events are published under by MassTransit.
pub const MASSTRANSIT_NAMESPACE: &str = "ConduitLLM.Core.Events";

pub const MASSTRANSIT_CONTENT_TYPE: &str = "application/vnd.masstransit+json";

pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-herald-reason";

/// Header carrying the event id of a dead-lettered message, when it could be read.
pub const EVENT_ID_HEADER: &str = "x-herald-event-id";

/// How long a deferred message waits before it is tried again.
pub const DEFER_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// How many times a message is deferred before it is dead-lettered.
pub const MAX_DEFERRALS: i64 = 5;

/// Counts the deferrals of a message.
pub const ATTEMPTS_HEADER: &str = "x-herald-attempts";

/// The routing key a deferred message was first delivered with.
pub const ROUTING_KEY_HEADER: &str = "x-herald-routing-key";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    pub url: String,
    /// The quorum queue, e.g. `herald.events`. Its dead-letter queue and exchange are
    /// `<queue>.dead`; its topic exchange has the queue's name.
    pub queue: String,
    /// Extra exchanges to bind (declared durable fanout if missing).
    pub bind: Vec<String>,
    pub prefetch: u16,
    /// CA and client certificate for an `amqps://` URL (docs/security.md).
    pub tls: ClientTls,
}

/// The MassTransit exchanges of every inbound type and alias in the vocabulary,
/// e.g. `ConduitLLM.Core.Events:SpendUpdated`.
pub fn default_bindings() -> Vec<String> {
    vocabulary::bus_names().map(masstransit_exchange).collect()
}

/// `ConduitLLM.Core.Events:<Type>`; a name that already has a namespace (`Ns:Type`) is kept.
pub fn masstransit_exchange(event_type: &str) -> String {
    if event_type.contains(':') {
        event_type.to_owned()
    } else {
        format!("{MASSTRANSIT_NAMESPACE}:{event_type}")
    }
}

/// The dead-letter exchange and queue of `queue`.
pub fn dead_letter_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The delay queue of `queue`: deferred messages wait there, then return to `queue`.
pub fn retry_queue_name(queue: &str) -> String {
    format!("{queue}.retry")
}

pub(super) fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

pub(super) fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares Herald's topology; safe to call any number of times (same names, same arguments).
/// - quorum queue `<queue>`, dead-lettering to exchange `<queue>.dead`;
/// - fanout exchange `<queue>.dead` bound to quorum queue `<queue>.dead`;
/// - topic exchange `<queue>` bound to the queue with `#`;
/// - each exchange of `config.bind`, durable fanout, bound to the queue.
pub async fn declare_topology(channel: &Channel, config: &AmqpConfig) -> Result<(), AmqpError> {
    if config.queue.trim().is_empty() {
        return Err(AmqpError::Config("queue name is empty".into()));
    }
    let dead_name = dead_letter_name(&config.queue);
    let queue = short(&config.queue, "queue name")?;
    let dead = short(&dead_name, "dead-letter queue name")?;
    let quorum = |dlx: Option<&str>| {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(dlx) = dlx {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.into()),
            );
        }
        args
    };

    channel
        .exchange_declare(
            dead.clone(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the dead-letter exchange"))?;
    channel
        .queue_declare(dead.clone(), durable_queue(), quorum(None))
        .await
        .map_err(broker("declaring the dead-letter queue"))?;
    channel
        .queue_bind(
            dead.clone(),
            dead.clone(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("binding the dead-letter queue"))?;
    // The delay queue: messages expire after DEFER_DELAY and dead-letter straight back into the
    // queue through the default exchange.
    let retry = short(&retry_queue_name(&config.queue), "retry queue name")?;
    let mut retry_args = FieldTable::default();
    retry_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(DEFER_DELAY.as_millis()).unwrap_or(1000)),
    );
    retry_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    retry_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(config.queue.as_str().into()),
    );
    channel
        .queue_declare(retry, durable_queue(), retry_args)
        .await
        .map_err(broker("declaring the retry queue"))?;
    channel
        .queue_declare(queue.clone(), durable_queue(), quorum(Some(&dead_name)))
        .await
        .map_err(broker(
            "declaring the queue (if it exists with other arguments, delete it or pick another HERALD_AMQP_QUEUE)",
        ))?;
    channel
        .exchange_declare(
            queue.clone(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the topic exchange"))?;
    channel
        .queue_bind(
            queue.clone(),
            queue.clone(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("binding the topic exchange"))?;

    let mut seen = std::collections::HashSet::new();
    for name in &config.bind {
        let name = name.trim();
        // The queue's own topic exchange (listed in the default HERALD_AMQP_BIND) is bound
        // above; redeclaring it as fanout would fail.
        if name.is_empty() || name == config.queue || name == dead_name || !seen.insert(name) {
            continue;
        }
        let exchange = short(name, "exchange name")?;
        channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                AmqpError::Broker(Cause::context(
                    format!("declaring exchange {name:?} as durable fanout (does it exist with another type?)"),
                    e,
                ))
            })?;
        channel
            .queue_bind(
                queue.clone(),
                exchange,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("binding an exchange to the queue"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bindings_are_masstransit_exchanges() {
        let b = default_bindings();
        assert!(b.contains(&"ConduitLLM.Core.Events:SpendUpdated".to_owned()));
        assert!(b.contains(&"ConduitLLM.Core.Events:VirtualKeyDeleted".to_owned()));
        assert_eq!(b.len(), vocabulary::bus_names().count());
        assert_eq!(
            masstransit_exchange("Acme:SpendUpdated"),
            "Acme:SpendUpdated"
        );
    }
}
