//! The RabbitMQ side (docs/reliability.md, invariants 1 and 5): topology, the consumer and
//! `herald publish`.
//!
//! The consumer takes up to the prefetch count of deliveries at once and processes them one at
//! a time per partition (a key, a task, the global stream), so each key's events keep their bus
//! order while different keys proceed in parallel. A delivery is acked only once the pipeline
//! says its effects are durable. A bad message is re-published unchanged to `<queue>.dead` (with
//! the reason in a header, under publisher confirms) and then acked. While a dependency is down
//! the message is retried with backoff and held unacked. A lost connection is re-established
//! with backoff; unacked messages go back to the queue and are processed again, which the
//! pipeline makes harmless.
//!
//! This file only declares the parts and re-exports the public API.
mod acks;
mod connection;
mod consumer;
mod handling;
mod lag;
mod message;
mod partitions;
mod publisher;
mod topology;

pub use crate::envelope::EnvelopeKind;
pub use connection::{AmqpError, header_text};
pub use consumer::{Consumer, ConsumerStats, run_consumer};
pub use message::meta_of;
pub use publisher::publish_event;
pub use topology::{
    ATTEMPTS_HEADER, AmqpConfig, CLOUDEVENTS_CONTENT_TYPE, DEFER_DELAY, EVENT_ID_HEADER,
    MASSTRANSIT_CONTENT_TYPE, MASSTRANSIT_NAMESPACE, MAX_DEFERRALS, REASON_HEADER,
    ROUTING_KEY_HEADER, dead_letter_name, declare_topology, default_bindings, masstransit_exchange,
    retry_queue_name,
};
