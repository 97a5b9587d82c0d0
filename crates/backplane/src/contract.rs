//! What every backplane provides: the `Backplane` trait and the types it speaks in.
use crate::delivery::Delivery;
use crate::inbox::RelayInbox;
use crate::mailbox::Mailbox;
use crate::position::Position;
use crate::router::Subscription;
use async_trait::async_trait;
use herald_domain::task::TaskState;
use herald_domain::{Audience, Cause, OutboundEvent};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// Redis cannot be reached or failed; the caller retries later.
    #[error("backplane unavailable: {0}")]
    Unavailable(#[source] Cause),
}

/// What one publish did: per audience, appended, or skipped because the audience already
/// had an event with this id (within its dedupe window: the newest `2 × max_len` ids, kept
/// as long as the history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub appended: usize,
    pub repeated: usize,
}

impl Published {
    /// Every audience already had it: nothing was sent to anyone.
    pub fn is_repeat(&self) -> bool {
        self.appended == 0 && self.repeated > 0
    }
}

impl std::ops::Add for Published {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            appended: self.appended + o.appended,
            repeated: self.repeated + o.repeated,
        }
    }
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
    /// changes nothing, and the answer says for how many audiences that was so. When it
    /// returns `Ok` the event is durable in the backplane.
    async fn publish(
        &self,
        audiences: &[Audience],
        event: &OutboundEvent,
    ) -> Result<Published, BackplaneError>;

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

    /// Listens on `name` for messages any node sends with [`Backplane::relay_send`]. Returns
    /// once listening is active; dropping the inbox stops it.
    async fn relay_listen(&self, name: &str) -> Result<RelayInbox, BackplaneError>;

    /// Sends `payload` to the node listening on `name`: `Ok(false)` when no node listens (or
    /// its inbox is full). Nothing is kept for a listener that comes later.
    async fn relay_send(&self, name: &str, payload: Vec<u8>) -> Result<bool, BackplaneError>;

    /// Takes `name` for `ttl` across all nodes: true for the first caller only.
    async fn relay_claim(&self, name: &str, ttl: Duration) -> Result<bool, BackplaneError>;
}

/// How long the task registry remembers a task after its last event.
pub const TASK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub type SharedBackplane = Arc<dyn Backplane>;

/// The backplane could not do it: `e` (an error, kept as the source, or a message) says why.
pub(crate) fn unavailable(
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BackplaneError {
    BackplaneError::Unavailable(Cause::new(e))
}
