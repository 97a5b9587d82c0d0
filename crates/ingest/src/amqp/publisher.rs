//! `herald publish`: one event to the bus, as an upstream service would send it.
use super::connection::{AmqpError, accepted, bounded, broker, connect, short};
use super::consumer::CLOSE_TIMEOUT;
use super::topology::durable_exchange;
use super::topology::{
    AmqpConfig, CLOUDEVENTS_CONTENT_TYPE, MASSTRANSIT_CONTENT_TYPE, declare_topology,
    masstransit_exchange,
};
use crate::envelope::{self, EnvelopeKind};
use herald_domain::EventId;
use herald_domain::tls::ClientTls;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};

/// Publishes one event to the bus, as `herald publish` does: CloudEvents to the topic exchange
/// `<queue>` with the type as routing key, or a MassTransit envelope to the type's fanout
/// exchange (`ConduitLLM.Core.Events:<Type>`, or `event_type` itself if it has a namespace).
/// Declares the queue's topology (without extra bindings) first, so an event published before
/// any consumer ran waits in the queue. Waits for the broker's confirm.
pub async fn publish_event(
    url: &str,
    queue: &str,
    event_type: &str,
    body: &Value,
    event_id: &str,
    envelope: EnvelopeKind,
    tls: &ClientTls,
) -> Result<(), AmqpError> {
    let event_type = event_type.trim();
    if event_type.is_empty()
        || event_type.len() > 200
        || !event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(AmqpError::Config(format!(
            "event type {event_type:?} must be 1-200 characters of letters, digits, '.', ':', '_' or '-'"
        )));
    }
    let id = EventId::parse(event_id).map_err(|e| AmqpError::Config(format!("event id: {e}")))?;
    if !body.is_object() {
        return Err(AmqpError::Config(
            "the event body must be a JSON object".into(),
        ));
    }
    let config = AmqpConfig {
        url: url.to_owned(),
        queue: queue.to_owned(),
        bind: Vec::new(),
        prefetch: 1,
        tls: tls.clone(),
    };
    let now = herald_domain::fields::format_time(chrono::Utc::now());
    let short_type = envelope::short_type_name(event_type);
    let (exchange, routing_key, payload, content_type) = match envelope {
        EnvelopeKind::CloudEvents => (
            queue.to_owned(),
            short_type.to_owned(),
            json!({
                "specversion": "1.0",
                "id": id.as_str(),
                "source": "herald-publish",
                "type": short_type,
                "time": now,
                "datacontenttype": "application/json",
                "data": body,
            }),
            CLOUDEVENTS_CONTENT_TYPE,
        ),
        EnvelopeKind::MassTransit => {
            let exchange = masstransit_exchange(event_type);
            let payload = json!({
                "messageId": id.as_str(),
                "sourceAddress": "rabbitmq://herald/herald-publish",
                "destinationAddress": format!("rabbitmq://herald/{exchange}"),
                "messageType": [format!("urn:message:{exchange}")],
                "message": body,
                "sentTime": now,
                "headers": {},
            });
            (exchange, String::new(), payload, MASSTRANSIT_CONTENT_TYPE)
        }
    };
    let payload = serde_json::to_vec(&payload)
        .map_err(|e| AmqpError::Config(format!("serializing the event: {e}")))?;
    let exchange_name = short(&exchange, "exchange name")?;
    let routing_key = short(&routing_key, "routing key")?;

    let conn = bounded(connect(url, "herald publish", tls)).await?;
    let result = bounded(async {
        let channel = conn
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        declare_topology(&channel, &config).await?;
        if envelope == EnvelopeKind::MassTransit {
            channel
                .exchange_declare(
                    exchange_name.clone(),
                    ExchangeKind::Fanout,
                    durable_exchange(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker("declaring the MassTransit exchange"))?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;
        let properties = BasicProperties::default()
            .with_content_type(content_type.into())
            .with_message_id(short(id.as_str(), "event id")?)
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                exchange_name,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await
            .map_err(broker("publishing"))?
            .await
            .map_err(broker("publishing"))?;
        accepted(confirm, &format!("exchange {exchange:?}"))
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "OK".into())).await;
    result
}
