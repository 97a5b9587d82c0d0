//! What the subscribers need of the backplane's streams (to fill the gap a dropped subscription
//! left), and handing deliveries on once, in stream order.
use crate::contract::{BackplaneError, History};
use crate::delivery::Delivery;
use crate::position::Position;
use crate::router::Router;
use async_trait::async_trait;
use herald_domain::Audience;
use redis::Value;
use std::collections::HashMap;
use std::sync::Weak;

/// Reads of the history streams, for the subscribers. Implemented by the Redis backplane;
/// subscribers hold it weakly so they end when the backplane is dropped.
#[async_trait]
pub(crate) trait Streams: Send + Sync {
    /// Up to `limit` events of `audience` after `after`, in stream order.
    async fn read_history(
        &self,
        audience: Audience,
        after: Option<Position>,
        limit: usize,
    ) -> Result<History, BackplaneError>;
    /// The stream's newest position as recorded by the publish script.
    async fn last_position(&self, audience: Audience) -> Result<Position, BackplaneError>;
    /// `CLUSTER SLOTS` (Redis Cluster only).
    async fn cluster_slots(&self) -> Result<Value, BackplaneError>;
}

/// Per audience: the last position handed to local listeners.
pub(crate) type LastPositions = HashMap<Audience, Position>;

/// Hands a live or replayed delivery on, once, in stream order.
pub(crate) fn dispatch(router: &Router, d: Delivery, seen: &mut LastPositions) {
    if seen.get(&d.audience).is_some_and(|p| d.position <= *p) {
        return;
    }
    seen.insert(d.audience, d.position);
    router.dispatch(&d);
}

/// Replays from the streams what each audience missed since the last position handed on (or,
/// for an audience that has delivered nothing yet, since its floor).
pub(crate) async fn fill_gaps(
    weak: &Weak<dyn Streams>,
    router: &Router,
    audiences: &[Audience],
    seen: &mut LastPositions,
    floors: &LastPositions,
) -> Result<(), BackplaneError> {
    let Some(bp) = weak.upgrade() else {
        return Ok(());
    };
    for &a in audiences {
        let Some(mut after) = seen.get(&a).or(floors.get(&a)).copied() else {
            continue;
        };
        loop {
            let page = bp.read_history(a, Some(after), 500).await?;
            let n = page.events.len();
            for d in page.events {
                after = d.position;
                dispatch(router, d, seen);
            }
            if n < 500 {
                break;
            }
        }
    }
    Ok(())
}
