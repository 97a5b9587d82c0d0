//! Ingest: bus messages in, durable effects out (docs/events.md, "The bus" and "Budget alerts"). [`envelope`] decodes a
//! message, [`pipeline`] applies the budget engine and publishes to the backplane, [`amqp`]
//! runs the RabbitMQ consumer (ack only after the effects are durable; bad input to the
//! dead-letter queue; retries while a dependency is down).
#![forbid(unsafe_code)]

pub mod amqp;
pub mod envelope;
pub mod pipeline;

pub use envelope::{EnvelopeKind, MessageMeta};
pub use pipeline::{Failure, Outage, Pipeline, PipelineConfig, Processed};
