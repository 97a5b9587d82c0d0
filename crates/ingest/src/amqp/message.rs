//! What the pipeline needs to know about a delivery besides its body.
use super::connection::header_text;
use super::topology::ROUTING_KEY_HEADER;
use crate::envelope::MessageMeta;
use lapin::message::Delivery as AmqpDelivery;

/// What the pipeline needs to know about a delivery besides its body.
pub fn meta_of(delivery: &AmqpDelivery) -> MessageMeta {
    let p = &delivery.properties;
    // A deferred message comes back with the queue's name as routing key; its own is kept.
    let original = p
        .headers()
        .as_ref()
        .and_then(|h| header_text(h, ROUTING_KEY_HEADER));
    MessageMeta {
        routing_key: original.unwrap_or_else(|| delivery.routing_key.to_string()),
        content_type: p.content_type().as_ref().map(ToString::to_string),
        message_type: p.kind().as_ref().map(ToString::to_string),
        traceparent: p
            .headers()
            .as_ref()
            .and_then(|h| header_text(h, "traceparent")),
    }
}
