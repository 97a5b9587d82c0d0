//! The backplane (DESIGN §7): history streams and live channels per audience. Redis in
//! production; in memory for `standalone`. Gateway nodes hand it a [`Mailbox`] per local
//! listener; it subscribes to an audience's channel only while that audience has one.
#![forbid(unsafe_code)]

mod cluster;
mod mailbox;
mod memory;
mod position;
mod redis;
mod router;

pub use mailbox::{Mailbox, MailboxReceiver, Received};
pub use memory::MemoryBackplane;
pub use position::Position;
pub use redis::{RedisBackplane, RedisConfig, history_script_for_plain_subscribers};

use async_trait::async_trait;
use herald_domain::catalog::TaskState;
use herald_domain::{Audience, OutboundEvent};
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// Redis cannot be reached or failed; the caller retries later.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

/// One event of one audience, at its position in that audience's history stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub audience: Audience,
    pub position: Position,
    pub event: Arc<OutboundEvent>,
}

/// Events read back from an audience's history.
#[derive(Debug, Default)]
pub struct History {
    /// Oldest first.
    pub events: Vec<Delivery>,
    /// The requested position is older than what the stream still holds: events were trimmed
    /// or expired between it and `events[0]`.
    pub gap: bool,
}

#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Appends `event` to each audience's history stream and publishes it on the audience's
    /// live channel. Idempotent per (audience, event id): publishing the same event again
    /// changes nothing. When it returns `Ok` the event is durable in the backplane.
    async fn publish(
        &self,
        audiences: &[Audience],
        event: &OutboundEvent,
    ) -> Result<(), BackplaneError>;

    /// Registers a local listener. Returns once the node's subscription to the audience's live
    /// channel is active, so everything published afterwards reaches `mailbox`. Dropping the
    /// returned guard removes the listener; the last one leaving unsubscribes the node.
    async fn subscribe(
        &self,
        audience: Audience,
        mailbox: Mailbox,
    ) -> Result<Subscription, BackplaneError>;

    /// Up to `limit` events of `audience` after `after` (exclusive; `None` = from the oldest
    /// held), in stream order.
    async fn history(
        &self,
        audience: Audience,
        after: Option<Position>,
        limit: usize,
    ) -> Result<History, BackplaneError>;

    /// The position of the newest event of `audience` (`Position::ZERO` when it has none).
    /// A connection reads it before subscribing, so its cursor names every audience it listens
    /// to from the start, including those it has not received anything from yet.
    async fn position(&self, audience: Audience) -> Result<Position, BackplaneError>;

    /// Ok while the backplane is reachable.
    async fn ping(&self) -> Result<(), BackplaneError>;

    /// Remembers a task's owner and latest state for `TASK_TTL`. A terminal state is not
    /// replaced by a late non-terminal one.
    async fn record_task(&self, state: &TaskState) -> Result<(), BackplaneError>;

    /// The task's latest known state, if it is still remembered.
    async fn task(&self, task_id: &str) -> Result<Option<TaskState>, BackplaneError>;
}

/// How long the task registry remembers a task after its last event.
pub const TASK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub type SharedBackplane = Arc<dyn Backplane>;

pub use router::Subscription;
